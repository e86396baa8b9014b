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
CLI = ROOT / "cli" / "bulk_import_cli"
CLI_MODULES = sorted(CLI.rglob("*.py"))


def _relative(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def test_the_package_has_the_layers_the_architecture_guide_names() -> None:
    layers = {p.name for p in PACKAGE.iterdir() if p.is_dir() and p.name != "__pycache__"}
    assert layers == {"model", "ingest", "vital", "storage", "run"}
    guide = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    for layer in layers:
        assert f"{layer}/" in guide


@pytest.mark.parametrize("path", MODULES + CLI_MODULES, ids=_relative)
def test_no_module_is_over_400_lines(path: Path) -> None:
    assert len(path.read_text(encoding="utf-8").splitlines()) <= MAX_MODULE_LINES


@pytest.mark.parametrize("path", MODULES + CLI_MODULES, ids=_relative)
def test_no_class_has_over_20_methods(path: Path) -> None:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
            methods = [
                n for n in node.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)
            ]
            assert len(methods) <= MAX_CLASS_METHODS, node.name


def _imported_roots(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            roots.add(node.module.split(".")[0])
    return roots


def test_the_lambda_package_never_imports_the_command_line() -> None:
    """typer and rich are the ``cli`` extra: never in the Lambda's package or its imports."""
    offenders = [
        _relative(path)
        for path in MODULES
        if _imported_roots(path) & {"typer", "rich", "click", "bulk_import_cli"}
    ]
    assert offenders == []


def test_the_command_line_lives_outside_the_lambda_package() -> None:
    assert CLI_MODULES
    assert not (PACKAGE / "cli").exists()
    assert "bulk_import" in set().union(*(_imported_roots(p) for p in CLI_MODULES))


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


# Matched over a whole file, so that a call split over lines counts as well.
_PRIVATE_PATCH = re.compile(
    r"""\b(?:monkeypatch\.setattr|mock\.patch\.object|patch\.object)\(\s*"""
    r"""[\w.]+\s*,\s*["']_\w"""
    r"""|\b(?:monkeypatch\.setattr|monkeypatch\.delattr|mock\.patch|patch)\(\s*["']bulk_import\."""
)


def _private_patches(text: str) -> list[tuple[int, str]]:
    """(line, call) of every private or package patch in ``text``."""
    return [
        (text.count("\n", 0, m.start()) + 1, " ".join(m.group().split()))
        for m in _PRIVATE_PATCH.finditer(text)
    ]


# The guard's own examples are assembled from parts, so that no line of this file is one.
_SET, _OBJ = "monkeypatch." + "setattr(", "mock.patch." + "object("


@pytest.mark.parametrize(
    "text",
    [
        _SET + 'dispatch, "_gate", lambda: None)',
        _SET + '\n    dispatch,\n    "_gate",\n    lambda: None,\n)',
        _OBJ + "Dispatcher,\n '_step', return_value=1)",
        _SET + '\n    "bulk_import.run.dispatch.QUEUED_PER_THREAD", 1\n)',
        'with patch(\n    "bulk_import.storage.aws.s3_client"\n):',
    ],
)
def test_the_private_patch_guard_sees_a_call_split_over_lines(text: str) -> None:
    assert len(_private_patches(f"x = 1\n{text}\n")) == 1


def test_the_private_patch_guard_leaves_public_patches_alone() -> None:
    text = _SET + 'aws, "s3_client", fake)\nmonkeypatch.setenv("_X", "1")\n'
    assert _private_patches(text) == []


def test_no_test_patches_a_private_attribute_or_the_package() -> None:
    this = Path(__file__).resolve()
    offenders = [
        f"{_relative(path)}:{number}: {call}"
        for path in sorted((ROOT / "tests").rglob("*.py"))
        if path.resolve() != this
        for number, call in _private_patches(path.read_text(encoding="utf-8"))
    ]
    assert offenders == []


_NARRATION = re.compile(
    r"\bused to\b|\bwas changed\b|\bpreviously\b|\bformerly\b|\bearlier (?:session|attempt)\b"
    r"|\bsessions?\b (?:found|measured|took)|\b(?:ninth|tenth|eleventh) session\b"
    r"|#\s*[Bb]efore[:,]|\([Bb]efore:|\(review\)"
    # "now is" in prose, not in code (``now is None``)
    r"|\bno longer\b|\bnow (?:uses|takes|reads|writes|has|lists|returns|is(?! (?:not )?None))\b",
    re.IGNORECASE,
)
_WRITTEN = [
    ROOT / "README.md",
    ROOT / "CHANGELOG.md",
    ROOT / "bench" / "README.md",
    *sorted((ROOT / "docs").glob("*.md")),
    *MODULES,
    *CLI_MODULES,
    *sorted((ROOT / "tests").rglob("*.py")),
    *sorted((ROOT / "local").rglob("*.py")),
    *sorted((ROOT / "bench").rglob("*.py")),
]


@pytest.mark.parametrize(
    ("line", "narrates"),
    [
        ("# The reader no " + "longer buffers the whole file.", True),
        ("The spool now uses a temporary file.", True),
        ("# Dispatch now takes the chunks in order", True),
        ("It now returns the manifest key.", True),
        ("The checkpoint now is written first.", True),
        ("This used " + "to be a list.", True),
        ("Now Writes the parts first.", True),
        ("seconds = now - start if now is None else now", False),
        ("if now is not None:", False),
        ("# The lease is stored before the chunk goes.", False),
        ("now = clock()", False),
    ],
)
def test_the_narration_pattern(line: str, narrates: bool) -> None:
    assert bool(_NARRATION.search(line)) is narrates


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
    assert len(readme.encode()) <= 20_000
    for guide in ("docs/operations.md", "docs/architecture.md", "bench/README.md", "CHANGELOG.md"):
        assert (ROOT / guide).is_file()
        assert guide in readme
    for schema in ("schemas/connection-row.schema.json", "schemas/manifest.schema.json"):
        assert schema in readme
    assert "make demo" in readme
    assert "make test" in readme
