"""A stand-in for Vital's Link Migration API, served by uvicorn on 127.0.0.1.

It implements what `DESIGN.md` ("Vital API facts") documents:

* `POST /v2/link/bulk_import` - `x-vital-api-key` auth (401), optional `team_id` query (a UUID,
  else FastAPI's 422; 403 on a mismatch), Link Migration switch (403), FastAPI's own 422 body
  validation, 200 `{"user_ids_imported", "user_ids_failed"}` or 202 with an empty body (also
  when `wait_for_completion` is omitted: it defaults to false).
* `GET /v2/link/bulk_op` - the bulk ops, newest first, paginated with an opaque `next_cursor`.
* `GET /v2/user/providers/{user_id}` - the providers imported for a known user.

Everything a test wants to switch lives on `StandinState` (thread-safe; the server reads it under
its lock, tests may assign attributes at any time). Faults apply to `bulk_import` only and are
decided when a request arrives, in this order:

1. `drop_script` (pop) / `drop_every` - close the connection without any response;
2. `status_script` (pop) - 429 (with `Retry-After`), any other 4xx/5xx, or 202 (forced);
3. `throttle_every` - every n-th request answers 429 with `Retry-After`;
4. `force_202` - accept, enqueue, answer 202 with an empty body;
5. `lose_answer_script` (pop) / `lose_answer_every` - Vital keeps the chunk, the answer is lost:
   unless a fault above applies, the request is processed as usual (imported, or refused with a
   422), then the connection is dropped instead of the answer.

Every answer (or drop) leaves `latency_seconds` after its request arrived: a request takes that
long, whatever the stand-in's own processing costs, unless that is longer. `slow_body_seconds`
stalls between the response headers and the body. Faults come before auth and validation, as a
gateway's would.
Every request is recorded in `StandinState.requests` (never the API key: only whether it matched).

How a connection is dropped: an outer ASGI middleware reads the whole request body, then reaches
the connection's asyncio transport through uvicorn's ASGI `send` callable (a bound method of the
request cycle, which holds `transport`) and closes it - or aborts it with `SO_LINGER` 0 so the
peer sees a TCP reset. It then waits for uvicorn to notice the disconnect and returns without
sending anything; uvicorn sees a disconnected cycle and does not write its fallback 500.
Clients see `httpx.RemoteProtocolError` (close) or `httpx.ReadError` (reset), never a status.

The modules: `contract` (paths, API key header, provider enum), `bodies` (the bulk_import body
and its validation), `records` (recorded requests, bulk ops), `state` (`StandinState`), `faults`
(the ASGI layer that records requests and applies faults), `routes` (the endpoints), `server`
(`create_app`, `VitalStandin`).
"""

from __future__ import annotations

from local.standin.bodies import BulkImportBody, ConnectionRecipe
from local.standin.bodies import _bulk_import_body as _bulk_import_body  # for its unit test
from local.standin.contract import (
    BULK_IMPORT_PATH,
    BULK_OP_PATH,
    DEFAULT_API_KEY,
    MIGRATION_DISABLED_DETAIL,
    PROVIDERS,
    USER_PROVIDERS_PATH,
    Provider,
)
from local.standin.records import RecordedRequest
from local.standin.server import VitalStandin, create_app
from local.standin.state import StandinState

__all__ = [
    "BULK_IMPORT_PATH",
    "BULK_OP_PATH",
    "DEFAULT_API_KEY",
    "MIGRATION_DISABLED_DETAIL",
    "PROVIDERS",
    "USER_PROVIDERS_PATH",
    "BulkImportBody",
    "ConnectionRecipe",
    "Provider",
    "RecordedRequest",
    "StandinState",
    "VitalStandin",
    "create_app",
]
