"""The shape a newcomer can rely on: small modules and classes, a thin handler, tests that go
through public seams, and docs that describe the product rather than how it was built."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "functions" / "bulk_import"
MAX_MODULE_LINES = 400
MAX_CLASS_METHODS = 20
MODULES = sorted(PACKAGE.rglob("*.py"))


def _relative(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def test_the_package_has_the_layers_the_architecture_guide_names() -> None:
    layers = {p.name for p in PACKAGE.iterdir() if p.is_dir() and p.name != "__pycache__"}
    assert layers == {"model", "ingest", "vital", "storage", "run"}
    guide = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    for layer in layers:
        assert f"{layer}/" in guide


@pytest.mark.parametrize("path", MODULES, ids=_relative)
def test_no_module_is_over_400_lines(path: Path) -> None:
    assert len(path.read_text(encoding="utf-8").splitlines()) <= MAX_MODULE_LINES


@pytest.mark.parametrize("path", MODULES, ids=_relative)
def test_no_class_has_over_20_methods(path: Path) -> None:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
            methods = [
                n for n in node.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)
            ]
            assert len(methods) <= MAX_CLASS_METHODS, node.name


def test_the_handler_only_parses_the_event_and_runs_the_import() -> None:
    tree = ast.parse((PACKAGE / "handler.py").read_text(encoding="utf-8"))
    functions = [n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)]
    assert functions == ["make_handler", "lambda_handler"]
    assert len((PACKAGE / "handler.py").read_text(encoding="utf-8").splitlines()) < 40


def test_only_wiring_builds_the_collaborators() -> None:
    """Stores, writers and clients come from ``wiring.build``: the seam where tests pass fakes."""
    built = re.compile(r"\b(?:CheckpointStore|ResultWriter)\(|\baws\.s3_client\(\)")
    offenders = [
        _relative(path)
        for path in MODULES
        if path.name != "wiring.py" and built.search(path.read_text(encoding="utf-8"))
    ]
    assert offenders == []


_PRIVATE_PATCH = re.compile(
    r"""(?:monkeypatch\.setattr|mock\.patch\.object|patch\.object)\(\s*[\w.]+,\s*["']_\w"""
    r"""|monkeypatch\.setattr\(\s*["']bulk_import\."""
    r"""|mock\.patch\(\s*["']bulk_import\."""
)


def test_no_test_patches_a_private_attribute_or_the_package() -> None:
    offenders = []
    for path in sorted((ROOT / "tests").rglob("*.py")):
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if _PRIVATE_PATCH.search(line):
                offenders.append(f"{_relative(path)}:{number}: {line.strip()}")
    assert offenders == []


_NARRATION = re.compile(
    r"\bused to\b|\bwas changed\b|\bpreviously\b|\bformerly\b|\bearlier (?:session|attempt)\b"
    r"|\bsessions?\b (?:found|measured|took)|\b(?:ninth|tenth|eleventh) session\b"
    r"|#\s*[Bb]efore[:,]|\([Bb]efore:|\(review\)",
)
_WRITTEN = [
    ROOT / "README.md",
    ROOT / "CHANGELOG.md",
    ROOT / "bench" / "README.md",
    *sorted((ROOT / "docs").glob("*.md")),
    *MODULES,
    *sorted((ROOT / "tests").rglob("*.py")),
    *sorted((ROOT / "local").rglob("*.py")),
    *sorted((ROOT / "bench").rglob("*.py")),
]


def test_no_doc_comment_or_test_narrates_how_the_work_went() -> None:
    this = Path(__file__).resolve()
    offenders = []
    for path in _WRITTEN:
        if path.resolve() == this:
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if _NARRATION.search(line):
                offenders.append(f"{_relative(path)}:{number}: {line.strip()}")
    assert offenders == []


def test_the_readme_is_a_product_page_with_its_guides_beside_it() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.encode()) <= 20 * 1024
    for guide in ("docs/operations.md", "docs/architecture.md", "bench/README.md", "CHANGELOG.md"):
        assert (ROOT / guide).is_file()
        assert guide in readme
    for schema in ("schemas/connection-row.schema.json", "schemas/manifest.schema.json"):
        assert schema in readme
    assert "make demo" in readme
    assert "make test" in readme
