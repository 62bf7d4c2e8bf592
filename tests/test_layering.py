"""Data flows one way: library code never imports the CLI (checked on the source, imports inside functions too)."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src" / "echocxr"


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
    return names


def test_library_code_never_imports_the_cli():
    offenders = sorted(str(p.relative_to(SRC)) for p in SRC.rglob("*.py")
                       if "cli" not in p.relative_to(SRC).parts and p.name != "__main__.py"  # entry points
                       and any(m == "echocxr.cli" or m.startswith("echocxr.cli.") for m in imported_modules(p)))
    assert not offenders, f"library modules importing echocxr.cli: {offenders}"
