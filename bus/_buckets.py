"""What an application's shared-state bucket is: its declaration, its key rules, its entries.

A bucket is JetStream KV: stream `KV_<name>` on subjects `$KV.<name>.<key>`. A key's
revision is the stream sequence of its last write, so it grows with every change in the
bucket and orders them all (the edge sends it as the ETag).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar

import msgspec

from ._errors import ConfigError, InvalidSubject

T = TypeVar("T")
Operation = Literal["put", "delete", "purge"]
_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
_TOKEN = re.compile(r"[-_=A-Za-z0-9]+")
# The backbone's own buckets (idempotency, registry, leases, projections, snapshots...).
RESERVED = ("bus_", "proj_", "snapshots_")
MAX_KEY = 256  # characters
MAX_HISTORY = 64  # what JetStream KV keeps at most per key


@dataclass(frozen=True)
class BucketSpec:
    """A bucket an App declares: `history` revisions kept per key (1-64), values expire
    `ttl` seconds after their last write (None: never); values are JSON, decoded as
    `value_type` when given (a msgspec-convertible type). Replicas are the Bus's."""

    name: str
    history: int = 1
    ttl: float | None = None
    value_type: Any = Any
    description: str = ""

    def __post_init__(self) -> None:
        if not _NAME.fullmatch(self.name):
            raise ConfigError(f"bucket name {self.name!r}: 1-64 letters, digits, _ and - only")
        if self.name.startswith(RESERVED):
            raise ConfigError(f"bucket name {self.name!r}: names starting {RESERVED} are the bus's")
        if not 1 <= self.history <= MAX_HISTORY:
            raise ConfigError(f"bucket {self.name!r}: history must be 1 to {MAX_HISTORY}")
        if self.ttl is not None and not self.ttl > 0:
            raise ConfigError(f"bucket {self.name!r}: ttl must be > 0 seconds (or None)")

    @property
    def stream(self) -> str:
        return f"KV_{self.name}"


def validate_key(key: str, *, pattern: bool = False) -> str:
    """`key` if it can be a key: dot-separated tokens of letters, digits and `-_=`, at most
    256 characters (InvalidSubject otherwise). With `pattern`, a token may be `*` (any one)
    and the last may be `>` (one or more)."""
    if not isinstance(key, str) or not key:
        raise InvalidSubject(str(key), "a key cannot be empty")
    if len(key) > MAX_KEY:
        raise InvalidSubject(key[:40] + "...", f"a key is at most {MAX_KEY} characters")
    tokens = key.split(".")
    for i, token in enumerate(tokens):
        if pattern and (token == "*" or (token == ">" and i == len(tokens) - 1)):
            continue
        if not _TOKEN.fullmatch(token):
            raise InvalidSubject(
                key,
                "a key is dot-separated tokens of letters, digits and -_= "
                "(no spaces, slashes, empty tokens" + (")" if pattern else " or wildcards)"),
            )
    return key


class KeyEntry(msgspec.Struct, Generic[T], frozen=True):
    """One revision of a key: its value (None once deleted), when it was written, and how."""

    key: str
    revision: int
    value: T | None
    operation: Operation = "put"
    time: str = ""


class KeyPage(msgspec.Struct, Generic[T], frozen=True):
    """Live keys in key order, from after a cursor; `next_cursor` is None on the last page
    (a page may hold fewer than asked when keys were deleted meanwhile)."""

    items: list[KeyEntry[T]]
    next_cursor: str | None = None
