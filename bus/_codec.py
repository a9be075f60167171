"""Event payload encoding: JSON by default, msgpack as an option; JSON Schema export.

Encoders and typed decoders are built once and kept (msgspec is fastest that way).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

import msgspec

from . import _headers as h
from ._errors import ConfigError, DecodeError
from ._events import Event, EventRegistry

if TYPE_CHECKING:
    from ._protection import Protection

ContentType = Literal["json", "msgpack"]
_MIME = {"json": h.JSON, "msgpack": h.MSGPACK}


class Codec:
    """Encodes events in one content type; decodes either, chosen by the message's header.

    `protection` (signing, encryption: bus._protection) wraps the encoded payload on the way
    out and is undone before decoding, like Temporal's payload codecs."""

    def __init__(
        self, content_type: ContentType = "json", protection: Protection | None = None
    ) -> None:
        if content_type not in _MIME:
            raise ConfigError(f"content type must be 'json' or 'msgpack', not {content_type!r}")
        self.content_type = content_type
        self.protection = protection
        self.mime = _MIME[content_type]
        self._encode = (
            msgspec.json.Encoder() if content_type == "json" else msgspec.msgpack.Encoder()
        ).encode
        self._decoders: dict[tuple[str, type[Any]], Any] = {}

    def encode(self, event: Event) -> bytes:
        return self._encode(event)

    def _decoder(self, mime: str, cls: type[Any]) -> Any:
        key = (mime, cls)
        decoder = self._decoders.get(key)
        if decoder is None:
            if mime == h.MSGPACK:
                decoder = msgspec.msgpack.Decoder(cls)
            elif mime == h.JSON:
                decoder = msgspec.json.Decoder(cls)
            else:
                raise DecodeError(f"unsupported content type {mime!r}")
            self._decoders[key] = decoder
        return decoder

    def decode(self, data: bytes, cls: type[Event], mime: str = h.JSON) -> Event:
        try:
            event: Event = self._decoder(mime, cls).decode(data)
        except msgspec.DecodeError as exc:  # ValidationError is a subclass
            raise DecodeError(f"{cls.__event_type__}: {exc}") from None
        return event

    def decode_fields(self, data: bytes, mime: str = h.JSON) -> dict[str, Any]:
        """Untyped decode, for upcasting an older version before validation."""
        try:
            fields = self._decoder(mime, dict[str, Any]).decode(data)
        except msgspec.DecodeError as exc:
            raise DecodeError(str(exc)) from None
        return fields  # type: ignore[no-any-return]

    def decode_upcast(
        self, data: bytes, cls: type[Event], version: int, registry: EventRegistry, mime: str
    ) -> Event:
        if version == cls.__event_version__:
            return self.decode(data, cls, mime)
        fields = registry.upcast(cls, version, self.decode_fields(data, mime))
        try:
            return msgspec.convert(fields, cls)
        except msgspec.ValidationError as exc:
            raise DecodeError(f"{cls.__event_type__} after upcasting: {exc}") from None


def json_schema(registry: EventRegistry) -> dict[str, Any]:
    """One JSON Schema document with a definition per registered event type."""
    classes = sorted(registry, key=lambda c: c.__event_type__)
    _, components = msgspec.json.schema_components(classes, ref_template="#/$defs/{name}")
    for cls in classes:
        schema = components.get(cls.__name__)
        if schema is not None:
            schema["x-bus-event-type"] = cls.__event_type__
            schema["x-bus-event-version"] = cls.__event_version__
            if cls.__domain__ and cls.__event_name__:
                schema["x-bus-subject"] = f"{cls.__domain__}.{{id}}.{cls.__event_name__}"
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "$defs": components}
