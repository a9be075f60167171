"""Header names of the wire format, in one place (see DESIGN.md, "Wire conventions").

Metadata always travels in headers; the payload is only the event's fields.
"""

from typing import Final

MSG_ID: Final = "Nats-Msg-Id"  # the event id (UUIDv7); JetStream dedupes on it
EVENT_TYPE: Final = "Bus-Event-Type"
EVENT_VERSION: Final = "Bus-Event-Version"
OCCURRED_AT: Final = "Bus-Occurred-At"
CORRELATION_ID: Final = "Bus-Correlation-Id"
CAUSATION_ID: Final = "Bus-Causation-Id"
PRINCIPAL: Final = "Bus-Principal"  # who published it through the edge (bus/_principal.py)
CONTENT_TYPE: Final = "Content-Type"
TRACEPARENT: Final = "traceparent"
TRACESTATE: Final = "tracestate"

EXPECTED_LAST_SEQ: Final = "Nats-Expected-Last-Sequence"  # of the whole stream
EXPECTED_LAST_SUBJECT_SEQ: Final = "Nats-Expected-Last-Subject-Sequence"
EXPECTED_LAST_SUBJECT_SEQ_SUBJECT: Final = "Nats-Expected-Last-Subject-Sequence-Subject"

BATCH_ID: Final = "Nats-Batch-Id"  # atomic batch publish (stream with allow_atomic)
BATCH_SEQ: Final = "Nats-Batch-Sequence"
BATCH_COMMIT: Final = "Nats-Batch-Commit"

DLQ_REASON: Final = "Bus-Dlq-Reason"
DLQ_CONSUMER: Final = "Bus-Dlq-Consumer"
ORIGINAL_SUBJECT: Final = "Bus-Original-Subject"
ORIGINAL_SEQ: Final = "Bus-Original-Seq"
REPLAYED_FROM: Final = "Bus-Replayed-From"

SIGNER: Final = "Bus-Signer"  # the nkeys public key that signed (bus._signing)
SIGNATURE: Final = "Bus-Signature"  # Ed25519, base64url
KEY_ID: Final = "Bus-Key-Id"  # the payload key that encrypted (bus._keyring)

STATUS: Final = "Status"  # JetStream status messages (pull requests, heartbeats)
DESCRIPTION: Final = "Description"
PENDING_MESSAGES: Final = "Nats-Pending-Messages"
UP_TO_SEQUENCE: Final = "Nats-UpTo-Sequence"  # a multi-subject direct get: the replica's last

JSON: Final = "application/json"
MSGPACK: Final = "application/msgpack"
