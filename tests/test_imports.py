"""Imports flow one way: no circle among the modules of graph/, nodes/, tools/, evals/ (and prompts/),
and no module imports a layer above its own (see ``layer``).

The import graph is read from the source with ``ast``: every ``import`` and
``from ... import`` of the project's own modules, at the top of a module and
inside functions alike (an import deferred into a function still ties the two
modules together; it only hides the circle from Python until run time).

    python tests/test_imports.py     # print the circles and the imports of a higher layer found
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("graph", "nodes", "tools", "evals", "prompts")

# The layers, bottom first: tools/ and prompts/ (plain functions and models); graph's foundation
# (context, state, progress, inputs, edges: what the nodes read and write); nodes/; the graph itself
# (graph.builder, graph.compiled, graph.api, the graph package); evals/; the command line on top
# (graph.cli, which imports evals.cli and tools.kb_cli). A module imports only from its own layer or below.
FOUNDATION = {"graph.context", "graph.state", "graph.progress", "graph.inputs", "graph.edges"}
CLI = {"graph.cli", "evals.cli", "tools.kb_cli"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_modules() -> dict[str, Path]:
    return {module_name(p): p for pkg in PACKAGES for p in sorted((REPO / pkg).rglob("*.py"))}


def is_main_block(node: ast.stmt) -> bool:
    """``if __name__ == "__main__":``"""
    test = getattr(node, "test", None)
    return (isinstance(node, ast.If) and isinstance(test, ast.Compare) and isinstance(test.left, ast.Name)
            and test.left.id == "__name__" and any(isinstance(c, ast.Constant) and c.value == "__main__"
                                                   for c in test.comparators))


def imported(name: str, path: Path, modules: dict[str, Path], *, skip_main: bool = False) -> set[str]:
    """The project modules ``name`` imports, anywhere in its source (``skip_main``: not in its ``__main__`` block)."""
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    if skip_main:
        tree.body = [node for node in tree.body if not is_main_block(node)]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative import
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[:len(base) - node.level + 1]
                stem = ".".join(base + ([node.module] if node.module else []))
            else:
                stem = node.module or ""
            # "from pkg import mod" imports the module pkg.mod; "from mod import name" the module mod
            targets = [f"{stem}.{alias.name}" if f"{stem}.{alias.name}" in modules else stem for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:  # "import a.b.c" of a name inside a module
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def import_graph(*, skip_main: bool = False) -> dict[str, set[str]]:
    modules = project_modules()
    return {name: imported(name, path, modules, skip_main=skip_main) for name, path in modules.items()}


def layer(module: str) -> int:
    """0 tools/prompts, 1 graph's foundation, 2 nodes, 3 the graph, 4 evals, 5 the command line."""
    if module in CLI:
        return 5
    top = module.split(".")[0]
    if top == "graph":
        return 1 if module in FOUNDATION else 3
    return {"tools": 0, "prompts": 0, "nodes": 2, "evals": 4}[top]


def layer_breaks(graph: dict[str, set[str]]) -> set[tuple[str, str]]:
    """Imports of a higher layer (a program's ``__main__`` block is above every layer and not counted)."""
    return {(m, t) for m, targets in graph.items() for t in targets if layer(t) > layer(m)
            or (t in CLI and m != "graph.cli")}


def circles(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """The strongly connected components of more than one module (Tarjan), i.e. the import circles."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[frozenset[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(frozenset(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_checker_finds_a_circle_through_a_function_level_import(tmp_path):
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert circles(graph) == [frozenset({"a", "b", "c"})]
    src = tmp_path / "mod.py"
    src.write_text("import os\nfrom graph import diagram\n\ndef f():\n    from tools.kb import KnowledgeBase\n")
    modules = project_modules()
    assert imported("x", src, modules) == {"graph.diagram", "tools.kb"}


def test_no_import_circle():
    found = circles(import_graph())
    assert not found, f"modules import each other in a circle: {[sorted(c) for c in found]}"


def test_imports_flow_down_the_layers():
    breaks = layer_breaks(import_graph(skip_main=True))
    assert not breaks, f"imports of a higher layer: {sorted(breaks)}"


def test_the_layer_check_finds_a_tool_importing_the_graph_and_a_module_importing_the_cli():
    graph = {"tools.kb": {"graph.context"}, "evals.runner": {"graph.cli"}, "graph.cli": {"evals.cli"},
             "nodes.link": {"graph.state", "tools.kb"}, "evals.report": {"evals.cli"}}
    assert layer_breaks(graph) == {("tools.kb", "graph.context"), ("evals.runner", "graph.cli"),
                                   ("evals.report", "evals.cli")}


def test_no_tool_imports_the_graph():
    tools = {m: t for m, t in import_graph(skip_main=True).items() if m.startswith("tools")}
    assert not {(m, t) for m, targets in tools.items() for t in targets if t.split(".")[0] not in ("tools", "prompts")}


def test_entity_and_query_texts_have_one_home():
    import evals.baselines
    import tools.features
    import tools.verify
    from tools import texts

    assert tools.verify.entity_text is texts.entity_text is tools.features.entity_text
    assert tools.features.query_text is evals.baselines.query_text is texts.query_text
    assert evals.baselines.public is texts.entity_ref
    assert texts.query_text("Jordan", "") == "Jordan" and texts.query_text("Jordan", "the Bulls") == "Jordan. the Bulls"
    assert texts.entity_text({"name": "Jordan", "desc": " country "}) == "Jordan. country"
    assert texts.entity_ref({"qid": "Q810", "name": "Jordan", "desc": "country"}) == {"qid": "Q810", "name": "Jordan"}


if __name__ == "__main__":
    for circle in circles(import_graph()):
        print(" <-> ".join(sorted(circle)))
    for module, target in sorted(layer_breaks(import_graph(skip_main=True))):
        print(f"{module} -> {target} (a higher layer)")
