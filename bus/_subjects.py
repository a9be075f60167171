"""Subject rules: `<domain>.<aggregate_id>.<event_name>`, validated before anything is sent."""

from __future__ import annotations

import re

from ._errors import InvalidSubject

# A token is printable ASCII without space, dot or wildcard; '$' leads system subjects.
_TOKEN = re.compile(r"[A-Za-z0-9_\-:~@=+%!]+")
MAX_SUBJECT_BYTES = 1024
# An event's subject, `<domain>.<aggregate_id>.<event_name>`, as a JSON Schema pattern.
EVENT_SUBJECT_PATTERN = rf"^{_TOKEN.pattern}\.{_TOKEN.pattern}\.{_TOKEN.pattern}$"


def validate_token(token: str, what: str = "token") -> str:
    """Return `token` if it can be one subject token, else raise InvalidSubject."""
    if not token:
        raise InvalidSubject(token, f"{what} is empty")
    if not _TOKEN.fullmatch(token):
        raise InvalidSubject(
            token, f"{what} may hold letters, digits and _-:~@=+%! only (no spaces, dots or *>)"
        )
    return token


def _check_length(subject: str) -> None:
    if not subject:
        raise InvalidSubject(subject, "empty")
    if len(subject.encode()) > MAX_SUBJECT_BYTES:
        raise InvalidSubject(subject[:40] + "...", f"longer than {MAX_SUBJECT_BYTES} bytes")


def validate_subject(subject: str) -> str:
    """A concrete subject (no wildcards), as used to publish."""
    _check_length(subject)
    for token in subject.split("."):
        if token in ("*", ">"):
            raise InvalidSubject(subject, "wildcards are not allowed when publishing")
        try:
            validate_token(token)
        except InvalidSubject as exc:
            raise InvalidSubject(subject, exc.reason) from None
    return subject


def validate_pattern(pattern: str) -> str:
    """A subscription pattern: tokens, `*` for one token, `>` as the last token only."""
    _check_length(pattern)
    tokens = pattern.split(".")
    for i, token in enumerate(tokens):
        if token == "*":
            continue
        if token == ">":
            if i != len(tokens) - 1:
                raise InvalidSubject(pattern, "'>' must be the last token")
            continue
        try:
            validate_token(token)
        except InvalidSubject as exc:
            raise InvalidSubject(pattern, exc.reason) from None
    return pattern


def event_subject(domain: str, aggregate_id: str, event_name: str) -> str:
    """`tasks.7f3c.created`, each part validated as one token."""
    validate_token(domain, "domain")
    validate_token(aggregate_id, "aggregate id")
    validate_token(event_name, "event name")
    return f"{domain}.{aggregate_id}.{event_name}"


def parse_event_subject(subject: str) -> tuple[str, str, str]:
    """Split `domain.id.name`; raise InvalidSubject when it has another shape."""
    parts = subject.split(".")
    if len(parts) != 3:
        raise InvalidSubject(subject, "expected <domain>.<aggregate_id>.<event_name>")
    validate_subject(subject)
    return parts[0], parts[1], parts[2]


def matches(pattern: str, subject: str) -> bool:
    """NATS wildcard matching, for filtering locally."""
    p, s = pattern.split("."), subject.split(".")
    for i, token in enumerate(p):
        if token == ">":
            return len(s) > i
        if i >= len(s) or (token != "*" and token != s[i]):
            return False
    return len(p) == len(s)


def covers(pattern: str, other: str) -> bool:
    """Whether `pattern` matches every subject `other` matches (both may have wildcards)."""
    p, o = pattern.split("."), other.split(".")
    for i, token in enumerate(p):
        if token == ">":
            return len(o) > i
        if i >= len(o) or o[i] == ">" or (token != "*" and token != o[i]):
            return False
    return len(p) == len(o)
