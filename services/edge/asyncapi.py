"""`GET /asyncapi.json`: the app's events as an AsyncAPI 3.0 document.

Channels are subjects (`tasks.{id}.created`), messages are event types with their JSON Schema
payloads and the wire headers, so AsyncAPI tooling can generate clients or docs. Public, like
`/openapi.json`: it describes shapes, never data.
"""

from __future__ import annotations

from typing import Any

import msgspec
from fastapi import APIRouter, Request
from fastapi.responses import Response

from bus import App, json_schema

router = APIRouter(tags=["catalogue"])

HEADERS = {
    "type": "object",
    "properties": {
        "Nats-Msg-Id": {"type": "string", "description": "Event id (UUIDv7); JetStream dedupe"},
        "Bus-Event-Type": {"type": "string"},
        "Bus-Event-Version": {"type": "string", "pattern": "^[0-9]+$"},
        "Bus-Occurred-At": {"type": "string", "description": "Milliseconds since the epoch"},
        "Bus-Correlation-Id": {"type": "string"},
        "Bus-Causation-Id": {"type": "string"},
        "traceparent": {"type": "string", "description": "W3C trace context"},
    },
    "required": ["Nats-Msg-Id", "Bus-Event-Type", "Bus-Event-Version"],
}


def document(app: App, version: str) -> dict[str, Any]:
    schemas = json_schema(app.registry)["$defs"]
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    for cls in sorted(app.registry, key=lambda c: c.__event_type__):
        name = cls.__name__
        messages[name] = {
            "name": cls.__event_type__,
            "title": name,
            "summary": (cls.__doc__ or "").strip().split("\n")[0] or name,
            "contentType": "application/json",
            "headers": HEADERS,
            "payload": {"$ref": f"#/components/schemas/{name}"},
        }
        if not (cls.__domain__ and cls.__event_name__):
            continue
        channel = f"{cls.__domain__}_{cls.__event_name__}"
        channels[channel] = {
            "address": f"{cls.__domain__}.{{id}}.{cls.__event_name__}",
            "parameters": {"id": {"description": f"The {cls.__domain__} aggregate id"}},
            "messages": {name: {"$ref": f"#/components/messages/{name}"}},
        }
        for action in ("send", "receive"):
            operations[f"{action}_{channel}"] = {
                "action": action,
                "channel": {"$ref": f"#/channels/{channel}"},
                "messages": [{"$ref": f"#/channels/{channel}/messages/{name}"}],
            }
    refs = msgspec.json.encode(schemas).replace(b"#/$defs/", b"#/components/schemas/")
    return {
        "asyncapi": "3.0.0",
        "info": {"title": f"{app.name} events", "version": version},
        "defaultContentType": "application/json",
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages, "schemas": msgspec.json.decode(refs)},
    }


@router.get("/asyncapi.json")
async def asyncapi(request: Request) -> Response:
    """The AsyncAPI 3.0 document of every registered event type."""
    body = document(request.app.state.app, request.app.version)
    return Response(msgspec.json.encode(body), media_type="application/json")
