"""The pytest plugin as a user's own suite sees it: installed fixtures, no conftest needed."""

from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]

USER_TESTS = """
import pytest
from bus import Bus, EmbeddedServer, StreamSpec

async def test_bus_fixture_is_connected(bus: Bus) -> None:
    await bus.streams.ensure(StreamSpec.for_domain("users"))
    assert [s.name for s in await bus.streams.list()] == ["DLQ_USERS", "USERS"]

def test_each_test_gets_a_fresh_server(nats_server: EmbeddedServer, nats_url: str) -> None:
    assert nats_server.healthy()
    assert nats_url == nats_server.url
"""


def test_users_get_the_fixtures(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_user=USER_TESTS)
    pytester.makeini("[pytest]\nasyncio_mode = auto\n")
    result = pytester.runpytest_subprocess("-q", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)
