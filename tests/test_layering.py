"""The import structure: dependencies point one way (cli -> serving / inference / train / eval ->
model -> ops), and no package imports a package that imports it back."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "hymba"

# which top-level parts of the package each part must not import
FORBIDDEN = {
    "ops": {"model", "inference", "serving", "train", "eval", "cli", "config", "checkpoint", "hf"},
    "model": {"inference", "serving", "train", "eval", "cli", "hf"},
    "inference": {"serving", "train", "eval", "cli", "hf"},
    "serving": {"train", "eval", "cli"},
    "train": {"eval", "serving", "cli"},
    "config": {"model", "inference", "serving", "train", "eval", "cli", "ops"},
    "checkpoint": {"inference", "serving", "train", "eval", "cli"},
}
# The one deferred import that points up: HymbaForCausalLM.generate, the HF-style convenience
# method, runs hymba.inference's generate (imported when called, never at import time).
DEFERRED_UPWARD = {("model/hymba.py", "inference.generation")}


def _part(module: str) -> str:
    return module.split(".")[0]


def _imports(path: Path) -> list[tuple[str, bool]]:
    """(imported hymba module relative to the package, whether the import runs at module load)."""
    rel = path.relative_to(SRC).with_suffix("")
    package = list(rel.parts[:-1]) if rel.name != "__init__" else list(rel.parts[:-1])
    tree = ast.parse(path.read_text())
    top_level = {id(node) for node in tree.body}
    for node in tree.body:  # `if TYPE_CHECKING:` blocks do not run
        if isinstance(node, ast.If) and getattr(node.test, "id", "") == "TYPE_CHECKING":
            top_level.discard(id(node))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            elif node.module and node.module.startswith("hymba."):
                name = node.module[len("hymba."):]
            else:
                continue
            names = [name] if node.module else [f"{name}.{a.name}".strip(".") for a in node.names]
            found += [(n, id(node) in top_level) for n in names if n]
        elif isinstance(node, ast.Import):
            found += [(a.name[len("hymba."):], id(node) in top_level) for a in node.names if a.name.startswith("hymba.")]
    return found


def _graph() -> dict[str, set[tuple[str, str, bool]]]:
    edges: dict[str, set[tuple[str, str, bool]]] = {}
    for path in SRC.rglob("*.py"):
        rel = path.relative_to(SRC)
        part = rel.parts[0].removesuffix(".py")
        for target, at_load in _imports(path):
            edges.setdefault(part, set()).add((_part(target), str(rel), at_load))
    return edges


def test_dependencies_point_one_way():
    bad = []
    for part, targets in _graph().items():
        for target, where, _ in targets:
            if target in FORBIDDEN.get(part, ()):
                full = [t for t, load in _imports(SRC / where) if _part(t) == target]
                if not all((where, t) in DEFERRED_UPWARD for t in full):
                    bad.append(f"{where} imports hymba.{target}")
    assert not bad, "\n".join(sorted(set(bad)))


def test_no_import_cycles_between_parts():
    edges = {}
    for part, targets in _graph().items():
        edges[part] = {t for t, _, at_load in targets if at_load and t != part and t != "__init__"}
    edges.pop("__init__", None)  # the package's own __init__ re-exports the public names

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        for nxt in edges.get(start, ()):
            if nxt == goal or (nxt not in seen and (seen.add(nxt) or reaches(nxt, goal, seen))):
                return True
        return False

    cycles = sorted(p for p in edges if reaches(p, p, set()))
    assert not cycles, f"parts in an import cycle: {cycles}"


def test_ops_kernels_never_import_their_dispatch():
    """Within an op folder, the reference and the kernel do not import each other or the dispatch."""
    bad = []
    for path in (SRC / "ops").rglob("*.py"):
        rel = path.relative_to(SRC)
        if path.name not in ("reference.py", "triton.py"):
            continue
        for target, _ in _imports(path):
            folder = ".".join(rel.parts[:-1])
            if target in (folder, f"{folder}.triton", f"{folder}.reference") and not target.endswith(path.stem):
                if path.name == "reference.py" or target == folder:
                    bad.append(f"{rel} imports {target}")
    assert not bad, "\n".join(bad)
