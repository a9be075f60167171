"""Seeds and payload keys never show in what a run emits: logs, errors, traces, `/health`,
dead letters, `repr`s; and `bus keys new` makes keys that work."""

from __future__ import annotations

import asyncio
import base64
import json
import logging

import pytest
from click.testing import CliRunner
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from bus import Bus, ConfigError, Envelope, Keyring, Protection, Signer, new_key
from bus._protection import parse_domain_keys
from services.cli.main import main
from services.demo import app
from services.edge import create_app
from services.runtime.settings import Settings
from tests.edge import KEYS, READ, WRITE, serve

from .domain import JOBS, JobCreated, eventually

SIGNER, SEED = Signer.generate()
KEY = new_key()
SECRETS = (SEED, KEY.split(":")[1], SEED[2:20])


def leaked(text: str) -> list[str]:
    return [secret for secret in SECRETS if secret in text]


async def test_nothing_a_protected_run_emits_holds_a_secret(
    nats_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    protection = Protection(
        signer=SIGNER,
        trusted=[SIGNER.public_key],
        require_signatures=["*"],
        keys={"*": Keyring.parse(KEY)},
    )
    attempts: list[int] = []

    async def fail(event: JobCreated, envelope: Envelope[JobCreated]) -> None:
        attempts.append(envelope.attempt)
        raise RuntimeError(f"failing on {event.title}")

    emitted = [repr(protection), repr(SIGNER), repr(protection.keys)]
    async with Bus(
        nats_url, streams=[JOBS], protection=protection, tracer_provider=provider
    ) as bus:
        await bus.consume(fail, durable="fails", max_deliver=1)
        await bus.publish(JobCreated(title="x"), "j1")
        await bus.js.publish("jobs.j2.created", b"{}", headers={"Bus-Event-Type": "JobCreated"})
        await eventually(lambda: attempts)
        letters: list[str] = []
        for _ in range(750):
            letters = [repr(d) for d in await bus.dead_letters("JOBS")]
            if len(letters) == 2:
                break
            await asyncio.sleep(0.02)
        assert len(letters) == 2
        emitted += letters
        api = create_app(app, nats_url, api_keys=KEYS, protection=protection)
        async for edge in serve(api):
            emitted.append((await edge.get("/health", headers=READ)).text)
            emitted.append((await edge.get("/api/v1/streams/JOBS/events", headers=READ)).text)
            posted = await edge.post("/api/v1/events/tasks.s1.created", json={}, headers=WRITE)
            emitted.append(posted.text)
    for span in exporter.get_finished_spans():
        emitted.append(json.dumps(span.to_json()))
    emitted += [record.getMessage() for record in caplog.records]
    assert emitted
    assert leaked("\n".join(emitted)) == []


def test_errors_about_settings_quote_no_secret(tmp_path) -> None:  # type: ignore[no-untyped-def]
    raw_key = KEY.split(":")[1]
    cases = [
        f"jobs=k1:{raw_key[:-4]}",  # cut short: not 32 bytes
        f"jobs=k1:{raw_key}!",
        f"jobs={KEY},{KEY}",
        raw_key,
    ]
    for text in cases:
        with pytest.raises(ConfigError) as caught:
            parse_domain_keys(text)
        assert leaked(str(caught.value)) == []
    seed_file = tmp_path / "seed"
    seed_file.write_text(SEED[:-3])
    with pytest.raises(ConfigError) as caught:
        Signer.from_file(seed_file)
    assert leaked(str(caught.value)) == []


def test_bus_keys_new_makes_keys_that_work() -> None:
    runner = CliRunner()
    printed = runner.invoke(main, ["keys", "new"])
    assert printed.exit_code == 0, printed.output
    key = printed.output.strip()
    key_id, _, encoded = key.partition(":")
    assert len(base64.b64decode(encoded)) == 32
    assert Keyring.parse(key).ids == [key_id]
    signing = runner.invoke(main, ["keys", "new", "--signing", "--json"])
    made = json.loads(signing.output)
    assert Signer(made["seed"]).public_key == made["public_key"]
    assert runner.invoke(main, ["keys", "new", "--bogus"]).exit_code == 2
    assert runner.invoke(main, ["keys", "old"]).exit_code == 2


def test_signing_settings_from_the_environment(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    seed_file = tmp_path / "me.seed"
    seed_file.write_text(SEED + "\n")
    monkeypatch.setenv("BUS_SIGNING_SEED", str(seed_file))
    monkeypatch.setenv("BUS_TRUSTED_SIGNERS", f"{SIGNER.public_key}, ")
    monkeypatch.setenv("BUS_REQUIRE_SIGNATURES", "jobs,tasks")
    protection = Settings.from_env().protection
    assert protection is not None
    assert protection.signer is not None
    assert protection.signer.public_key == SIGNER.public_key
    assert protection.trusted == (SIGNER.public_key,)
    assert protection.requires_signature("tasks.t1.created")
    assert not protection.requires_signature("orders.o1.created")
    assert Settings.from_env().bus_options(app)["protection"] is not None
    monkeypatch.setenv("BUS_SIGNING_SEED", str(tmp_path / "gone.seed"))
    with pytest.raises(ConfigError, match=r"cannot read the signing seed file .*gone\.seed"):
        Settings.from_env().protection  # noqa: B018
    monkeypatch.delenv("BUS_SIGNING_SEED")
    monkeypatch.delenv("BUS_TRUSTED_SIGNERS")
    with pytest.raises(ConfigError, match="trusted signers"):
        Settings.from_env().protection  # noqa: B018
    monkeypatch.delenv("BUS_REQUIRE_SIGNATURES")
    assert Settings.from_env().protection is None  # nothing set: nothing done per message
