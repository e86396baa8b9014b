"""A run's first step: start fresh, resume from the checkpoint, or skip, decided from S3's state."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bulk_import.config import Settings
from bulk_import.errors import ConfigurationError, ImportAborted
from bulk_import.model import Checkpoint, Counts, ErrorInfo, Manifest, ObjectRef, SourceRef
from bulk_import.model.checkpoint import older_than
from bulk_import.run import replay, resume
from bulk_import.run.context import FileResult, RunContext, same_object
from bulk_import.run.ledger import Replay
from bulk_import.wiring import build
from local.context import LocalLambdaContext
from tests.fakes import FakeS3, StoreState, stores

BUCKET = "bucket-a"
KEY = "incoming/oura/export.jsonl"
SETTINGS = Settings.from_env({"VITAL_API_KEY_SECRET": "vital-key"})
PARTS = (
    ["results/oura/export.jsonl/_state/outcomes-0000000a-00001.csv"],
    ["retry/oura/export.jsonl/_state/retry-0000000a-00001.jsonl"],
)


def ref(segment: int = 0, **fields: str | None) -> ObjectRef:
    return ObjectRef.model_validate({"bucket": BUCKET, "key": KEY, "segment": segment, **fields})


def source(**fields: str | int | None) -> SourceRef:
    return SourceRef.model_validate({"bucket": BUCKET, "key": KEY, **fields})


def checkpoint(of: SourceRef, **fields: object) -> Checkpoint:
    base: dict[str, object] = {
        "source": of,
        "fingerprint": replay.fingerprint(SETTINGS),
        "started_at": "2026-01-01T00:00:00.000Z",
        "next_segment": 0,
        "outcome_parts": PARTS[0],
        "retry_parts": PARTS[1],
    }
    return Checkpoint.model_validate({**base, **fields})


def manifest(of: SourceRef) -> Manifest:
    return Manifest(
        source=of,
        status="succeeded",
        started_at="2026-01-01T00:00:00.000Z",
        finished_at="2026-01-01T00:01:00.000Z",
        counts=Counts(rows=1, imported=1),
        outcomes_key="results/oura/export.jsonl/outcomes.csv",
    )


type MakeContext = Callable[[ObjectRef, StoreState], RunContext]


@pytest.fixture
def make_context() -> Iterator[MakeContext]:
    made: list[RunContext] = []

    def make(r: ObjectRef, state: StoreState) -> RunContext:
        wiring = build(SETTINGS, LocalLambdaContext(900), s3=FakeS3(), new_store=stores(state))
        ctx = RunContext(r, wiring)
        made.append(ctx)
        return ctx

    yield make
    for ctx in made:
        ctx.ledger.close()


def skipped(result: FileResult | None) -> str:
    assert result is not None
    assert result.skipped is not None, result
    assert result.manifest is None
    assert result.continuation is None
    return result.skipped


# --- same_object / older_than -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("mine", "theirs", "same"),
    [
        ({"version_id": "v1"}, {"version_id": "v1"}, True),
        ({"version_id": "v1"}, {"version_id": "v2"}, False),
        # The version id decides before anything else
        ({"version_id": "v1", "etag": "e"}, {"version_id": "v2", "etag": "e"}, False),
        ({"version_id": "v1", "sequencer": "0A"}, {"version_id": "v1", "sequencer": "0B"}, True),
        # Unversioned: the sequencer tells two uploads of identical content apart
        ({"sequencer": "0A", "etag": "e"}, {"sequencer": "0B", "etag": "e"}, False),
        ({"sequencer": "0A", "etag": "e1"}, {"sequencer": "0A", "etag": "e2"}, True),
        # A manual invocation (no sequencer): the ETag decides
        ({"etag": "e"}, {"sequencer": "0A", "etag": "e"}, True),
        ({"etag": "e1"}, {"etag": "e2"}, False),
        # Nothing comparable: not known to be the same upload
        ({"version_id": "v1"}, {"etag": "e"}, False),
        ({}, {}, False),
    ],
)
def test_same_object(mine: dict[str, str], theirs: dict[str, str], same: bool) -> None:
    assert same_object(ref(**mine), source(**theirs)) is same


@pytest.mark.parametrize(
    ("mine", "theirs", "older"),
    [
        ("0A", "0B", True),
        ("0B", "0A", False),
        ("0A", "0A", False),
        # Sequencers of different lengths compare as numbers, not as text
        ("FF", "0100", True),
        ("0100", "FF", False),
        ("9", "10", True),
        # Case does not matter
        ("0a", "0B", True),
        ("0b", "0A", False),
        # Without both, nothing is known to be older
        (None, "0A", False),
        ("0A", None, False),
    ],
)
def test_older_than(mine: str | None, theirs: str | None, older: bool) -> None:
    assert older_than(ref(sequencer=mine), source(sequencer=theirs)) is older


@given(st.integers(0, 2**72), st.integers(0, 2**72), st.integers(0, 4), st.integers(0, 4))
def test_older_than_orders_sequencers_as_hex_numbers(
    a: int, b: int, pad_a: int, pad_b: int
) -> None:
    mine = "0" * pad_a + f"{a:X}"
    theirs = "0" * pad_b + f"{b:x}"
    assert older_than(ref(sequencer=mine), source(sequencer=theirs)) is (a < b)


# --- prepare: start fresh ----------------------------------------------------------------------


def test_given_no_state_when_prepared_then_the_run_starts_fresh(make_context: MakeContext) -> None:
    state = StoreState()
    ctx = make_context(ref(version_id="v1"), state)
    assert resume.prepare(ctx) is None
    assert ctx.ledger.checkpoint is None
    assert ctx.stop.error is None
    assert (state.deleted, state.finished, state.saved) == ([], [], [])


def test_given_a_manifest_of_an_older_upload_when_a_newer_one_arrives_then_it_starts_fresh(
    make_context: MakeContext,
) -> None:
    state = StoreState(manifest=manifest(source(sequencer="0A", etag="e1")))
    ctx = make_context(ref(sequencer="0B", etag="e2"), state)
    assert resume.prepare(ctx) is None


# --- prepare: duplicates and late events ------------------------------------------------------


def test_given_the_version_was_imported_when_its_event_comes_again_then_it_is_skipped(
    make_context: MakeContext,
) -> None:
    state = StoreState(manifest=manifest(source(version_id="v1")))
    ctx = make_context(ref(version_id="v1"), state)
    result = resume.prepare(ctx)
    assert skipped(result) == "this object version was already imported"
    assert result is not None
    assert result.manifest_key == "results/oura/export.jsonl/manifest.json"
    assert (state.deleted, state.finished) == ([], [])


def test_given_a_finished_import_whose_state_was_left_when_its_event_comes_again_then_it_is_cleared(
    make_context: MakeContext,
) -> None:
    of = source(version_id="v1")
    state = StoreState(checkpoint=checkpoint(of), manifest=manifest(of))
    ctx = make_context(ref(version_id="v1"), state)
    reason = skipped(resume.prepare(ctx))
    assert "already imported" in reason
    assert state.finished == [PARTS[0] + PARTS[1]]
    assert state.checkpoint is None
    assert ctx.ledger.checkpoint is None


def test_given_a_continuation_when_the_import_already_finished_then_it_is_skipped(
    make_context: MakeContext,
) -> None:
    state = StoreState(manifest=manifest(source(version_id="v1")))
    ctx = make_context(ref(segment=2, version_id="v1"), state)
    assert skipped(resume.prepare(ctx)) == "this import already finished"


def test_given_a_newer_upload_was_imported_when_an_older_ones_event_arrives_then_it_is_skipped(
    make_context: MakeContext,
) -> None:
    state = StoreState(manifest=manifest(source(sequencer="0B", etag="e2")))
    ctx = make_context(ref(sequencer="0A", etag="e1"), state)
    assert skipped(resume.prepare(ctx)) == "a newer upload of this key was already imported"


def test_given_a_newer_upload_is_importing_when_an_older_ones_event_arrives_then_it_is_skipped(
    make_context: MakeContext,
) -> None:
    newer = checkpoint(source(sequencer="0B", etag="e2"))
    state = StoreState(checkpoint=newer)
    ctx = make_context(ref(sequencer="0A", etag="e1"), state)
    assert "newer upload" in skipped(resume.prepare(ctx))
    # The newer upload's state is left alone
    assert state.checkpoint is newer
    assert state.deleted == []


# --- prepare: a newer upload replaces an unfinished import ------------------------------------


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ({"version_id": "v1"}, {"version_id": "v2"}),
        ({"sequencer": "0A", "etag": "e1"}, {"sequencer": "0B", "etag": "e2"}),
        # An operator's invocation without a sequencer: a different ETag is a new upload
        ({"sequencer": "0A", "etag": "e1"}, {"etag": "e2"}),
    ],
)
def test_given_an_unfinished_import_when_a_newer_upload_arrives_then_the_old_state_is_deleted(
    make_context: MakeContext, old: dict[str, str], new: dict[str, str]
) -> None:
    counts = Counts(rows=40, imported=39, rejected=1)
    state = StoreState(checkpoint=checkpoint(source(**old), lease=4, next_segment=1, counts=counts))
    ctx = make_context(ref(**new), state)
    assert resume.prepare(ctx) is None
    assert state.deleted == [PARTS[0] + PARTS[1]]
    assert state.checkpoint is None
    # It starts fresh: nothing of the old import is replayed
    assert ctx.ledger.checkpoint is None
    assert ctx.ledger.replay(0) is Replay.NEW
    # And the old import leaves its record: superseded, its counts so far, by this upload
    (record,) = state.superseded
    assert record.status == "superseded"
    assert record.source == source(**old)
    assert record.counts == counts
    assert record.outcomes_key is None
    assert record.superseded_by is not None
    assert (record.superseded_by.version_id, record.superseded_by.etag) == (
        new.get("version_id"),
        new.get("etag"),
    )
    assert record.segments == 2


def test_given_an_unfinished_import_when_a_continuation_of_another_upload_comes_then_it_is_skipped(
    make_context: MakeContext,
) -> None:
    current = checkpoint(source(version_id="v2"), next_segment=3)
    state = StoreState(checkpoint=current)
    ctx = make_context(ref(segment=3, version_id="v1"), state)
    assert "newer upload" in skipped(resume.prepare(ctx))
    assert state.checkpoint is current
    assert state.deleted == []


# --- prepare: continuations ---------------------------------------------------------------------


def test_given_a_later_invocation_took_over_when_an_old_segment_comes_again_then_it_is_skipped(
    make_context: MakeContext,
) -> None:
    state = StoreState(checkpoint=checkpoint(source(version_id="v1"), next_segment=3))
    ctx = make_context(ref(segment=1, version_id="v1"), state)
    assert skipped(resume.prepare(ctx)) == "a later invocation already took over this import"
    assert ctx.ledger.checkpoint is None


def test_given_a_segment_ahead_of_the_checkpoint_when_it_comes_then_it_is_skipped(
    make_context: MakeContext,
) -> None:
    state = StoreState(checkpoint=checkpoint(source(version_id="v1"), next_segment=2))
    ctx = make_context(ref(segment=4, version_id="v1"), state)
    assert skipped(resume.prepare(ctx)) == "continuation from an unknown segment"


@pytest.mark.parametrize("segment", [0, 2])
def test_given_a_hand_off_was_saved_when_the_same_segment_runs_again_then_it_is_re_sent(
    make_context: MakeContext, segment: int
) -> None:
    state = StoreState(checkpoint=checkpoint(source(version_id="v1"), next_segment=segment + 1))
    ctx = make_context(ref(segment=segment, version_id="v1"), state)
    result = resume.prepare(ctx)
    assert result is not None
    assert result.skipped is None
    assert result.continuation == ref(segment=segment + 1, version_id="v1")
    assert result.ref == ctx.ref
    # Nothing is replayed or cleared: the next segment resumes from the checkpoint
    assert ctx.ledger.checkpoint is None
    assert (state.deleted, state.finished) == ([], [])


# --- prepare: resume ------------------------------------------------------------------------------


def test_given_the_checkpoint_of_this_segment_when_prepared_then_the_ledger_is_restored(
    make_context: MakeContext,
) -> None:
    of = source(version_id="v1", etag="e1", size=1234)
    cp = checkpoint(
        of,
        next_segment=1,
        lease=5,
        settled_below=2,
        settled_extra=[3],
        lines_done=40,
        in_doubt=0,
        counts=Counts(rows=40, imported=38, rejected=2),
        providers={"oura": Counts(rows=38, imported=38)},
        started_at="2026-01-01T00:00:00.000Z",
    )
    state = StoreState(checkpoint=cp)
    ctx = make_context(ref(segment=1, version_id="v1"), state)
    assert resume.prepare(ctx) is None
    assert ctx.ledger.checkpoint is cp
    assert ctx.ledger.lease == 5
    assert ctx.ledger.lines_done == 40
    assert ctx.ledger.tally.counts() == cp.counts
    assert [ctx.ledger.replay(n) for n in range(6)] == [
        Replay.SETTLED,
        Replay.SETTLED,
        Replay.IN_DOUBT,
        Replay.SETTLED,
        Replay.IN_DOUBT,
        Replay.NEW,
    ]
    # The source and start are those the import began with, not this invocation's
    assert ctx.source == of
    assert ctx.started_at == "2026-01-01T00:00:00.000Z"
    assert ctx.stop.error is None
    assert ctx.stop.reason is None
    assert (state.deleted, state.finished) == ([], [])


def test_given_a_checkpoint_with_a_stop_reason_when_resumed_then_the_run_stays_stopped(
    make_context: MakeContext,
) -> None:
    cp = checkpoint(
        source(version_id="v1"),
        stop_reason=ErrorInfo(type="ImportAborted", message="the API key was rejected"),
    )
    ctx = make_context(ref(version_id="v1"), StoreState(checkpoint=cp))
    assert resume.prepare(ctx) is None
    assert isinstance(ctx.stop.reason, ImportAborted)
    assert str(ctx.stop.reason) == "the API key was rejected"
    assert ctx.stop.stopped


def test_given_the_settings_changed_since_the_checkpoint_when_resumed_then_the_file_fails(
    make_context: MakeContext,
) -> None:
    other = Settings.from_env({"VITAL_API_KEY_SECRET": "vital-key", "CHUNK_SIZE": "100"})
    cp = checkpoint(source(version_id="v1"), fingerprint=replay.fingerprint(other), lease=3)
    ctx = make_context(ref(version_id="v1"), StoreState(checkpoint=cp))
    assert resume.prepare(ctx) is None
    assert isinstance(ctx.stop.error, ConfigurationError)
    assert str(ctx.stop.error).startswith("CHUNK_SIZE changed while this file was being imported")
    # The books are restored, so the rows already reported are kept
    assert ctx.ledger.checkpoint is cp


@pytest.mark.parametrize(("segment", "stops"), [(99, False), (100, True)])
def test_given_max_invocations_have_read_the_file_when_the_next_resumes_then_it_fails_the_file(
    make_context: MakeContext, segment: int, stops: bool
) -> None:
    assert SETTINGS.max_invocations_per_file == 100  # segments 0-99 read the file
    cp = checkpoint(source(version_id="v1"), next_segment=segment, lines_done=7)
    ctx = make_context(ref(segment=segment, version_id="v1"), StoreState(checkpoint=cp))
    assert resume.prepare(ctx) is None
    assert ctx.ledger.checkpoint is cp  # the rows already reported are kept
    if stops:
        assert isinstance(ctx.stop.error, ImportAborted)
        assert str(ctx.stop.error).startswith(
            "not finished after 100 invocations (MAX_INVOCATIONS_PER_FILE)"
        )
    else:
        assert ctx.stop.error is None


def test_given_extra_providers_changed_since_the_checkpoint_when_resumed_then_the_file_fails(
    make_context: MakeContext,
) -> None:
    # Which rows are valid depends on the list: a replay would cut other chunks.
    other = Settings.from_env({"VITAL_API_KEY_SECRET": "vital-key", "EXTRA_PROVIDERS": "acme"})
    cp = checkpoint(source(version_id="v1"), fingerprint=replay.fingerprint(other))
    ctx = make_context(ref(version_id="v1"), StoreState(checkpoint=cp))
    assert resume.prepare(ctx) is None
    assert isinstance(ctx.stop.error, ConfigurationError)
    assert str(ctx.stop.error).startswith("EXTRA_PROVIDERS changed")


def test_given_a_checkpoint_from_other_code_when_resumed_then_the_file_fails(
    make_context: MakeContext,
) -> None:
    basis = json.loads(replay.fingerprint(SETTINGS))
    basis[replay.CODE] = "0" * 16
    cp = checkpoint(source(version_id="v1"), fingerprint=json.dumps(basis))
    ctx = make_context(ref(version_id="v1"), StoreState(checkpoint=cp))
    assert resume.prepare(ctx) is None
    assert isinstance(ctx.stop.error, ConfigurationError)
    assert "the function's code changed" in str(ctx.stop.error)


def test_each_run_context_draws_its_own_run_token(make_context: MakeContext) -> None:
    state = StoreState()
    make_context(ref(), state)
    make_context(ref(), state)
    assert len(set(state.runs)) == 2
    assert all(len(run) == 8 and int(run, 16) >= 0 for run in state.runs)
