"""The dependency range in setup.py holds: every requirement has a lower bound, constraints-min.txt pins
exactly those bounds (the two files cannot drift apart), and this environment, which CI builds with
the newest versions, satisfies them all. Reads files and package metadata only (well under a second)."""
import ast
import importlib.metadata
import pathlib
import platform

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = pathlib.Path(__file__).resolve().parents[1]


def setup_arguments() -> dict:
    """setup()'s literal keyword arguments, read from setup.py without running it."""
    tree = ast.parse((ROOT / "setup.py").read_text(encoding="utf-8"))
    (call,) = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", None) == "setup"]
    return {k.arg: ast.literal_eval(k.value) for k in call.keywords
            if k.arg in ("install_requires", "extras_require", "python_requires")}


def requirements() -> dict:
    """{canonical name: Requirement} of install_requires and every extra (the same bound wherever named)."""
    args = setup_arguments()
    out = {}
    for line in args["install_requires"] + [r for extra in args["extras_require"].values() for r in extra]:
        req = Requirement(line)
        name = canonicalize_name(req.name)
        assert out.get(name, req).specifier == req.specifier, f"{req.name} has two ranges in setup.py"
        out[name] = req
    return out


def lower_bound(req: Requirement) -> Version:
    bounds = [Version(s.version) for s in req.specifier if s.operator in (">=", "==")]
    assert len(bounds) == 1, f"{req}: one lower bound (>= or ==) expected"
    return bounds[0]


def constraints() -> dict:
    """{canonical name: pinned Version} of constraints-min.txt."""
    out = {}
    for line in (ROOT / "constraints-min.txt").read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            req = Requirement(line)
            (spec,) = req.specifier
            assert spec.operator == "==", f"constraints-min.txt pins with ==: {line}"
            out[canonicalize_name(req.name)] = Version(spec.version)
    return out


def test_constraints_min_pins_exactly_setup_py_lower_bounds():
    bounds = {name: lower_bound(req) for name, req in requirements().items()}
    assert constraints() == bounds


def test_this_environment_satisfies_setup_py():
    assert Version(platform.python_version()) in SpecifierSet(setup_arguments()["python_requires"])
    unmet = []
    for name, req in requirements().items():
        try:
            have = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            unmet.append(f"{name} not installed")
            continue
        if not req.specifier.contains(Version(have), prereleases=True):
            unmet.append(f"{name} {have} does not satisfy {req.specifier}")
    assert unmet == []
