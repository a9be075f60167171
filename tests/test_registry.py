"""The component registry: heartbeats, clean deregistration, expiry, micro services, CLI."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import msgspec

from bus import Bus, Component, Registration, components


class Ping(msgspec.Struct):
    text: str


async def echo(ping: Ping) -> Ping:
    return ping


async def names(bus: Bus) -> set[str]:
    return {c.name for c in await components(bus)}


async def test_registered_while_open_and_gone_after_a_clean_stop(bus: Bus) -> None:
    me = Component(name="worker", version="1.2.3", port=8081, capabilities=["handler:jobs"])
    async with Registration(bus, me):
        [listed] = await components(bus)
        assert (listed.name, listed.version, listed.port) == ("worker", "1.2.3", 8081)
        assert listed.capabilities == ["handler:jobs"]
        assert listed.instance == me.instance
        assert listed.heartbeat_at
    assert await components(bus) == []


async def test_a_component_that_stops_heartbeating_disappears_within_the_ttl(bus: Bus) -> None:
    crashed = Registration(bus, Component(name="crashy"), ttl=1.0)
    await crashed.start()
    alive = Registration(bus, Component(name="steady"), ttl=1.0)
    await alive.start()
    assert crashed._task is not None
    crashed._task.cancel()  # the process died: no more heartbeats, no deregistration
    found = {"crashy", "steady"}

    async def refresh() -> None:
        found.clear()
        found.update(await names(bus))

    for _ in range(100):
        await refresh()
        if "crashy" not in found:
            break
        await asyncio.sleep(0.1)
    assert found == {"steady"}  # the live one kept renewing past its TTL
    await alive.stop()


async def test_micro_responders_show_up(bus: Bus) -> None:
    await bus.serve("tools.echo", echo, service="echo", version="2.0.0")
    [micro] = await components(bus)
    assert (micro.name, micro.kind, micro.version) == ("echo", "micro", "2.0.0")
    assert micro.endpoints == ["tools.echo"]


async def test_cli_lists_components(bus: Bus, nats_url: str, tmp_path: Path) -> None:
    async with Registration(bus, Component(name="edge", port=8080)):
        env = {**os.environ, "BUS_NATS_URL": nats_url, "BUS_DATA_DIR": str(tmp_path)}
        cli = str(Path(sys.executable).parent / "bus")
        args = [cli, "components", "--json"]
        out = await asyncio.to_thread(
            subprocess.run, args, env=env, capture_output=True, text=True, check=True
        )
        listed = json.loads(out.stdout)
        assert [(c["name"], c["port"]) for c in listed] == [("edge", 8080)]
