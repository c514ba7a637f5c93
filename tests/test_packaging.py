"""One installed top-level package, ``vstar_jax`` (issue 29): the repository's ``configs/`` and
``checkpoints_convert/`` folders install as ``vstar_jax.configs`` and ``vstar_jax.checkpoints_convert``.

Checked without building anything (well under a second): setup.py's package list and mapping (its
``setup()`` call captured), the installed distribution's top-level names when it is this checkout,
the code's imports (an import scan: with PYTHONPATH at the repository a top-level ``configs`` is
importable anyway, so importability proves nothing), and the source-tree finder."""
import ast
import importlib
import importlib.metadata
import json
import os
import pathlib
import re
import runpy
import sys

import pytest
import setuptools

import vstar_jax
from vstar_jax import _source_tree, checkpoints_convert, configs
from vstar_jax._source_tree import SUBPACKAGES, SourceTreeFinder

ROOT = pathlib.Path(__file__).resolve().parents[1]
OLD_NAMES = ("configs", "checkpoints_convert")
SCANNED = ("vstar_jax", "configs", "checkpoints_convert", "launch", "benchmarks", "tests")
# files allowed to name the old top-level packages: (file, why)
OLD_NAME_OK = {"benchmarks/unet_speed.py": "loads older revisions, whose converters were top-level",
               "tests/test_packaging.py": "this test's own examples"}


@pytest.fixture(scope="module")
def setup_kwargs():
    """setup()'s keyword arguments, evaluated (find_packages runs; nothing is built)."""
    captured = {}
    saved, cwd = setuptools.setup, pathlib.Path.cwd()
    setuptools.setup = lambda **kw: captured.update(kw)
    try:
        os.chdir(ROOT)  # setup.py's find_packages reads relative folders, as pip runs it
        runpy.run_path(str(ROOT / "setup.py"), run_name="__not_main__")
    finally:
        setuptools.setup = saved
        os.chdir(cwd)
    return captured


def _folder(package: str, package_dir: dict) -> pathlib.Path:
    """Where setuptools takes ``package`` from (the longest package_dir prefix, else its dotted path)."""
    prefix = max((p for p in package_dir if package == p or package.startswith(p + ".")), key=len, default=None)
    if prefix is None:
        return ROOT.joinpath(*package.split("."))
    rest = package[len(prefix) + 1:]
    return ROOT.joinpath(package_dir[prefix], *(rest.split(".") if rest else ()))


def test_setup_installs_one_top_level_package(setup_kwargs):
    packages, package_dir = setup_kwargs["packages"], setup_kwargs["package_dir"]
    assert {p.split(".")[0] for p in packages} == {"vstar_jax"}
    assert package_dir == {f"vstar_jax.{f}": f for f in SUBPACKAGES}  # the finder maps the same folders
    for package in packages:
        assert (_folder(package, package_dir) / "__init__.py").is_file(), package
    assert {"vstar_jax.configs", "vstar_jax.checkpoints_convert", "vstar_jax.models"} <= set(packages)
    assert set(setup_kwargs["package_data"]["vstar_jax.configs"]) >= {"*.py", "*.txt", "*.yaml"}


def _installed_from_here(dist) -> bool:
    """Whether the installed distribution is this checkout (editable), or a regular install (no url)."""
    text = dist.read_text("direct_url.json")
    if not text:
        return True
    info = json.loads(text)
    url = info.get("url", "")
    return not info.get("dir_info", {}).get("editable") or url.removeprefix("file://") == str(ROOT)


def test_the_installed_distribution_has_one_top_level_package():
    # the installed metadata, not the vstar_jax.egg-info that `pip install -e .` leaves in the checkout
    dist = next(iter(importlib.metadata.distributions(  # the first on sys.path, as importlib.metadata takes it
        name="vstar-jax", path=[p for p in sys.path if pathlib.Path(p or ".").resolve() != ROOT])))
    if not _installed_from_here(dist):
        pytest.skip("vstar-jax is installed editable from another checkout (its setup.py, not this one's)")
    assert (dist.read_text("top_level.txt") or "").split() == ["vstar_jax"], \
        "installed from an older setup.py? reinstall: pip install --no-deps -e ."
    # RECORD: a wheel's files, or an editable install's finder (one file) and its __pycache__
    tops = {f.parts[0] for f in dist.files or () if len(f.parts) > 1 and not f.parts[0].endswith(".dist-info")
            and f.parts[0] not in ("..", "__pycache__")}
    assert tops <= {"vstar_jax"}, tops


def _old_name_imports(source: str, filename: str) -> list:
    """(line, module) of imports of the old top-level names, and of module names in strings
    (importlib.import_module("checkpoints_convert.x"), "python -m checkpoints_convert.x")."""
    out = []
    for node in ast.walk(ast.parse(source, filename)):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and not node.level:
            names = [node.module or ""]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            names = re.findall(r"(?<![\w./-])((?:%s)\.[A-Za-z_]\w*)" % "|".join(OLD_NAMES), node.value)
        out += [(node.lineno, n) for n in names if n.split(".")[0] in OLD_NAMES]
    return out


def test_the_old_name_scan_sees_imports_and_module_strings():
    src = ('import configs\nfrom checkpoints_convert.unet import x\nimport vstar_jax.configs\n'
           'from vstar_jax.checkpoints_convert import raft\nm = "python -m checkpoints_convert.raft"\n'
           'p = "configs/unet_tiny.py"\n')
    assert _old_name_imports(src, "<src>") == [(1, "configs"), (2, "checkpoints_convert.unet"),
                                               (5, "checkpoints_convert.raft")]


def test_the_code_imports_the_namespaced_packages():
    found = []
    for folder in SCANNED:
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            text = path.read_text("utf-8")
            if rel not in OLD_NAME_OK and any(name in text for name in OLD_NAMES):  # parse the candidates only
                found += [f"{rel}:{line} {mod}" for line, mod in _old_name_imports(text, rel)]
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:  # the commands users type
        for i, line in enumerate(path.read_text("utf-8").splitlines(), 1):
            found += [f"{path.relative_to(ROOT)}:{i} {m}" for m in
                      re.findall(r"(?:python -m |import )((?:%s)\b\S*)" % "|".join(OLD_NAMES), line)]
    assert not found, "imports of the old top-level names (use vstar_jax.configs / vstar_jax.checkpoints_convert):\n" \
        + "\n".join(found)


def test_a_checkout_maps_the_folders_beside_its_vstar_jax():
    """This checkout's folders, not those of another checkout installed editable (whose finder maps its own)."""
    assert pathlib.Path(vstar_jax.__file__).parent == ROOT / "vstar_jax"
    assert pathlib.Path(configs.__file__).parent == ROOT / "configs"
    assert pathlib.Path(checkpoints_convert.__file__).parent == ROOT / "checkpoints_convert"
    assert importlib.import_module("vstar_jax.configs.unet_tiny").__file__ == str(ROOT / "configs" / "unet_tiny.py")
    assert any(isinstance(f, SourceTreeFinder) for f in sys.meta_path)
    _source_tree.install()  # once only
    assert sum(isinstance(f, SourceTreeFinder) for f in sys.meta_path) == 1


def test_the_finder_acts_in_a_checkout_only(tmp_path):
    finder = SourceTreeFinder()

    def tree(name, files):
        for f in files:
            (tmp_path / name / f).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / name / f).write_text("")
        return [str(tmp_path / name / "vstar_jax")]

    checkout = tree("checkout", ["setup.py", "vstar_jax/__init__.py", "configs/__init__.py"])
    spec = finder.find_spec("vstar_jax.configs", checkout)
    assert spec.origin == str(tmp_path / "checkout" / "configs" / "__init__.py")
    assert spec.submodule_search_locations == [str(tmp_path / "checkout" / "configs")]
    assert finder.find_spec("vstar_jax.launch", checkout) is None  # the two folders only
    assert finder.find_spec("configs", None) is None
    # installed: the subpackage inside vstar_jax/ wins; a top-level configs of somebody else's is never taken
    built = tree("built", ["setup.py", "vstar_jax/__init__.py", "vstar_jax/configs/__init__.py", "configs/__init__.py"])
    assert finder.find_spec("vstar_jax.configs", built) is None
    site = tree("site", ["vstar_jax/__init__.py", "configs/__init__.py"])
    assert finder.find_spec("vstar_jax.configs", site) is None
