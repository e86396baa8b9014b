"""In-memory stand-ins for a run's S3 and checkpoint store, shared by the unit tests.

``FakeStore`` has ``CheckpointStore``'s constructor, so ``wiring.build(..., new_store=...)``
takes ``stores(state)``: every store a run makes then reads and writes one ``StoreState``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any

from bulk_import.model import Checkpoint, Manifest
from bulk_import.storage.keys import outcome_part_key, retry_part_key

if TYPE_CHECKING:
    import pytest

# What boto3 needs to build clients that moto's in-process mock (``moto.mock_aws``) answers.
AWS_TEST_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def fake_aws_env(mp: pytest.MonkeyPatch) -> None:
    """Fake credentials and region; no endpoint override (moto patches botocore in-process)."""
    for name, value in AWS_TEST_ENV.items():
        mp.setenv(name, value)
    for name in list(os.environ):
        if name.startswith("AWS_ENDPOINT_URL") or name in {"AWS_PROFILE", "AWS_SESSION_TOKEN"}:
            mp.delenv(name)


class FakeS3:
    """The one S3 call a spool makes to store its lines: the bytes kept by key."""

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}

    def upload_fileobj(self, fileobj: IO[bytes], bucket: str, key: str, **kwargs: Any) -> None:
        self.objects[key] = fileobj.read()


@dataclass
class StoreState:
    """What S3 holds for one key's import, and what the stores did to it."""

    checkpoint: Checkpoint | None = None
    manifest: Manifest | None = None
    saved: list[Checkpoint] = field(default_factory=list)
    deleted: list[list[str]] = field(default_factory=list)
    finished: list[list[str]] = field(default_factory=list)
    runs: list[str] = field(default_factory=list)


class FakeStore:
    """``CheckpointStore``'s interface over a ``StoreState``; every write succeeds."""

    def __init__(
        self,
        s3: Any,
        bucket: str,
        results_prefix: str,
        retry_prefix: str,
        run: str,
        *,
        state: StoreState | None = None,
    ) -> None:
        self.s3 = s3
        self.bucket = bucket
        self.results_prefix = results_prefix
        self.retry_prefix = retry_prefix
        self.run = run
        self.state = state if state is not None else StoreState()
        self.state.runs.append(run)

    def load(self) -> Checkpoint | None:
        return self.state.checkpoint

    def save(self, checkpoint: Checkpoint) -> None:
        self.state.saved.append(checkpoint)
        self.state.checkpoint = checkpoint

    def existing_manifest(self) -> Manifest | None:
        return self.state.manifest

    def still_mine(self) -> bool:
        return True

    def named_parts(self) -> set[str]:
        cp = self.state.checkpoint
        return set() if cp is None else {*cp.outcome_parts, *cp.retry_parts}

    def outcome_part_key(self, n: int) -> str:
        return outcome_part_key(self.results_prefix, self.run, n)

    def retry_part_key(self, n: int) -> str:
        return retry_part_key(self.retry_prefix, self.run, n)

    def delete(self, parts: list[str]) -> None:
        self.state.deleted.append(list(parts))
        self.state.checkpoint = None

    def delete_parts(self, keys: list[str]) -> None:
        self.state.deleted.append(list(keys))

    def finish(self, parts: list[str], stored: list[str] | None = None) -> None:
        self.state.finished.append(list(parts))
        self.state.checkpoint = None

    def stored_parts(self) -> list[str]:
        return []


def stores(state: StoreState) -> Any:
    """A ``new_store`` for ``wiring.build``: the stores it makes all share ``state``."""

    def new_store(
        s3: Any, bucket: str, results_prefix: str, retry_prefix: str, run: str
    ) -> FakeStore:
        return FakeStore(s3, bucket, results_prefix, retry_prefix, run, state=state)

    return new_store
