"""Models: the boundary models validate and serialise as the contracts say (round trips, extra
keys, constraints, defaults, field order)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from aws_lambda_powertools.utilities.idempotency.base import _prepare_data
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from bulk_import.model import (
    Checkpoint,
    ChunkRecord,
    ConnectionRow,
    ContinuationMessage,
    Counts,
    ErrorInfo,
    Manifest,
    ObjectRef,
    SourceRef,
    ValidationErrorBody,
)

_TEXT = st.text(max_size=12)
_COUNT = st.integers(min_value=0, max_value=2**40)
_COUNTS = st.builds(Counts, rows=_COUNT, imported=_COUNT, failed=_COUNT, errored=_COUNT)
_CHUNKS = st.builds(
    ChunkRecord,
    provider=_TEXT,
    first_line=_COUNT,
    last_line=_COUNT,
    size=_COUNT,
    bytes=_COUNT,
    http_status=st.none() | st.integers(100, 599),
    note=st.none() | _TEXT,
)


@given(
    counts=_COUNTS,
    providers=st.dictionaries(_TEXT, _COUNTS, max_size=3),
    chunks=st.lists(_CHUNKS, max_size=4),
    extra=st.lists(_COUNT, max_size=3),
    stop=st.none() | st.builds(ErrorInfo, type=_TEXT, message=_TEXT),
)
def test_checkpoint_round_trips(
    counts: Counts,
    providers: dict[str, Counts],
    chunks: list[ChunkRecord],
    extra: list[int],
    stop: ErrorInfo | None,
) -> None:
    checkpoint = Checkpoint(
        source=SourceRef(bucket="b", key="k é"),
        fingerprint="f",
        started_at="t",
        next_segment=1,
        settled_extra=extra,
        counts=counts,
        providers=providers,
        chunks=chunks,
        stop_reason=stop,
    )
    text = checkpoint.model_dump_json()
    assert Checkpoint.model_validate_json(text) == checkpoint
    assert json.loads(text) == checkpoint.model_dump(mode="json")


def test_manifest_keeps_its_field_order_and_indent() -> None:
    manifest = Manifest(
        source=SourceRef(bucket="b", key="k"),
        status="partial",
        started_at="s",
        finished_at="f",
        counts=Counts(rows=2, imported=1, failed=1),
        outcomes_key="o",
    )
    text = manifest.model_dump_json(indent=2)
    assert text.startswith('{\n  "schema_version": 1,\n  "source": {\n    "bucket": "b",')
    assert list(json.loads(text)) == list(Manifest.model_fields)


def test_unknown_keys_are_ignored_except_where_forbidden() -> None:
    doc = {"rows": 3, "future_field": 1}
    assert Counts.model_validate(doc) == Counts(rows=3)
    message = ContinuationMessage(ref=ObjectRef(bucket="b", key="k")).model_dump()
    with pytest.raises(ValidationError, match="extra"):
        ContinuationMessage.model_validate({**message, "extra": 1})
    with pytest.raises(ValidationError, match="kind"):
        ContinuationMessage.model_validate({**message, "kind": "something-else"})


def test_constraints_and_required_fields_are_checked() -> None:
    with pytest.raises(ValidationError, match="greater than or equal to 0"):
        ObjectRef.model_validate_json(b'{"bucket": "b", "key": "k", "segment": -1}')
    with pytest.raises(ValidationError, match="key\n  Field required"):
        ObjectRef.model_validate_json(b'{"bucket": "b"}')
    ref = ObjectRef.model_validate_json(b'{"bucket": "b", "key": "k"}')
    assert ref == ObjectRef(bucket="b", key="k", segment=0)
    assert hash(ref) == hash(ObjectRef(bucket="b", key="k"))  # frozen: a usable key


def test_a_union_takes_either_member() -> None:
    assert ValidationErrorBody.model_validate_json(b'{"detail": "Not authenticated"}').detail == (
        "Not authenticated"
    )
    body = ValidationErrorBody.model_validate_json(
        b'{"detail": [{"loc": ["body", 0], "msg": "m"}]}'
    )
    assert not isinstance(body.detail, str)
    assert body.detail[0].loc == ["body", 0]
    with pytest.raises(ValidationError):
        ValidationErrorBody.model_validate_json(b'{"detail": 3}')


def test_an_object_ref_is_the_dict_powertools_idempotency_hashes() -> None:
    """The idempotency key is the hash of what Powertools' own ``_prepare_data`` makes of the
    ``ref`` argument: pinned, so that an event redelivered across a deploy maps to the record
    its first delivery left, and a new field or a renamed one shows here first."""
    ref = ObjectRef(bucket="b", key="k", etag='"e"', sequencer="0A", segment=2)
    expected: dict[str, Any] = {
        "bucket": "b",
        "key": "k",
        "version_id": None,
        "etag": '"e"',
        "sequencer": "0A",
        "segment": 2,
    }
    prepared = _prepare_data(ref)
    assert prepared == expected
    assert json.dumps(prepared, sort_keys=True) == (
        '{"bucket": "b", "etag": "\\"e\\"", "key": "k", "segment": 2, "sequencer": "0A", '
        '"version_id": null}'
    )


def test_a_row_never_shows_its_tokens_in_its_repr() -> None:
    row = ConnectionRow.model_validate(
        {
            "provider": "oura",
            "user_id": "6d7c1b4e-5a1f-4f7e-9f3e-2f1d8d9a0b11",
            "access_token": "secret-access-value",
            "refresh_token": "secret-refresh-value",
            "provider_id": "p",
            "expires_at": 1,
        }
    )
    assert "secret" not in repr(row)
    assert "secret" not in str(row)


def test_an_s3_ref_names_a_bucket() -> None:
    with pytest.raises(ValidationError, match="bucket"):
        ObjectRef.model_validate({"bucket": "", "key": "incoming/a.jsonl"})
