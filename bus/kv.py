"""Key-value buckets (JetStream KV) as the library uses them: safe keys, idempotent creation."""

from __future__ import annotations

import base64
import re

import nats.errors
import nats.js.errors
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StorageType
from nats.js.kv import KeyValue

from .errors import StreamError

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
) -> KeyValue:
    """The bucket `name`, created if missing (with direct get on, which our reads use)."""
    try:
        return await js.key_value(name)
    except nats.js.errors.BucketNotFoundError:
        pass
    try:
        config = KeyValueConfig(
            name,
            history=history,
            storage=StorageType.FILE,
            direct=True,
            ttl=ttl,
            replicas=replicas,
        )
        return await js.create_key_value(config)
    except nats.errors.Error as exc:
        raise StreamError(f"key-value bucket {name!r}: {exc}") from None
