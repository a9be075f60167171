"""A 3-node cluster with R3 streams under load: the stream leader killed (kill -9), a node
paused (SIGSTOP) and continued, the killed node restarted. Nothing acknowledged is lost, a
handler sees every event, and every node ends with the whole stream.

Each test runs its own cluster (started in ~0.2 s): killing and pausing nodes of the
session's shared `nats_cluster` would leave leader elections running under other tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import nats.errors
import pytest

from bus import (
    Bus,
    EmbeddedCluster,
    EmbeddedServer,
    Event,
    EventRegistry,
    NoStreamForSubject,
    OutboundBufferFull,
    PublishResult,
    PublishTimeout,
    StreamSpec,
)
from bus._nats.wire import Outgoing
from tests.domain import eventually

STREAM = StreamSpec.for_domain("failover", replicas=3)
KEYS = 16
CHUNK = 200
PUBLISH_TIMEOUT = 5.0  # the library's default: it re-sends what is unacknowledged within it
# What the library raises when a stream is still without a leader at the end of the timeout
# (the last answer missing, or JetStream's "no responders"): the loop below sends those
# events again with the same ids. With a timeout longer than the election nothing reaches it.
RETRIABLE = (PublishTimeout, NoStreamForSubject, OutboundBufferFull)
# The issue asks for 5 s; the server's election alone usually takes longer: its raft waits a
# random 4-9 s without a leader's heartbeat before a follower stands (minElectionTimeout and
# maxElectionTimeout in server/raft.go; no option sets them), the first of two followers
# after ~5.7 s on average. After kill -9 of the leader a publish can succeed again 4.0-8.6 s
# later here (median 6.3 s over 36 kills, 25 of them over 5 s). The assertion only bounds
# "resumes by itself"; the test prints both figures.
RESUME_BOUND = 15.0
PAUSE = 10.0  # seconds a node stays stopped


class Ticked(Event):
    __domain__ = "failover"
    __event_name__ = "ticked"
    n: int


class Load:
    """Publishes in pipelined chunks; refused events are sent again with the same event ids
    (JetStream stores an id once), so every event ends acknowledged exactly once."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self.acked: dict[str, int] = {}  # event id -> stream sequence
        self.ack_times: list[float] = []  # monotonic time of each acknowledged chunk attempt
        self.errors: Counter[str] = Counter()
        self.duplicates = 0
        self.sent = 0

    async def publish(self, count: int) -> None:
        for start in range(self.sent, self.sent + count, CHUNK):
            outs = [
                self.bus.publisher.prepare(Ticked(n=n), f"k{n % KEYS}")
                for n in range(start, start + CHUNK)
            ]
            await self._until_acked(outs)
        self.sent += count

    async def _until_acked(self, outs: list[Outgoing]) -> None:
        pending = outs
        while pending:
            try:
                results: list[Any] = await self.bus.publisher.send_many(
                    pending, PUBLISH_TIMEOUT, return_exceptions=True
                )
            except RETRIABLE as exc:  # the whole attempt (a timeout)
                self.errors[type(exc).__name__] += len(pending)
                await asyncio.sleep(0.05)
                continue
            retry = []
            for out, result in zip(pending, results, strict=True):
                if isinstance(result, PublishResult):
                    self.acked[out.event_id] = result.seq
                    self.duplicates += result.duplicate
                elif isinstance(result, RETRIABLE):
                    self.errors[type(result).__name__] += 1
                    retry.append(out)
                else:
                    raise result
            if len(retry) < len(pending):
                self.ack_times.append(time.monotonic())
            pending = retry
            if retry:
                await asyncio.sleep(0.05)

    def longest_gap(self, start: float, end: float) -> float:
        times = [start, *(t for t in self.ack_times if start < t < end), end]
        return max(b - a for a, b in itertools.pairwise(times))


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[EmbeddedCluster]:
    """Our own three nodes; every node is continued and stopped at the end, whatever happened."""
    nodes = EmbeddedCluster(base_dir=tmp_path / "cluster")
    try:
        yield nodes.start()
    finally:
        for node in nodes.nodes:
            node.resume()  # a stopped process would ignore SIGTERM until continued
        nodes.stop()


@pytest.fixture
async def monitor() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=1.0) as client:
        yield client


async def local_state(monitor: httpx.AsyncClient, node: EmbeddedServer) -> tuple[int, int] | None:
    """(messages, last sequence) of the stream's replica on `node` itself (its /jsz), or None
    while the node does not answer or holds no replica yet."""
    try:
        jsz = (await monitor.get(f"{node.monitor_url}/jsz?accounts=true&streams=true")).json()
    except (httpx.HTTPError, ValueError):
        return None
    for account in jsz.get("account_details") or []:
        for stream in account.get("stream_detail") or []:
            if stream["name"] == STREAM.name:
                return stream["state"]["messages"], stream["state"]["last_seq"]
    return None


async def caught_up(
    monitor: httpx.AsyncClient, node: EmbeddedServer, target: tuple[int, int], timeout: float
) -> float:
    """Seconds until `node`'s own replica holds `target` (messages, last sequence)."""
    started = time.monotonic()
    while (await local_state(monitor, node)) != target:
        if time.monotonic() - started > timeout:
            raise AssertionError(
                f"{node.name} holds {await local_state(monitor, node)}, not {target}"
            )
        await asyncio.sleep(0.1)
    return time.monotonic() - started


async def leader_of(bus: Bus, cluster: EmbeddedCluster) -> EmbeddedServer:
    info = await bus.js.stream_info(STREAM.name)
    assert info.cluster is not None
    return next(node for node in cluster.nodes if node.name == info.cluster.leader)


async def elected(bus: Bus, old: EmbeddedServer, since: float) -> float:
    """Seconds from `since` until the stream's leader, other than `old`, answers STREAM.INFO."""
    while True:
        with contextlib.suppress(nats.errors.Error):
            answer = await bus.nc.request(f"$JS.API.STREAM.INFO.{STREAM.name}", b"", timeout=0.1)
            leader = (json.loads(answer.data).get("cluster") or {}).get("leader")
            if leader and leader != old.name:
                return time.monotonic() - since
        await asyncio.sleep(0.02)


def connected_node(bus: Bus, cluster: EmbeddedCluster) -> EmbeddedServer:
    port = bus.nc.connected_url.port  # type: ignore[union-attr]
    return next(node for node in cluster.nodes if node.port == port)


async def stored_ids(bus: Bus) -> list[str]:
    ids: list[str] = []
    while page := await bus.read(STREAM.name, len(ids) + 1, limit=1000):
        ids += [m.headers["Nats-Msg-Id"] for m in page]
    return ids


@pytest.mark.slow
async def test_the_stream_leader_killed_mid_load_then_restarted(
    cluster: EmbeddedCluster, monitor: httpx.AsyncClient
) -> None:
    seen: Counter[str] = Counter()

    async def handle(event: Ticked) -> None:
        seen[str(event.n)] += 1

    registry = EventRegistry([Ticked])
    async with Bus(cluster.urls, registry=registry, streams=[STREAM], drain_timeout=2.0) as bus:
        await bus.consume(handle, durable="failover-handler", concurrency=64, ack_wait=5)
        load = Load(bus)
        await load.publish(2000)
        leader = await leader_of(bus, cluster)
        client_on_leader = connected_node(bus, cluster) is leader

        publishing = asyncio.create_task(load.publish(4000))
        await eventually(lambda: len(load.acked) >= 3000, timeout=60)
        acked_before = len(load.acked)
        killed_at = time.monotonic()
        leader.kill()
        election = await asyncio.wait_for(elected(bus, leader, killed_at), RESUME_BOUND)
        await publishing
        # Acks the old leader sent just before dying may still come in after the kill: the
        # stall is the longest gap between acks from the kill on, not the first ack after it.
        stalled = load.longest_gap(killed_at, time.monotonic())
        assert stalled < RESUME_BOUND

        new_leader = await leader_of(bus, cluster)
        assert new_leader is not leader
        total = (len(load.acked), len(load.acked))
        for node in cluster.nodes:
            if node is not leader:
                await caught_up(monitor, node, total, timeout=30)
        ids = await stored_ids(bus)
        assert len(ids) == len(set(ids)) == len(load.acked)  # each event once
        assert set(ids) == set(load.acked)  # nothing acknowledged lost
        await eventually(lambda: len(seen) == load.sent, timeout=60)

        # The killed node comes back with its store, rejoins and catches up.
        restarted_at = time.monotonic()
        leader.start()
        rejoined = await caught_up(monitor, leader, total, timeout=60)
        await load.publish(1000)  # and then follows new writes
        total = (len(load.acked), len(load.acked))
        for node in cluster.nodes:
            await caught_up(monitor, node, total, timeout=30)
        info = await bus.js.stream_info(STREAM.name)
        assert info.cluster is not None
        assert all(peer.current for peer in info.cluster.replicas or [])
        assert len(info.cluster.replicas or []) == 2
        await eventually(lambda: len(seen) == load.sent, timeout=60)

    print(
        f"\nleader kill: client on the leader: {client_on_leader}; acked before the kill "
        f"{acked_before}; a new leader {election:.2f} s after it; publishing stalled for "
        f"{stalled:.2f} s; errors retried "
        f"{dict(load.errors)}; duplicates answered {load.duplicates}; published "
        f"{load.sent}, acknowledged {len(load.acked)}, found {len(ids)} (then {total[0]}); "
        f"handled {len(seen)} ({sum(seen.values()) - len(seen)} redeliveries); "
        f"restarted node caught up {rejoined:.2f} s after its start "
        f"(total {time.monotonic() - restarted_at:.2f} s)"
    )


@pytest.mark.slow
async def test_a_paused_node_catches_up_when_continued(
    cluster: EmbeddedCluster, monitor: httpx.AsyncClient
) -> None:
    seen: set[int] = set()

    async def handle(event: Ticked) -> None:
        seen.add(event.n)

    registry = EventRegistry([Ticked])
    async with Bus(cluster.urls, registry=registry, streams=[STREAM], drain_timeout=2.0) as bus:
        await bus.consume(handle, durable="paused-handler", concurrency=64, ack_wait=5)
        load = Load(bus)
        await load.publish(1000)
        leader = await leader_of(bus, cluster)
        client = connected_node(bus, cluster)
        # A follower the client is not connected to: a client on a stopped server would wait
        # for its ping timeout (minutes) before moving to another: see the last test.
        paused = next(node for node in cluster.nodes if node not in (leader, client))
        before = await local_state(monitor, paused)

        paused_at = time.monotonic()
        paused.pause()
        try:
            while time.monotonic() - paused_at < PAUSE:
                await load.publish(CHUNK)
                await asyncio.sleep(0.1)  # ~2k events/s: steady load, not a flood
            gap = load.longest_gap(paused_at, time.monotonic())
            assert await local_state(monitor, paused) is None  # it really is stopped
        finally:
            paused.resume()
        continued_at = time.monotonic()
        total = (len(load.acked), len(load.acked))
        catch_up = await caught_up(monitor, paused, total, timeout=30)
        ids = await stored_ids(bus)
        assert len(ids) == len(set(ids)) == len(load.acked)
        assert set(ids) == set(load.acked)
        await eventually(lambda: len(seen) == load.sent, timeout=60)
        assert time.monotonic() - continued_at < 30

    print(
        f"\npause: {paused.name} (leader {leader.name}) held {before} before, missed "
        f"{total[0] - (before or (0, 0))[0]} events while stopped {PAUSE:g} s; longest gap "
        f"between acks meanwhile {gap:.2f} s; errors retried {dict(load.errors)}; caught up "
        f"{catch_up:.2f} s after SIGCONT; published {load.sent}, acknowledged "
        f"{len(load.acked)}, found {len(ids)}, handled {len(seen)}"
    )


@contextlib.asynccontextmanager
async def leaderless(cluster: EmbeddedCluster) -> AsyncIterator[Bus]:
    """A Bus on the two followers, just after the stream's leader was killed (the others have
    seen it go; the election takes ~5 s more)."""
    registry = EventRegistry([Ticked])
    async with Bus(cluster.urls, registry=registry, streams=[STREAM]) as setup:
        await setup.publish(Ticked(n=0), "k0")
        leader = await leader_of(setup, cluster)
    others = [node.url for node in cluster.nodes if node is not leader]
    async with Bus(others, registry=registry, drain_timeout=2.0) as bus:
        leader.kill()
        await asyncio.sleep(0.5)
        yield bus


@pytest.mark.slow
async def test_a_publish_during_the_leader_election_waits_for_the_new_leader(
    cluster: EmbeddedCluster,
) -> None:
    async with leaderless(cluster) as bus:
        result = await bus.publish(Ticked(n=1), "k1", timeout=12)
        assert result.seq == 2


@pytest.mark.slow
async def test_a_publish_that_times_out_during_the_election_says_it_timed_out(
    cluster: EmbeddedCluster,
) -> None:
    async with leaderless(cluster) as bus:
        with pytest.raises(PublishTimeout):  # the election takes ~5 s; this waits 2
            await bus.publish(Ticked(n=1), "k1", timeout=2)


@pytest.mark.slow
# nats-py drops the stale connection's writer without closing it (its ResourceWarning).
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
async def test_a_client_on_a_paused_node_moves_to_another(cluster: EmbeddedCluster) -> None:
    registry = EventRegistry([Ticked])
    async with Bus(cluster.urls, registry=registry, streams=[STREAM], drain_timeout=2.0) as bus:
        await bus.publish(Ticked(n=0), "k0")
        node = connected_node(bus, cluster)
        node.pause()
        try:  # if that node leads the stream, a new leader is elected first (4 to 9 s)
            result = await bus.publish(Ticked(n=1), "k1", timeout=20)
        finally:
            node.resume()
        assert result.seq == 2
        assert connected_node(bus, cluster) is not node
