"""EventStore and aggregates: optimistic concurrency, atomic batches, loading, snapshots,
upcasting — against a real nats-server."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
import pytest

from bus import (
    Aggregate,
    Bus,
    ConcurrencyError,
    ConfigError,
    Event,
    EventStore,
    PublishError,
    Repository,
    StreamSpec,
)

ACCOUNTS = StreamSpec.for_domain("accounts")


class Opened(Event):
    __domain__ = "accounts"
    __event_name__ = "opened"
    owner: str


class Deposited(Event):
    """Version 2: amounts are in cents (version 1 stored whole units as `amount`)."""

    __domain__ = "accounts"
    __event_name__ = "deposited"
    __event_version__ = 2
    cents: int


class AccountState(msgspec.Struct):
    owner: str = ""
    balance: int = 0
    deposits: int = 0


class Account(Aggregate[AccountState]):
    __domain__ = "accounts"
    State = AccountState

    @staticmethod
    def evolve(state: AccountState, event: Event) -> AccountState:
        match event:
            case Opened(owner=owner):
                return msgspec.structs.replace(state, owner=owner)
            case Deposited(cents=cents):
                return msgspec.structs.replace(
                    state, balance=state.balance + cents, deposits=state.deposits + 1
                )
        return state

    def open(self, owner: str) -> None:
        if self.version:
            raise ValueError("already open")
        self.record(Opened(owner=owner))

    def deposit(self, cents: int) -> None:
        if not self.state.owner:
            raise ValueError("not open")
        self.record(Deposited(cents=cents))


def units_to_cents(fields: dict[str, Any]) -> dict[str, Any]:
    return {"cents": fields["amount"] * 100}


@pytest.fixture
async def accounts(nats_url: str):  # type: ignore[no-untyped-def]
    async with Bus(nats_url, streams=[ACCOUNTS]) as bus:
        bus.registry.register(Opened)
        bus.registry.register(Deposited)
        bus.registry.upcaster("Deposited", 1)(units_to_cents)
        yield bus


async def test_append_with_expected_versions(accounts: Bus) -> None:
    store = EventStore(accounts)
    first = await store.append("accounts", "a1", [Opened(owner="ann")], expected_version=0)
    with pytest.raises(ConcurrencyError) as exists:
        await store.append("accounts", "a1", [Opened(owner="bob")], expected_version=0)
    assert (exists.value.expected, exists.value.actual) == (0, first.version)
    second = await store.append(
        "accounts", "a1", [Deposited(cents=5), Deposited(cents=7)], expected_version=first.version
    )
    assert [r.seq for r in second.events] == [2, 3]
    assert second.version == 3
    history = await store.load("accounts", "a1")
    assert [type(e.event).__name__ for e in history.events] == ["Opened", "Deposited", "Deposited"]
    assert history.version == 3
    assert (await store.load("accounts", "nobody")).version == 0


async def test_a_failing_atomic_batch_stores_nothing(accounts: Bus) -> None:
    store = EventStore(accounts)
    await store.append("accounts", "a1", [Opened(owner="ann")])
    with pytest.raises(ConcurrencyError):
        await store.append(
            "accounts", "a1", [Deposited(cents=1), Deposited(cents=2)], expected_version=0
        )
    too_big = Deposited(cents=1)
    outs = [accounts.publisher.prepare(too_big, "a1") for _ in range(3)]
    outs.append(outs[0])  # the same event id twice: JetStream refuses the whole batch
    with pytest.raises(PublishError, match="duplicate message id"):
        await accounts.publisher.send_atomic(outs)
    assert (await accounts.streams.info("ACCOUNTS")).messages == 1
    with pytest.raises(ConfigError):
        await store.append("accounts", "a1", [])
    with pytest.raises(ConfigError, match="belongs to"):
        await store.append("other", "a1", [Opened(owner="x")])


async def test_two_concurrent_writers_one_wins_the_loser_retries(accounts: Bus) -> None:
    repo = Repository(accounts, Account)
    await repo.update("a1", lambda account: account.open("ann"))
    first, second = await repo.get("a1"), await repo.get("a1")
    first.deposit(100)
    second.deposit(200)
    results = await asyncio.gather(repo.save(first), repo.save(second), return_exceptions=True)
    assert sum(isinstance(r, ConcurrencyError) for r in results) == 1
    final = await repo.update("a1", lambda account: account.deposit(200))
    assert final.state.balance == 300
    assert (await repo.get("a1")).state == AccountState(owner="ann", balance=300, deposits=2)


async def test_update_retries_on_conflict(accounts: Bus) -> None:
    repo = Repository(accounts, Account)
    await repo.update("a1", lambda account: account.open("ann"))
    interfered = False

    async def deposit_with_interference(account: Account) -> None:
        nonlocal interfered
        if not interfered:
            interfered = True
            await EventStore(accounts).append("accounts", "a1", [Deposited(cents=1)])
        account.deposit(10)

    done = await repo.update("a1", deposit_with_interference)
    assert done.state.balance == 11
    with pytest.raises(ValueError, match="already open"):
        await repo.update("a1", lambda account: account.open("again"))


async def test_snapshots_read_fewer_events_and_equal_a_full_replay(accounts: Bus) -> None:
    snapshotting = Repository(accounts, Account, snapshot_every=10)
    plain = Repository(accounts, Account)
    await snapshotting.update("a1", lambda account: account.open("ann"))
    for cents in range(1, 26):
        await snapshotting.update("a1", lambda account, c=cents: account.deposit(c))  # type: ignore[misc]
    from_snapshot = await snapshotting.get("a1")
    full = await plain.get("a1")
    assert full.replayed == 26
    assert from_snapshot.replayed < 10
    assert from_snapshot.state == full.state == AccountState("ann", sum(range(1, 26)), 25)
    assert from_snapshot.version == full.version


async def test_v1_events_from_raw_nats_load_as_the_current_class(accounts: Bus) -> None:
    await EventStore(accounts).append("accounts", "old", [Opened(owner="legacy")])
    await accounts.js.publish(
        "accounts.old.deposited",
        b'{"amount": 3}',
        headers={"Bus-Event-Type": "Deposited", "Bus-Event-Version": "1"},
    )
    account = await Repository(accounts, Account).get("old")
    assert account.state == AccountState(owner="legacy", balance=300, deposits=1)


async def test_read_catches_up_then_continues_live(accounts: Bus) -> None:
    store = EventStore(accounts)
    await store.append("accounts", "a1", [Opened(owner="ann"), Deposited(cents=1)])
    seen: list[int] = []
    async with asyncio.timeout(10):
        async for envelope in store.read("ACCOUNTS", from_seq=1):
            seen.append(envelope.seq or 0)
            if len(seen) == 2:
                await store.append("accounts", "a2", [Opened(owner="bob")])
            if len(seen) == 3:
                break
    assert seen == [1, 2, 3]


def test_repository_needs_a_complete_aggregate() -> None:
    class NoDomain(Aggregate[AccountState]):
        State = AccountState

    with pytest.raises(ConfigError):
        Repository(Bus("nats://127.0.0.1:1"), NoDomain)
