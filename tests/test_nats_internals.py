"""The import-time check of the nats-py internals the fast lane uses (bus/_nats/internals.py):
it passes on the installed nats-py and names what is missing, the installed version and the
supported range on stand-ins that lack one internal each."""

from __future__ import annotations

import tomllib
import types
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client
from nats.aio.subscription import Subscription
from nats.protocol import parser as nats_parser
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

from bus._nats.internals import (
    CLIENT,
    PARSER,
    PARSER_STATES,
    SUBSCRIPTION,
    SUPPORTED,
    UnsupportedNats,
    check_nats_internals,
    internals_problems,
)

PYPROJECT = Path(__file__).parent.parent / "pyproject.toml"


def without(real: type[Any], name: str) -> type[Any]:
    """A stand-in for `real` whose instances answer everything but `name`."""

    class StandIn(real):  # type: ignore[valid-type, misc]
        def __getattribute__(self, attribute: str) -> Any:
            if attribute == name:
                raise AttributeError(attribute)
            return super().__getattribute__(attribute)

    StandIn.__name__ = real.__name__
    return StandIn


def parser_module(**replaced: Any) -> types.ModuleType:
    """A stand-in for nats.protocol.parser with some names replaced (None: removed)."""
    module = types.ModuleType(nats_parser.__name__)
    module.__dict__.update(vars(nats_parser))
    for name, value in replaced.items():
        if value is None:
            delattr(module, name)
        else:
            setattr(module, name, value)
    return module


class ClientWithoutStat(Client):  # type: ignore[misc]
    def __init__(self) -> None:
        super().__init__()
        del self.stats["in_bytes"]


class ClientWithAnotherProcessMsg(Client):  # type: ignore[misc]
    async def _process_msg(  # type: ignore[override]
        self, sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes, raw: bytes
    ) -> None:
        return None


class ParserWithBytesBuffer(nats_parser.Parser):  # type: ignore[misc]
    def reset(self) -> None:
        super().reset()
        self.buf = b""


def test_the_installed_nats_py_has_every_internal_the_lane_uses() -> None:
    assert list(internals_problems(Client, Subscription, nats_parser)) == []
    check_nats_internals(Client, Subscription, nats_parser)  # what importing bus did


def test_the_installed_nats_py_is_in_the_range_pyproject_declares_and_the_check_names() -> None:
    dependencies = tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]
    nats = next(Requirement(d) for d in dependencies if Requirement(d).name == "nats-py")
    assert nats.specifier == SpecifierSet(SUPPORTED)
    assert any(bound.operator == "<" for bound in nats.specifier)  # a release never tested: no
    assert nats.specifier.contains(version("nats-py"))


CASES = [
    *((f"Client.{name}", without(Client, name), Subscription, nats_parser) for name, _ in CLIENT),
    *(
        (f"Subscription.{name}", Client, without(Subscription, name), nats_parser)
        for name, _ in SUBSCRIPTION
    ),
    *(
        (
            f"Parser.{name}",
            Client,
            Subscription,
            parser_module(Parser=without(nats_parser.Parser, name)),
        )
        for name, _ in PARSER
    ),
    *(
        (f"nats.protocol.parser.{state}", Client, Subscription, parser_module(**{state: None}))
        for state in PARSER_STATES
    ),
    ("nats.protocol.parser.Parser", Client, Subscription, parser_module(Parser=None)),
    ("Client.stats has no 'in_bytes'", ClientWithoutStat, Subscription, nats_parser),
    (
        "Client._process_msg takes (sid, subject, reply, data, headers, raw)",
        ClientWithAnotherProcessMsg,
        Subscription,
        nats_parser,
    ),
    (
        "Parser.buf is no longer a bytearray",
        Client,
        Subscription,
        parser_module(Parser=ParserWithBytesBuffer),
    ),
]


@pytest.mark.parametrize(
    ("missing", "client", "subscription", "parser"), CASES, ids=[c[0] for c in CASES]
)
def test_a_missing_or_changed_internal_is_named_with_the_version_and_the_range(
    missing: str, client: type[Any], subscription: type[Any], parser: types.ModuleType
) -> None:
    with pytest.raises(UnsupportedNats) as raised:
        check_nats_internals(client, subscription, parser)
    error = raised.value
    assert isinstance(error, ImportError)
    assert error.name == "nats"
    message = str(error)
    assert missing in message
    assert f"installed nats-py {version('nats-py')}" in message
    assert f"nats-py{SUPPORTED}" in message
    assert f"pip install 'nats-py[nkeys]{SUPPORTED}'" in message
