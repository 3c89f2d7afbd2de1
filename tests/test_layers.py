"""Layers point one way (issue #11), checked statically with ``ast``: nothing is imported.

    common/  <  evaluation/  <  training/ (incl. training/search/)  <  pipelines/ (stages)

* a layer imports nothing from a layer above it (module-level *and* function-level imports);
* a stage under pipelines/ (a module or package named in ``pipelines/cli.py`` ``STAGES``) imports
  no other stage; the shared non-stage helpers under pipelines/ (``ohlcv``, ``dvc_data``, ...) and
  a stage package's own submodules are fine;
* the module-level import graph of the project has no cycle, and neither has the graph of all
  imports once the few deliberate lazy (function-level) edges in ``ALLOWED_LAZY_CYCLE_EDGES`` are
  taken out.

benchmarks/ sits outside the layers and may import anything; it is not scanned.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYERS: tuple[str, ...] = ("common", "evaluation", "training", "pipelines")  # bottom to top

# Function-level imports that close a cycle on purpose. Each is a lazy edge back into a module
# that already imports (directly or not) the importer at module level; the module-level graph
# stays acyclic. A new entry needs a reason; prefer moving the shared code down instead.
ALLOWED_LAZY_CYCLE_EDGES: dict[tuple[str, str], str] = {
    # paths.mlflow_fluent_tracking() opens the store through store_init, and
    # store_init.ensure_mlflow_store(uri=None) defaults to paths.mlflow_tracking_uri(); both
    # imports are lazy so that neither module pays for the other at import time.
    ("common.store_init", "common.paths"): "default MLflow URI of ensure_mlflow_store()",
    # ``python -m training.features`` prints docs/features.md; feature_docs imports features.
    ("training.features", "training.feature_docs"): "__main__ block only",
}


@dataclass(frozen=True)
class Edge:
    source: str  # importing module
    target: str  # imported project module (or package)
    path: Path
    line: int
    text: str
    top_level: bool

    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}: {self.text}"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _project_modules() -> dict[str, Path]:
    modules: dict[str, Path] = {}
    for layer in LAYERS:
        for path in sorted((ROOT / layer).rglob("*.py")):
            modules[_module_name(path)] = path
    return modules


MODULES = _project_modules()


def _targets(module: str, path: Path, node: ast.Import | ast.ImportFrom) -> list[str]:
    """Project modules an import statement names (``from pkg import sub`` names ``pkg.sub``)."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        if node.level:
            package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
            package = package[: len(package) - (node.level - 1)]
            base = ".".join(package + ([base] if base else []))
        names = []
        for alias in node.names:
            candidate = f"{base}.{alias.name}" if base else alias.name
            names.append(candidate if candidate in MODULES else base)
    return [name for name in dict.fromkeys(names) if name.split(".")[0] in LAYERS]


def _edges() -> list[Edge]:
    edges: list[Edge] = []
    for module, path in MODULES.items():
        source = path.read_text(encoding="utf-8")
        tree = ast.parse(source, filename=str(path))
        top = {id(node) for node in tree.body}
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            text = ast.get_source_segment(source, node) or ast.dump(node)
            for target in _targets(module, path, node):
                if target != module:
                    edges.append(Edge(module, target, path, node.lineno, " ".join(text.split()), id(node) in top))
    return edges


EDGES = _edges()


def _stages() -> dict[str, str]:
    """Stage name -> module, parsed from the ``STAGES`` literal of pipelines/cli.py."""
    tree = ast.parse((ROOT / "pipelines" / "cli.py").read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.target.id == "STAGES":
            return {name: spec[0] for name, spec in ast.literal_eval(node.value).items()}
    raise AssertionError("pipelines/cli.py has no STAGES literal")


STAGES = _stages()


def _stage_of(module: str) -> str | None:
    for stage_module in STAGES.values():
        if module == stage_module or module.startswith(stage_module + "."):
            return stage_module
    return None


def _fmt(edges: list[Edge]) -> str:
    return "\n".join(edge.where() + f"  ({edge.source} -> {edge.target})" for edge in edges)


def test_scanner_sees_the_project() -> None:
    assert {"common.paths", "training.dataset", "pipelines.cli", "pipelines.select.stage"} <= set(MODULES)
    assert len(EDGES) > 100
    assert any(e.source == "pipelines.select.stage" and e.target == "pipelines.select.decide" for e in EDGES)
    assert any(not e.top_level for e in EDGES), "function-level imports are scanned too"


def test_every_stage_module_exists() -> None:
    assert STAGES, "no stages parsed from pipelines/cli.py"
    missing = [m for m in STAGES.values() if m not in MODULES]
    assert not missing, f"STAGES names modules that do not exist: {missing}"


def test_no_layer_imports_upward() -> None:
    rank = {layer: i for i, layer in enumerate(LAYERS)}
    upward = [e for e in EDGES if rank[e.target.split(".")[0]] > rank[e.source.split(".")[0]]]
    assert not upward, "imports that point up a layer (common < evaluation < training < pipelines):\n" + _fmt(upward)


def test_no_stage_imports_another_stage() -> None:
    crossing = []
    for edge in EDGES:
        if not edge.source.startswith("pipelines."):
            continue
        mine, theirs = _stage_of(edge.source), _stage_of(edge.target)
        if theirs is not None and theirs != mine:
            crossing.append(edge)
    assert not crossing, "a module under pipelines/ imports a stage it does not belong to:\n" + _fmt(crossing)


def _cycles(edges: list[Edge]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    graph: dict[str, set[str]] = {}
    for edge in edges:
        graph.setdefault(edge.source, set()).add(edge.target)
        graph.setdefault(edge.target, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def _cycle_report(cycles: list[list[str]], edges: list[Edge]) -> str:
    lines = []
    for component in cycles:
        members = set(component)
        lines.append("cycle: " + " <-> ".join(component))
        lines += ["  " + e.where() for e in edges if e.source in members and e.target in members]
    return "\n".join(lines)


def test_cycle_finder_finds_a_cycle() -> None:
    fake = [Edge("a", "b", ROOT / "x.py", 1, "", True), Edge("b", "a", ROOT / "x.py", 2, "", True)]
    assert _cycles(fake) == [["a", "b"]]
    assert _cycles(fake[:1]) == []


def test_no_module_level_import_cycle() -> None:
    top = [e for e in EDGES if e.top_level]
    cycles = _cycles(top)
    assert not cycles, "module-level import cycles:\n" + _cycle_report(cycles, top)


def test_no_import_cycle_beyond_the_allowed_lazy_edges() -> None:
    edges = [e for e in EDGES if (e.source, e.target) not in ALLOWED_LAZY_CYCLE_EDGES]
    cycles = _cycles(edges)
    assert not cycles, (
        "import cycles (function-level imports included; move shared code down a layer, or add a "
        "reasoned entry to ALLOWED_LAZY_CYCLE_EDGES):\n" + _cycle_report(cycles, edges)
    )


def test_allowed_lazy_edges_are_lazy_and_still_exist() -> None:
    for (source, target), reason in ALLOWED_LAZY_CYCLE_EDGES.items():
        found = [e for e in EDGES if e.source == source and e.target == target]
        assert found, f"{source} -> {target} ({reason}) is gone: drop it from ALLOWED_LAZY_CYCLE_EDGES"
        eager = [e for e in found if e.top_level]
        assert not eager, f"allowed cycle edge {source} -> {target} must stay function-level:\n" + _fmt(eager)
