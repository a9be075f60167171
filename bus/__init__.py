"""bus: typed events on NATS JetStream, with retries, dead letters and replayable state."""

from .acks import PublishResult
from .aggregate import Aggregate, Repository
from .app import App
from .client import Bus, current_bus
from .codec import Codec, json_schema
from .consumer import Consumer
from .credentials import Credentials
from .deadletter import DeadLetter
from .envelope import Envelope, current_envelope
from .errors import (
    BeyondStreamEnd,
    BusClosed,
    BusError,
    BusTimeout,
    ConcurrencyError,
    ConfigError,
    ConnectError,
    DecodeError,
    Fenced,
    InvalidSubject,
    NoResponders,
    NoStreamForSubject,
    OutboundBufferFull,
    PublishError,
    PublishTimeout,
    RemoteError,
    RequestTimeout,
    ServerError,
    StreamConflict,
    StreamError,
    StreamNotFound,
)
from .events import Event, EventRegistry, new_event_id
from .reader import StoredMessage
from .server import EmbeddedCluster, EmbeddedServer
from .store import AppendResult, EventStore, History
from .streams import StreamSpec, StreamSummary
from .subscribe import Backoff, Router

__all__ = (
    "Aggregate",
    "App",
    "AppendResult",
    "Backoff",
    "BeyondStreamEnd",
    "Bus",
    "BusClosed",
    "BusError",
    "BusTimeout",
    "Codec",
    "ConcurrencyError",
    "ConfigError",
    "ConnectError",
    "Consumer",
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
    "History",
    "InvalidSubject",
    "NoResponders",
    "NoStreamForSubject",
    "OutboundBufferFull",
    "PublishError",
    "PublishResult",
    "PublishTimeout",
    "RemoteError",
    "Repository",
    "RequestTimeout",
    "Router",
    "ServerError",
    "StoredMessage",
    "StreamConflict",
    "StreamError",
    "StreamNotFound",
    "StreamSpec",
    "StreamSummary",
    "current_bus",
    "current_envelope",
    "json_schema",
    "new_event_id",
)
