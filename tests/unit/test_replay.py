"""What a resume checks before replaying a file's chunks."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from bulk_import.config import Settings
from bulk_import.run import replay

BASE = {"VITAL_API_KEY_SECRET": "name"}


def settings(**env: str) -> Settings:
    return Settings.from_env({**BASE, **env})


def test_the_same_settings_and_code_replay() -> None:
    assert replay.changes(replay.fingerprint(settings()), replay.fingerprint(settings())) == []


@pytest.mark.parametrize(
    "name", ["CHUNK_SIZE", "MAX_BODY_BYTES", "MAX_ROW_BYTES", "INCOMING_PREFIX"]
)
def test_each_setting_that_decides_the_chunks_is_named_when_it_changes(name: str) -> None:
    value = {"INCOMING_PREFIX": "uploads/", "CHUNK_SIZE": "100"}.get(name, "20000")
    changed = replay.changes(
        replay.fingerprint(settings()), replay.fingerprint(settings(**{name: value}))
    )
    assert changed == [name]
    assert replay.describe(changed).startswith(f"{name} changed while this file was being imported")


def test_settings_that_do_not_decide_the_chunks_do_not_block_a_resume() -> None:
    other = settings(MAX_CONCURRENCY="16", HTTP_TIMEOUT_SECONDS="5", SAFETY_MARGIN_SECONDS="10")
    assert replay.changes(replay.fingerprint(settings()), replay.fingerprint(other)) == []


def test_other_code_blocks_a_resume() -> None:
    stored = json.loads(replay.fingerprint(settings()))
    stored[replay.CODE] = "0" * 16
    changed = replay.changes(json.dumps(stored), replay.fingerprint(settings()))
    assert changed == [replay.CODE]
    assert "the function's code changed" in replay.describe(changed)


def test_a_checkpoint_from_before_the_readable_basis_never_replays() -> None:
    changed = replay.changes("3f2a9c0d1e4b5a67", replay.fingerprint(settings()))
    assert set(changed) >= {"CHUNK_SIZE", replay.CODE}


def test_a_change_to_any_module_of_the_package_changes_the_code_version(tmp_path: Path) -> None:
    """Validation, chunking, formats...: any of them decides which rows a chunk holds."""
    # Given a copy of the package, subpackages included
    package = Path(replay.__file__).parent.parent
    copy = tmp_path / "bulk_import"
    shutil.copytree(package, copy, ignore=shutil.ignore_patterns("__pycache__"))
    original = replay.package_digest(copy)
    assert original == replay.code_version()
    modules = sorted(copy.rglob("*.py"))
    assert len(modules) > 20
    assert any(module.parent != copy for module in modules)
    for module in modules:
        # When one module changes, Then the digest changes
        source = module.read_bytes()
        module.write_bytes(source + b"\n# changed\n")
        assert replay.package_digest(copy) != original, module.name
        module.write_bytes(source)
    # And a module moved to another subpackage changes it too
    first = modules[0]
    first.rename(copy / "model" / first.name)
    assert replay.package_digest(copy) != original
