"""Events to work items: S3 notifications, continuation messages, ImportDLQ records replayed."""

from __future__ import annotations

import json
from typing import Any

import pytest

from bulk_import.config import Settings
from bulk_import.events import WorkItem, work_items
from bulk_import.model import ContinuationMessage, ObjectRef

SETTINGS = Settings.from_env({"VITAL_API_KEY_SECRET": "vital-key"})
BUCKET = "bucket-a"


def s3_record(key: str, *, bucket: str | None = BUCKET, **obj: Any) -> dict[str, Any]:
    """A record as S3 sends it; ``key`` is given already URL-encoded."""
    s3: dict[str, Any] = {"s3SchemaVersion": "1.0", "object": {"key": key, "size": 10, **obj}}
    if bucket is not None:
        s3["bucket"] = {"name": bucket, "arn": f"arn:aws:s3:::{bucket}"}
    return {"eventSource": "aws:s3", "eventName": "ObjectCreated:Put", "s3": s3}


def s3_event(*records: dict[str, Any]) -> dict[str, Any]:
    return {"Records": list(records)}


def sqs_event(*bodies: object) -> dict[str, Any]:
    return {
        "Records": [
            {"eventSource": "aws:sqs", "messageId": str(n), "body": body}
            for n, body in enumerate(bodies)
        ]
    }


def failure_record(payload: dict[str, Any]) -> dict[str, Any]:
    """Lambda's on-failure destination record (the ImportDLQ's messages)."""
    return {
        "version": "1.0",
        "timestamp": "2026-01-01T00:00:00.000Z",
        "requestContext": {
            "requestId": "6d2a3f6e-0000-4000-8000-000000000000",
            "functionArn": "arn:aws:lambda:us-east-1:123456789012:function:bulk-import:$LATEST",
            "condition": "RetriesExhausted",
            "approximateInvokeCount": 3,
        },
        "requestPayload": payload,
        "responseContext": {"statusCode": 200, "functionError": "Unhandled"},
        "responsePayload": {"errorMessage": "boom"},
    }


def continuation(segment: int, key: str = "incoming/oura/a.jsonl") -> ObjectRef:
    return ObjectRef(bucket=BUCKET, key=key, version_id="v1", segment=segment)


# --- S3 notifications -----------------------------------------------------------------------


def test_given_an_s3_record_then_its_object_is_the_work_item() -> None:
    record = s3_record(
        "incoming/oura/a.jsonl", versionId="v1", eTag='"abc123"', sequencer="0062E99A88DC407460"
    )
    assert work_items(s3_event(record), SETTINGS) == [
        WorkItem(
            ObjectRef(
                bucket=BUCKET,
                key="incoming/oura/a.jsonl",
                version_id="v1",
                etag="abc123",
                sequencer="0062E99A88DC407460",
                segment=0,
            ),
            from_queue=False,
        )
    ]


@pytest.mark.parametrize(
    ("encoded", "key"),
    [
        ("incoming/my+export.csv", "incoming/my export.csv"),
        ("incoming/m%C3%BCller/export.csv", "incoming/müller/export.csv"),
        ("incoming/a%2Bb+c.csv", "incoming/a+b c.csv"),
        ("incoming/%28copy%29+1.jsonl.gz", "incoming/(copy) 1.jsonl.gz"),
    ],
)
def test_given_a_url_encoded_key_then_it_is_decoded_as_s3_encodes_it(
    encoded: str, key: str
) -> None:
    [item] = work_items(s3_event(s3_record(encoded)), SETTINGS)
    assert item.ref.key == key


def test_given_no_version_etag_or_sequencer_then_they_are_none() -> None:
    record = s3_record("incoming/a.csv", versionId="", eTag='""', sequencer="")
    [item] = work_items(s3_event(record), SETTINGS)
    assert (item.ref.version_id, item.ref.etag, item.ref.sequencer) == (None, None, None)


@pytest.mark.parametrize(
    "key",
    [
        "results/oura/a.jsonl/outcomes.csv",
        "retry/oura/a.jsonl/retry.jsonl",
        "incomingx/a.csv",
        "a.csv",
        "INCOMING/a.csv",
    ],
)
def test_given_a_key_outside_the_incoming_prefix_then_it_is_ignored(key: str) -> None:
    assert work_items(s3_event(s3_record(key)), SETTINGS) == []


def test_given_another_incoming_prefix_then_it_decides_what_is_imported() -> None:
    settings = Settings.from_env({"VITAL_API_KEY_SECRET": "k", "INCOMING_PREFIX": "uploads"})
    event = s3_event(s3_record("incoming/a.csv"), s3_record("uploads/a.csv"))
    assert [item.ref.key for item in work_items(event, settings)] == ["uploads/a.csv"]


@pytest.mark.parametrize("key", ["incoming/oura/", "incoming/", "incoming/a+folder%2F"])
def test_given_a_folder_key_then_it_is_ignored(key: str) -> None:
    assert work_items(s3_event(s3_record(key)), SETTINGS) == []


def test_given_a_key_too_long_for_its_results_then_it_is_ignored() -> None:
    # Within S3's 1024 bytes, but the part keys written for it would not be
    too_long = "incoming/" + "a" * 1000 + ".csv"
    assert len(too_long.encode()) <= 1024
    assert work_items(s3_event(s3_record(too_long)), SETTINGS) == []


def test_given_a_key_long_in_bytes_but_not_in_characters_then_it_is_ignored() -> None:
    key = "incoming/" + "ü" * 500
    assert (len(key), len(key.encode())) == (509, 1009)
    encoded = "incoming/" + "%C3%BC" * 500
    assert work_items(s3_event(s3_record(encoded)), SETTINGS) == []


def test_given_a_long_key_that_leaves_room_for_its_results_then_it_is_imported() -> None:
    key = "incoming/" + "a" * 900 + ".csv"
    [item] = work_items(s3_event(s3_record(key)), SETTINGS)
    assert item.ref.key == key


@pytest.mark.parametrize(
    "record",
    [
        s3_record("incoming/a.csv", bucket=None),
        s3_record("incoming/a.csv", bucket=""),
        {"eventSource": "aws:s3", "s3": {"bucket": {"name": BUCKET}, "object": {}}},
        {"eventSource": "aws:s3", "s3": {"bucket": {"name": BUCKET}, "object": {"key": 7}}},
        {"eventSource": "aws:s3", "s3": {"bucket": {"name": BUCKET}, "object": {"key": ""}}},
        {"eventSource": "aws:s3", "s3": "not an object"},
        {"eventSource": "aws:s3"},
        s3_record("incoming/a.csv", versionId=["v1"]),
        "not a record",
        None,
    ],
)
def test_given_a_malformed_record_then_it_is_ignored_and_the_others_still_go(record: Any) -> None:
    event = s3_event(s3_record("incoming/first.csv"), record, s3_record("incoming/last.csv"))
    items = work_items(event, SETTINGS)
    assert [item.ref.key for item in items] == ["incoming/first.csv", "incoming/last.csv"]


# --- continuation messages -----------------------------------------------------------------------


def test_given_a_continuation_message_then_it_is_the_work_item_from_the_queue() -> None:
    ref = continuation(3)
    body = ContinuationMessage(ref=ref).model_dump_json()
    assert work_items(sqs_event(body), SETTINGS) == [WorkItem(ref, from_queue=True)]


def test_given_several_queue_messages_then_each_one_is_an_item_in_order() -> None:
    refs = [continuation(1, "incoming/a.jsonl"), continuation(2, "incoming/b.jsonl")]
    bodies = [ContinuationMessage(ref=r).model_dump_json() for r in refs]
    assert [item.ref for item in work_items(sqs_event(*bodies), SETTINGS)] == refs


@pytest.mark.parametrize(
    "body",
    [
        "hello",
        "",
        None,
        42,
        "{}",
        '{"kind": "something-else", "ref": {"bucket": "b", "key": "k"}}',
        json.dumps({"Records": [s3_record("incoming/a.csv")]}),
        "[" * 100_000,
    ],
)
def test_given_a_queue_message_that_is_neither_then_it_is_ignored(body: object) -> None:
    good = ContinuationMessage(ref=continuation(1)).model_dump_json()
    items = work_items(sqs_event(body, good), SETTINGS)
    assert items == [WorkItem(continuation(1), from_queue=True)]


# --- ImportDLQ records ------------------------------------------------------------------------


def test_given_an_importdlq_record_as_the_event_then_the_s3_event_inside_is_imported() -> None:
    inner = s3_event(s3_record("incoming/oura/a.jsonl", versionId="v7"))
    [item] = work_items(failure_record(inner), SETTINGS)
    assert item == WorkItem(
        ObjectRef(bucket=BUCKET, key="incoming/oura/a.jsonl", version_id="v7"), from_queue=False
    )


def test_given_an_importdlq_record_of_a_failed_replay_then_it_is_unwrapped_twice() -> None:
    inner = s3_event(s3_record("incoming/oura/a.jsonl", versionId="v7"))
    items = work_items(failure_record(failure_record(inner)), SETTINGS)
    assert [(item.ref.key, item.ref.version_id, item.from_queue) for item in items] == [
        ("incoming/oura/a.jsonl", "v7", False)
    ]


def test_given_an_importdlq_record_sent_to_the_queue_then_it_is_read_as_its_event() -> None:
    inner = s3_event(s3_record("incoming/oura/a.jsonl", versionId="v7"))
    items = work_items(sqs_event(json.dumps(failure_record(failure_record(inner)))), SETTINGS)
    assert [(item.ref.key, item.from_queue) for item in items] == [("incoming/oura/a.jsonl", False)]


def test_given_a_failed_continuation_replayed_through_the_queue_then_it_is_the_only_copy() -> None:
    # A continuation's invocation failed into the ImportDLQ; the operator sends it to the queue
    ref = continuation(4)
    inner = sqs_event(ContinuationMessage(ref=ref).model_dump_json())
    items = work_items(sqs_event(json.dumps(failure_record(inner))), SETTINGS)
    assert items == [WorkItem(ref, from_queue=False)]


def test_given_a_failed_continuation_invoked_directly_then_it_comes_from_the_queue() -> None:
    ref = continuation(4)
    inner = sqs_event(ContinuationMessage(ref=ref).model_dump_json())
    assert work_items(failure_record(inner), SETTINGS) == [WorkItem(ref, from_queue=True)]


# --- not an event ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "event",
    [
        {},
        {"hello": "world"},
        {"Records": "not a list"},
        {"Records": None},
        {"requestContext": {}, "requestPayload": "not an event"},
        {"requestContext": {}, "requestPayload": {"no": "records"}},
    ],
)
def test_given_a_dict_that_is_no_event_then_there_is_nothing_to_do(event: dict[str, Any]) -> None:
    assert work_items(event, SETTINGS) == []


def test_given_an_empty_record_list_then_there_is_nothing_to_do() -> None:
    assert work_items({"Records": []}, SETTINGS) == []
