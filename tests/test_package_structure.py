"""The package's structure: no import circles, no private name used outside its module, and a
light ``import jaxsde``.

The import graph is read from the source (``ast``): an edge ``a -> b`` for every import of a
jaxsde module ``b`` in ``a``, at module level or inside a function (a lazy import is still a
dependency), except imports under ``if TYPE_CHECKING:``.
"""

from __future__ import annotations

import ast
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1] / "jaxsde"


def _module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in ROOT.rglob("*.py")}


def _resolve(module: str, level: int, name: str | None) -> str:
    """The absolute name of ``from <level dots><name> import ...`` inside ``module``."""
    base = module.split(".") if MODULES[module].name == "__init__.py" else module.split(".")[:-1]
    if level > 1:
        base = base[: -(level - 1)]
    return ".".join(base + ([name] if name else []))


def _imports(tree: ast.AST):
    """Every import node, skipping ``if TYPE_CHECKING:`` blocks."""
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.dump(node.test):
            node.body = []  # annotations only: not a run-time dependency
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node


def _analyse():
    edges: dict[str, set[str]] = {m: set() for m in MODULES}
    private: list[tuple[str, str, str]] = []
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text())
        aliases: dict[str, str] = {}  # local name -> the jaxsde module it is bound to
        for node in _imports(tree):
            if isinstance(node, ast.Import):
                for a in node.names:
                    if a.name.split(".")[0] == "jaxsde" and a.name in MODULES:
                        edges[module].add(a.name)
                continue
            target = _resolve(module, node.level, node.module) if node.level else (node.module or "")
            if target.split(".")[0] != "jaxsde":
                continue
            for a in node.names:
                sub = f"{target}.{a.name}"
                if sub in MODULES:  # a submodule
                    edges[module].add(sub)
                    aliases[a.asname or a.name] = sub
                else:
                    if target in MODULES:
                        edges[module].add(target)
                    if a.name.startswith("_") and not a.name.startswith("__"):
                        private.append((module, target, a.name))
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases
                    and node.attr.startswith("_") and not node.attr.startswith("__")):
                private.append((module, aliases[node.value.id], node.attr))
    return edges, private


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    found, state, stack = [], {}, []

    def visit(u):
        state[u] = "open"
        stack.append(u)
        for v in sorted(edges[u]):
            if v == u or v not in edges:
                continue
            if state.get(v) == "open":
                found.append(stack[stack.index(v):] + [v])
            elif v not in state:
                visit(v)
        stack.pop()
        state[u] = "done"

    for m in sorted(edges):
        if m not in state:
            visit(m)
    return found


def test_the_analysis_sees_the_package():
    edges, _ = _analyse()
    assert len(MODULES) > 40
    assert "jaxsde.driver" in edges["jaxsde.batching"]  # generate runs the driver's pieces
    assert "jaxsde.solvers.base" in edges["jaxsde.solvers.ddim"]


def test_no_import_circles():
    edges, _ = _analyse()
    assert _cycles(edges) == []


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]


def test_no_private_name_used_outside_its_module():
    _, private = _analyse()
    assert sorted(set(private)) == []


HEAVY = ("optax", "diffrax", "torch", "flax", "jaxsde.training", "jaxsde.sparse", "jaxsde.batching",
         "jaxsde.checkpoints.score_sde")


def test_import_jaxsde_is_light():
    code = f"import sys, jaxsde; print(sorted(m for m in {HEAVY!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert out.strip() == "[]", f"import jaxsde loaded {out.strip()}"


def test_lazy_names_resolve():
    code = ("import sys, jaxsde; g = jaxsde.generate; c = jaxsde.Checkpoint; "
            "assert 'jaxsde.batching' in sys.modules and callable(g) and c.__name__ == 'Checkpoint'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_library_imports_neither_the_oracles_nor_the_jobs():
    edges, _ = _analyse()
    wrong = sorted((a, b) for a, bs in edges.items() for b in bs
                   if (b.startswith("jaxsde.apps") and not a.startswith("jaxsde.apps"))
                   or (b.startswith("jaxsde.testing") and not a.startswith(("jaxsde.testing", "jaxsde.apps"))))
    assert wrong == []
