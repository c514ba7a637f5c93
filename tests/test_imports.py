"""No import cycles between vstar_jax's modules.

Every ``import vstar_jax...`` / ``from vstar_jax... import ...`` (and relative import) of every module,
at the top level or inside a function (a deferred import still ties the two modules together: each
needs the other to work, and the deferral only hides the cycle from the interpreter), is an edge
from the importing module to the module it names: ``from vstar_jax.a import b`` names ``vstar_jax.a.b``
when that is a module, else ``vstar_jax.a``. Parent packages imported implicitly are not edges.
A cycle is a strongly connected component of more than one module (or a module importing itself).
"""
import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = "vstar_jax"

def _modules() -> dict:
    """{dotted name: path} of every module of the package."""
    out = {}
    for path in sorted((ROOT / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
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
    assert "vstar_jax.models.vae" in g["vstar_jax.generation.outputs"]  # inside a function
    assert "vstar_jax.pipeline" in g["vstar_jax.sweep"]  # from vstar_jax.pipeline import ... in a function
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [frozenset("abc")]


def test_no_import_cycles():
    found = [sorted(c) for c in cycles(import_graph())]
    assert not found, f"import cycles between modules: {found}"
