"""In-memory stand-ins for a run's S3, checkpoint store, secrets and Vital, shared by the unit
tests.

``FakeStore`` has ``CheckpointStore``'s constructor, so ``wiring.build(..., new_store=...)``
takes ``stores(state)``: every store a run makes then reads and writes one ``StoreState``.
``FakePost`` has ``vital.post_chunk``'s shape (``wiring.build(..., post_chunk=...)``).
"""

from __future__ import annotations

import hashlib
import io
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any

import httpx
from aws_lambda_powertools.utilities.parameters.exceptions import GetParameterError
from botocore.exceptions import ClientError

from bulk_import.model import Checkpoint, DoneChunk, Handoff, Manifest, ObjectRef, Outcome
from bulk_import.run.importer import Run
from bulk_import.storage.keys import outcome_part_key, retry_part_key
from bulk_import.vital import ChunkReport, Hold
from bulk_import.wiring import build
from local.context import LocalLambdaContext
from tests.helpers import parse_outcomes

if TYPE_CHECKING:
    import pytest

    from bulk_import.config import Settings
    from bulk_import.ingest import Chunk
    from bulk_import.run.context import FileResult

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


def client_error(code: str, operation: str, status: int = 400) -> ClientError:
    return ClientError(
        {
            "Error": {"Code": code, "Message": f"{code} happened"},
            "ResponseMetadata": {"HTTPStatusCode": status},
        },
        operation,
    )


class FakeTime:
    """A monotonic clock that only ``sleep`` moves; keeps every wait asked for."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


class FakeBody:
    """A GET's streaming body: ``read``, ``iter_chunks`` and ``close``, as botocore's."""

    def __init__(self, data: bytes) -> None:
        self.data = io.BytesIO(data)

    def read(self, size: int | None = None) -> bytes:
        return self.data.read(-1 if size is None else size)

    def iter_chunks(self, chunk_size: int) -> Iterator[bytes]:
        while block := self.data.read(chunk_size):
            yield block

    def close(self) -> None:
        self.data.close()


class FakeS3:
    """The S3 calls a run makes, over bytes kept by key (one bucket; unversioned): HEAD, ranged
    GET, PUT and the spools' ``upload_fileobj``. ``body`` is the seam for a failing read."""

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}
        self.metadata: dict[str, dict[str, str]] = {}

    def put(self, key: str, data: bytes, metadata: dict[str, str] | None = None) -> None:
        self.objects[key] = data
        self.metadata[key] = dict(metadata or {})

    def upload_fileobj(self, fileobj: IO[bytes], bucket: str, key: str, **kwargs: Any) -> None:
        self.objects[key] = fileobj.read()

    def put_object(self, *, Bucket: str, Key: str, Body: bytes | str, **kwargs: Any) -> None:  # noqa: N803
        self.objects[Key] = Body.encode() if isinstance(Body, str) else Body

    def head_object(self, *, Bucket: str, Key: str, **kwargs: Any) -> dict[str, Any]:  # noqa: N803
        if Key not in self.objects:
            raise client_error("404", "HeadObject", 404)
        data = self.objects[Key]
        return {
            "ContentLength": len(data),
            "ETag": f'"{hashlib.md5(data, usedforsecurity=False).hexdigest()}"',
            "Metadata": self.metadata.get(Key, {}),
        }

    def get_object(
        self,
        *,
        Bucket: str,  # noqa: N803 - boto3's names
        Key: str,  # noqa: N803
        Range: str = "",  # noqa: N803
        **kwargs: Any,
    ) -> dict[str, Any]:
        if Key not in self.objects:
            raise client_error("NoSuchKey", "GetObject", 404)
        data = self.objects[Key]
        start = int(Range.removeprefix("bytes=").split("-")[0]) if Range else 0
        if Range and start >= len(data):
            raise client_error("InvalidRange", "GetObject", 416)
        etag = f'"{hashlib.md5(data, usedforsecurity=False).hexdigest()}"'
        return {"Body": self.body(Key, data[start:]), "ETag": etag}

    def body(self, key: str, data: bytes) -> FakeBody:
        return FakeBody(data)


@dataclass
class StoreState:
    """What S3 holds for one key's import, and what the stores did to it."""

    checkpoint: Checkpoint | None = None
    manifest: Manifest | None = None
    saved: list[Checkpoint] = field(default_factory=list)
    deleted: list[list[str]] = field(default_factory=list)
    finished: list[list[str]] = field(default_factory=list)
    runs: list[str] = field(default_factory=list)
    superseded: list[Manifest] = field(default_factory=list)
    handoff: Handoff | None = None
    handoffs: list[Handoff] = field(default_factory=list)


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
        self.write_id = ""
        self.writes = 0
        self.writing = threading.Lock()  # a record may be written on a thread of its own

    def load(self) -> Checkpoint | None:
        if self.state.checkpoint is not None:
            self.write_id = self.state.checkpoint.write
        return self.state.checkpoint

    def save(self, checkpoint: Checkpoint) -> None:
        with self.writing:
            self.writes += 1
            self.write_id = f"{self.run}:{self.writes}"
            checkpoint = checkpoint.model_copy(update={"write": self.write_id})
            self.state.saved.append(checkpoint)
            self.state.checkpoint = checkpoint

    def load_handoff(self) -> Handoff | None:
        return self.state.handoff

    def save_handoff(self, below: int, done: list[DoneChunk], refines: str | None = None) -> bool:
        with self.writing:
            if refines is not None and refines != self.write_id:
                return False
            self.state.handoff = Handoff(refines=self.write_id, below=below, done=done)
            self.state.handoffs.append(self.state.handoff)
            return True

    def existing_manifest(self) -> Manifest | None:
        return self.state.manifest

    def still_mine(self) -> bool:
        return True

    def record_superseded(self, manifest: Manifest) -> bool:
        self.state.superseded.append(manifest)
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
        self.state.checkpoint = self.state.handoff = None

    def delete_parts(self, keys: list[str]) -> None:
        self.state.deleted.append(list(keys))

    def finish(self, parts: list[str], stored: list[str] | None = None) -> None:
        self.state.finished.append(list(parts))
        self.state.checkpoint = self.state.handoff = None

    def stored_parts(self) -> list[str]:
        return []


def offline(s3: FakeS3, state: StoreState, **overrides: Any) -> dict[str, Any]:
    """``wiring.build`` overrides for a run that reaches nothing real: S3, the checkpoint store,
    the API key and Vital's transport faked, plenty of time, a clock that stands still and no
    sleeping; ``overrides`` replace any of them (a ``post_chunk`` fake, say)."""
    return {
        "s3": s3,
        "new_store": stores(state),
        "secrets": lambda: FakeSecrets("sk_test"),
        "transport": httpx.MockTransport(_no_vital),
        "remaining_seconds": lambda: 900.0,
        "clock": lambda: 0.0,
        "sleep": lambda seconds: None,
        **overrides,
    }


def _no_vital(request: httpx.Request) -> httpx.Response:
    raise AssertionError(f"unexpected request to Vital: {request.method} {request.url.path}")


def stores(state: StoreState) -> Any:
    """A ``new_store`` for ``wiring.build``: the stores it makes all share ``state``."""

    def new_store(
        s3: Any, bucket: str, results_prefix: str, retry_prefix: str, run: str
    ) -> FakeStore:
        return FakeStore(s3, bucket, results_prefix, retry_prefix, run, state=state)

    return new_store


class FakeSecrets:
    """Powertools' ``SecretsProvider.get``: the API key, or an AWS error as Powertools wraps it.
    ``wiring.build(..., secrets=lambda: FakeSecrets("sk_test"))``."""

    def __init__(self, value: str | None = None, error: Exception | None = None) -> None:
        self.value = value
        self.error = error

    def get(self, name: str, max_age: int | None = None, **kwargs: Any) -> str | None:
        if self.error is not None:
            try:
                raise self.error
            except ClientError as exc:
                raise GetParameterError(str(exc))  # noqa: B904 - as Powertools raises it
        return self.value


class FakePost:
    """``vital.post_chunk`` without Vital: asks the gate first as the real one does, then records
    the chunk as sent and answers with ``answer`` (by default, every row imported).

    ``before_send`` runs on the posting thread as a chunk is about to go (to look at what the
    run has stored by then). ``sent`` and ``held`` are in the order the posting threads got to
    the chunks.
    """

    def __init__(
        self,
        answer: Callable[[Chunk, bool], ChunkReport] | None = None,
        before_send: Callable[[Chunk], None] | None = None,
    ) -> None:
        self.answer = answer or imported
        self.before_send = before_send
        self.sent: list[Chunk] = []
        self.held: list[tuple[Chunk, Hold]] = []
        self.lock = threading.Lock()

    def __call__(
        self,
        client: Any,
        chunk: Chunk,
        wait_for_completion: bool,
        gate: Callable[[], Hold | None] | None = None,
        *,
        probe: bool = False,
    ) -> ChunkReport:
        if gate is not None and (held := gate()) is not None:
            with self.lock:
                self.held.append((chunk, held))
            return ChunkReport(chunk, held=held)
        if self.before_send is not None:
            self.before_send(chunk)
        with self.lock:
            self.sent.append(chunk)
        return self.answer(chunk, probe)

    @property
    def sent_lines(self) -> list[int]:
        """The line numbers of every row sent, in the order the chunks went."""
        return [row.line for chunk in self.sent for row in chunk.rows]


def imported(chunk: Chunk, probe: bool = False) -> ChunkReport:
    """Vital's usual answer: every row of the chunk imported, by one request answered at once."""
    report = ChunkReport(chunk)
    report.add(chunk, Outcome.IMPORTED, "")
    report.records.append(chunk.record(True, http_status=200, attempts=1))
    return report


def run_offline(
    s3: FakeS3, state: StoreState, config: Settings, ref: ObjectRef, **overrides: Any
) -> FileResult:
    """One invocation of the import of ``ref``, its collaborators faked at the wiring seam."""
    wiring = build(config, LocalLambdaContext(900), **offline(s3, state, **overrides))
    return Run(ref, wiring).execute()


def outcomes_by_line(s3: FakeS3, key: str) -> dict[int, dict[str, str]]:
    """The outcomes.csv at ``key`` by line; fails if a line has two outcomes."""
    rows = parse_outcomes(s3.objects[key])
    by_line = {int(o["line"]): o for o in rows}
    assert len(by_line) == len(rows), "a line has two outcomes"
    return by_line


@dataclass
class FakeVital:
    """Vital's read side: a user's providers and the bulk ops, or no answer at all. Every user
    is known to Vital (listed with no provider if none is given) but those in ``unknown``."""

    providers: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    unknown: set[str] = field(default_factory=set)
    ops: list[dict[str, Any]] = field(default_factory=list)
    down: bool = False
    asked: list[str] = field(default_factory=list)
    # After this many listings of the bulk ops, those in progress end (success) and Vital lists
    # ``then`` for its users as well; None: they never end.
    ops_end_after: int | None = None
    then: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    # An op that starts at each listing (another file's, or this run's new chunks').
    starts_each_listing: dict[str, Any] | None = None

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.asked.append(request.url.path)
        if self.down:
            raise httpx.ConnectError("connection refused", request=request)
        if request.url.path == "/v2/link/bulk_op":
            if self.ops_end_after is not None and self.asked.count(request.url.path) > (
                self.ops_end_after
            ):
                self.ops = [op | {"status": "success"} for op in self.ops]
                self.providers |= self.then
            if self.starts_each_listing is not None:
                self.ops = [dict(self.starts_each_listing), *self.ops]  # newest first
            return httpx.Response(200, json={"data": self.ops, "next_cursor": None})
        user = request.url.path.rsplit("/", 1)[-1]
        if user in self.unknown:
            return httpx.Response(404, json={"detail": "user not found"})
        return httpx.Response(200, json={"providers": self.providers.get(user, [])})
