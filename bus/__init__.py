"""bus: typed events on NATS JetStream, with retries, dead letters and replayable state.

Everything a user needs is exported here; the modules behind it are private (`bus._client`
and so on), as is the NATS fast lane (`bus._nats`). `bus.testing` is the pytest plugin.
"""

from ._aggregate import Aggregate, Repository
from ._app import App, load_app
from ._breaker import CircuitPolicy, Circuits
from ._buckets import BucketSpec, KeyEntry, KeyPage
from ._client import Bus, current_bus
from ._codec import Codec, json_schema
from ._consumer import Consumer
from ._credentials import Credentials
from ._deadletter import DeadLetter
from ._envelope import Envelope, current_envelope
from ._errors import (
    BeyondStreamEnd,
    BusClosed,
    BusError,
    BusTimeout,
    CircuitOpen,
    ConcurrencyError,
    ConfigError,
    ConnectError,
    DecodeError,
    Fenced,
    InvalidSubject,
    KeyExists,
    KeyNotFound,
    NoResponders,
    NoStreamForSubject,
    OutboundBufferFull,
    PublishError,
    PublishTimeout,
    Rejected,
    RemoteError,
    RequestTimeout,
    RevisionMismatch,
    ServerError,
    ServiceError,
    StreamConflict,
    StreamError,
    StreamNotFound,
)
from ._events import Event, EventRegistry, new_event_id
from ._health import ComponentHealth, HealthRecords, Heartbeat, heartbeats
from ._idempotency import Claim, IdempotencyRecords, InFlight, Mismatch, Replay
from ._keyring import Keyring, new_key
from ._lease import Lease
from ._live_view import LiveView
from ._nats.acks import PublishResult
from ._nats.direct import StoredMessage
from ._principal import acting_as
from ._projection import Projection, ProjectionStatus, ProjectionView
from ._projector import Projector
from ._protection import Protection
from ._registry import Component, Registration, Silent, components, silent_components
from ._rpc import Responder
from ._server import EmbeddedCluster, EmbeddedServer
from ._shared_state import Bucket
from ._signing import Signer
from ._store import AppendResult, EventStore, History
from ._streams import ConsumerSummary, StreamManager, StreamSpec, StreamSummary
from ._subjects import (
    EVENT_SUBJECT_PATTERN,
    covers,
    event_subject,
    matches,
    parse_event_subject,
    validate_pattern,
    validate_subject,
    validate_token,
)
from ._subscribe import Backoff, Router
from ._telemetry import Observer, Telemetry
from ._workflow import PermanentError, RunContext, Step, Workflow
from ._workflow_events import RunView, StepView
from ._workflow_runs import Started, Workflows

__all__ = (
    "EVENT_SUBJECT_PATTERN",
    "Aggregate",
    "App",
    "AppendResult",
    "Backoff",
    "BeyondStreamEnd",
    "Bucket",
    "BucketSpec",
    "Bus",
    "BusClosed",
    "BusError",
    "BusTimeout",
    "CircuitOpen",
    "CircuitPolicy",
    "Circuits",
    "Claim",
    "Codec",
    "Component",
    "ComponentHealth",
    "ConcurrencyError",
    "ConfigError",
    "ConnectError",
    "Consumer",
    "ConsumerSummary",
    "Credentials",
    "DeadLetter",
    "DecodeError",
    "EmbeddedCluster",
    "EmbeddedServer",
    "Envelope",
    "Event",
    "EventRegistry",
    "EventStore",
    "Fenced",
    "HealthRecords",
    "Heartbeat",
    "History",
    "IdempotencyRecords",
    "InFlight",
    "InvalidSubject",
    "KeyEntry",
    "KeyExists",
    "KeyNotFound",
    "KeyPage",
    "Keyring",
    "Lease",
    "LiveView",
    "Mismatch",
    "NoResponders",
    "NoStreamForSubject",
    "Observer",
    "OutboundBufferFull",
    "PermanentError",
    "Projection",
    "ProjectionStatus",
    "ProjectionView",
    "Projector",
    "Protection",
    "PublishError",
    "PublishResult",
    "PublishTimeout",
    "Registration",
    "Rejected",
    "RemoteError",
    "Replay",
    "Repository",
    "RequestTimeout",
    "Responder",
    "RevisionMismatch",
    "Router",
    "RunContext",
    "RunView",
    "ServerError",
    "ServiceError",
    "Signer",
    "Silent",
    "Started",
    "Step",
    "StepView",
    "StoredMessage",
    "StreamConflict",
    "StreamError",
    "StreamManager",
    "StreamNotFound",
    "StreamSpec",
    "StreamSummary",
    "Telemetry",
    "Workflow",
    "Workflows",
    "acting_as",
    "components",
    "covers",
    "current_bus",
    "current_envelope",
    "event_subject",
    "heartbeats",
    "json_schema",
    "load_app",
    "matches",
    "new_event_id",
    "new_key",
    "parse_event_subject",
    "silent_components",
    "validate_pattern",
    "validate_subject",
    "validate_token",
)
