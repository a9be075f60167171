"""What a scope grants: the grammar of scopes and the one matching rule every surface uses.

A scope is `read`, `write`, `admin`, or a pattern of one kind: `publish:<pattern>`,
`read:<pattern>`, `request:<pattern>` (in a token: `bus:publish:...`). Everything a caller
may touch has a subject-like name, matched against the patterns as NATS matches subjects:

    an event                 <domain>.<id>.<event>        publish: (publish), read: (read)
    a stream, a tail         every subject it holds       read: must cover them all
    a projection             every subject it reads       read: must cover them all
    a shared-state key       $KV.<bucket>.<key>           read: (get, list, watch, history),
                                                          publish: (put, delete)
    a workflow               $WF.<workflow>               read: (its runs), publish: (start,
                                                          cancel)
    a request                its subject                  request:

`$KV.<bucket>.<key>` is the subject NATS itself stores the key under; `$WF` names a workflow
(a run id is no subject token of its own). `$` cannot begin an app's subject token, so these
names never collide with an event's. `write` holds publish and request whole, `read` holds
read whole, `admin` holds everything (the backbone's streams included).
"""

from __future__ import annotations

from collections.abc import Iterable

from bus import InvalidSubject, covers, validate_pattern

SCOPES = frozenset({"read", "write", "admin"})
KINDS = ("publish", "read", "request")
WHOLE = {"publish": "write", "read": "read", "request": "write"}  # the plain scope holding it
RESOURCES = ("$KV", "$WF")  # name spaces that are not events: shared-state keys, workflows


def valid_scope(scope: str) -> bool:
    """Whether `scope` is one of ours (a token's scopes that are not are ignored)."""
    kind, _, pattern = scope.partition(":")
    if not pattern:
        return scope in SCOPES
    return kind in KINDS and valid_pattern(pattern)


def valid_pattern(pattern: str) -> bool:
    """A subject pattern, or one under a resource name space (`$KV.settings.>`)."""
    head, dot, rest = pattern.partition(".")
    try:
        validate_pattern(rest if head in RESOURCES and dot else pattern)
    except InvalidSubject:
        return False
    return True


def patterns(scopes: frozenset[str], kind: str) -> tuple[str, ...] | None:
    """The `kind` patterns bounding `scopes`; None when they hold the kind whole."""
    if WHOLE[kind] in scopes or "admin" in scopes:
        return None
    prefix = kind + ":"
    return tuple(s[len(prefix) :] for s in scopes if s.startswith(prefix))


def allows(scopes: frozenset[str], kind: str, name: str) -> bool:
    """Whether `scopes` may `kind` on `name` (a subject, or a pattern: all it matches)."""
    held = patterns(scopes, kind)
    return held is None or any(covers(pattern, name) for pattern in held)


def reaches(scopes: frozenset[str], kind: str, name: str) -> bool:
    """Whether `scopes` may `kind` on some of what the pattern `name` matches (a listing
    shows a bucket or workflow to a caller who may touch part of it)."""
    held = patterns(scopes, kind)
    return held is None or any(_intersect(pattern, name) for pattern in held)


def holds_any(scopes: frozenset[str], kinds: Iterable[str]) -> bool:
    """Whether `scopes` hold some `kind` (whole or as a pattern): who may pass a route's
    gate to have the names checked there."""
    if "admin" in scopes:
        return True
    return any(WHOLE[k] in scopes or any(s.startswith(k + ":") for s in scopes) for k in kinds)


def kv_name(bucket: str, key: str) -> str:
    return f"$KV.{bucket}.{key}"


def workflow_name(name: str) -> str:
    return f"$WF.{name}"


def _intersect(a: str, b: str) -> bool:
    """Whether two patterns match some subject in common (`>` stands for one or more tokens)."""
    x, y = a.split("."), b.split(".")
    for p, q in zip(x, y, strict=False):
        if ">" in (p, q):
            return True
        if p != q and "*" not in (p, q):
            return False
    return len(x) == len(y)
