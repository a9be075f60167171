"""The nats-py internals `bus` relies on, checked once when `bus` is imported.

The fast lane (bus/_nats/connection.py, parser.py) subclasses nats-py's client and protocol
parser to hand messages straight to our consumers, and writes into the client's pending
buffer. Those names are private: any nats-py release may rename or reshape one, and consuming
or publishing then breaks, possibly without an error. pyproject.toml bounds nats-py to the
releases the suite ran against; this check turns any other nats-py (installed with --no-deps,
pinned by a lock file, patched) into one clear error at import instead of lost messages later.

The error is an ImportError, not a BusError: it is raised while `import bus` runs, before any
caller could hold bus's BusError to catch it, and an unusable dependency found at import is what
ImportError means to tools and to `try: import bus except ImportError`.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from importlib.metadata import PackageNotFoundError, version
from types import ModuleType
from typing import Any

SUPPORTED = ">=2.16,<2.17"  # the nats-py releases tested: pyproject.toml says the same

# What the lane reads or writes on instances of nats-py's classes: (name, type of its value,
# None where it varies). A renamed or retyped one means the lane no longer fits that release.
CLIENT = (
    ("_ps", None),  # the parser the read loop feeds: replaced by ours
    ("_pending", list),  # commands waiting for the flusher: we append ready-made ones
    ("_pending_data_size", int),
    ("_max_pending_size", int),
    ("_flush_queue", None),  # None until connected; putting a future wakes the flusher
    ("_process_msg", None),  # where a parsed message goes: ours tries a lane first
    ("stats", dict),
    ("options", dict),  # the connect options: reconnecting forever is set there once connected
)
CLIENT_STATS = ("in_msgs", "in_bytes", "reconnects")
PROCESS_MSG_PARAMETERS = ("sid", "subject", "reply", "data", "headers")
PARSER = (  # the message being read lives in these between reads
    ("nc", None),
    ("buf", bytearray),
    ("state", int),
    ("needed", int),
    ("header_needed", int),
    ("msg_arg", dict),
    ("parse", None),
)
PARSER_STATES = ("AWAITING_CONTROL_LINE", "AWAITING_MSG_PAYLOAD")
SUBSCRIPTION = (("_id", int),)  # the sid its messages arrive with: the key of its lane


class UnsupportedNats(ImportError):
    """The installed nats-py lacks or has changed an internal that `bus` uses."""

    def __init__(self, problems: list[str], installed: str) -> None:
        super().__init__(
            f"bus cannot run on the installed nats-py {installed}: its fast consuming lane "
            f"(bus/_nats) uses nats-py internals that this release lacks or has "
            f"changed: {'; '.join(problems)}. bus supports nats-py{SUPPORTED}; install one "
            f"with: pip install 'nats-py[nkeys]{SUPPORTED}'",
            name="nats",
        )
        self.problems = problems
        self.installed = installed


def check_nats_internals(client: type[Any], subscription: type[Any], parser: ModuleType) -> None:
    """Raise UnsupportedNats unless `client`, `subscription` and the protocol `parser`
    module (nats-py's, or stand-ins) have every internal the lane uses."""
    problems = list(internals_problems(client, subscription, parser))
    if problems:
        raise UnsupportedNats(problems, installed_nats_version())


def internals_problems(
    client: type[Any], subscription: type[Any], parser: ModuleType
) -> Iterator[str]:
    """Each internal the lane uses that these lack or that has changed, as a short phrase."""
    for state in PARSER_STATES:
        if not isinstance(getattr(parser, state, None), int):
            yield f"{parser.__name__}.{state} is missing"
    parser_class = getattr(parser, "Parser", None)
    if not isinstance(parser_class, type):
        yield f"{parser.__name__}.Parser is missing"
        return
    try:  # built as nats-py builds them: a client, its parser, a subscription of it
        nc = client()
        ps = parser_class(nc)
        sub = subscription(nc)
    except Exception as exc:
        yield f"its Client, Parser or Subscription cannot be built as before ({exc!r})"
        return
    yield from _attribute_problems("Client", nc, CLIENT)
    yield from _attribute_problems("Parser", ps, PARSER)
    yield from _attribute_problems("Subscription", sub, SUBSCRIPTION)
    if hasattr(nc, "_ps") and not isinstance(nc._ps, parser_class):
        yield "Client._ps is not its Parser"
    yield from _coroutine_problems("Client._process_msg", nc, PROCESS_MSG_PARAMETERS)
    yield from _coroutine_problems("Parser.parse", ps, None)
    stats = getattr(nc, "stats", None)
    if isinstance(stats, dict):
        yield from (f"Client.stats has no {key!r}" for key in CLIENT_STATS if key not in stats)


def installed_nats_version() -> str:
    try:
        return version("nats-py")
    except PackageNotFoundError:
        return "(version unknown)"


def _attribute_problems(
    owner: str, instance: object, expected: tuple[tuple[str, type[Any] | None], ...]
) -> Iterator[str]:
    for name, kind in expected:
        if not hasattr(instance, name):
            yield f"{owner}.{name} is missing"
        elif kind is not None and not isinstance(getattr(instance, name), kind):
            yield f"{owner}.{name} is no longer a {kind.__name__}"


def _coroutine_problems(
    where: str, instance: object, parameters: tuple[str, ...] | None
) -> Iterator[str]:
    """A coroutine method, with these parameters when given (we override or call it)."""
    method = getattr(instance, where.rpartition(".")[2], None)
    if method is None:
        return  # reported as missing already
    if not inspect.iscoroutinefunction(method):
        yield f"{where} is no longer a coroutine function"
    elif parameters is not None:
        found = tuple(inspect.signature(method).parameters)
        if found != parameters:
            yield f"{where} takes ({', '.join(found)}), not ({', '.join(parameters)})"
