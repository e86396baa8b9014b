"""Duplicate events, crashes, deadlines, aborts: no chunk sent twice, no row without outcome."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest
from botocore.exceptions import ClientError

from bulk_import.errors import AlreadyInProgress, ImportStillRunning, TransientError
from bulk_import.model import Checkpoint, ContinuationMessage, Handoff, Manifest, ObjectRef
from bulk_import.storage import aws
from bulk_import.storage.checkpoint_store import CheckpointStore
from bulk_import.storage.idempotency import Work
from bulk_import.storage.results import ResultWriter
from bulk_import.storage.spool import OutcomeSpool, RetrySpool, outcomes_header
from bulk_import.vital.settle import CONFIRMED_DETAIL
from bulk_import.wiring import Tunables
from local.events import s3_event
from tests.helpers import encode_rows, failing_at, make_row, user_id
from tests.integration.conftest import Stack, drain_queue

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def idempotency_table(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> str:
    """A table with Powertools' default schema (key ``id``), as template.yaml creates it."""
    name = f"idempotency-{uuid.uuid4().hex[:8]}"
    boto3.client("dynamodb").create_table(
        TableName=name,
        KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    monkeypatch.setenv("IDEMPOTENCY_TABLE", name)
    return name


def upload(
    stack: Stack, key: str, n: int, providers: tuple[str, ...] = ("oura", "fitbit")
) -> list[dict[str, Any]]:
    rows = [make_row(i, provider=providers[i % len(providers)]) for i in range(n)]
    rows.insert(n // 3, make_row(10_000, user_id="broken"))  # one rejected row
    rows.append(dict(rows[1]))  # one duplicate
    stack.vital.add_known_users(*(r["user_id"] for r in rows))
    stack.put(key, encode_rows(rows, "jsonl"))
    return rows


def assert_complete(stack: Stack, prefix: str, rows: int) -> dict[str, Any]:
    manifest = stack.manifest(prefix)
    outcomes = stack.outcomes(prefix)
    counts = manifest["counts"]
    assert counts["rows"] == rows
    assert counts["rows"] == sum(v for k, v in counts.items() if k != "rows")
    assert len(outcomes) == rows
    assert sorted(int(o["line"]) for o in outcomes) == list(range(1, rows + 1))
    posted = stack.vital.posted_connections()
    assert len(posted) == len(set(posted)), "a connection was sent twice"
    return manifest


@contextmanager
def s3_keys(*operations: str) -> Iterator[dict[str, list[str]]]:
    """The keys the handler's S3 client names in each of ``operations`` while the block runs."""
    s3 = aws.s3_client()
    keys: dict[str, list[str]] = {operation: [] for operation in operations}
    hooks = {
        f"provide-client-params.s3.{operation}": functools.partial(_record_key, keys[operation])
        for operation in operations
    }
    for event, hook in hooks.items():
        s3.meta.events.register(event, hook)
    try:
        yield keys
    finally:
        for event, hook in hooks.items():
            s3.meta.events.unregister(event, hook)


def _record_key(into: list[str], params: dict[str, Any], **_: Any) -> None:
    into.append(params["Key"])


def kill_mid_run(stack: Stack, event: dict[str, Any], **env: str) -> None:
    """Run the handler in a process of its own and kill it after six requests (10-row chunks,
    two posting threads, plus ``env``): a crash with chunks in flight, for real."""
    child = subprocess.Popen(  # noqa: S603 - our own module, fixed arguments
        [sys.executable, "-m", "tests.integration.run_handler", json.dumps(event), "900"],
        cwd=ROOT,
        env={**os.environ, "CHUNK_SIZE": "10", "MAX_CONCURRENCY": "2", **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while len(stack.vital.bulk_import_requests()) < 6 and time.monotonic() < deadline:
            assert child.poll() is None, "the run finished before it could be killed"
            time.sleep(0.01)
    finally:
        child.kill()
        child.wait(timeout=30)


def test_an_import_finished_in_one_invocation_reads_none_of_its_parts_back(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A checkpoint before every chunk stores the outcomes so far as a part; the invocation that
    # finishes the file sends its spool as outcomes.csv instead of fetching those parts again
    # (on S3, one round trip a part: seconds at the end of a long run).
    monkeypatch.setenv("CHECKPOINT_EVERY_CHUNKS", "1")
    upload(stack, "incoming/parts.jsonl", 60)
    with s3_keys("PutObject", "GetObject") as keys:
        stack.import_keys("incoming/parts.jsonl")

    assert len([k for k in keys["PutObject"] if "/_state/outcomes-" in k]) >= 3
    assert [k for k in keys["GetObject"] if "/_state/" in k and "checkpoint" not in k] == []
    manifest = assert_complete(stack, "results/parts.jsonl/", 62)
    assert manifest["counts"]["imported"] == 60
    text = stack.get("results/parts.jsonl/outcomes.csv").decode()
    assert text.count("line,user_id,provider,outcome,detail") == 1
    assert (
        stack.s3.list_objects_v2(Bucket=stack.bucket, Prefix="results/parts.jsonl/_state/")[
            "KeyCount"
        ]
        == 0
    )


def test_a_spool_that_let_its_lines_go_has_its_parts_read_back_in_order(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Past its keep size a spool lets go of what it has uploaded, so /tmp holds at most about
    # that much: the end of the run then reads those parts back, in order, ahead of the spool.
    monkeypatch.setenv("CHECKPOINT_EVERY_CHUNKS", "1")
    monkeypatch.setenv("CHUNK_SIZE", "5")
    monkeypatch.setenv("MAX_CONCURRENCY", "1")  # parts of the same size from run to run
    upload(stack, "incoming/let-go.jsonl", 60)
    small = Tunables(spool_keep_bytes=700)  # two or three parts' worth of lines
    with s3_keys("PutObject", "GetObject") as keys:
        stack.import_keys("incoming/let-go.jsonl", tunables=small)

    parts = [k for k in keys["PutObject"] if "/_state/outcomes-" in k]
    read_back = [k for k in keys["GetObject"] if "/_state/outcomes-" in k]
    assert len(parts) >= 5
    assert read_back == parts[: len(read_back)]  # a prefix of the parts, in their order
    assert 0 < len(read_back) < len(parts)  # the last parts were still in the spool
    manifest = assert_complete(stack, "results/let-go.jsonl/", 62)
    assert manifest["counts"]["imported"] == 60
    outcomes = stack.get("results/let-go.jsonl/outcomes.csv").decode()
    assert outcomes.count("line,user_id,provider,outcome,detail") == 1


def test_the_end_of_a_file_records_every_answer_and_stores_its_outcomes_once(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a file whose chunks are all answered after the run's one checkpoint
    monkeypatch.setenv("CHUNK_SIZE", "10")
    monkeypatch.setenv("MAX_CONCURRENCY", "2")
    monkeypatch.setenv("CHECKPOINT_EVERY_CHUNKS", "100")  # no lease checkpoint after the first
    upload(stack, "incoming/end.jsonl", 60)  # 6 chunks, and a rejected and a duplicate row
    writes: list[tuple[str, bytes]] = []

    def note(params: dict[str, Any], **_: Any) -> None:
        body = params.get("Body")
        writes.append((params["Key"], body if isinstance(body, bytes | str) else b""))

    # When it is imported
    s3 = aws.s3_client()
    s3.meta.events.register("provide-client-params.s3.PutObject", note)
    try:
        stack.import_keys("incoming/end.jsonl")
    finally:
        s3.meta.events.unregister("provide-client-params.s3.PutObject", note)

    # Then, between the last hand-off and outcomes.csv, one hand-off record holds every answer:
    # no checkpoint, and no part storing the outcome lines that outcomes.csv stores right after
    assert_complete(stack, "results/end.jsonl/", 62)
    keys = [key.removeprefix("results/end.jsonl/") for key, _ in writes]
    end = keys.index("outcomes.csv")
    last = end - 1
    assert keys[last] == "_state/handoff.json", keys
    assert "_state/handoff.json" not in keys[end:]
    assert not any(k.startswith("_state/outcomes-") for k in keys[end:])
    assert keys.count("_state/checkpoint.json") == 1
    record = Handoff.model_validate_json(writes[last][1])
    assert sorted(done.seq for done in record.done) == list(range(6))
    assert record.below == 6


class _Killed(BaseException):
    """The process dying: not an Exception, so nothing in the run handles it."""


def writer_failing_first_assemble(error: BaseException) -> ResultWriter:
    """The run's result writer, except that its first final object (outcomes.csv) fails."""

    class Failing(ResultWriter):
        assemble = failing_at(ResultWriter.assemble, 1, error)

    return Failing(aws.s3_client())


@pytest.mark.filterwarnings("ignore:No application metrics to publish")  # the killed run
def test_a_run_killed_before_its_results_is_retried_from_its_answers_asking_vital_nothing(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a run that dies once every answer is in and recorded, as it starts outcomes.csv;
    # its one checkpoint came before the first chunk, so no checkpoint holds any answer
    monkeypatch.setenv("CHUNK_SIZE", "10")
    monkeypatch.setenv("MAX_CONCURRENCY", "2")
    monkeypatch.setenv("CHECKPOINT_EVERY_CHUNKS", "100")
    upload(stack, "incoming/killed-end.jsonl", 60)  # 6 chunks: 30 rows of each provider
    event = s3_event(stack.bucket, ["incoming/killed-end.jsonl"])
    with pytest.raises(_Killed):
        stack.invoke(event, results=writer_failing_first_assemble(_Killed()))
    assert len(stack.vital.posted_connections()) == 60

    # When Lambda's retry runs
    stack.invoke(event)

    # Then it takes every answer from the hand-off record: nothing is sent again and Vital is
    # not asked about any user
    manifest = assert_complete(stack, "results/killed-end.jsonl/", 62)
    assert manifest["counts"]["imported"] == 60
    assert manifest["counts"]["errored"] == 0
    assert len(stack.vital.posted_connections()) == 60
    assert lookups(stack) == []
    assert not any(
        o["detail"] == CONFIRMED_DETAIL for o in stack.outcomes("results/killed-end.jsonl/")
    )


@pytest.mark.filterwarnings("ignore:No application metrics to publish")  # the failed cleanup
def test_a_retry_after_the_manifest_was_written_keeps_it_and_clears_the_state(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given an import whose manifest is written but whose state could not be deleted after it
    monkeypatch.setenv("CHUNK_SIZE", "10")
    monkeypatch.setenv("CHECKPOINT_EVERY_CHUNKS", "3")
    upload(stack, "incoming/cleanup.jsonl", 100)
    event = s3_event(stack.bucket, ["incoming/cleanup.jsonl"])

    class Throttled(CheckpointStore):
        def finish(self, parts: list[str], stored: list[str] | None = None) -> None:
            raise ClientError({"Error": {"Code": "SlowDown", "Message": "-"}}, "DeleteObjects")

    with pytest.raises(ClientError):
        stack.invoke(event, new_store=Throttled)
    first = assert_complete(stack, "results/cleanup.jsonl/", 102)
    posted = len(stack.vital.posted_connections())

    # When Lambda retries the event (no idempotency table here)
    result = stack.invoke(event)

    # Then nothing is sent again, the manifest stands, and the state is gone
    assert result["files"][0]["status"] == "skipped"
    assert len(stack.vital.posted_connections()) == posted
    assert stack.manifest("results/cleanup.jsonl/") == first
    assert first["counts"]["imported"] == 100
    for prefix in ("results/cleanup.jsonl/_state/", "retry/cleanup.jsonl/_state/"):
        listed = stack.s3.list_objects_v2(Bucket=stack.bucket, Prefix=prefix)
        assert listed["KeyCount"] == 0


@pytest.mark.filterwarnings("ignore:No application metrics to publish")  # the failed run
def test_a_retry_after_the_results_failed_to_be_written_keeps_the_answers(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every answer is stored before the results are written: a retry after writing them failed
    # replays the answers, rather than reporting the chunks answered since the last lease in
    # doubt (errored, in retry.jsonl).
    monkeypatch.setenv("CHUNK_SIZE", "10")
    monkeypatch.setenv("MAX_CONCURRENCY", "2")
    rows = upload(stack, "incoming/final-write.jsonl", 200)
    s3_failed = ClientError({"Error": {"Code": "InternalError", "Message": "-"}}, "PutObject")
    event = s3_event(stack.bucket, ["incoming/final-write.jsonl"])
    with pytest.raises(ClientError):
        # the invocation fails writing outcomes.csv; Lambda retries it
        stack.invoke(event, results=writer_failing_first_assemble(s3_failed))
    assert len(stack.vital.posted_connections()) == 200

    stack.invoke(event)

    manifest = assert_complete(stack, "results/final-write.jsonl/", len(rows))
    assert manifest["counts"]["imported"] == 200
    assert manifest["counts"]["errored"] == 0
    assert len(stack.vital.posted_connections()) == 200


def test_redelivered_event_posts_nothing_with_idempotency_table(
    stack: Stack, idempotency_table: str
) -> None:
    upload(stack, "incoming/twice.jsonl", 30)
    event = s3_event(stack.bucket, ["incoming/twice.jsonl"])

    first = stack.invoke(event)
    requests_after_first = len(stack.vital.bulk_import_requests())
    second = stack.invoke(event)

    assert second == first  # Powertools returned the stored result
    assert len(stack.vital.bulk_import_requests()) == requests_after_first
    assert_complete(stack, "results/twice.jsonl/", 32)
    items = boto3.client("dynamodb").scan(TableName=idempotency_table)["Items"]
    assert len(items) == 1
    assert items[0]["status"]["S"] == "COMPLETED"
    assert "expiration" in items[0]


def test_redelivered_event_posts_nothing_without_table(stack: Stack) -> None:
    upload(stack, "incoming/twice.jsonl", 12)
    event = s3_event(stack.bucket, ["incoming/twice.jsonl"])

    stack.invoke(event)
    before = len(stack.vital.bulk_import_requests())
    result = stack.invoke(event)

    assert result["files"][0]["status"] == "skipped"
    assert len(stack.vital.bulk_import_requests()) == before


def test_new_upload_of_the_same_key_is_a_new_import(stack: Stack, idempotency_table: str) -> None:
    stack.s3.put_bucket_versioning(
        Bucket=stack.bucket, VersioningConfiguration={"Status": "Enabled"}
    )
    rows = [make_row(n) for n in range(5)]
    stack.vital.add_known_users(*(r["user_id"] for r in rows))
    v1 = stack.put("incoming/same.jsonl", encode_rows(rows[:3], "jsonl"))
    stack.invoke(
        s3_event(stack.bucket, ["incoming/same.jsonl"], version_ids={"incoming/same.jsonl": v1})
    )
    v2 = stack.put("incoming/same.jsonl", encode_rows(rows, "jsonl"))
    stack.invoke(
        s3_event(stack.bucket, ["incoming/same.jsonl"], version_ids={"incoming/same.jsonl": v2})
    )

    manifest = stack.manifest("results/same.jsonl/")
    assert manifest["source"]["version_id"] == v2
    assert manifest["counts"]["imported"] == 5
    assert len(stack.vital.bulk_import_requests()) == 2


def race(stack: Stack, event: dict[str, Any], **fakes: Any) -> list[Any]:
    """Two invocations of one event at once: what each returned, or the exception it raised."""
    outcomes: list[Any] = []

    def run() -> None:
        try:
            outcomes.append(stack.invoke(event, **fakes))
        except Exception as exc:  # noqa: BLE001 - a loser's error is what the tests assert on
            outcomes.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
        assert not thread.is_alive(), "an import of the race did not finish"
    return outcomes


def test_concurrent_duplicate_events_post_each_connection_once(
    stack: Stack, idempotency_table: str
) -> None:
    stack.vital.latency_seconds = 0.05
    upload(stack, "incoming/race.jsonl", 60)
    event = s3_event(stack.bucket, ["incoming/race.jsonl"])
    outcomes = race(stack, event)

    kinds = sorted(type(o).__name__ for o in outcomes)
    # The loser raises so that Lambda retries it; the retry then finds the stored result.
    assert kinds == ["ImportStillRunning", "dict"]
    assert_complete(stack, "results/race.jsonl/", 62)
    retried = stack.invoke(event)
    assert retried["files"][0]["status"] == "partial"
    assert len(stack.vital.posted_connections()) == 60


def test_a_duplicate_event_during_an_import_is_looked_at_again_once_the_hold_ends(
    stack: Stack,
    idempotency_table: str,
    continuation_queue: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a queue, the loser of a race does not raise (Lambda's two retries come within
    # minutes, while the winner may import for 15): it queues a second look, delayed.
    stack.vital.latency_seconds = 0.05
    upload(stack, "incoming/race.jsonl", 60)
    event = s3_event(stack.bucket, ["incoming/race.jsonl"])
    outcomes = race(stack, event, tunables=Tunables(recheck_delay_seconds=2))

    assert sorted(len(o["files"]) for o in outcomes) == [0, 1], outcomes
    sqs = boto3.client("sqs")
    attributes = sqs.get_queue_attributes(
        QueueUrl=continuation_queue, AttributeNames=["ApproximateNumberOfMessagesDelayed"]
    )["Attributes"]
    assert attributes["ApproximateNumberOfMessagesDelayed"] == "1"
    time.sleep(2.5)
    # When it comes, the second look finds the stored result: nothing is posted again.
    assert drain_queue(stack, continuation_queue, timeout_seconds=60) == 1
    assert_complete(stack, "results/race.jsonl/", 62)
    assert len(stack.vital.posted_connections()) == 60


def _held(_work: Work) -> Work:
    """The idempotency guard when another invocation holds every ref's record (the race, made
    certain)."""

    def run(ref: ObjectRef) -> dict[str, Any]:
        raise AlreadyInProgress(ref.key)

    return run


def _queue_depths(queue_url: str) -> tuple[int, int]:
    """(messages visible, messages delayed)."""
    attributes = boto3.client("sqs").get_queue_attributes(
        QueueUrl=queue_url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesDelayed"],
    )["Attributes"]
    return (
        int(attributes["ApproximateNumberOfMessages"]),
        int(attributes["ApproximateNumberOfMessagesDelayed"]),
    )


@pytest.mark.parametrize("segment", [0, 1])
def test_a_held_ref_from_the_queue_is_looked_at_again_or_dropped_as_a_duplicate(
    stack: Stack, continuation_queue: str, segment: int
) -> None:
    # Segment 0 from the queue is a second look (the only copy): it must not be lost, nor fail
    # the invocation. Segment 1+ is a continuation: SQS keeps the copy being worked on.
    ref = ObjectRef(bucket=stack.bucket, key="incoming/held.jsonl", segment=segment)
    body = ContinuationMessage(ref=ref).model_dump_json()

    result = stack.invoke({"Records": [{"eventSource": "aws:sqs", "body": body}]}, guard=_held)

    assert result == {"files": []}
    assert _queue_depths(continuation_queue) == (0, 1 if segment == 0 else 0)


def test_a_held_s3_event_without_a_queue_is_raised_for_lambda_to_retry(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CONTINUATION_QUEUE_URL", raising=False)

    with pytest.raises(ImportStillRunning):
        stack.invoke(s3_event(stack.bucket, ["incoming/held.jsonl"]), guard=_held)


def _version_a_importing_slowly(
    stack: Stack,
    monkeypatch: pytest.MonkeyPatch,
    key: str,
    rows: list[dict[str, Any]],
    *,
    known: list[dict[str, Any]],
    latency: float,
) -> str:
    """Version A of ``key`` (``rows``) in a versioned bucket, to be imported one chunk of 10 at
    a time, a checkpoint before every chunk; Vital knows the users of ``known``. A's version."""
    stack.s3.put_bucket_versioning(
        Bucket=stack.bucket, VersioningConfiguration={"Status": "Enabled"}
    )
    monkeypatch.setenv("CHUNK_SIZE", "10")
    monkeypatch.setenv("MAX_CONCURRENCY", "1")
    monkeypatch.setenv("CHECKPOINT_EVERY_CHUNKS", "1")
    stack.vital.add_known_users(*(r["user_id"] for r in known))
    stack.vital.latency_seconds = latency
    version = stack.put(key, encode_rows(rows, "jsonl"))
    assert version is not None
    return version


def test_a_new_upload_during_an_import_takes_the_key_over(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given version A of a key importing slowly, a checkpoint before every chunk
    old = [make_row(n) for n in range(100)]
    new = [make_row(n) for n in range(1000, 1060)]
    key = "incoming/replaced.jsonl"
    va = _version_a_importing_slowly(stack, monkeypatch, key, old, known=old + new, latency=0.1)
    results: dict[str, Any] = {}

    def import_a() -> None:
        results["A"] = stack.invoke(s3_event(stack.bucket, [key], version_ids={key: va}))

    first = threading.Thread(target=import_a)
    first.start()
    deadline = time.monotonic() + 10
    while len(stack.vital.bulk_import_requests()) < 3 and time.monotonic() < deadline:
        time.sleep(0.02)

    # When version B is uploaded and imported while A is still going
    vb = stack.put(key, encode_rows(new, "jsonl"))
    assert vb is not None
    results["B"] = stack.invoke(s3_event(stack.bucket, [key], version_ids={key: vb}))
    first.join(timeout=60)
    assert not first.is_alive()

    # Then A stops at its next checkpoint, sending nothing more and writing no results, and
    # the key's results are B's, whole
    assert results["A"]["files"][0]["status"] == "skipped"
    manifest = stack.manifest("results/replaced.jsonl/")
    assert manifest["source"]["version_id"] == vb
    assert manifest["counts"]["imported"] == 60
    outcomes = stack.outcomes("results/replaced.jsonl/")
    assert sorted(int(o["line"]) for o in outcomes) == list(range(1, 61))
    posted = stack.vital.posted_connections()
    assert len(posted) == len(set(posted))
    new_ids = {r["user_id"] for r in new}
    assert sum(1 for _, user in posted if user in new_ids) == 60
    assert len(posted) - 60 < 100  # A stopped before the end of its file
    state = stack.s3.list_objects_v2(Bucket=stack.bucket, Prefix="results/replaced.jsonl/_state/")
    assert "checkpoint.json" not in {o["Key"].rsplit("/", 1)[-1] for o in state.get("Contents", [])}
    # And A left its record, kept by the bucket's versioning under B's manifest: superseded
    # by B, with A's counts so far (every row it had an answer for) and no outcomes of its own
    records = manifest_versions(stack, "results/replaced.jsonl/manifest.json")
    assert records[0]["status"] == "succeeded"  # the current one, B's
    superseded = next(m for m in records if m["status"] == "superseded")
    assert superseded["source"]["version_id"] == va
    assert superseded["superseded_by"]["version_id"] == vb
    assert superseded["outcomes_key"] is None
    counts = superseded["counts"]
    assert 0 < counts["rows"] == counts["imported"] <= len(posted) - 60


def manifest_versions(stack: Stack, key: str) -> list[dict[str, Any]]:
    """Every version of ``key``, newest first, as JSON."""
    listed = stack.s3.list_object_versions(Bucket=stack.bucket, Prefix=key).get("Versions", [])
    newest_first = sorted(listed, key=lambda v: v["LastModified"], reverse=True)
    return [
        json.loads(
            stack.s3.get_object(Bucket=stack.bucket, Key=key, VersionId=v["VersionId"])[
                "Body"
            ].read()
        )
        for v in newest_first
        if v["Key"] == key
    ]


def test_a_run_that_lost_its_key_deletes_the_parts_it_stored_for_the_losing_checkpoint(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given version A importing, a checkpoint before every chunk, some rows failing (so each
    # checkpoint stores a retry part, which holds tokens, as well as an outcomes part)
    old = [make_row(n) for n in range(100)]
    new = [make_row(n) for n in range(1000, 1020)]
    key = "incoming/lost.jsonl"
    va = _version_a_importing_slowly(
        stack, monkeypatch, key, old, known=old[::2] + new, latency=0.05
    )
    # A stops at a checkpoint that has parts to store, before it stores them, until B has
    # finished: B's clean-up cannot see the parts A then stores, so only A can delete them.
    a_waiting, b_done = threading.Event(), threading.Event()
    stored_after_b: list[str] = []

    def storing(part: str) -> None:
        if not b_done.is_set() and len(stack.vital.bulk_import_requests()) >= 3:
            a_waiting.set()
            assert b_done.wait(60)
        if b_done.is_set():
            stored_after_b.append(part)

    class WaitingOutcomes(OutcomeSpool):
        def upload(self, s3: Any, bucket: str, key: str, content_type: str, **kw: Any) -> bool:
            storing(key)
            return super().upload(s3, bucket, key, content_type, **kw)

    class WaitingRetries(RetrySpool):
        def upload(self, s3: Any, bucket: str, key: str, content_type: str, **kw: Any) -> bool:
            storing(key)
            return super().upload(s3, bucket, key, content_type, **kw)

    class WaitingWriter(ResultWriter):
        def outcome_spool(self) -> OutcomeSpool:
            return WaitingOutcomes(outcomes_header(), self.spool_keep_bytes)

        def retry_spool(self) -> RetrySpool:
            return WaitingRetries(keep_bytes=self.spool_keep_bytes)

    results: dict[str, Any] = {}
    first = threading.Thread(
        target=lambda: results.setdefault(
            "A",
            stack.invoke(
                s3_event(stack.bucket, [key], version_ids={key: va}),
                results=WaitingWriter(aws.s3_client()),
            ),
        )
    )
    first.start()
    assert a_waiting.wait(10)

    # When version B is uploaded and imported to the end meanwhile
    vb = stack.put(key, encode_rows(new, "jsonl"))
    results["B"] = stack.invoke(s3_event(stack.bucket, [key], version_ids={key: vb}))
    b_done.set()
    first.join(timeout=60)
    assert not first.is_alive()

    # Then A stops, and no part object is left: B deleted those A's checkpoints named, and A
    # the ones it stored for the checkpoint that lost
    assert results["A"]["files"][0]["status"] == "skipped"
    assert results["B"]["files"][0]["status"] == "succeeded"
    assert any("/_state/retry-" in k for k in stored_after_b), stored_after_b
    left = [
        o["Key"]
        for prefix in ("results/lost.jsonl/_state/", "retry/lost.jsonl/_state/")
        for o in stack.s3.list_objects_v2(Bucket=stack.bucket, Prefix=prefix).get("Contents", [])
    ]
    assert left == []


def test_a_newer_upload_imported_while_a_run_waits_on_bulk_ops_keeps_its_results(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given version A of a key whose rows Vital enqueues (202s), so that A waits on bulk ops
    # after its last answer and the record of its answers
    monkeypatch.setenv("WAIT_FOR_COMPLETION", "false")
    old = [make_row(n) for n in range(30)]
    new = [make_row(n) for n in range(1000, 1020)]
    key = "incoming/op-wait.jsonl"
    va = _version_a_importing_slowly(stack, monkeypatch, key, old, known=old + new, latency=0)
    vb: list[str] = []

    class BMeanwhile(httpx.BaseTransport):
        """A's Vital: its first bulk-op listing (the wait) starts only once B is imported."""

        def __init__(self) -> None:
            self.inner = httpx.HTTPTransport()

        def handle_request(self, request: httpx.Request) -> httpx.Response:
            if request.url.path.endswith("/bulk_op") and not vb:
                # When version B is uploaded and imported to the end during A's wait
                vb.append(stack.put(key, encode_rows(new, "jsonl")) or "")
                monkeypatch.setenv("WAIT_FOR_COMPLETION", "true")
                stack.invoke(s3_event(stack.bucket, [key], version_ids={key: vb[0]}))
            return self.inner.handle_request(request)

        def close(self) -> None:
            self.inner.close()

    result = stack.invoke(
        s3_event(stack.bucket, [key], version_ids={key: va}), transport=BMeanwhile()
    )

    # Then A finds the key taken over and writes no results: they stay B's
    assert vb, "A did not wait on bulk ops"
    assert result["files"][0]["status"] == "skipped"
    manifest = stack.manifest("results/op-wait.jsonl/")
    assert manifest["source"]["version_id"] == vb[0]
    assert manifest["counts"]["imported"] == 20
    assert len(stack.outcomes("results/op-wait.jsonl/")) == 20


def test_a_run_asks_s3_whose_checkpoint_it_is_before_its_results_and_before_clearing_up(
    stack: Stack,
) -> None:
    # A hand-off record's write is conditional on the record, not on the checkpoint: a HEAD
    # tells, before the results are written, that no other import took the key over; another
    # one before the state is deleted, after the key's parts are listed (CheckpointStore.finish).
    upload(stack, "incoming/one-head.jsonl", 30)
    with s3_keys("HeadObject", "PutObject") as keys:
        stack.import_keys("incoming/one-head.jsonl")

    assert_complete(stack, "results/one-head.jsonl/", 32)
    checkpoint = "results/one-head.jsonl/_state/checkpoint.json"
    assert keys["HeadObject"].count(checkpoint) == 2
    assert keys["PutObject"].count(checkpoint) == 1


@contextmanager
def lost_answer_to_checkpoint_write(
    nth: int, meanwhile: Callable[[], None] | None = None
) -> Iterator[dict[str, int]]:
    """The ``nth`` checkpoint write reaches S3 and is stored, but its answer is lost: botocore
    retries it, as it does after a read timeout or a dropped connection. ``meanwhile`` runs
    between the stored write and the retry."""
    seen = {"writes": 0, "lost": 0}

    def hook(request_dict: dict[str, Any], response: Any, attempts: int, **_: Any) -> Any:
        if not request_dict["url"].endswith("_state/checkpoint.json") or attempts != 1:
            return None
        if response is None or response[0].status_code != 200:
            return None
        seen["writes"] += 1
        if seen["writes"] != nth:
            return None
        seen["lost"] += 1
        if meanwhile is not None:
            meanwhile()
        return 0  # retry at once

    s3 = aws.s3_client()
    s3.meta.events.register_first("needs-retry.s3.PutObject", hook)
    try:
        yield seen
    finally:
        s3.meta.events.unregister("needs-retry.s3.PutObject", hook)


@pytest.mark.parametrize("nth", [1, 3])
def test_a_checkpoint_write_whose_answer_was_lost_is_not_a_takeover(
    stack: Stack, monkeypatch: pytest.MonkeyPatch, nth: int
) -> None:
    # botocore's retry of a stored write fails its condition on the run's own checkpoint (412):
    # taken for another import, the run would stop ("skipped", no manifest, no Lambda retry)
    # and delete the parts that checkpoint names.
    monkeypatch.setenv("CHUNK_SIZE", "10")
    monkeypatch.setenv("MAX_CONCURRENCY", "1")
    monkeypatch.setenv("CHECKPOINT_EVERY_CHUNKS", "1")
    rows = upload(stack, "incoming/lost-answer.jsonl", 60)

    with lost_answer_to_checkpoint_write(nth) as seen:
        result = stack.import_keys("incoming/lost-answer.jsonl")

    assert seen["lost"] == 1
    assert result["files"][0]["status"] == "partial"  # the rejected row
    manifest = assert_complete(stack, "results/lost-answer.jsonl/", len(rows))
    assert manifest["counts"]["imported"] == 60
    assert len(stack.vital.posted_connections()) == 60
    state = stack.s3.list_objects_v2(Bucket=stack.bucket, Prefix="results/lost-answer.jsonl/_")
    assert state.get("KeyCount") == 0


class _Raw:
    def __init__(self, body: bytes) -> None:
        self.body = body

    def stream(self, **_: Any) -> Iterator[bytes]:
        yield self.body


@pytest.mark.filterwarnings("ignore:No application metrics to publish")  # the failed invocation
def test_a_checkpoint_write_that_lost_to_this_runs_own_previous_one_fails_the_invocation(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    # S3 answers 412 while it still holds this run's previous checkpoint (as when the write's
    # first attempt is still in flight and botocore's retry lost to it): not a takeover, and not
    # known to be stored. The invocation fails; Lambda's retry resumes and finishes the file.
    from botocore.awsrequest import AWSResponse  # noqa: PLC0415

    monkeypatch.setenv("CHUNK_SIZE", "10")
    monkeypatch.setenv("MAX_CONCURRENCY", "1")
    monkeypatch.setenv("CHECKPOINT_EVERY_CHUNKS", "1")
    rows = upload(stack, "incoming/in-flight.jsonl", 60)
    writes = []
    failed = b"<Error><Code>PreconditionFailed</Code><Message>-</Message></Error>"

    def refuse_third(request: Any, **_: Any) -> Any:
        if request.method != "PUT" or not request.url.endswith("_state/checkpoint.json"):
            return None
        writes.append(1)
        if len(writes) != 3:
            return None
        return AWSResponse(request.url, 412, {}, _Raw(failed))

    event = s3_event(stack.bucket, ["incoming/in-flight.jsonl"])
    s3 = aws.s3_client()
    s3.meta.events.register_first("before-send.s3.PutObject", refuse_third)
    try:
        with pytest.raises(TransientError):
            stack.invoke(event)
    finally:
        s3.meta.events.unregister("before-send.s3.PutObject", refuse_third)

    result = stack.invoke(event)  # Lambda's retry: the same event

    assert result["files"][0]["status"] == "partial"  # the rejected row
    assert_complete(stack, "results/in-flight.jsonl/", len(rows))
    assert len(stack.vital.posted_connections()) == 60


def test_a_run_that_lost_its_checkpoint_keeps_the_parts_the_new_one_names(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a write whose answer is lost, and before the retry another import of the key
    # takes the checkpoint over from that very write (as a second delivery resuming it would)
    monkeypatch.setenv("CHUNK_SIZE", "10")
    monkeypatch.setenv("MAX_CONCURRENCY", "1")
    monkeypatch.setenv("CHECKPOINT_EVERY_CHUNKS", "1")
    upload(stack, "incoming/taken.jsonl", 60)

    def take_over() -> None:
        other = CheckpointStore(
            stack.s3, stack.bucket, "results/taken.jsonl/", "retry/taken.jsonl/", "0ther000"
        )
        stored = other.load()
        assert stored is not None
        other.save(stored)

    # When the run's retry finds the other import's checkpoint
    with lost_answer_to_checkpoint_write(3, meanwhile=take_over):
        result = stack.import_keys("incoming/taken.jsonl")

    # Then it stops, and every part the stored checkpoint names is still there for its owner
    assert result["files"][0]["status"] == "skipped"
    stored = json.loads(stack.get("results/taken.jsonl/_state/checkpoint.json"))
    assert stored["write"] == "0ther000:1"
    named = stored["outcome_parts"] + stored["retry_parts"]
    assert named
    listed = {o["Key"] for o in stack.s3.list_objects_v2(Bucket=stack.bucket).get("Contents", [])}
    assert set(named) <= listed


def test_an_import_that_takes_the_key_over_while_results_are_written_keeps_its_state(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a run writing its results while the key's parts are listed beside it
    monkeypatch.setenv("CHUNK_SIZE", "10")
    upload(stack, "incoming/late-takeover.jsonl", 30)
    other = CheckpointStore(
        stack.s3,
        stack.bucket,
        "results/late-takeover.jsonl/",
        "retry/late-takeover.jsonl/",
        "0000beef",  # a run id as a run draws them
    )

    class TakenOverFirst(CheckpointStore):
        def stored_parts(self) -> list[str]:
            # When another import of the key takes the checkpoint over and stores a part, just
            # before the listing: the listing names that part
            stored = other.load()
            assert stored is not None
            other.save(stored)
            stack.s3.put_object(Bucket=stack.bucket, Key=other.outcome_part_key(1), Body=b"x\n")
            return super().stored_parts()

    stack.import_keys("incoming/late-takeover.jsonl", new_store=TakenOverFirst)

    # Then the run deletes neither the other import's checkpoint nor its part
    stored = json.loads(stack.get("results/late-takeover.jsonl/_state/checkpoint.json"))
    assert stored["write"] == "0000beef:1"
    assert stack.get(other.outcome_part_key(1)) == b"x\n"


def test_a_late_event_for_an_older_upload_is_skipped_once_a_newer_one_was_imported(
    stack: Stack,
) -> None:
    # Lambda retries an event hours later, when the key has a newer upload imported already:
    # S3's sequencer orders the two, and the older must not overwrite the newer's results.
    stack.s3.put_bucket_versioning(
        Bucket=stack.bucket, VersioningConfiguration={"Status": "Enabled"}
    )
    key = "incoming/late.jsonl"
    rows = [make_row(n) for n in range(20)]
    stack.vital.add_known_users(*(r["user_id"] for r in rows))
    va = stack.put(key, encode_rows(rows[:10], "jsonl"))
    late = s3_event(stack.bucket, [key], version_ids={key: va} if va else None)
    vb = stack.put(key, encode_rows(rows, "jsonl"))
    stack.invoke(s3_event(stack.bucket, [key], version_ids={key: vb} if vb else None))
    requests = len(stack.vital.bulk_import_requests())

    result = stack.invoke(late)

    assert result["files"][0]["status"] == "skipped"
    assert len(stack.vital.bulk_import_requests()) == requests
    manifest = stack.manifest("results/late.jsonl/")
    assert (manifest["source"]["version_id"], manifest["counts"]["imported"]) == (vb, 20)


def test_concurrent_duplicate_events_without_a_table_post_each_connection_once(
    stack: Stack,
) -> None:
    # Without IDEMPOTENCY_TABLE both runs start; the checkpoint is created only if absent, so
    # one of them learns of the other at its first lease, before it sends anything.
    stack.vital.latency_seconds = 0.05
    rows = upload(stack, "incoming/race-no-table.jsonl", 60)
    # Rejected rows first: each run has outcome lines to store before its first checkpoint
    broken = [make_row(20_000 + n, user_id="broken") for n in range(3)]
    stack.put("incoming/race-no-table.jsonl", encode_rows(broken + rows, "jsonl"))
    event = s3_event(stack.bucket, ["incoming/race-no-table.jsonl"])
    files: list[dict[str, Any]] = []

    def run() -> None:
        files.append(stack.invoke(event)["files"][0])

    threads = [threading.Thread(target=run) for _ in range(2)]
    with s3_keys("PutObject") as keys:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
            assert not thread.is_alive()
    parts = [k for k in keys["PutObject"] if "/_state/outcomes-" in k]

    assert sorted(f["status"] for f in files) == ["partial", "skipped"]
    # The loser says what happened: the same version, not a newer upload
    (skipped,) = (f for f in files if f["status"] == "skipped")
    assert skipped["reason"] == "another invocation is importing this version"
    assert_complete(stack, "results/race-no-table.jsonl/", 65)
    assert len(stack.vital.posted_connections()) == 60
    # Both stored a part before the checkpoint told them apart: never under the same name, and
    # the loser's went with it
    assert len(parts) >= 2
    assert len(parts) == len(set(parts))
    for prefix in ("results/race-no-table.jsonl/_state/", "retry/race-no-table.jsonl/_state/"):
        assert stack.s3.list_objects_v2(Bucket=stack.bucket, Prefix=prefix)["KeyCount"] == 0


def test_a_duplicate_event_that_loses_the_checkpoint_to_the_first_says_another_is_importing(
    stack: Stack,
) -> None:
    # Given two deliveries of one event and no idempotency table: B finds no checkpoint, then
    # A creates one (and waits there) before B tries to create its own
    rows = upload(stack, "incoming/both.jsonl", 30)
    event = s3_event(stack.bucket, ["incoming/both.jsonl"])
    b_looked, a_saved, b_lost = threading.Event(), threading.Event(), threading.Event()

    class FirstForA(CheckpointStore):
        def load(self) -> Checkpoint | None:
            assert b_looked.wait(timeout=30)
            return super().load()

        def save(self, checkpoint: Checkpoint) -> None:
            super().save(checkpoint)
            if not a_saved.is_set():
                a_saved.set()
                assert b_lost.wait(timeout=30)

    class LateForB(CheckpointStore):
        def load(self) -> Checkpoint | None:
            found = super().load()
            b_looked.set()
            return found

        def existing_manifest(self) -> Manifest | None:
            assert a_saved.wait(timeout=30)
            return super().existing_manifest()

        def save(self, checkpoint: Checkpoint) -> None:
            try:
                super().save(checkpoint)
            finally:
                b_lost.set()

    results: dict[str, Any] = {}
    b = threading.Thread(target=lambda: results.update(B=stack.invoke(event, new_store=LateForB)))
    b.start()
    results["A"] = stack.invoke(event, new_store=FirstForA)
    b.join(timeout=60)
    assert not b.is_alive()

    # Then B stops before sending anything, saying the same version is being imported
    assert results["A"]["files"][0]["status"] == "partial"  # the rejected row
    assert results["B"]["files"][0]["status"] == "skipped"
    assert results["B"]["files"][0]["reason"] == "another invocation is importing this version"
    assert_complete(stack, "results/both.jsonl/", len(rows))
    assert len(stack.vital.posted_connections()) == 30


def test_a_duplicate_event_that_finds_no_state_until_the_first_finished_posts_nothing(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given two deliveries of one event and no idempotency table: B finds no checkpoint and no
    # manifest, then waits on S3 while A imports the whole file and clears its checkpoint
    rows = upload(stack, "incoming/twice.jsonl", 30)
    event = s3_event(stack.bucket, ["incoming/twice.jsonl"])
    b_looked, a_finished = threading.Event(), threading.Event()

    class SlowForB(CheckpointStore):
        def existing_manifest(self) -> Manifest | None:
            found = super().existing_manifest()
            if not b_looked.is_set():
                b_looked.set()
                assert a_finished.wait(timeout=30)
            return found

    results: dict[str, Any] = {}
    b = threading.Thread(target=lambda: results.update(B=stack.invoke(event, new_store=SlowForB)))
    b.start()
    assert b_looked.wait(timeout=30)
    results["A"] = stack.invoke(event)
    a_finished.set()
    b.join(timeout=60)
    assert not b.is_alive()

    # Then B, whose checkpoint creation now succeeds, sees A's manifest before sending anything
    assert results["A"]["files"][0]["status"] == "partial"  # the rejected row
    assert results["B"]["files"][0]["status"] == "skipped"
    assert_complete(stack, "results/twice.jsonl/", len(rows))
    assert len(stack.vital.posted_connections()) == 30
    state = stack.s3.list_objects_v2(Bucket=stack.bucket, Prefix="results/twice.jsonl/_state/")
    assert state.get("KeyCount") == 0


def test_killed_process_resumes_without_resending(stack: Stack, stack_env: dict[str, str]) -> None:
    # Given a slow Vital, users it does not know among the rows (their imports fail), and a run
    # that is really killed after a few chunks, with chunks out
    stack.vital.latency_seconds = 0.15
    rows = upload(stack, "incoming/crash.jsonl", 200)
    unknown = {r["user_id"] for r in rows[::7]}
    stack.vital.known_users -= unknown
    event = s3_event(stack.bucket, ["incoming/crash.jsonl"])
    kill_mid_run(stack, event, CHECKPOINT_EVERY_CHUNKS="2")
    sent_before_crash = set(stack.vital.posted_connections())
    assert sent_before_crash, "nothing was sent before the kill"
    listing = stack.s3.list_objects_v2(Bucket=stack.bucket, Prefix="results/crash.jsonl/manifest")
    assert "Contents" not in listing, "the killed run must not have finished"

    # When the event is delivered again (Lambda's retry), Vital still slow
    result = stack.invoke(event)

    # Then every row has one outcome and none is left in doubt: what the chunks out at the kill
    # became was asked of Vital
    assert result["files"][0]["status"] == "partial"
    outcomes = stack.outcomes("results/crash.jsonl/")
    tally = Counter(o["outcome"] for o in outcomes)
    assert (tally["rejected"], tally["duplicate"], tally["errored"]) == (1, 1, 0)
    assert tally["imported"] + tally["failed"] == 200
    # Each outcome is what Vital holds: imported users are connected, failed ones unknown
    holds = vital_holds(stack_env, stack.vital.api_key, [o["user_id"] for o in outcomes])
    for o in outcomes:
        if o["outcome"] in {"imported", "failed"}:
            assert (o["outcome"] == "imported") is (holds[o["user_id"]] == "connected"), o
            assert (o["outcome"] == "failed") is (o["user_id"] in unknown), o
    # Rows sent twice: at most those of the chunks out at the kill (2 threads, 2 chunks each)
    posted = Counter(stack.vital.posted_connections())
    assert sum(n - 1 for n in posted.values()) <= 2 * 2 * 10
    assert stack.manifest("results/crash.jsonl/")["segments"] == 1
    # And the checkpoint state is cleaned up
    leftovers = stack.s3.list_objects_v2(Bucket=stack.bucket, Prefix="results/crash.jsonl/_state/")
    assert "Contents" not in leftovers


@pytest.mark.parametrize(
    ("latency", "in_doubt"),
    [(0.15, 2 * 4), (1.0, 2)],
    ids=["fast-requests", "slow-requests"],
)
def test_a_killed_run_leaves_in_doubt_only_the_chunks_its_threads_had(
    stack: Stack, stack_env: dict[str, str], latency: float, in_doubt: int
) -> None:
    # Given a lease far ahead of the chunks sent (20 chunks here; by default about 2 s worth of
    # chunks when they go out faster than the posting queue's size), requests of 0.15 s (the
    # posting threads keep a chunk waiting each) or 1.0 s (a hand-off record for each chunk,
    # none waiting, however slowly S3 answers on a loaded machine), users Vital does not know
    # in every chunk (answered row by row), and a run really killed mid-file
    stack.vital.latency_seconds = latency
    rows = upload(stack, "incoming/handoff.jsonl", 400, providers=("oura",))
    unknown = {r["user_id"] for r in rows[::7]}
    stack.vital.known_users -= unknown
    event = s3_event(stack.bucket, ["incoming/handoff.jsonl"])
    kill_mid_run(stack, event, CHECKPOINT_EVERY_CHUNKS="20")
    state = "results/handoff.jsonl/_state/"
    cp = json.loads(stack.get(state + "checkpoint.json"))
    handoff = json.loads(stack.get(state + "handoff.json"))
    assert handoff["refines"] == cp["write"]
    assert cp["lease"] - cp["settled_below"] > 8, "the lease alone would leave more in doubt"
    asked_before = len(lookups(stack))

    # When Lambda delivers the event again
    result = stack.invoke(event)

    # Then only chunks the posting threads may have had were in doubt (with fast requests, the
    # queue of two threads holds four, twice that when records come fast; with slow ones, the
    # two being sent): asked about, one lookup per row. Every row has one outcome, none is
    # left in doubt
    assert result["files"][0]["status"] == "partial"  # upload's one rejected row
    asked = len(lookups(stack)) - asked_before
    assert asked <= in_doubt * 10, asked
    outcomes = stack.outcomes("results/handoff.jsonl/")
    assert len(outcomes) == len(rows)
    tally = Counter(o["outcome"] for o in outcomes)
    assert (tally["imported"] + tally["failed"], tally["errored"]) == (400, 0)
    assert {o["user_id"] for o in outcomes if o["outcome"] == "failed"} == unknown - {"broken"}
    # Vital processed every request it got, so each chunk out at the kill was found by lookup:
    # nothing reached Vital twice
    posted = stack.vital.posted_connections()
    assert len(posted) == len(set(posted)) == 400
    assert "Contents" not in stack.s3.list_objects_v2(Bucket=stack.bucket, Prefix=state)


def test_a_killed_run_whose_chunks_vital_is_still_importing_settles_them_once_their_ops_end(
    stack: Stack, stack_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given Vital enqueuing every chunk (202) and taking 3 s over each bulk op, users it does
    # not know among the rows, and a run really killed mid-file
    monkeypatch.setenv("WAIT_FOR_COMPLETION", "false")
    stack.vital.latency_seconds = 0.15
    stack.vital.op_complete_after_seconds = 3.0
    rows = upload(stack, "incoming/enqueued.jsonl", 200, providers=("oura",))
    unknown = {r["user_id"] for r in rows[::7]}
    stack.vital.known_users -= unknown
    event = s3_event(stack.bucket, ["incoming/enqueued.jsonl"])
    kill_mid_run(stack, event, WAIT_FOR_COMPLETION="false")

    # When Lambda delivers the event again, while the ops of the chunks out at the kill run
    result = stack.invoke(event)

    # Then none is left in doubt: the chunks out at the kill were waited for and looked up
    # (once their ops, or the other chunks' ops alike, had ended), those never sent
    # went now, and nothing reached Vital twice
    assert result["files"][0]["status"] == "partial"  # upload's rejected and duplicate rows
    outcomes = stack.outcomes("results/enqueued.jsonl/")
    tally = Counter(o["outcome"] for o in outcomes)
    assert tally["errored"] == 0, [o for o in outcomes if o["outcome"] == "errored"][:2]
    assert tally["imported"] + tally["failed"] + tally["enqueued"] == 200
    confirmed = [o for o in outcomes if o["detail"] == CONFIRMED_DETAIL]
    assert confirmed, "no chunk was out at the kill"
    holds = vital_holds(stack_env, stack.vital.api_key, [o["user_id"] for o in outcomes])
    for o in outcomes:
        if o["outcome"] in {"imported", "failed"}:
            assert (o["outcome"] == "imported") is (holds[o["user_id"]] == "connected"), o
    posted = stack.vital.posted_connections()
    assert len(posted) == len(set(posted)) == 200


def lookups(stack: Stack) -> list[Any]:
    return [r for r in stack.vital.recorded() if r.path.startswith("/v2/user/providers/")]


def run_apart(stack: Stack, keys: list[str], **env: str) -> None:
    """Import each key in a process of its own, all at once (two Lambdas, one provider)."""
    children = [
        subprocess.Popen(  # noqa: S603 - our own module, fixed arguments
            [
                sys.executable,
                "-m",
                "tests.integration.run_handler",
                json.dumps(s3_event(stack.bucket, [key])),
                "900",
            ],
            cwd=ROOT,
            env={**os.environ, "CHUNK_SIZE": "10", "MAX_CONCURRENCY": "2", **env},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for key in keys
    ]
    for child in children:
        assert child.wait(timeout=120) == 0


@pytest.mark.parametrize("wait", [True, False], ids=["answered", "enqueued"])
def test_two_files_of_one_provider_at_once_never_take_each_others_answers(
    stack: Stack, stack_env: dict[str, str], wait: bool
) -> None:
    # Given two files of the same provider, with chunks of the same size, imported at the same
    # time by two processes, while Vital loses every third answer after taking the chunk
    files = {
        "incoming/first.jsonl": [make_row(n, provider="oura") for n in range(60)],
        "incoming/second.jsonl": [make_row(n, provider="oura") for n in range(1000, 1060)],
    }
    unknown = {rows[n]["user_id"] for rows in files.values() for n in range(3, 60, 10)}
    for key, rows in files.items():
        stack.vital.add_known_users(*(r["user_id"] for r in rows if r["user_id"] not in unknown))
        stack.put(key, encode_rows(rows, "jsonl"))
    stack.vital.latency_seconds = 0.1
    stack.vital.lose_answer_every = 3
    stack.vital.op_complete_after_seconds = 5.0  # in progress while the lost ones are settled

    # When both run
    run_apart(stack, list(files), WAIT_FOR_COMPLETION=str(wait).lower())

    # Then no chunk reached Vital twice, and each file's rows are decided by its own users,
    # none left in doubt
    requests = stack.vital.bulk_import_requests()
    assert len(requests) == 12, "each chunk sent once"
    lost = {u for r in requests if r.answer_lost for u in r.user_ids}
    assert len(lost) == 40
    holds = vital_holds(stack_env, stack.vital.api_key, list(lost))
    for key in files:
        outcomes = stack.outcomes("results/" + key.removeprefix("incoming/") + "/")
        assert len(outcomes) == 60
        for o in outcomes:
            user = o["user_id"]
            if user not in lost:
                expected = "enqueued" if not wait else "failed" if user in unknown else "imported"
                assert o["outcome"] == expected, o
            else:
                # Answered in Vital's time, or once the ops in progress ended: what it holds
                # for the user, confirmed by lookup (whichever file's op each one was)
                assert o["outcome"] == ("failed" if user in unknown else "imported"), o
                assert (o["outcome"] == "imported") is (holds[user] == "connected"), o


def vital_holds(stack_env: dict[str, str], api_key: str, user_ids: list[str]) -> dict[str, str]:
    """What the stand-in lists for each user (``GET /v2/user/providers``): a status, or ""."""
    held: dict[str, str] = {}
    with httpx.Client(
        base_url=stack_env["VITAL_API_BASE_URL"], headers={"x-vital-api-key": api_key}
    ) as http:
        for user in user_ids:
            if not user:
                continue
            answer = http.get(f"/v2/user/providers/{user}")
            listed = answer.json()["providers"] if answer.status_code == 200 else []
            held[user] = next((p["status"] for p in listed), "")
    return held


class _Died(BaseException):
    """The invocation dies here (as on a kill): nothing in the function catches it."""


def die_at_third_checkpoint(stack: Stack, event: dict[str, Any]) -> None:
    """One invocation of ``event`` that dies as its third checkpoint is saved (as on a kill):
    after storing the parts that checkpoint would name, before the checkpoint itself."""

    class DiesAtThird(CheckpointStore):
        save = failing_at(CheckpointStore.save, 3, _Died())

    with pytest.raises(_Died):
        stack.invoke(event, new_store=DiesAtThird)


@pytest.mark.filterwarnings("ignore:No application metrics to publish")  # the run that died
def test_parts_of_a_run_that_died_before_its_checkpoint_are_swept_at_the_end(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a run that stores its outcome and retry parts, then dies before the checkpoint that
    # would have named them: no checkpoint ever names those parts (and retry parts hold tokens)
    monkeypatch.setenv("CHUNK_SIZE", "10")
    monkeypatch.setenv("MAX_CONCURRENCY", "1")
    monkeypatch.setenv("CHECKPOINT_EVERY_CHUNKS", "1")
    # Every fourth row rejected (outcome lines), and some users unknown to Vital (retry lines)
    rows = [make_row(n, user_id="broken") if n % 4 == 0 else make_row(n) for n in range(60)]
    stack.vital.add_known_users(*(r["user_id"] for n, r in enumerate(rows) if n % 5 != 1))
    stack.put("incoming/died.jsonl", encode_rows(rows, "jsonl"))
    event = s3_event(stack.bucket, ["incoming/died.jsonl"])
    die_at_third_checkpoint(stack, event)

    # When Lambda's retry resumes and finishes the file
    stack.invoke(event)

    # Then every row has its outcome and nothing of the state is left, the dead run's parts too
    assert_complete(stack, "results/died.jsonl/", 60)
    for prefix in ("results/died.jsonl/_state/", "retry/died.jsonl/_state/"):
        assert stack.s3.list_objects_v2(Bucket=stack.bucket, Prefix=prefix)["KeyCount"] == 0


@pytest.mark.filterwarnings("ignore:No application metrics to publish")  # the run that died
class NoLookups(httpx.BaseTransport):
    """Vital, but for its user-provider lookups, which never connect."""

    def __init__(self) -> None:
        self.inner = httpx.HTTPTransport()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.startswith("/v2/user/providers/"):
            raise httpx.ConnectError("connection refused", request=request)
        return self.inner.handle_request(request)

    def close(self) -> None:
        self.inner.close()


@pytest.mark.filterwarnings("ignore:No application metrics to publish")  # the invocation that dies
def test_rows_in_doubt_after_a_crash_do_not_trip_the_failure_threshold(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a run that dies with chunks in the posting threads' hands, and a 5 % failure
    # threshold
    monkeypatch.setenv("CHUNK_SIZE", "10")
    monkeypatch.setenv("MAX_CONCURRENCY", "1")
    monkeypatch.setenv("CHECKPOINT_EVERY_CHUNKS", "8")
    monkeypatch.setenv("FAILURE_THRESHOLD_PERCENT", "5")
    rows = [make_row(n) for n in range(300)]
    stack.vital.add_known_users(*(r["user_id"] for r in rows))
    stack.put("incoming/doubt.jsonl", encode_rows(rows, "jsonl"))
    event = s3_event(stack.bucket, ["incoming/doubt.jsonl"])
    die_at_third_checkpoint(stack, event)

    # When Lambda's retry resumes, and Vital cannot be asked about the chunks in doubt
    # (they stay in doubt, errored)
    stack.invoke(event, transport=NoLookups())

    # Then the rest is imported: Vital failed nothing, so the in-doubt rows must not count as
    # failures (they alone would stop the file at the resume's first answer).
    manifest = assert_complete(stack, "results/doubt.jsonl/", 300)
    counts = manifest["counts"]
    assert counts["errored"] > 0.05 * (counts["imported"] + counts["errored"])  # would trip it
    assert counts["imported"] + counts["errored"] == 300
    assert manifest["error"] is None
    assert manifest["status"] == "partial"
    errored = [o for o in stack.outcomes("results/doubt.jsonl/") if o["outcome"] == "errored"]
    assert all("could not be asked whether it arrived" in o["detail"] for o in errored)


def test_a_resume_never_stores_a_lease_below_the_one_it_resumed_from(
    stack: Stack, stack_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Chunks under the lease of a killed run may have been sent. A checkpoint the resume takes
    # while it still replays them (here: one at every block, as a large spool would take) must
    # keep them under its lease, or a second crash would have them sent again.
    stack.vital.latency_seconds = 0.15
    rows = upload(stack, "incoming/crash-twice.jsonl", 200)
    event = s3_event(stack.bucket, ["incoming/crash-twice.jsonl"])
    kill_mid_run(stack, event, CHECKPOINT_EVERY_CHUNKS="4")
    killed = json.loads(stack.get("results/crash-twice.jsonl/_state/checkpoint.json"))

    monkeypatch.setenv("CHUNK_SIZE", "10")
    monkeypatch.setenv("CHECKPOINT_EVERY_CHUNKS", "4")
    # A checkpoint whenever anything is spooled, checked between blocks of a few rows each
    tunables = Tunables(unsaved_spool_bytes=1, jsonl_block_bytes=2048)
    leases: list[int] = []

    class Recorded(CheckpointStore):
        def save(self, checkpoint: Checkpoint) -> None:
            leases.append(checkpoint.lease)
            super().save(checkpoint)

    stack.vital.latency_seconds = 0
    stack.invoke(event, tunables=tunables, new_store=Recorded)

    assert leases, "the resume took no checkpoint"
    assert min(leases) >= killed["lease"]
    assert_complete(stack, "results/crash-twice.jsonl/", len(rows))


def test_tiny_time_budget_continues_across_invocations(
    stack: Stack, monkeypatch: pytest.MonkeyPatch, continuation_queue: str
) -> None:
    # Given the same file imported once in one go and once with ~0.3 s per invocation
    rows = upload(stack, "incoming/long.jsonl", 400)
    stack.put("incoming/whole.jsonl", stack.get("incoming/long.jsonl"))
    monkeypatch.setenv("CHUNK_SIZE", "10")
    monkeypatch.setenv("MAX_CONCURRENCY", "2")
    stack.import_keys("incoming/whole.jsonl")
    whole = stack.manifest("results/whole.jsonl/")
    stack.vital.reset()
    stack.vital.add_known_users(*(r["user_id"] for r in rows))

    # The client keeps max(1, margin/2) s in reserve and needs 1 s for an attempt: 2.6 s of
    # margin out of 3 s leaves each invocation ~0.4 s of reading.
    stack.vital.latency_seconds = 0.05
    monkeypatch.setenv("SAFETY_MARGIN_SECONDS", "2.6")
    first = stack.invoke(s3_event(stack.bucket, ["incoming/long.jsonl"]), timeout_seconds=3.0)
    assert first["files"][0]["status"] == "continued"
    continuations = drain_queue(stack, continuation_queue, timeout_seconds=3.0)

    # Then several invocations produced one manifest equal to the single-run result
    assert continuations >= 2
    manifest = assert_complete(stack, "results/long.jsonl/", len(rows))
    assert manifest["segments"] == continuations + 1
    assert manifest["counts"] == whole["counts"]
    assert manifest["providers"] == whole["providers"]
    assert manifest["status"] == whole["status"]
    assert len(manifest["chunks"]) == len(whole["chunks"])
    split = sorted(
        (o["line"], o["outcome"], o["user_id"]) for o in stack.outcomes("results/long.jsonl/")
    )
    single = sorted(
        (o["line"], o["outcome"], o["user_id"]) for o in stack.outcomes("results/whole.jsonl/")
    )
    assert split == single
    assert len(stack.vital.posted_connections()) == 400


@pytest.mark.filterwarnings("ignore:No application metrics to publish")  # the failed hand-off
def test_without_a_continuation_queue_the_error_gives_the_event_that_continues(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The error names the continuation's own event: invoking the function again with the same
    # S3 event would find the hand-off saved and fail the same way on every retry.
    from bulk_import.errors import ConfigurationError  # noqa: PLC0415 - what the handler raises

    rows = upload(stack, "incoming/no-queue.jsonl", 200)
    monkeypatch.delenv("CONTINUATION_QUEUE_URL", raising=False)
    monkeypatch.setenv("CHUNK_SIZE", "10")
    monkeypatch.setenv("MAX_CONCURRENCY", "1")
    monkeypatch.setenv("SAFETY_MARGIN_SECONDS", "2.8")
    stack.vital.latency_seconds = 0.05
    with pytest.raises(ConfigurationError, match="CONTINUATION_QUEUE_URL is not set") as failed:
        stack.import_keys("incoming/no-queue.jsonl", timeout_seconds=3.0)
    message = str(failed.value)
    continuation = json.loads(message[message.index("{") :])

    monkeypatch.setenv("SAFETY_MARGIN_SECONDS", "0")
    result = stack.invoke(continuation)

    assert result["files"][0]["status"] == "partial"  # the rejected row
    manifest = assert_complete(stack, "results/no-queue.jsonl/", len(rows))
    assert manifest["segments"] == 2
    assert len(stack.vital.posted_connections()) == 200


def test_a_margin_below_what_a_request_needs_still_defers_chunks_to_the_next_invocation(
    stack: Stack, monkeypatch: pytest.MonkeyPatch, continuation_queue: str
) -> None:
    # SAFETY_MARGIN_SECONDS=0: the client still needs 2 s left to start a request (1 s kept
    # back, 1 s for the attempt). Chunks handed to it with less would come back errored
    # ("not sent: too little Lambda time left") instead of waiting for the next invocation.
    rows = upload(stack, "incoming/no-margin.jsonl", 400)
    monkeypatch.setenv("CHUNK_SIZE", "10")
    monkeypatch.setenv("MAX_CONCURRENCY", "2")
    monkeypatch.setenv("SAFETY_MARGIN_SECONDS", "0")
    stack.vital.latency_seconds = 0.05
    first = stack.invoke(s3_event(stack.bucket, ["incoming/no-margin.jsonl"]), timeout_seconds=2.6)
    assert first["files"][0]["status"] == "continued"
    drain_queue(stack, continuation_queue, timeout_seconds=2.6)

    manifest = assert_complete(stack, "results/no-margin.jsonl/", len(rows))
    assert manifest["counts"]["errored"] == 0
    assert manifest["counts"]["imported"] == 400
    assert manifest["segments"] >= 2


def test_a_setting_changed_between_invocations_fails_the_file_instead_of_replaying(
    stack: Stack, monkeypatch: pytest.MonkeyPatch, continuation_queue: str
) -> None:
    # Given an import handed on, with some rows over MAX_ROW_BYTES (so rejected, not chunked)
    rows = [make_row(n, **({"access_token": "x" * 1500} if n % 7 == 3 else {})) for n in range(400)]
    stack.vital.add_known_users(*(r["user_id"] for r in rows))
    stack.put("incoming/redeploy.jsonl", encode_rows(rows, "jsonl"))
    monkeypatch.setenv("CHUNK_SIZE", "10")
    monkeypatch.setenv("MAX_CONCURRENCY", "2")
    monkeypatch.setenv("MAX_ROW_BYTES", "1024")
    monkeypatch.setenv("SAFETY_MARGIN_SECONDS", "2.6")
    stack.vital.latency_seconds = 0.05
    first = stack.invoke(s3_event(stack.bucket, ["incoming/redeploy.jsonl"]), timeout_seconds=3.0)
    assert first["files"][0]["status"] == "continued"

    # When a deploy raises MAX_ROW_BYTES before the next invocation (the same rows would now be
    # accepted, and the checkpoint's chunk numbers would point at other rows)
    monkeypatch.setenv("MAX_ROW_BYTES", "1000000")
    monkeypatch.setenv("SAFETY_MARGIN_SECONDS", "0")
    drain_queue(stack, continuation_queue, timeout_seconds=900)

    # Then the file fails, naming the setting, and no row is sent twice or counted twice
    manifest = stack.manifest("results/redeploy.jsonl/")
    assert manifest["status"] == "failed"
    assert manifest["error"]["message"].startswith("MAX_ROW_BYTES changed")
    posted = stack.vital.posted_connections()
    assert len(posted) == len(set(posted))
    lines = [int(o["line"]) for o in stack.outcomes("results/redeploy.jsonl/")]
    assert len(lines) == len(set(lines)) == manifest["counts"]["rows"]


def test_a_continuation_stops_if_an_unversioned_key_was_uploaded_again_meanwhile(
    stack: Stack, monkeypatch: pytest.MonkeyPatch, continuation_queue: str
) -> None:
    # Given an import handed on in a bucket without versioning
    upload(stack, "incoming/overwritten.jsonl", 400)
    monkeypatch.setenv("CHUNK_SIZE", "10")
    monkeypatch.setenv("MAX_CONCURRENCY", "2")
    monkeypatch.setenv("SAFETY_MARGIN_SECONDS", "2.6")
    stack.vital.latency_seconds = 0.05
    first = stack.invoke(s3_event(stack.bucket, ["incoming/overwritten.jsonl"]), 3.0)
    assert first["files"][0]["status"] == "continued"
    sent = len(stack.vital.bulk_import_requests())

    # When the key is uploaded again before the continuation runs (its own event comes later)
    stack.put("incoming/overwritten.jsonl", encode_rows([make_row(n) for n in range(5)], "jsonl"))
    monkeypatch.setenv("SAFETY_MARGIN_SECONDS", "0")
    drain_queue(stack, continuation_queue, timeout_seconds=900)

    # Then the continuation sends nothing and writes no results mixing the two uploads: only
    # the record of the first, superseded by the second (told apart by its ETag)
    assert len(stack.vital.bulk_import_requests()) == sent
    listed = stack.s3.list_objects_v2(Bucket=stack.bucket, Prefix="results/overwritten.jsonl/")
    assert "results/overwritten.jsonl/outcomes.csv" not in {
        o["Key"] for o in listed.get("Contents", [])
    }
    record = stack.manifest("results/overwritten.jsonl/")
    assert record["status"] == "superseded"
    assert record["outcomes_key"] is None
    newer = stack.s3.head_object(Bucket=stack.bucket, Key="incoming/overwritten.jsonl")
    assert record["superseded_by"]["etag"] == newer["ETag"].strip('"')
    assert record["source"]["etag"] != record["superseded_by"]["etag"]
    assert 0 < record["counts"]["rows"] < 402
    assert record["counts"]["rows"] == sum(
        n for name, n in record["counts"].items() if name != "rows"
    )


def test_a_chunk_that_waited_too_long_for_a_thread_goes_to_the_next_invocation(
    stack: Stack, monkeypatch: pytest.MonkeyPatch, continuation_queue: str
) -> None:
    # One posting thread, 1 s a request, 3.8 s of Lambda time of which 2 s is margin: the probe
    # chunk is answered at ~1.2 s, chunk 2 is sent and chunk 3 waits in the queue behind it.
    # Chunk 2 is answered at ~2.2 s, past the margin: sending chunk 3 then would be refused
    # for lack of time, so it is held back and the next invocation sends it.
    rows = [make_row(n) for n in range(40)]
    stack.vital.add_known_users(*(r["user_id"] for r in rows))
    stack.put("incoming/late.jsonl", encode_rows(rows, "jsonl"))
    monkeypatch.setenv("CHUNK_SIZE", "10")
    monkeypatch.setenv("MAX_CONCURRENCY", "1")
    monkeypatch.setenv("SAFETY_MARGIN_SECONDS", "2")
    stack.vital.latency_seconds = 1.0

    first = stack.invoke(s3_event(stack.bucket, ["incoming/late.jsonl"]), timeout_seconds=3.8)
    sent_first = len(stack.vital.bulk_import_requests())
    continuations = drain_queue(stack, continuation_queue, timeout_seconds=3.8)

    assert first["files"][0]["status"] == "continued"
    # 2 as described; 1 only on a machine so slow that start-up took 0.8 s (chunk 2 then waits
    # for the next invocation before it is handed over, and the rest holds all the same).
    assert sent_first in (1, 2)
    assert continuations >= 1
    manifest = assert_complete(stack, "results/late.jsonl/", 40)
    assert manifest["counts"]["imported"] == 40
    assert len(stack.vital.bulk_import_requests()) == 4  # each chunk once


def test_duplicate_continuation_message_is_ignored(
    stack: Stack, monkeypatch: pytest.MonkeyPatch, continuation_queue: str
) -> None:
    upload(stack, "incoming/dup.jsonl", 200)
    monkeypatch.setenv("CHUNK_SIZE", "10")
    monkeypatch.setenv("MAX_CONCURRENCY", "1")
    monkeypatch.setenv("SAFETY_MARGIN_SECONDS", "2.8")
    stack.vital.latency_seconds = 0.05  # 20 chunks one at a time: ~1 s, well past 0.2 s
    stack.invoke(s3_event(stack.bucket, ["incoming/dup.jsonl"]), timeout_seconds=3.0)
    sqs = boto3.client("sqs")
    (message,) = sqs.receive_message(QueueUrl=continuation_queue)["Messages"]
    sqs.delete_message(QueueUrl=continuation_queue, ReceiptHandle=message["ReceiptHandle"])
    event = {"Records": [{"eventSource": "aws:sqs", "body": message["Body"]}]}

    monkeypatch.setenv("SAFETY_MARGIN_SECONDS", "0")
    stack.invoke(event)  # finishes the file
    before = len(stack.vital.bulk_import_requests())
    again = stack.invoke(event)

    assert again["files"][0]["status"] == "skipped"
    assert len(stack.vital.bulk_import_requests()) == before
    assert_complete(stack, "results/dup.jsonl/", 202)


def test_failure_threshold_stops_the_file(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAILURE_THRESHOLD_PERCENT", "20")
    rows = [make_row(n) for n in range(400)]
    stack.vital.add_known_users(*(user_id(n) for n in range(0, 400, 2)))  # half fail
    stack.put("incoming/bad.jsonl", encode_rows(rows, "jsonl"))

    stack.import_keys("incoming/bad.jsonl")

    manifest = assert_complete(stack, "results/bad.jsonl/", 400)
    assert manifest["status"] == "failed"
    assert manifest["error"]["type"] == "ImportAborted"
    assert "FAILURE_THRESHOLD_PERCENT=20%" in manifest["error"]["message"]
    assert len(stack.vital.posted_connections()) < 400
    outcomes = stack.outcomes("results/bad.jsonl/")
    not_sent = [o for o in outcomes if o["detail"].startswith("not sent")]
    assert len(not_sent) == 400 - len(stack.vital.posted_connections())
    retry = [json.loads(line) for line in stack.get("retry/bad.jsonl/retry.jsonl").splitlines()]
    errored_or_failed = {o["user_id"] for o in outcomes if o["outcome"] in {"errored", "failed"}}
    assert {r["user_id"] for r in retry} == errored_or_failed
    assert len(retry) == len(errored_or_failed) == manifest["counts"]["failed"] + len(not_sent)
