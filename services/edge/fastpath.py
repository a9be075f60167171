"""The hot read, `GET /api/v1/projections/{name}/{key}`, answered below FastAPI.

A key read from `LiveView`'s memory costs a few microseconds; FastAPI's routing, dependency
solving and response wrapping around it cost several times that. `HotReads` serves the happy
path (a known read key, valid parameters, the key found) straight from the ASGI scope and
declines everything else to the FastAPI route, which documents the endpoint in OpenAPI and
gives every refusal its problem+json. Both run `projections.query`, so they cannot disagree.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl

import msgspec
from starlette.datastructures import State
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from bus import BeyondStreamEnd, BusTimeout

from . import projections
from .auth import caller
from .permissions import may_read_projection
from .problems import from_bus_error

TEMPLATE = "/api/v1/projections/{name}/{key}"
_PATH = re.compile(r"/api/v1/projections/([^/]+)/([^/]+)")


class _Route:
    path = TEMPLATE  # what the HTTP metrics label the request with


class HotReads:
    def __init__(self, app: ASGIApp, state: State) -> None:
        self.app, self.state = app, state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "GET":
            match = _PATH.fullmatch(scope["path"])
            response = match and await self._answer(scope, *match.groups())
            if response:
                scope["route"] = _Route
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)

    async def _answer(self, scope: Scope, name: str, key: str) -> Response | None:
        """The answer, or None to let the FastAPI route give it (and any refusal)."""
        state = self.state
        try:
            if not state.public_reads:
                authorization = next(
                    (v.decode("latin-1") for k, v in scope["headers"] if k == b"authorization"),
                    None,
                )
                if not may_read_projection(state, await caller(state, authorization), name):
                    return None  # (a caller without `read` and no pattern fails here too)
            query = dict(parse_qsl(scope["query_string"].decode("latin-1")))
            q = msgspec.convert(query, projections.KeyQuery, strict=False)
            found, stale = await projections.query(
                state, name, key, q.after_seq, q.timeout, q.stale_ok
            )
        except (BusTimeout, BeyondStreamEnd) as exc:  # answered here: the route would wait
            return from_bus_error(exc)  # all over again
        except Exception:  # any refusal: the route answers it (and reports it)
            return None
        headers = {"Bus-Stale": "true"} if stale else None
        return Response(msgspec.json.encode(found), media_type="application/json", headers=headers)
