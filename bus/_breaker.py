"""A circuit breaker per endpoint on the calling side: a responder that keeps failing is left
alone for a while, and its callers fail at once with `CircuitOpen` instead of each waiting
out a timeout.

    closed --`failures` within `window` s--> open --`cool_down` s--> half-open
    half-open: `probes` calls pass; one succeeds -> closed, one fails -> open again

What counts as a failure says the responder is unwell: a timeout, no responders, a remote
error of the 5xx kind. A 4xx-style refusal is the caller's fault and counts as an answer.
Time comes from an injectable clock, so tests drive it without sleeping.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from ._errors import CircuitOpen, ConfigError

CLOSED, HALF_OPEN, OPEN = "closed", "half_open", "open"
STATE_VALUES = {CLOSED: 0, HALF_OPEN: 1, OPEN: 2}  # the gauge's encoding


@dataclass(frozen=True)
class CircuitPolicy:
    """When a circuit opens (`failures` within `window` seconds; 0 failures: never), how
    long it stays open (`cool_down` seconds) and how many probes a half-open one lets by."""

    failures: int = 5
    window: float = 30.0
    cool_down: float = 10.0
    probes: int = 1

    def __post_init__(self) -> None:
        if self.failures < 0 or self.window <= 0 or self.cool_down <= 0 or self.probes < 1:
            raise ConfigError(
                "circuit policy: failures >= 0, window > 0, cool_down > 0 and probes >= 1"
            )


class StateObserver(Protocol):
    def circuit_changed(self, endpoint: str, state: str) -> None: ...


class Circuit:
    """One endpoint's state; kept by `Circuits`."""

    __slots__ = ("endpoint", "failed_at", "opened_at", "probing", "state")

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self.state = CLOSED
        self.failed_at: deque[float] = deque()
        self.opened_at = 0.0
        self.probing = 0


class Circuits:
    """The circuits of one process, by endpoint (the subject, or the pattern a caller names).

    Only endpoints that failed are tracked, at most `MAX` of them: beyond, the closed one
    used least lately is forgotten, so concrete subjects cannot grow the table without bound.
    One table may serve several Buses of a process (`bus up`'s edge and handlers)."""

    MAX = 1000

    def __init__(
        self,
        policy: CircuitPolicy | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        observer: StateObserver | None = None,
    ) -> None:
        self.policy = policy if policy is not None else CircuitPolicy()
        self.clock = clock
        self.observer = observer
        self._circuits: OrderedDict[str, Circuit] = OrderedDict()

    @classmethod
    def of(cls, given: Circuits | CircuitPolicy | None, observer: StateObserver | None) -> Circuits:
        """The table given, or a new one with the policy given (default: the default)."""
        return given if isinstance(given, Circuits) else cls(given, observer=observer)

    def admit(self, endpoint: str) -> Circuit | None:
        """Before a call: the endpoint's circuit (None: never failed), or CircuitOpen."""
        circuit = self._circuits.get(endpoint)
        if circuit is None or circuit.state is CLOSED:
            return circuit
        policy, now = self.policy, self.clock()
        if circuit.state is OPEN:
            wait = circuit.opened_at + policy.cool_down - now
            if wait > 0:
                raise CircuitOpen(endpoint, wait)
            self._move(circuit, HALF_OPEN)
        if circuit.probing >= policy.probes:  # half-open, its probes still out
            raise CircuitOpen(endpoint, min(1.0, policy.cool_down))
        circuit.probing += 1
        return circuit

    def succeeded(self, circuit: Circuit | None) -> None:
        """The call was answered (a 4xx-style refusal included)."""
        if circuit is not None and circuit.state is HALF_OPEN:
            circuit.probing = max(0, circuit.probing - 1)
            circuit.failed_at.clear()
            self._move(circuit, CLOSED)

    def failed(self, endpoint: str) -> None:
        """The call timed out, found no responder, or the responder failed. (Looked up
        again: the circuit it was admitted by may have been forgotten meanwhile.)"""
        policy = self.policy
        if not policy.failures:
            return
        circuit = self._circuits.get(endpoint) or self._track(endpoint)
        now = self.clock()
        if circuit.state is HALF_OPEN:
            circuit.probing = max(0, circuit.probing - 1)
            circuit.opened_at = now
            self._move(circuit, OPEN)
            return
        if circuit.state is OPEN:  # a call let by before it opened, answered late
            return
        self._circuits.move_to_end(endpoint)
        failed_at = circuit.failed_at
        failed_at.append(now)
        while failed_at and failed_at[0] <= now - policy.window:
            failed_at.popleft()
        if len(failed_at) >= policy.failures:
            circuit.opened_at = now
            self._move(circuit, OPEN)

    def abandoned(self, circuit: Circuit | None) -> None:
        """The call was cancelled before an answer: a probe's slot is given back."""
        if circuit is not None and circuit.state is HALF_OPEN:
            circuit.probing = max(0, circuit.probing - 1)

    def state(self, endpoint: str) -> str:
        circuit = self._circuits.get(endpoint)
        return CLOSED if circuit is None else circuit.state

    def snapshot(self) -> dict[str, str]:
        """The state of every endpoint that failed lately (those forgotten are closed)."""
        return {name: circuit.state for name, circuit in self._circuits.items()}

    def _track(self, endpoint: str) -> Circuit:
        circuits = self._circuits
        circuit = circuits[endpoint] = Circuit(endpoint)
        if len(circuits) > self.MAX:
            forgotten = next((c for c in circuits.values() if c.state is CLOSED), None)
            if forgotten is not None and forgotten is not circuit:
                del circuits[forgotten.endpoint]
        if self.observer is not None:  # listed from its first failure on
            self.observer.circuit_changed(endpoint, CLOSED)
        return circuit

    def _move(self, circuit: Circuit, state: str) -> None:
        circuit.state = state
        self._circuits.move_to_end(circuit.endpoint)
        if self.observer is not None:
            self.observer.circuit_changed(circuit.endpoint, state)
