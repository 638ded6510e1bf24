"""The package's import plan, measured from the source (issue 18, items 1 and 7): no loop of files anywhere,
the training rooms import only downward, and training reads no data source's code.

Every `import` / `from ... import` of geo_ssl.* in every .py under pipeline/, training/ and schemas/ counts,
module level or inside a function (a lazy import still runs, so it is still an edge); imports under
`if TYPE_CHECKING:` are left out (they never run). An import names the deepest module file it reaches
(`from geo_ssl.pipeline.common import fsio` is an edge to common/fsio.py); a module's parent packages,
which Python initialises first, are not counted as edges of it. `geo_ssl` itself (pipeline/_geo_ssl/) has an
edge to each module its lazy entry points import.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"pipeline": "geo_ssl.pipeline", "training": "geo_ssl.training", "schemas": "geo_ssl.schemas"}
#: The folder of `geo_ssl` itself (pyproject.toml maps it); its entry points import lazily (PEP 562).
ROOT_PACKAGE = Path("pipeline", "_geo_ssl")
#: Rooms of training/ by rank; an import may only run to a lower rank (data and models: to neither).
RANKS = {"data": 0, "models": 0, "methods": 1, "trainer": 2, "evaluation": 3}
TOP = 4  # training/__init__.py, training/demo.py
#: What training may import of geo_ssl outside training/ (pipeline/__init__ only for __version__).
TRAINING_MAY_IMPORT = ("geo_ssl.pipeline.common", "geo_ssl.schemas")


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    if rel.is_relative_to(ROOT_PACKAGE):
        parts = ["geo_ssl", *rel.relative_to(ROOT_PACKAGE).parts]
    else:
        parts = [PACKAGES[rel.parts[0]], *rel.parts[1:]]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@cache
def modules() -> dict[str, Path]:
    """Module name -> file, for every .py of the package."""
    return {_module_name(p): p for top in PACKAGES for p in sorted((ROOT / top).rglob("*.py"))}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imported_names(tree: ast.AST, module: str, is_package: bool) -> Iterator[str]:
    """Dotted names each import statement reaches (`from X import a` yields X.a and X); skips TYPE_CHECKING."""
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node):
            stack.extend(node.orelse)
            continue
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the module's package
                package = module.split(".") if is_package else module.split(".")[:-1]
                package = package[: len(package) - (node.level - 1)]
                base = ".".join([*package, base] if base else package)
            for alias in node.names:
                yield f"{base}.{alias.name}" if alias.name != "*" else base
        stack.extend(ast.iter_child_nodes(node))


def _lazy_modules(tree: ast.Module) -> list[str]:
    """Modules named in the root's `_ENTRY_POINTS` table: its `__getattr__` imports them on first use."""
    for node in tree.body:
        if isinstance(node, ast.AnnAssign) and getattr(node.target, "id", "") == "_ENTRY_POINTS":
            return list(ast.literal_eval(node.value).values())
    return []


def _resolve(name: str) -> str | None:
    """The deepest module of the package that `name` names (X.func -> X), None outside the package."""
    known = modules()
    while name:
        if name in known:
            return name
        name = name.rpartition(".")[0]
    return None


@cache
def graph() -> dict[str, set[str]]:
    """Module -> the package's modules it imports (itself left out)."""
    edges: dict[str, set[str]] = {}
    for name, path in modules().items():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        targets = {_resolve(n) for n in _imported_names(tree, name, path.name == "__init__.py")}
        targets |= {_resolve(n) for n in _lazy_modules(tree)}
        edges[name] = {t for t in targets if t and t != name}
    return edges


def loops() -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan): each is at least one import loop."""
    edges, index, low, on_stack, stack, found = graph(), {}, {}, set(), [], []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def _room(module: str) -> tuple[str, int] | None:
    """(room, rank) of a training module; None outside training/."""
    parts = modules()[module].relative_to(ROOT).parts  # by file: training/methods/__init__.py is "methods"
    if parts[0] != "training":
        return None
    room = parts[1] if len(parts) > 2 else "top"  # training/demo.py, training/__init__.py: the top
    return room, RANKS.get(room, TOP)


def upward_edges() -> list[str]:
    """Imports of training that run to another room of higher or equal rank."""
    bad = []
    for src, targets in sorted(graph().items()):
        mine = _room(src)
        for dst in sorted(targets):
            theirs = _room(dst)
            if mine and theirs and mine[0] != theirs[0] and theirs[1] >= mine[1]:
                bad.append(f"{src} ({mine[0]}={mine[1]}) -> {dst} ({theirs[0]}={theirs[1]})")
    return bad


def source_edges() -> list[str]:
    """Imports of training that reach pipeline code other than common/ and pipeline/__init__."""
    bad = []
    for src, targets in sorted(graph().items()):
        if _room(src) is None:
            continue
        for dst in sorted(targets):
            outside = not dst.startswith("geo_ssl.training") and dst != "geo_ssl.pipeline"
            if outside and not any(dst == p or dst.startswith(p + ".") for p in TRAINING_MAY_IMPORT):
                bad.append(f"{src} -> {dst}")
    return bad


def _counts() -> str:
    n_edges = sum(len(t) for t in graph().values())
    return (
        f"{len(graph())} modules, {n_edges} import edges; loops: {len(loops())}, "
        f"training edges up: {len(upward_edges())}, training -> data-source code: {len(source_edges())}"
    )


def test_the_plan_is_measured() -> None:
    """The measurement itself sees what it should (a broken walker would pass every rule below)."""
    edges = graph()
    assert len(edges) > 100, _counts()
    assert "geo_ssl.pipeline.common.fsio" in edges["geo_ssl.schemas.dataset_card"]  # a module-level import
    assert (
        "geo_ssl.pipeline.common.executor_dask" in edges["geo_ssl.pipeline.common.executor"]
    )  # in a function
    assert _room("geo_ssl.training.trainer.loop") == ("trainer", 2)
    assert _room("geo_ssl.training.demo") == ("top", TOP)
    assert _room("geo_ssl.training.models") == ("models", 0)  # a room's own __init__
    assert "geo_ssl.training.data.loader" in edges["geo_ssl"]  # the root's lazy entry points
    assert not any("_geo_ssl" in name for name in edges)  # the root is geo_ssl, not a pipeline module


def test_no_import_loop_of_files() -> None:
    found = loops()
    assert not found, f"{_counts()}\n" + "\n".join(" <-> ".join(group) for group in found)


def test_no_import_loop_in_pipeline_or_schemas() -> None:
    """The part the pipeline owns (executor <-> executor_dask was a loop) holds none, whatever training's state."""
    found = [group for group in loops() if not any(_room(m) for m in group)]
    assert not found, f"{_counts()}\n" + "\n".join(" <-> ".join(group) for group in found)


def test_schemas_import_only_common() -> None:
    """geo_ssl.schemas is the neutral room both wings import: it imports only pipeline/common/ of geo_ssl."""
    bad = [
        f"{src} -> {dst}"
        for src, targets in sorted(graph().items())
        if src.startswith("geo_ssl.schemas")
        for dst in sorted(targets)
        if not dst.startswith(("geo_ssl.schemas", "geo_ssl.pipeline.common"))
    ]
    assert not bad, f"{_counts()}\n" + "\n".join(bad)


def test_training_rooms_import_only_downward() -> None:
    bad = upward_edges()
    assert not bad, f"{_counts()}\n" + "\n".join(bad)


def test_training_imports_no_data_source_code() -> None:
    """Training reads shards through geo_ssl.schemas (the dataset card) and pipeline.common only."""
    bad = source_edges()
    assert not bad, f"{_counts()}\n" + "\n".join(bad)
