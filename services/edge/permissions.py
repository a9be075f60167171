"""Per-subject permissions: a key or token may hold `publish:<pattern>` / `read:<pattern>`
(as token scopes `bus:publish:<pattern>` / `bus:read:<pattern>`) instead of `write` / `read`.
Such a caller may publish events whose subject a pattern matches, and read streams and tails
that its patterns cover; every other route needs the plain scope, so it is refused there (a
route opts in with `require(scope, narrowed=True)` and checks here).

The backbone's own streams (KV buckets, leases, checkpoints, idempotency records: every
stream that is neither the app's nor one of its dead-letter streams) are for `admin` only.
Subjects are checked as the edge decoded them (`%2E` is a dot by then), after the bus's
token grammar (ASCII only: no look-alike dots; no wildcards in an event subject)."""

from __future__ import annotations

from fastapi import Request
from starlette.datastructures import State

from bus import covers, matches, parse_event_subject

from .auth import Unauthorized, caller, check_scope
from .tokens import Principal

KINDS = {"write": "publish", "read": "read"}


def limited(principal: Principal, scope: str) -> tuple[str, ...] | None:
    """The patterns that bound `principal` for `scope`; None when it holds the scope whole."""
    if scope in principal.scopes or "admin" in principal.scopes:
        return None
    prefix = KINDS[scope] + ":"
    return tuple(s.removeprefix(prefix) for s in principal.scopes if s.startswith(prefix))


def permit(principal: Principal | None, scope: str, subject: str) -> None:
    """403 unless `principal` may `scope` (write: publish, read) on `subject` (a pattern
    when reading). None is a public read."""
    if principal is None:
        return
    patterns = limited(principal, scope)
    if patterns is None:
        return
    test = matches if scope == "write" else covers
    if not any(test(pattern, subject) for pattern in patterns):
        raise Unauthorized(403, f"this key or token lacks 'bus:{KINDS[scope]}:{subject}'")


def stream_subjects(state: State) -> dict[str, tuple[str, ...]]:
    """The app's streams and their dead-letter streams, by name, with their subjects."""
    found: dict[str, tuple[str, ...]] = {}
    for spec in state.app.streams:
        found[spec.name] = tuple(spec.subjects)
        if spec.dead_letters:
            dlq = spec.dead_letter_spec()
            found[dlq.name] = tuple(dlq.subjects)
    return found


def may_read_stream(state: State, principal: Principal | None, name: str) -> bool:
    subjects = stream_subjects(state).get(name)
    if principal is not None and "admin" in principal.scopes:
        return True
    if subjects is None:  # the backbone's
        return False
    try:
        for subject in subjects:
            permit(principal, "read", subject)
    except Unauthorized:
        return False
    return True


async def permit_stream(state: State, principal: Principal | None, name: str) -> None:
    """403 unless the caller may read stream `name` (404 first if there is no such stream)."""
    if not may_read_stream(state, principal, name):
        if name not in stream_subjects(state):
            await state.bus.streams.info(name)  # StreamNotFound: 404, as for anyone
            raise Unauthorized(403, "this key or token lacks 'admin' (the backbone's streams)")
        raise Unauthorized(403, f"this key or token lacks 'bus:read' of every subject of {name}")


async def publisher(state: State, authorization: str | None, subject: str) -> Principal:
    """The caller, who must hold `write` or a `publish:` pattern matching `subject`."""
    principal = await caller(state, authorization)
    parse_event_subject(subject)
    if not any(s.startswith("publish:") for s in principal.scopes):
        check_scope(principal.scopes, "write")
    permit(principal, "write", subject)
    return principal


async def reader(state: State, authorization: str | None, pattern: str) -> Principal | None:
    """The caller (None: a public read), who must hold `read` or a pattern covering `pattern`."""
    if state.public_reads:
        return None
    principal = await caller(state, authorization)
    if not any(s.startswith("read:") for s in principal.scopes):
        check_scope(principal.scopes, "read")
    permit(principal, "read", pattern)
    return principal


async def publish_subject(request: Request) -> None:
    """After `require("write", narrowed=True)`: the path's subject is one it may publish."""
    subject = request.path_params["subject"]
    parse_event_subject(subject)  # a well-formed subject (no wildcards) before it is matched
    permit(request.state.principal, "write", subject)


def permit_tail(state: State, principal: Principal | None, subject: str, stream: str) -> None:
    """A tail of `subject` (in `stream`): covered by the caller's patterns, and the
    backbone's streams for admin only."""
    admin = principal is not None and "admin" in principal.scopes
    if stream not in stream_subjects(state) and not admin:
        raise Unauthorized(403, "this key or token lacks 'admin' (the backbone's streams)")
    permit(principal, "read", subject)
