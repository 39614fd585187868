"""The layering docs/architecture.md promises, checked on the source: library code never imports pipelines,
files and functions stay small enough to read."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "dimo"
MAX_FILE_LINES = 400
MAX_FUNCTION_LINES = 80
# Functions allowed past MAX_FUNCTION_LINES must say why in their docstring (a line starting "Long because").
LONG_REASON = "Long because"


def _modules():
    return sorted(p for p in SRC.rglob("*.py") if "__pycache__" not in p.parts)


def _imported_modules(tree: ast.AST, module: str) -> set[str]:
    out = set()
    package = module.rsplit(".", 1)[0]
    for node in ast.walk(tree):  # every import, also those hidden inside functions
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the importing module's package
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                name = f"{base}.{node.module}" if node.module else base
            else:
                name = node.module or ""
            out.add(name)
            out |= {f"{name}.{a.name}" for a in node.names}
    return out


def _module_name(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def test_library_code_never_imports_pipelines():
    allowed = {"dimo.pipeline_registry", "dimo.settings"}
    offenders = []
    for path in _modules():
        name = _module_name(path)
        if name.startswith("dimo.pipelines") or name in allowed:
            continue
        imported = _imported_modules(ast.parse(path.read_text()), name)
        bad = sorted(m for m in imported if m == "dimo.pipelines" or m.startswith("dimo.pipelines."))
        if bad:
            offenders.append(f"{path.relative_to(SRC.parent)} imports {', '.join(bad)}")
    assert not offenders, "library modules must not import dimo.pipelines:\n" + "\n".join(offenders)


def test_the_import_check_bites(tmp_path):
    tree = ast.parse("def f():\n    from dimo.pipelines.preprocess.nodes import text_encoder\n")
    assert "dimo.pipelines.preprocess.nodes" in _imported_modules(tree, "dimo.inference")
    tree = ast.parse("from ..pipelines import evaluate\n")
    assert "dimo.pipelines" in _imported_modules(tree, "dimo.evaluation.benchmark")


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(SRC)))
def test_source_files_stay_readable(path):
    lines = path.read_text().count("\n")
    assert lines <= MAX_FILE_LINES, f"{path.relative_to(SRC.parent)}: {lines} lines (> {MAX_FILE_LINES}): split it"
    long = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            n = node.end_lineno - node.lineno + 1
            if n > MAX_FUNCTION_LINES and LONG_REASON not in (ast.get_docstring(node) or ""):
                long.append(f"{node.name} ({n} lines)")
    assert not long, f"{path.relative_to(SRC.parent)}: functions over {MAX_FUNCTION_LINES} lines " \
                     f"without a '{LONG_REASON}' docstring line: {', '.join(long)}"
