"""One exception tree for everything `bus` raises; nats-py errors never reach callers.

BusError
├── ConfigError(ValueError)          bad settings, subject, name or definition
│   ├── InvalidSubject
│   └── BeyondStreamEnd              a stream sequence not stored (yet)
├── ConnectError(ConnectionError)    cannot reach or authenticate to NATS
├── BusClosed(RuntimeError)          the Bus was used after close
├── BusTimeout(TimeoutError)
│   ├── PublishTimeout               no ack from JetStream in time
│   └── RequestTimeout               no reply to a request in time
├── NoResponders                     nobody serves a request subject
├── RemoteError                      a responder answered with an error
├── CircuitOpen                      calls to a failing endpoint are refused for a while
├── ServiceError                     raised by a responder: answer with this error code
├── StreamError
│   ├── StreamNotFound(LookupError)
│   ├── StreamConflict               an existing stream differs in a field that cannot change
│   └── NoStreamForSubject           JetStream has no stream on that subject
├── ConcurrencyError                 expected version differs from the stream's
│   └── RevisionMismatch             a key's revision is not the one a write expected
│       └── KeyExists                a create found the key there
├── KeyNotFound(LookupError)         no such key in a bucket (or it was deleted)
├── Fenced                           another instance has taken over what this one ran
├── PublishError                     JetStream refused a publish for another reason
├── DecodeError(ValueError)          bytes that are not a known, valid event
│   └── Rejected                     unsigned, forged, untrusted or undecryptable
└── ServerError                      the embedded nats-server failed to start or stop
"""

from __future__ import annotations


class BusError(Exception):
    """Root of every error `bus` raises."""


class ConfigError(BusError, ValueError):
    """A setting, name, subject or definition is invalid; nothing was sent."""


class InvalidSubject(ConfigError):
    def __init__(self, subject: str, reason: str) -> None:
        super().__init__(f"invalid subject {subject!r}: {reason}")
        self.subject = subject
        self.reason = reason


class BeyondStreamEnd(ConfigError):
    """A position past a stream's last sequence: no event there to wait for."""

    def __init__(self, stream: str, seq: int, last: int) -> None:
        super().__init__(f"stream {stream!r} has no sequence {seq} (its last is {last})")
        self.stream = stream
        self.seq = seq
        self.last = last


class ConnectError(BusError, ConnectionError):
    """NATS could not be reached, or refused our credentials."""


class BusClosed(BusError, RuntimeError):
    """The Bus was closed; open a new one."""


class OutboundBufferFull(BusError):
    def __init__(self, limit: int) -> None:
        super().__init__(
            f"NATS is unreachable and {limit} bytes already wait to be sent: refusing to buffer more"
        )
        self.limit = limit


class BusTimeout(BusError, TimeoutError):
    """An operation did not finish within its timeout."""


class PublishTimeout(BusTimeout):
    def __init__(self, subject: str, timeout: float) -> None:
        super().__init__(f"no ack for {subject!r} within {timeout:g}s")
        self.subject = subject
        self.timeout = timeout


class RequestTimeout(BusTimeout):
    def __init__(self, subject: str, timeout: float) -> None:
        super().__init__(f"no reply on {subject!r} within {timeout:g}s")
        self.subject = subject
        self.timeout = timeout


class NoResponders(BusError):
    def __init__(self, subject: str) -> None:
        super().__init__(f"no responders on {subject!r}")
        self.subject = subject


class RemoteError(BusError):
    def __init__(self, subject: str, code: int, description: str) -> None:
        super().__init__(f"{subject!r} answered {code}: {description}")
        self.subject = subject
        self.code = code
        self.description = description

    @property
    def callers_fault(self) -> bool:
        """A 4xx-style answer: the request was refused, the responder itself is well."""
        return 400 <= self.code < 500


class CircuitOpen(BusError):
    """Requests on `endpoint` failed too often lately: refused at once for `retry_after`
    seconds (then a probe is let through) rather than left to time out."""

    def __init__(self, endpoint: str, retry_after: float) -> None:
        super().__init__(f"circuit open for {endpoint!r}: retry in {retry_after:.1f}s")
        self.endpoint = endpoint
        self.retry_after = retry_after


class ServiceError(BusError):
    """Raised by a responder to answer with an error the caller gets as RemoteError:
    `raise ServiceError(404, "no task 't1'")`. A 4xx code says the request was at fault (it
    does not count against the responder's circuit); anything else that the responder was."""

    def __init__(self, code: int, description: str) -> None:
        super().__init__(f"{code}: {description}")
        self.code = code
        self.description = description


class StreamError(BusError):
    """A stream is missing, differs from its definition, or refused an operation."""


class StreamNotFound(StreamError, LookupError):
    def __init__(self, stream: str) -> None:
        super().__init__(f"stream {stream!r} does not exist")
        self.stream = stream


class StreamConflict(StreamError):
    def __init__(self, stream: str, field: str, existing: object, wanted: object) -> None:
        super().__init__(
            f"stream {stream!r}: field {field!r} is {existing!r} on the server, the definition "
            f"wants {wanted!r}, and JetStream cannot change it in place"
        )
        self.stream = stream
        self.field = field
        self.existing = existing
        self.wanted = wanted


class NoStreamForSubject(StreamError):
    def __init__(self, subject: str) -> None:
        super().__init__(f"no stream captures subject {subject!r} (declare or ensure it first)")
        self.subject = subject


class ConcurrencyError(BusError):
    def __init__(self, subject: str, expected: int, actual: int | None) -> None:
        shown = "unknown" if actual is None else actual
        super().__init__(f"{subject!r}: expected version {expected}, stream is at {shown}")
        self.subject = subject
        self.expected = expected
        self.actual = actual


class RevisionMismatch(ConcurrencyError):
    """A compare-and-set on a key lost: its `current` revision (0: absent) is not `expected`."""

    def __init__(self, bucket: str, key: str, expected: int, current: int) -> None:
        super().__init__(f"$KV.{bucket}.{key}", expected, current)
        shown = "it is absent" if not current else f"it is at revision {current}"
        self.args = (f"{bucket}/{key}: expected revision {expected}, {shown}",)
        self.bucket = bucket
        self.key = key
        self.current = current


class KeyExists(RevisionMismatch):
    """A create found the key there (at revision `current`)."""

    def __init__(self, bucket: str, key: str, current: int) -> None:
        super().__init__(bucket, key, 0, current)
        self.args = (f"{bucket}/{key} exists (revision {current})",)


class KeyNotFound(BusError, LookupError):
    def __init__(self, bucket: str, key: str) -> None:
        super().__init__(f"bucket {bucket!r} has no key {key!r}")
        self.bucket = bucket
        self.key = key


class Fenced(BusError):
    """This instance lost what it ran (a projection) to another, which fenced it off: it can
    write nothing more there. Nothing is lost: the new holder carries on from the stored state."""

    def __init__(self, what: str) -> None:
        super().__init__(f"{what} was taken over by another instance")
        self.what = what


class PublishError(BusError):
    def __init__(self, subject: str, description: str, code: int | None = None) -> None:
        super().__init__(f"publish to {subject!r} refused: {description}")
        self.subject = subject
        self.description = description
        self.code = code


class DecodeError(BusError, ValueError):
    def __init__(self, reason: str, subject: str | None = None) -> None:
        where = f" on {subject!r}" if subject else ""
        super().__init__(f"cannot decode message{where}: {reason}")
        self.reason = reason
        self.subject = subject

    @property
    def verdict(self) -> str:
        """The dead-letter reason for such a message."""
        return f"undecodable: {self.reason}"


class Rejected(DecodeError):
    """A message that may not be read: its signature or its encryption does not check out."""

    @property
    def verdict(self) -> str:
        return f"rejected: {self.reason}"


class ServerError(BusError):
    """The embedded nats-server could not be started, or died."""
