"""Key-value buckets (JetStream KV) as the library uses them: safe keys, idempotent creation."""

from __future__ import annotations

import base64
import dataclasses
import re

import nats.errors
import nats.js.errors
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StorageType
from nats.js.kv import KeyValue

from ._errors import StreamError

_KV_KEY = re.compile(r"[-/_=.a-zA-Z0-9]+")


def kv_key(key: str) -> str:
    """A KV-safe key: the key itself, or its base64url form if it has other characters."""
    if _KV_KEY.fullmatch(key) and not key.startswith(("b64.", ".")) and not key.endswith("."):
        return key
    return "b64." + base64.urlsafe_b64encode(key.encode()).decode().rstrip("=")


def from_kv_key(stored: str) -> str:
    if not stored.startswith("b64."):
        return stored
    encoded = stored[4:]
    return base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).decode()


async def ensure_bucket(
    js: JetStreamContext,
    name: str,
    *,
    history: int = 1,
    ttl: float | None = None,
    replicas: int = 1,
    atomic: bool = False,
) -> KeyValue:
    """The bucket `name`, created if missing (with direct get on, which our reads use).

    `atomic` lets it take JetStream atomic batches (all of the writes or none): a fenced
    writer's writes on a replicated stream must be one batch guarded once, since JetStream
    refuses a second guarded write on a subject while the first is in flight."""
    try:
        kv = await js.key_value(name)
    except nats.js.errors.BucketNotFoundError:
        config = KeyValueConfig(
            name,
            history=history,
            storage=StorageType.FILE,
            direct=True,
            ttl=ttl,
            replicas=replicas,
        )
        try:
            kv = await js.create_key_value(config)
        except nats.errors.Error as exc:
            raise StreamError(f"key-value bucket {name!r}: {exc}") from None
    if atomic:
        await _allow_atomic(js, f"KV_{name}")
    return kv


async def _allow_atomic(js: JetStreamContext, stream: str) -> None:
    try:
        config = (await js.stream_info(stream)).config
        if not config.allow_atomic:
            await js.update_stream(dataclasses.replace(config, allow_atomic=True))
    except nats.errors.Error as exc:
        raise StreamError(f"key-value bucket stream {stream!r}: {exc}") from None
