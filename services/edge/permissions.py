"""Per-subject permissions at the edge: the checks every surface (HTTP, SSE, WebSocket, MCP)
runs on the names it touches, by the one rule of services/edge/grants.py. A refusal is 403
naming what is missing (`this key or token lacks 'bus:publish:tasks.t1.created'`).

Routes opt in with `require(scope, narrowed=True)`: callers holding only patterns get
through to the route, which checks here. The backbone's own streams (KV buckets, leases,
checkpoints, idempotency records: every stream that is neither the app's nor one of its
dead-letter streams) are for `admin` only. Names are checked as the edge decoded them (`%2E`
is a dot by then), after the subject grammar (ASCII tokens: no look-alike dots; no
wildcards where a name must be concrete)."""

from __future__ import annotations

from fastapi import Request
from starlette.datastructures import State

from bus import parse_event_subject, validate_pattern, validate_subject

from . import grants
from .auth import Unauthorized, caller, check_scope
from .tokens import Principal

KINDS = {"write": "publish", "read": "read", "request": "request"}  # a route's scope -> kind


def permit(principal: Principal | None, scope: str, name: str) -> None:
    """403 unless `principal` may `scope` (write: publish, read, request) on `name` (a
    subject, or a pattern when reading). None is a public read."""
    kind = KINDS[scope]
    if principal is not None and not grants.allows(principal.scopes, kind, name):
        raise Unauthorized(403, f"this key or token lacks 'bus:{kind}:{name}'")


async def admitted(state: State, authorization: str | None, scope: str) -> Principal:
    """The caller, who must hold `scope` whole or some pattern of its kind (MCP's tools; the
    names are checked next)."""
    principal, kind = await caller(state, authorization), KINDS[scope]
    if not grants.holds_any(principal.scopes, (kind,)):
        check_scope(principal.scopes, grants.WHOLE[kind])  # (a request: pattern's is write)
    return principal


def stream_subjects(state: State) -> dict[str, tuple[str, ...]]:
    """The app's streams and their dead-letter streams, by name, with their subjects."""
    found: dict[str, tuple[str, ...]] = {}
    for spec in state.app.streams:
        found[spec.name] = tuple(spec.subjects)
        if spec.dead_letters:
            dlq = spec.dead_letter_spec()
            found[dlq.name] = tuple(dlq.subjects)
    return found


def _reads_all(principal: Principal | None, subjects: tuple[str, ...]) -> bool:
    return principal is None or all(grants.allows(principal.scopes, "read", s) for s in subjects)


def may_read_stream(state: State, principal: Principal | None, name: str) -> bool:
    if principal is not None and "admin" in principal.scopes:
        return True
    subjects = stream_subjects(state).get(name)
    return subjects is not None and _reads_all(principal, subjects)  # None: the backbone's


async def permit_stream(state: State, principal: Principal | None, name: str) -> None:
    """403 unless the caller may read stream `name` (404 first if there is no such stream)."""
    if not may_read_stream(state, principal, name):
        if name not in stream_subjects(state):
            await state.bus.streams.info(name)  # StreamNotFound: 404, as for anyone
            raise Unauthorized(403, "this key or token lacks 'admin' (the backbone's streams)")
        raise Unauthorized(403, f"this key or token lacks 'bus:read' of every subject of {name}")


async def permit_dead_letters(state: State, principal: Principal | None, name: str) -> None:
    """The dead letters of app stream `name` are its dead-letter stream's (`dlq.<name>.>`),
    which its own patterns do not cover; other streams' are the backbone's (admin)."""
    if name in stream_subjects(state) or principal is None or "admin" in principal.scopes:
        permit(principal, "read", f"dlq.{name}.>")
    else:
        await permit_stream(state, principal, name)  # 404, or 403: the backbone's


def may_read_projection(state: State, principal: Principal | None, name: str) -> bool:
    """A projection is what its subjects hold, folded: readable by who may read them all
    (an unknown one is left to its 404)."""
    projection = state.app.projections.get(name)
    return projection is None or _reads_all(principal, tuple(projection.subjects))


def permit_projection(state: State, principal: Principal | None, name: str) -> None:
    if not may_read_projection(state, principal, name):
        raise Unauthorized(
            403, f"this key or token lacks 'bus:read' of every subject projection {name} reads"
        )


def permit_key(principal: Principal | None, scope: str, bucket: str, key: str) -> None:
    """403 unless the caller may `scope` on shared-state `key` (`$KV.<bucket>.<key>`): a
    concrete key when writing, a key or a pattern (a watch) when reading. A caller limited to
    patterns has the key's grammar checked first (InvalidSubject: 400), so no wildcard or
    empty token is matched; the bucket checks it for everyone."""
    if principal is not None and grants.patterns(principal.scopes, KINDS[scope]) is not None:
        (validate_pattern if scope == "read" else validate_subject)(key)
    permit(principal, scope, grants.kv_name(bucket, key))


def may_read_key(principal: Principal | None, bucket: str, key: str) -> bool:
    return principal is None or grants.allows(principal.scopes, "read", grants.kv_name(bucket, key))


def reaches(principal: Principal | None, kinds: tuple[str, ...], name: str) -> bool:
    """Whether the caller may touch part of what `name` (a pattern) matches, in some kind:
    what a listing of buckets or workflows shows."""
    return principal is None or any(grants.reaches(principal.scopes, k, name) for k in kinds)


def permit_workflow(principal: Principal | None, scope: str, name: str) -> None:
    """Workflow `name` (`$WF.<name>`): read its runs, or start and cancel them (write)."""
    permit(principal, scope, grants.workflow_name(name))


def permit_publish(principal: Principal | None, subject: str) -> None:
    """403 unless the caller may publish on `subject`, a well-formed event subject (no
    wildcards) before it is matched."""
    parse_event_subject(subject)
    permit(principal, "write", subject)


async def reader(state: State, authorization: str | None, pattern: str) -> Principal | None:
    """The caller (None: a public read), who must hold `read` or a pattern covering `pattern`."""
    if state.public_reads:
        return None
    principal = await admitted(state, authorization, "read")
    permit(principal, "read", pattern)
    return principal


async def publish_subject(request: Request) -> None:
    """After `require("write", narrowed=True)`: the path's subject is one it may publish."""
    permit_publish(request.state.principal, request.path_params["subject"])


def permit_tail(state: State, principal: Principal | None, subject: str, stream: str) -> None:
    """A tail of `subject` (in `stream`): covered by the caller's patterns, and the
    backbone's streams for admin only."""
    admin = principal is not None and "admin" in principal.scopes
    if stream not in stream_subjects(state) and not admin:
        raise Unauthorized(403, "this key or token lacks 'admin' (the backbone's streams)")
    permit(principal, "read", subject)
