"""Records: the core schemas derived from dataclass annotations validate and serialise as the
contracts say (round trips, extra keys, constraints, defaults), and unknown types fail loudly."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Annotated, Any, Required, TypedDict

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic_core import CoreConfig, SchemaValidator, ValidationError

from bulk_import.models import (
    Checkpoint,
    ChunkRecord,
    ContinuationMessage,
    Counts,
    ErrorInfo,
    Manifest,
    ObjectRef,
    SourceRef,
    ValidationErrorBody,
)
from bulk_import.records import Record, schema_of, typed_dict_schema_of

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
    text = checkpoint.to_json()
    assert Checkpoint.from_json(text) == checkpoint
    assert json.loads(text) == checkpoint.to_dict() == dataclasses.asdict(checkpoint)


def test_manifest_keeps_its_field_order_and_indent() -> None:
    manifest = Manifest(
        source=SourceRef(bucket="b", key="k"),
        status="partial",
        started_at="s",
        finished_at="f",
        counts=Counts(rows=2, imported=1, failed=1),
        outcomes_key="o",
    )
    text = manifest.to_json(indent=2).decode()
    assert text.startswith('{\n  "schema_version": 1,\n  "source": {\n    "bucket": "b",')
    assert list(json.loads(text)) == [f.name for f in dataclasses.fields(Manifest)]


def test_unknown_keys_are_ignored_except_where_forbidden() -> None:
    doc = {"rows": 3, "future_field": 1}
    assert Counts.from_dict(doc) == Counts(rows=3)
    message = ContinuationMessage(ref=ObjectRef(bucket="b", key="k")).to_dict()
    with pytest.raises(ValidationError, match="extra"):
        ContinuationMessage.from_dict({**message, "extra": 1})
    with pytest.raises(ValidationError, match="kind"):
        ContinuationMessage.from_dict({**message, "kind": "something-else"})


def test_constraints_and_required_fields_are_checked() -> None:
    with pytest.raises(ValidationError, match="greater than or equal to 0"):
        ObjectRef.from_json(b'{"bucket": "b", "key": "k", "segment": -1}')
    with pytest.raises(ValidationError, match="key\n  Field required"):
        ObjectRef.from_json(b'{"bucket": "b"}')
    ref = ObjectRef.from_json(b'{"bucket": "b", "key": "k"}')
    assert ref == ObjectRef(bucket="b", key="k", segment=0)
    assert hash(ref) == hash(ObjectRef(bucket="b", key="k"))  # frozen: a usable key


def test_a_union_takes_either_member() -> None:
    assert ValidationErrorBody.from_json(b'{"detail": "Not authenticated"}').detail == (
        "Not authenticated"
    )
    body = ValidationErrorBody.from_json(b'{"detail": [{"loc": ["body", 0], "msg": "m"}]}')
    assert not isinstance(body.detail, str)
    assert body.detail[0].loc == ["body", 0]
    with pytest.raises(ValidationError):
        ValidationErrorBody.from_json(b'{"detail": 3}')


def test_an_unsupported_annotation_fails_loudly() -> None:
    @dataclass(kw_only=True)
    class Odd(Record):
        tags: set[str]

    with pytest.raises(TypeError, match=r"set\[str\]"):
        schema_of(Odd)


def test_records_are_plain_dataclasses_for_powertools() -> None:
    """Powertools Idempotency hashes ``dataclasses.asdict(ref)``: the same dict as before."""
    ref = ObjectRef(bucket="b", key="k", etag='"e"', segment=2)
    expected: dict[str, Any] = {
        "bucket": "b",
        "key": "k",
        "version_id": None,
        "etag": '"e"',
        "sequencer": None,
        "segment": 2,
    }
    assert dataclasses.asdict(ref) == ref.to_dict() == expected


def test_annotated_takes_a_core_schema_only() -> None:
    """Anything else in ``Annotated`` (pydantic's ``Field(ge=0)``, say) would be dropped."""

    @dataclass(kw_only=True)
    class Odd(Record):
        n: Annotated[int, {"ge": 0}]

    with pytest.raises(TypeError, match="one core schema"):
        schema_of(Odd)


def test_a_typed_dict_that_is_not_total_needs_none_of_its_keys() -> None:
    class Partial(TypedDict, total=False):
        a: int
        b: Required[str]

    validator = SchemaValidator(typed_dict_schema_of(Partial, CoreConfig()))
    assert validator.validate_python({"b": "x"}) == {"b": "x"}
    with pytest.raises(ValidationError, match="b\n  Field required"):
        validator.validate_python({"a": 1})


def test_an_s3_ref_names_a_bucket() -> None:
    with pytest.raises(ValidationError, match="bucket"):
        ObjectRef.from_dict({"bucket": "", "key": "incoming/a.jsonl"})
