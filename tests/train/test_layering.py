"""The training package stands below the evaluation package: eval (the ablation trains) may
import train, train never imports eval."""

from __future__ import annotations

import ast
import pathlib

import hymba.train


def _imported_modules(path: pathlib.Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            base = "." * node.level + (node.module or "")
            found.add(base)
            found.update(f"{base}.{a.name}" if node.module else f"{base}{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return found


def test_train_never_imports_eval():
    package = pathlib.Path(hymba.train.__file__).parent
    offenders = {}
    for path in sorted(package.glob("*.py")):
        bad = {m for m in _imported_modules(path) if m.startswith(("hymba.eval", "..eval"))}
        if bad:
            offenders[path.name] = sorted(bad)
    assert offenders == {}
