"""VitalClient's requests as sent, over ``httpx.MockTransport``: the host and the ``team_id``."""

from __future__ import annotations

import json

import httpx
import pytest

from bulk_import.config import Settings
from bulk_import.ingest.chunking import Chunk
from bulk_import.vital.bulk_ops import list_bulk_ops
from bulk_import.vital.client import VitalClient

API_KEY = "sk_test_client_KEY"
TEAM_ID = "0b4c9e2a-7d31-4f8e-9a6b-1c2d3e4f5a6b"
BODY = Chunk("oura").body(wait_for_completion=True)


class Recorder:
    """Answers every bulk_import with an empty 200 and every bulk_op list with one empty page."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if request.method == "POST":
            return httpx.Response(200, json={"user_ids_imported": [], "user_ids_failed": []})
        return httpx.Response(200, json={"data": [], "next_cursor": None})


def exchange(**environ: str) -> list[httpx.Request]:
    """One bulk_import and one bulk_op list, as the client sends them with these settings."""
    settings = Settings.from_env({"VITAL_API_KEY_SECRET": "x", **environ})
    recorder = Recorder()
    with VitalClient(settings, API_KEY, lambda: 900.0, httpx.MockTransport(recorder)) as client:
        client.post_bulk_import(BODY)
        list_bulk_ops(client)
    return recorder.requests


def test_no_team_id_is_sent_when_unset() -> None:
    post, get = exchange()

    assert "team_id" not in post.url.params
    assert "team_id" not in get.url.params
    assert post.url.query == b""
    assert dict(get.url.params) == {"page_size": "50"}


def test_an_empty_team_id_is_unset() -> None:
    post, get = exchange(VITAL_TEAM_ID="")

    assert "team_id" not in post.url.params
    assert "team_id" not in get.url.params


@pytest.mark.parametrize("configured", [TEAM_ID, TEAM_ID.upper()])
def test_team_id_is_sent_on_every_request_when_set(configured: str) -> None:
    post, get = exchange(VITAL_TEAM_ID=configured)

    assert dict(post.url.params) == {"team_id": TEAM_ID}
    assert dict(get.url.params) == {"team_id": TEAM_ID, "page_size": "50"}


@pytest.mark.parametrize(
    ("environ", "host"),
    [
        ({}, "api.us.junction.com"),
        ({"VITAL_REGION": "eu"}, "api.eu.junction.com"),
        ({"VITAL_ENVIRONMENT": "sandbox"}, "api.sandbox.us.junction.com"),
        ({"VITAL_ENVIRONMENT": "sandbox", "VITAL_REGION": "eu"}, "api.sandbox.eu.junction.com"),
        (
            {"VITAL_REGION": "eu", "VITAL_API_BASE_URL": "https://api.tryvital.io"},
            "api.tryvital.io",
        ),
    ],
)
def test_requests_go_to_the_configured_host(environ: dict[str, str], host: str) -> None:
    post, get = exchange(**environ)

    assert str(post.url) == f"https://{host}/v2/link/bulk_import"
    assert str(get.url.copy_with(query=None)) == f"https://{host}/v2/link/bulk_op"
    assert post.headers["x-vital-api-key"] == API_KEY


@pytest.mark.parametrize("wait", [True, False])
def test_bodies_always_carry_wait_for_completion(wait: bool) -> None:
    """Vital treats an omitted field as false: the importer never leaves it to the default."""
    assert json.loads(Chunk("oura").body(wait)) == {
        "provider": "oura",
        "connections": [],
        "wait_for_completion": wait,
    }
