"""No import cycles between vstar_jax's modules, and imports at the top of their modules.

Every ``import vstar_jax...`` / ``from vstar_jax... import ...`` (and relative import) of every module,
at the top level or inside a function (a deferred import still ties the two modules together: each
needs the other to work, and the deferral only hides the cycle from the interpreter), is an edge
from the importing module to the module it names: ``from vstar_jax.a import b`` names ``vstar_jax.a.b``
when that is a module, else ``vstar_jax.a``. Parent packages imported implicitly are not edges.
A cycle is a strongly connected component of more than one module (or a module importing itself).

Imports of the project's own modules belong at the top of the module (issue 25): a function-local one is
allowed only for a reason (the CLI's lazy subcommands, the multi-host launchers' JAX-free parents, ...),
and there must be fewer than ``MAX_LOCAL_IMPORTS`` of them in the project's code.
"""
import ast
import pathlib

from vstar_jax._source_tree import SUBPACKAGES

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = "vstar_jax"
# {dotted package: its folder}: vstar_jax, and the repository's top-level folders installed under it
FOLDERS = {PACKAGE: PACKAGE, **{f"{PACKAGE}.{folder}": folder for folder in SUBPACKAGES}}
OWN_PACKAGES = ("vstar_jax", "launch")  # the project's own modules
CODE_DIRS = ("vstar_jax", "checkpoints_convert", "configs", "launch")  # where local imports are counted
MAX_LOCAL_IMPORTS = 15  # issue 25: fewer than this many function-local imports of the project's modules
# function-local imports that are the design, not counted: (file, imported module)
ALLOWED_LOCAL = {
    ("vstar_jax/cli.py", "vstar_jax.pipeline"),  # the lazy `generate` subcommand: `vstar-jax --help` skips JAX
    ("vstar_jax/__init__.py", "vstar_jax.pipeline"),  # the public API on first use: `import vstar_jax` skips JAX
}

def _modules() -> dict:
    """{dotted name: path} of every module of the package."""
    out = {}
    for package, folder in FOLDERS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = [package, *path.relative_to(ROOT / folder).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out.setdefault(".".join(parts), path)
    return out


def import_graph() -> dict:
    """{module: {modules of the package it imports}}."""
    mods = _modules()
    graph = {}
    for name, path in mods.items():
        is_pkg = path.name == "__init__.py"
        here = name if is_pkg else name.rpartition(".")[0]
        edges = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name == PACKAGE or alias.name.startswith(PACKAGE + "."):
                        edges.add(alias.name)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = here.split(".")
                    base = base[: len(base) - (node.level - 1)]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                if target != PACKAGE and not target.startswith(PACKAGE + "."):
                    continue
                for alias in node.names:
                    sub = f"{target}.{alias.name}"
                    edges.add(sub if sub in mods else target)
        graph[name] = {e for e in edges if e in mods and e != name} | ({name} & edges)
    return graph


def cycles(graph: dict) -> list:
    """Strongly connected components with more than one module, or a module importing itself (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1 or v in graph.get(v, ()):
                out.append(frozenset(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_graph_sees_top_level_function_local_and_from_imports():
    g = import_graph()
    assert "vstar_jax.models.layers" in g["vstar_jax.models.unet3d"]  # top level
    assert "vstar_jax.checkpoints_convert.common" in g["vstar_jax.checkpoints_convert.unet"]  # the mapped folders
    assert "vstar_jax.configs.unet_videocrafter2" in g["vstar_jax.configs.unet_tiny"]
    assert "vstar_jax.models.vae" in g["vstar_jax.generation.outputs"]  # inside a function
    assert "vstar_jax.pipeline" in g["vstar_jax.sweep"]  # from vstar_jax.pipeline import ... in a function
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [frozenset("abc")]


def test_no_import_cycles():
    found = [sorted(c) for c in cycles(import_graph())]
    assert not found, f"import cycles between modules: {found}"


def local_imports(source: str, filename: str = "<src>") -> list:
    """(line, imported module) of every import of the project's own modules inside a function."""
    out = []

    def visit(node, in_function: bool):
        for child in ast.iter_child_nodes(node):
            if in_function and isinstance(child, ast.Import):
                out.extend((child.lineno, a.name) for a in child.names if a.name.split(".")[0] in OWN_PACKAGES)
            elif in_function and isinstance(child, ast.ImportFrom) and not child.level:
                if (child.module or "").split(".")[0] in OWN_PACKAGES:
                    subs = [f"{child.module}.{a.name}" for a in child.names]
                    out.append((child.lineno, subs[0] if len(subs) == 1 and _is_module(subs[0]) else child.module))
            elif in_function and isinstance(child, ast.ImportFrom):  # relative: always the package's own
                out.append((child.lineno, "." * child.level + (child.module or "")))
            visit(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

    visit(ast.parse(source, filename), False)
    return out


def _is_module(dotted: str) -> bool:
    package = max((p for p in FOLDERS if dotted == p or dotted.startswith(p + ".")), key=len, default=None)
    rest = dotted[len(package) + 1:].split(".") if package and dotted != package else []
    base = ROOT.joinpath(FOLDERS[package], *rest) if package else ROOT.joinpath(*dotted.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def test_the_local_import_count_sees_imports_inside_functions_only():
    src = ("import vstar_jax.errors\nfrom vstar_jax.configs import unet_tiny\n\n"
           "def f():\n    import numpy\n    from vstar_jax import pipeline\n\n"
           "    def g():\n        from vstar_jax.checkpoints_convert.common import flatten, unflatten\n\n"
           "class C:\n    def m(self):\n        import launch.train_demo\n        from . import x\n")
    assert local_imports(src) == [(6, "vstar_jax.pipeline"), (9, "vstar_jax.checkpoints_convert.common"),
                                  (13, "launch.train_demo"), (14, ".")]


def test_imports_of_the_projects_modules_are_at_the_top():
    found = []
    for folder in CODE_DIRS:
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            found += [f"{rel}:{line} {mod}" for line, mod in local_imports(path.read_text(encoding="utf-8"), rel)
                      if (rel, mod) not in ALLOWED_LOCAL]
    assert len(found) < MAX_LOCAL_IMPORTS, (
        f"{len(found)} function-local imports of the project's modules (fewer than {MAX_LOCAL_IMPORTS} allowed; "
        f"move them to the top of the module, moving a shared piece down if that makes a cycle):\n"
        + "\n".join(found))
