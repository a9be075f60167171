"""The NATS fast lane: the only code that speaks the NATS wire protocol and JetStream's
client protocol on nats-py's own parser and buffers.

Those are nats-py's private names, so before any module here leans on them, importing the
package checks that the installed nats-py has each one (bus/_nats/internals.py)."""

from nats.aio.client import Client
from nats.aio.subscription import Subscription
from nats.protocol import parser as nats_parser

from .internals import check_nats_internals

check_nats_internals(Client, Subscription, nats_parser)  # once: a clear error, not a broken lane
