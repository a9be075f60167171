"""`GET /ws`: the live tail over WebSocket, under a real uvicorn against a real nats-server."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.client import ClientProtocol
from websockets.exceptions import InvalidStatus
from websockets.frames import Frame, Opcode
from websockets.uri import parse_uri

from bus import Bus
from services.demo import TaskCreated, app
from services.edge import create_app
from tests.edge import KEYS, READ, serve


def ws_url(edge: httpx.AsyncClient, query: str) -> str:
    return str(edge.base_url.copy_with(scheme="ws").join(f"/ws?{query}"))


async def take(ws: ClientConnection, count: int) -> list[dict[str, object]]:
    return [json.loads(await asyncio.wait_for(ws.recv(), 10)) for _ in range(count)]


async def test_tail_then_live_then_resume(edge: httpx.AsyncClient, tasks: Bus) -> None:
    await tasks.publish_many([(TaskCreated(title=f"t{i}"), f"w{i}") for i in range(3)])
    async with connect(ws_url(edge, "subject=tasks.>&from_seq=1"), additional_headers=READ) as ws:
        first = await take(ws, 3)
        assert [m["seq"] for m in first] == [1, 2, 3]
        assert first[0] == {
            "seq": 1,
            "subject": "tasks.w0.created",
            "type": "TaskCreated",
            "data": {"title": "t0", "fail_times": 0},
        }
        await tasks.publish(TaskCreated(title="live"), "w9")
        (live,) = await take(ws, 1)
        assert live["subject"] == "tasks.w9.created"
    async with connect(
        ws_url(edge, "subject=tasks.*.created&from_seq=3"), additional_headers=READ
    ) as ws:
        assert [m["seq"] for m in await take(ws, 2)] == [3, 4]


@pytest.mark.parametrize(
    ("query", "headers"),
    [
        ("subject=tasks.>", {}),
        ("subject=tasks.>", {"Authorization": "Bearer nope"}),
        ("subject=tasks..x", READ),
        ("subject=nostream.>", READ),
        ("subject=tasks.>&from_seq=0", READ),
        ("subject=tasks.>&from_seq=abc", READ),
        ("from_seq=1", READ),
        ("subject=" + "a" * 300, READ),
    ],
)
async def test_bad_handshakes_are_refused(
    edge: httpx.AsyncClient, query: str, headers: dict[str, str]
) -> None:
    with pytest.raises(InvalidStatus) as refused:
        async with connect(ws_url(edge, query), additional_headers=headers):
            pass
    refusal = refused.value.response
    if headers != READ:  # no key, an unknown one: who, not what (401, as over HTTP)
        assert refusal.status_code == 401
        assert refusal.headers["www-authenticate"].startswith("Bearer")
    else:
        assert refusal.status_code == 403


@pytest.fixture
async def impatient_edge(tasks: Bus, nats_url: str) -> AsyncIterator[httpx.AsyncClient]:
    api = create_app(app, nats_url, api_keys=KEYS, slow_client_timeout=0.5)
    async for client in serve(api):
        yield client


@pytest.mark.slow
async def test_a_client_that_stops_reading_is_told_and_cut_off(
    impatient_edge: httpx.AsyncClient, tasks: Bus
) -> None:
    big = "x" * 2000
    for start in range(0, 12_000, 1000):  # ~24 MB: more than the socket buffers hold
        await tasks.publish_many(
            [(TaskCreated(title=big), f"s{i}") for i in range(start, start + 1000)]
        )
    # A raw socket with a small, fixed receive buffer: a client library would keep reading.
    client = ClientProtocol(parse_uri(ws_url(impatient_edge, "subject=tasks.>&from_seq=1")))
    request = client.connect()
    request.headers["Authorization"] = READ["Authorization"]
    client.send_request(request)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(10)
    with sock:
        sock.connect((impatient_edge.base_url.host, impatient_edge.base_url.port))
        sock.sendall(b"".join(client.data_to_send()))
        await asyncio.sleep(3)  # read nothing while the server tries to send
        received = 0
        while data := await asyncio.to_thread(sock.recv, 1 << 20):
            client.receive_data(data)
            received += sum(
                isinstance(e, Frame) and e.opcode is Opcode.TEXT for e in client.events_received()
            )
    assert 0 < received < 12_000
    assert client.close_rcvd is not None
    assert client.close_rcvd.code == 1013
    assert client.close_rcvd.reason == f"too slow: reconnect with from_seq={received + 1}"
