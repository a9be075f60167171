"""The connection's protocol parser: the same messages whatever way the bytes arrive in."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nats.errors import ProtocolError

from bus._nats.connection import Connection

Received = tuple[bytes, bytes, bytes, bytes | None]
LANE, PLAIN = 7, 8  # a lane's subscription id, and one nats-py delivers the usual way


def wire(messages: list[Received], sids: list[int] | None = None) -> bytes:
    """The server's MSG / HMSG lines for `messages`, with a +OK between some of them."""
    out = b""
    for n, (subject, reply, payload, headers) in enumerate(messages):
        sid = sids[n] if sids else LANE
        target = b" ".join([subject, str(sid).encode(), *([reply] if reply else [])])
        if headers is None:
            out += b"MSG %s %d\r\n%s\r\n" % (target, len(payload), payload)
        else:
            size = len(headers)
            out += b"HMSG %s %d %d\r\n%s%s\r\n" % (
                target, size, size + len(payload), headers, payload
            )  # fmt: skip
        if n % 3 == 2:
            out += b"+OK\r\n"
    return out


class _Recording(Connection):
    """A connection whose messages without a lane are recorded where nats-py would queue
    them to a subscription."""

    def __init__(self) -> None:
        super().__init__()
        self.plain: list[Received] = []

    async def _process_msg(
        self, sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes
    ) -> None:
        if not self.to_lane(sid, subject, reply, data, headers):
            self.plain.append((subject, reply, data, headers))


def receiver() -> tuple[_Recording, list[Received]]:
    conn = _Recording()
    got: list[Received] = []
    conn._lanes[LANE] = lambda *message: got.append(message)
    return conn, got


messages_strategy = st.lists(
    st.tuples(
        st.sampled_from([b"a.b.c", b"$JS.ACK.S.c.1.2.3.4.0", b"_INBOX.x.1"]),
        st.sampled_from([b"", b"_INBOX.reply.9"]),
        st.binary(max_size=64).filter(lambda b: b"\r\n" not in b),
        st.one_of(
            st.none(), st.just(b"NATS/1.0\r\nA: b\r\n\r\n"), st.just(b"NATS/1.0 100\r\n\r\n")
        ),
    ),
    min_size=1,
    max_size=12,
)


@settings(max_examples=200, deadline=None)
@given(messages=messages_strategy, cuts=st.lists(st.integers(min_value=0), max_size=8))
async def test_messages_survive_any_split_of_the_stream(
    messages: list[Received], cuts: list[int]
) -> None:
    data = wire(messages)
    points = sorted({c % (len(data) + 1) for c in cuts})
    conn, got = receiver()
    for start, end in zip([0, *points], [*points, len(data)], strict=True):
        await conn._ps.parse(data[start:end])
    assert got == messages
    assert not conn._ps.buf
    assert conn.stats["in_msgs"] == len(messages)
    assert conn.stats["in_bytes"] == sum(len(payload) for _, _, payload, _ in messages)


@settings(max_examples=200, deadline=None)
@given(
    messages=messages_strategy,
    lanes=st.lists(st.booleans(), min_size=12, max_size=12),
    cuts=st.lists(st.integers(min_value=0), max_size=8),
)
async def test_lane_and_plain_messages_interleaved_each_reach_their_own(
    messages: list[Received], lanes: list[bool], cuts: list[int]
) -> None:
    sids = [LANE if lane else PLAIN for lane in lanes[: len(messages)]]
    data = wire(messages, sids)
    points = sorted({c % (len(data) + 1) for c in cuts})
    conn, got = receiver()
    for start, end in zip([0, *points], [*points, len(data)], strict=True):
        await conn._ps.parse(data[start:end])
    assert got == [m for m, sid in zip(messages, sids, strict=True) if sid == LANE]
    assert conn.plain == [m for m, sid in zip(messages, sids, strict=True) if sid == PLAIN]
    assert not conn._ps.buf


@pytest.mark.parametrize(
    "line",
    [b"MSG a.b 7\r\n", b"MSG a.b x 3\r\n", b"HMSG a.b 7 x 3\r\n", b"MSG a b c d e\r\n"],
)
async def test_a_malformed_message_line_is_a_protocol_error(line: bytes) -> None:
    conn, got = receiver()
    with pytest.raises(ProtocolError):
        await conn._ps.parse(line)
    assert got == []
