"""The endpoints: `bulk_import`, `bulk_op` and user providers, with their auth checks."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated
from uuid import UUID

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import JSONResponse, Response
from pydantic_core import to_json

from local.standin.bodies import _bulk_import_body
from local.standin.contract import (
    API_KEY_HEADER,
    BULK_IMPORT_PATH,
    BULK_OP_PATH,
    MIGRATION_DISABLED_DETAIL,
    USER_PROVIDERS_PATH,
)
from local.standin.faults import _SCOPE_FORCE_202
from local.standin.records import _canon

if TYPE_CHECKING:
    from local.standin.state import StandinState


def _build_api(state: StandinState) -> FastAPI:
    """The FastAPI app of the stand-in's endpoints, answering from `state`."""
    api = FastAPI(title="Vital stand-in", docs_url=None, redoc_url=None)

    async def authenticate(request: Request) -> None:
        with state._lock:
            ok = state._key_matches(request.headers.get(API_KEY_HEADER))
        if not ok:
            raise HTTPException(status_code=401, detail="Invalid or missing API key.")

    async def link_migration_allowed(
        request: Request, team_id: Annotated[UUID | None, Query()] = None
    ) -> None:
        # A team_id that is not a UUID is FastAPI's own 422 (loc ["query", "team_id"]), which it
        # answers before this runs.
        await authenticate(request)
        with state._lock:
            own_team, enabled = state.team_id, state.link_migration_enabled
        if team_id and own_team and str(team_id) != _canon(own_team):
            raise HTTPException(status_code=403, detail="The team_id does not match the API key.")
        if not enabled:
            raise HTTPException(status_code=403, detail=MIGRATION_DISABLED_DETAIL)

    @api.post(BULK_IMPORT_PATH, dependencies=[Depends(link_migration_allowed)])
    async def bulk_import(request: Request) -> Response:
        raw = await request.body()
        body = _bulk_import_body(raw)
        user_ids = body.user_ids
        errors = state._rejections(user_ids, raw)
        if errors:
            return JSONResponse({"detail": errors}, status_code=422)
        enqueue = bool(request.scope.get(_SCOPE_FORCE_202)) or not body.wait_for_completion
        result = state._import(body.provider, user_ids, enqueue=enqueue)
        if result.enqueued:
            return Response(status_code=202)
        content = to_json({"user_ids_imported": result.imported, "user_ids_failed": result.failed})
        return Response(content, media_type="application/json")

    @api.get(BULK_OP_PATH, dependencies=[Depends(link_migration_allowed)])
    async def list_bulk_ops(
        page_size: Annotated[int, Query(ge=1, le=50)] = 10,
        next_cursor: str | None = None,
    ) -> Response:
        before: int | None = None
        if next_cursor:
            try:
                before = int(next_cursor)
            except ValueError:
                detail = [
                    {
                        "type": "value_error",
                        "loc": ["query", "next_cursor"],
                        "msg": "Value error, invalid cursor",
                        "input": next_cursor,
                    }
                ]
                return JSONResponse({"detail": detail}, status_code=422)
        data, last = state._list_ops(before, page_size)
        return JSONResponse({"data": data, "next_cursor": None if last is None else str(last)})

    @api.get(USER_PROVIDERS_PATH, dependencies=[Depends(authenticate)])
    async def user_providers(user_id: UUID) -> Response:
        providers = state._user_providers(str(user_id))
        if providers is None:
            return JSONResponse({"detail": "User not found."}, status_code=404)
        return JSONResponse({"providers": providers})

    return api
