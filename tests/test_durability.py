"""Crashes and clusters: kill -9 and restart under a running subscriber; R3 on three nodes;
the embedded server's own guarantees (free ports, no orphans, clear start failures)."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import pytest

from bus import (
    Bus,
    Component,
    ConfigError,
    EmbeddedCluster,
    EmbeddedServer,
    Envelope,
    Projector,
    PublishTimeout,
    Registration,
    ServerError,
    StreamSpec,
)
from bus._server import TLSFiles, free_ports
from services import demo
from services.runtime.settings import Settings

from .domain import JOBS, JobCreated, eventually


class Clustered(JobCreated):
    __domain__ = "clustered"
    __event_name__ = "created"


async def _publish_retrying(bus: Bus, event: JobCreated, aggregate_id: str, event_id: str) -> None:
    """Retry until acked: safe, because the event id makes JetStream store it once."""
    for _ in range(100):
        try:
            await bus.publish(event, aggregate_id, event_id=event_id, timeout=0.5)
            return
        except PublishTimeout:
            await asyncio.sleep(0.1)
    raise AssertionError("publish never acknowledged")


@pytest.mark.slow
async def test_kill_9_and_restart_subscriber_resumes_and_nothing_acked_is_lost(
    nats_server: EmbeddedServer,
) -> None:
    seen: set[str] = set()
    acked: list[str] = []

    async def handle(event: JobCreated, envelope: Envelope[JobCreated]) -> None:
        await asyncio.sleep(0.001)
        seen.add(envelope.id)

    async with Bus(nats_server.url, streams=[JOBS], drain_timeout=2.0) as bus:
        await bus.consume(handle, durable="survivor", ack_wait=2.0, concurrency=8)
        for i in range(200):
            result = await bus.publish(JobCreated(title=f"before {i}"), f"k{i}")
            acked.append(result.event_id)

        nats_server.kill()  # SIGKILL mid-stream: in-flight handlers lose their acks
        nats_server.start()

        from bus import new_event_id

        for i in range(100):
            event_id = new_event_id()
            await _publish_retrying(bus, JobCreated(title=f"after {i}"), f"a{i}", event_id)
            acked.append(event_id)
        await eventually(lambda: set(acked) <= seen, timeout=30)
        stored = await bus.streams.info("JOBS")
        assert stored.messages == len(acked)  # retries deduplicated, nothing lost


@pytest.mark.slow
async def test_cluster_r3_stream_publishes_and_consumes(nats_cluster: EmbeddedCluster) -> None:
    spec = StreamSpec(name="CLUSTERED", subjects=("clustered.>",), replicas=3)
    handled: list[str] = []

    async def handle(event: Clustered) -> None:
        handled.append(event.title)

    async with Bus(nats_cluster.urls, streams=[spec]) as bus:
        info = await bus.streams.info("CLUSTERED")
        assert info.replicas == 3
        await bus.consume(handle, durable="r3")
        await bus.publish_many((Clustered(title=str(i)), f"c{i}") for i in range(50))
        await eventually(lambda: len(handled) == 50)
        stream = await bus.js.stream_info("CLUSTERED")
        assert stream.cluster is not None
        assert len(stream.cluster.replicas or []) == 2  # the leader plus two replicas


def test_servers_take_distinct_free_ports_and_leave_no_orphan(tmp_path: Path) -> None:
    with (
        EmbeddedServer(store_dir=tmp_path / "a") as a,
        EmbeddedServer(store_dir=tmp_path / "b") as b,
    ):
        assert a.port != b.port
        assert a.healthy()
        pids = [a.pid, b.pid]
    for pid in pids:
        assert pid is not None
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_a_clusters_ports_are_distinct_and_a_gone_node_resumes_quietly(tmp_path: Path) -> None:
    """Every client and route port of a cluster differs (they are picked together), and
    continuing a node whose process is gone is no error (a fixture's cleanup does it)."""
    cluster = EmbeddedCluster(base_dir=tmp_path, size=5)
    ports = [p for n in cluster.nodes for p in (n.port, n.cluster_port)]
    assert len(set(ports)) == len(ports) == 10
    assert len(set(free_ports(200))) == 200
    node = EmbeddedServer(store_dir=tmp_path / "gone").start()
    assert node.pid is not None
    os.kill(node.pid, signal.SIGKILL)
    while node.running:  # (reaps it)
        time.sleep(0.01)
    node.resume()
    node.stop()


def test_restart_keeps_port_and_store(tmp_path: Path) -> None:
    server = EmbeddedServer(store_dir=tmp_path).start()
    try:
        port = server.port
        server.kill()
        assert not server.running
        server.start()
        assert server.port == port
        assert server.healthy()
    finally:
        server.stop()


def test_a_server_that_cannot_start_says_why(tmp_path: Path) -> None:
    bad = EmbeddedServer(store_dir=tmp_path, tls=TLSFiles("/nonexistent.pem", "/nonexistent.key"))
    with pytest.raises(ServerError, match="nonexistent"):
        bad.start()
    assert not bad.running


def test_config_is_durable_by_default(tmp_path: Path) -> None:
    text = EmbeddedServer(store_dir=tmp_path).config_text()
    assert 'sync_interval: "always"' in text
    assert '"127.0.0.1:-1"' in text  # loopback only, a free port
    assert 'sync_interval: "2m"' in EmbeddedServer(tmp_path, sync_interval="2m").config_text()


async def test_bus_replicas_3_makes_the_apps_streams_and_buckets_r3(
    nats_cluster: EmbeddedCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """BUS_REPLICAS=3 (docker-compose's cluster): streams, read models and registry on 3 nodes."""
    monkeypatch.setenv("BUS_REPLICAS", "3")
    settings = Settings.from_env()
    async with (
        Bus(nats_cluster.urls, **settings.bus_options(demo.app)) as bus,
        Projector(bus, demo.app.projections.values()),
        Registration(bus, Component(name="r3-check")),
    ):
        assert (await bus.streams.info("TASKS")).replicas == 3
        for stream in ("KV_proj_task_1", "KV_bus_projections", "KV_bus_components"):
            info = await bus.js.stream_info(stream)
            assert info.config.num_replicas == 3, stream
    monkeypatch.setenv("BUS_REPLICAS", "2")
    with pytest.raises(ConfigError, match="BUS_REPLICAS"):
        Settings.from_env()
