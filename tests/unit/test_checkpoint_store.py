"""The checkpoint store against moto's in-process S3 (botocore patched: no sockets).

moto honours ``IfNoneMatch="*"`` and ``IfMatch`` on PutObject and ``IfMatch`` on DeleteObject,
answering ``PreconditionFailed`` (and ``NoSuchKey`` for an If-Match on a missing key) as S3
does; the first tests pin that down, so the rest mean what they say.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from moto import mock_aws

from bulk_import.errors import Superseded
from bulk_import.model import Checkpoint, Counts, Manifest, SourceRef
from bulk_import.storage.checkpoint_store import CheckpointStore
from tests.fakes import fake_aws_env

BUCKET = "bucket-a"
RESULTS = "results/oura/a.jsonl/"
RETRY = "retry/oura/a.jsonl/"
CHECKPOINT_KEY = RESULTS + "_state/checkpoint.json"
SOURCE = SourceRef(bucket=BUCKET, key="incoming/oura/a.jsonl", version_id="v1")


@pytest.fixture(scope="module")
def client() -> Iterator[Any]:
    """One client for the module (building one costs ~0.1 s); moto's state is per test."""
    with pytest.MonkeyPatch.context() as mp:
        fake_aws_env(mp)
        yield boto3.client("s3")


@pytest.fixture
def s3(client: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    fake_aws_env(monkeypatch)
    with mock_aws():
        client.create_bucket(Bucket=BUCKET)
        yield client


def store(s3: Any, run: str = "0000000a") -> CheckpointStore:
    return CheckpointStore(s3, BUCKET, RESULTS, RETRY, run)


def checkpoint(**fields: object) -> Checkpoint:
    base: dict[str, object] = {
        "source": SOURCE,
        "fingerprint": "f",
        "started_at": "2026-01-01T00:00:00.000Z",
        "next_segment": 0,
    }
    return Checkpoint.model_validate({**base, **fields})


def stored(s3: Any) -> Checkpoint:
    body = s3.get_object(Bucket=BUCKET, Key=CHECKPOINT_KEY)["Body"].read()
    return Checkpoint.model_validate_json(body)


def keys(s3: Any) -> set[str]:
    return {o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET).get("Contents", [])}


def put(s3: Any, *names: str) -> None:
    for name in names:
        s3.put_object(Bucket=BUCKET, Key=name, Body=b"x\n")


def error_code(exc: pytest.ExceptionInfo[ClientError]) -> str:
    return str(exc.value.response["Error"]["Code"])


# --- what moto's S3 does with conditional requests --------------------------------------------


def test_moto_refuses_a_create_only_write_over_an_existing_object(s3: Any) -> None:
    put(s3, "k")
    with pytest.raises(ClientError) as exc:
        s3.put_object(Bucket=BUCKET, Key="k", Body=b"2", IfNoneMatch="*")
    assert error_code(exc) == "PreconditionFailed"


def test_moto_refuses_a_replace_only_if_unchanged_write_after_a_change(s3: Any) -> None:
    etag = s3.put_object(Bucket=BUCKET, Key="k", Body=b"1")["ETag"]
    s3.put_object(Bucket=BUCKET, Key="k", Body=b"2", IfMatch=etag)
    with pytest.raises(ClientError) as exc:
        s3.put_object(Bucket=BUCKET, Key="k", Body=b"3", IfMatch=etag)
    assert error_code(exc) == "PreconditionFailed"
    with pytest.raises(ClientError) as exc:
        s3.delete_object(Bucket=BUCKET, Key="k", IfMatch=etag)
    assert error_code(exc) == "PreconditionFailed"


# --- create only if absent, replace only if unchanged -----------------------------------------


def test_given_no_checkpoint_when_saved_then_it_is_created_with_this_runs_write(s3: Any) -> None:
    mine = store(s3)
    assert mine.load() is None
    mine.save(checkpoint(lease=4))
    assert stored(s3).write == "0000000a:1"
    assert stored(s3).lease == 4
    assert mine.still_mine()


def test_given_its_own_checkpoint_when_saved_again_then_it_is_replaced(s3: Any) -> None:
    mine = store(s3)
    mine.save(checkpoint(lease=4))
    mine.save(checkpoint(lease=8))
    mine.save(checkpoint(lease=12))
    assert (stored(s3).write, stored(s3).lease) == ("0000000a:3", 12)
    assert mine.still_mine()


def test_given_another_run_created_the_checkpoint_when_this_one_creates_it_then_superseded(
    s3: Any,
) -> None:
    # Given two deliveries of one event that both found no state
    first, second = store(s3, "0000000a"), store(s3, "0000000b")
    assert first.load() is None
    assert second.load() is None
    first.save(checkpoint(lease=4))
    # When the second creates its checkpoint, it learns that it lost
    with pytest.raises(Superseded):
        second.save(checkpoint(lease=2))
    assert (stored(s3).write, stored(s3).lease) == ("0000000a:1", 4)


def test_given_another_run_replaced_the_checkpoint_when_this_one_saves_then_superseded(
    s3: Any,
) -> None:
    first = store(s3, "0000000a")
    first.save(checkpoint(lease=4))
    # Given a newer import that read the checkpoint and replaced it
    newer = store(s3, "0000000b")
    assert newer.load() is not None
    newer.save(checkpoint(lease=1, next_segment=0))
    # When the first saves again, its write is refused and nothing of it lands
    with pytest.raises(Superseded):
        first.save(checkpoint(lease=8))
    assert stored(s3).write == "0000000b:1"
    assert not first.still_mine()
    assert newer.still_mine()


def test_given_another_run_deleted_the_checkpoint_when_this_one_saves_then_superseded(
    s3: Any,
) -> None:
    first = store(s3, "0000000a")
    first.save(checkpoint())
    other = store(s3, "0000000b")
    other.load()
    other.delete([])
    assert not first.still_mine()
    with pytest.raises(Superseded):
        first.save(checkpoint(lease=8))
    assert CHECKPOINT_KEY not in keys(s3)


def test_given_a_write_that_landed_but_whose_answer_was_lost_when_retried_then_it_is_its_own(
    s3: Any,
) -> None:
    # The same run's first write landed; its retry (the same write) finds it there
    store(s3, "0000000a").save(checkpoint(lease=4))
    retried = store(s3, "0000000a")
    retried.save(checkpoint(lease=4))
    assert retried.still_mine()
    # and goes on replacing it as its own
    retried.save(checkpoint(lease=8))
    assert (stored(s3).write, stored(s3).lease) == ("0000000a:2", 8)


def test_given_a_later_write_of_the_same_run_is_stored_when_an_earlier_one_fails_then_it_is_raised(
    s3: Any,
) -> None:
    earlier = store(s3, "0000000a")
    earlier.save(checkpoint())
    earlier.save(checkpoint())
    replay = store(s3, "0000000a")
    with pytest.raises(ClientError) as exc:
        replay.save(checkpoint())
    assert error_code(exc) == "PreconditionFailed"
    assert stored(s3).write == "0000000a:2"


def test_given_a_loaded_checkpoint_when_saved_then_it_replaces_that_one(s3: Any) -> None:
    store(s3, "0000000a").save(checkpoint(lease=4))
    resumed = store(s3, "0000000b")
    loaded = resumed.load()
    assert loaded is not None
    assert loaded.lease == 4
    resumed.save(loaded.model_copy(update={"lease": 6}))
    assert (stored(s3).write, stored(s3).lease) == ("0000000b:1", 6)


# --- still_mine ------------------------------------------------------------------------------


def test_still_mine_without_a_checkpoint_anywhere(s3: Any) -> None:
    assert store(s3).still_mine()


def test_still_mine_is_false_for_a_run_that_never_read_the_stored_checkpoint(s3: Any) -> None:
    store(s3, "0000000a").save(checkpoint())
    assert not store(s3, "0000000b").still_mine()


# --- finish -----------------------------------------------------------------------------------


def test_given_its_own_checkpoint_when_finished_then_every_part_and_the_checkpoint_go(
    s3: Any,
) -> None:
    mine = store(s3, "0000000a")
    named = [mine.outcome_part_key(1), mine.retry_part_key(1)]
    # A part stored before a checkpoint could name it (the run died between the two)
    orphan = mine.retry_part_key(2)
    earlier_run = store(s3, "0000000c").outcome_part_key(1)
    unrelated = [RESULTS + "_state/notes.txt", RESULTS + "manifest.json", "incoming/oura/a.jsonl"]
    put(s3, *named, orphan, earlier_run, *unrelated)
    mine.save(checkpoint(outcome_parts=named[:1], retry_parts=named[1:]))
    mine.finish(named)
    assert keys(s3) == set(unrelated)


def test_given_the_checkpoint_was_taken_over_when_finished_then_nothing_is_deleted(
    s3: Any,
) -> None:
    mine = store(s3, "0000000a")
    part = mine.outcome_part_key(1)
    put(s3, part)
    mine.save(checkpoint(outcome_parts=[part]))
    newer = store(s3, "0000000b")
    newer.load()
    newer.save(checkpoint())
    before = keys(s3)
    mine.finish([part])
    assert keys(s3) == before
    assert stored(s3).write == "0000000b:1"


def test_given_parts_listed_earlier_when_finished_then_those_are_deleted_too(s3: Any) -> None:
    mine = store(s3, "0000000a")
    part, orphan = mine.outcome_part_key(1), mine.outcome_part_key(2)
    put(s3, part, orphan)
    mine.save(checkpoint(outcome_parts=[part]))
    listed = mine.stored_parts()
    mine.finish([part], listed)
    assert keys(s3) == set()


def test_stored_parts_lists_only_part_shaped_names_under_both_prefixes(s3: Any) -> None:
    mine = store(s3, "0000000a")
    parts = {
        mine.outcome_part_key(1),
        mine.outcome_part_key(12),
        mine.retry_part_key(1),
        store(s3, "deadbeef").retry_part_key(3),
    }
    others = {
        CHECKPOINT_KEY,
        RESULTS + "_state/outcomes-0000000a-00001.csv.tmp",
        RESULTS + "_state/outcomes-NOTHEX00-00001.csv",
        # Another key's results nested under this one's state prefix
        RESULTS + "_state/x.jsonl/_state/outcomes-0000000a-00001.csv",
        RESULTS + "outcomes.csv",
        RETRY + "retry.jsonl",
    }
    put(s3, *parts, *others)
    assert set(mine.stored_parts()) == parts
    assert len(mine.stored_parts()) == len(parts)


def test_named_parts_are_those_of_the_stored_checkpoint_whoever_wrote_it(s3: Any) -> None:
    mine = store(s3, "0000000a")
    assert mine.named_parts() == set()
    other = store(s3, "0000000b")
    other.save(checkpoint(outcome_parts=["o1"], retry_parts=["r1"]))
    assert mine.named_parts() == {"o1", "r1"}


def test_delete_removes_the_parts_and_the_checkpoint_whoever_wrote_them(s3: Any) -> None:
    old = store(s3, "0000000a")
    part = old.outcome_part_key(1)
    put(s3, part)
    old.save(checkpoint(outcome_parts=[part]))
    newer = store(s3, "0000000b")
    newer.load()
    newer.delete([part])
    assert keys(s3) == set()
    # The newer run then creates its own checkpoint
    newer.save(checkpoint())
    assert stored(s3).write == "0000000b:1"


# --- existing_manifest ------------------------------------------------------------------------


def test_existing_manifest_when_there_is_none(s3: Any) -> None:
    assert store(s3).existing_manifest() is None


def test_existing_manifest_reads_a_stored_manifest(s3: Any) -> None:
    manifest = Manifest(
        source=SOURCE,
        status="partial",
        started_at="2026-01-01T00:00:00.000Z",
        finished_at="2026-01-01T00:01:00.000Z",
        counts=Counts(rows=2, imported=1, failed=1),
        outcomes_key=RESULTS + "outcomes.csv",
    )
    s3.put_object(Bucket=BUCKET, Key=RESULTS + "manifest.json", Body=manifest.model_dump_json())
    assert store(s3).existing_manifest() == manifest


@pytest.mark.parametrize(
    "body",
    [b"", b"not json", b"{}", b'{"source": {"bucket": "b"}}', b"[1, 2]", b"\xff\xfe"],
)
def test_existing_manifest_ignores_an_unreadable_manifest(s3: Any, body: bytes) -> None:
    s3.put_object(Bucket=BUCKET, Key=RESULTS + "manifest.json", Body=body)
    assert store(s3).existing_manifest() is None


# --- record_superseded ------------------------------------------------------------------------


def _manifest(source: SourceRef, status: str = "succeeded", **fields: object) -> Manifest:
    return Manifest.model_validate(
        {
            "source": source,
            "status": status,
            "started_at": "2026-01-01T00:00:00.000Z",
            "finished_at": "2026-01-01T00:01:00.000Z",
            "counts": Counts(rows=3, imported=3),
            "outcomes_key": RESULTS + "outcomes.csv",
            **fields,
        }
    )


OLD = SOURCE.model_copy(update={"version_id": "v1", "sequencer": "0A"})
NEW = SOURCE.model_copy(update={"version_id": "v2", "sequencer": "0B"})
RECORD = _manifest(OLD, "superseded", outcomes_key=None, superseded_by=NEW)


def _current(s3: Any) -> Manifest:
    body = s3.get_object(Bucket=BUCKET, Key=RESULTS + "manifest.json")["Body"].read()
    return Manifest.model_validate_json(body)


@pytest.mark.parametrize(
    "before",
    [
        None,  # the first import of the key
        _manifest(SOURCE.model_copy(update={"version_id": "v0", "sequencer": "09"})),  # older
        _manifest(OLD, "superseded", outcomes_key=None, superseded_by=NEW),  # its own, earlier
    ],
)
def test_a_superseded_record_replaces_no_manifest_an_older_ones_or_its_own(
    s3: Any, before: Manifest | None
) -> None:
    if before is not None:
        s3.put_object(Bucket=BUCKET, Key=RESULTS + "manifest.json", Body=before.model_dump_json())
    assert store(s3).record_superseded(RECORD)
    assert _current(s3) == RECORD


@pytest.mark.parametrize(
    "newer",
    # newer, of no known order, or this upload's own finished report (its state left behind)
    [NEW, NEW.model_copy(update={"sequencer": None}), OLD],
)
def test_a_superseded_record_never_replaces_a_newer_or_finished_manifest(
    s3: Any, newer: SourceRef
) -> None:
    theirs = _manifest(newer)
    s3.put_object(Bucket=BUCKET, Key=RESULTS + "manifest.json", Body=theirs.model_dump_json())
    assert not store(s3).record_superseded(RECORD)
    assert _current(s3) == theirs


def test_a_manifest_written_between_the_read_and_the_record_is_kept(s3: Any) -> None:
    # The newer import finishes between the record's read and its write: the conditional
    # write fails, and the newer manifest stays.
    theirs = _manifest(NEW)

    def finish_first(**_: Any) -> None:
        s3.meta.events.unregister("before-call.s3.PutObject", finish_first)
        s3.put_object(Bucket=BUCKET, Key=RESULTS + "manifest.json", Body=theirs.model_dump_json())

    s3.meta.events.register("before-call.s3.PutObject", finish_first)
    try:
        assert not store(s3).record_superseded(RECORD)
    finally:
        s3.meta.events.unregister("before-call.s3.PutObject", finish_first)
    assert _current(s3) == theirs


def test_a_handoff_record_names_the_checkpoint_write_it_refines_and_goes_with_the_state(
    s3: Any,
) -> None:
    # Given a run's second checkpoint write, then a hand-off record
    mine = store(s3, run="0000000c")
    mine.save(checkpoint(lease=4))
    mine.save(checkpoint(lease=8))
    mine.save_handoff(6, [])
    # When another run loads the state
    other = store(s3, run="0000000d")
    cp = other.load()
    record = other.load_handoff()
    # Then the record refines exactly that write
    assert cp is not None
    assert record is not None
    assert (cp.write, record.refines, record.below) == ("0000000c:2", "0000000c:2", 6)
    assert other.write_id == "0000000c:2"
    # And finishing the import removes it with the checkpoint
    other.finish([])
    assert keys(s3) == set()


def test_a_newer_upload_removes_the_older_imports_handoff_record(s3: Any) -> None:
    older = store(s3, run="0000000c")
    older.save(checkpoint(lease=4))
    older.save_handoff(2, [])
    store(s3, run="0000000d").delete([])
    assert keys(s3) == set()


def test_of_two_runs_resuming_one_import_only_one_hands_chunks_over(s3: Any) -> None:
    # Given a checkpoint and its hand-off record, and two runs that both resume from them
    first = store(s3, run="0000000c")
    first.save(checkpoint(lease=8))
    first.save_handoff(2, [])
    a, b = store(s3, run="0000000d"), store(s3, run="0000000e")
    for run in (a, b):
        run.load()
        run.load_handoff()
    # When one of them records a hand-off, then the other
    b.save_handoff(4, [])
    # Then the other learns it is not alone before it hands anything over
    with pytest.raises(Superseded, match="another invocation is handing"):
        a.save_handoff(3, [])
    record = store(s3).load_handoff()
    assert record is not None
    assert (record.write, record.below) == ("0000000e:h1", 4)


def test_a_fresh_import_replaces_a_record_an_older_import_of_the_key_left(s3: Any) -> None:
    left = store(s3, run="0000000c")
    left.save(checkpoint(lease=4))
    left.save_handoff(2, [])
    s3.delete_object(Bucket=BUCKET, Key=CHECKPOINT_KEY)  # that import's state, but for the record
    fresh = store(s3, run="0000000d")
    assert fresh.load() is None
    fresh.save(checkpoint(lease=4))
    fresh.save_handoff(1, [])
    record = fresh.load_handoff()
    assert record is not None
    assert (record.write, record.refines) == ("0000000d:h1", "0000000d:1")


def test_a_record_written_ahead_is_not_stored_once_a_checkpoint_overtook_it(s3: Any) -> None:
    # Given a record computed under a run's first checkpoint write, then a second write
    mine = store(s3, run="0000000c")
    mine.save(checkpoint(lease=4))
    refines = mine.write_id
    mine.save(checkpoint(lease=8))
    # When the record is written, naming the write it was computed under
    stored_it = mine.save_handoff(6, [], refines=refines)
    # Then nothing is stored: it would narrow a lease it never saw
    assert stored_it is False
    assert store(s3).load_handoff() is None
    # While one computed under the stored write is
    assert mine.save_handoff(10, [], refines=mine.write_id) is True


def test_a_record_written_ahead_is_not_stored_after_a_checkpoint_write_failed(s3: Any) -> None:
    # Given a run with a checkpoint and a record, and another run that took the import over
    # (its own checkpoint) without handing anything over yet
    first = store(s3, run="0000000c")
    first.save(checkpoint(lease=4))
    first.save_handoff(2, [])
    newer = store(s3, run="0000000d")
    newer.load()
    newer.load_handoff()
    newer.save(checkpoint(lease=4))
    # When the first run's next checkpoint write fails, and the record it was writing ahead
    # under its last stored write comes after
    with pytest.raises(Superseded):
        first.save(checkpoint(lease=8))
    stored_it = first.save_handoff(6, [], refines=first.write_id)
    # Then that record is not stored, and the newer run still hands its chunks over
    assert stored_it is False
    assert newer.save_handoff(3, []) is True
