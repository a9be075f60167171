"""JWT bearer tokens at the edge: a forged-token suite on every surface (HTTP, the hot read
path, SSE, WebSocket, MCP), a JWKS served by a local HTTP server with key rotation, and the
bounded cache; under a real uvicorn against a real nats-server."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from fastapi import FastAPI
from jwt.algorithms import ECAlgorithm, OKPAlgorithm
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from bus import Bus, ConfigError
from services.demo import app
from services.edge import create_app
from services.edge.server import start_edge, stop_edge
from services.edge.tokens import InvalidToken, Tokens
from tests.edge import KEYS, bearer, serve

ISSUER, AUDIENCE = "https://idp.test", "bus-edge"
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
OTHER_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
PUBLIC_PEM = RSA_KEY.public_key().public_bytes(
    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
)


def claims(**changes: Any) -> dict[str, Any]:
    now = int(time.time())
    base = {
        "sub": "alice",
        "iss": ISSUER,
        "aud": AUDIENCE,
        "exp": now + 86_400,  # a day: FORGED is minted when the suite is collected
        "iat": now,
        "scope": "openid bus:read bus:write",
    }
    return {k: v for k, v in (base | changes).items() if v is not None}


def mint(key: Any = RSA_KEY, alg: str = "RS256", headers: Any = None, **changes: Any) -> str:
    return jwt.encode(claims(**changes), key, algorithm=alg, headers=headers)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unsigned(header: dict[str, Any], secret: bytes | None = None) -> str:
    """A token made by hand: `alg: none`, or HS256 keyed with what it is given (the public
    key's PEM: the classic algorithm-confusion forgery, which PyJWT will not even make)."""
    head = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims()).encode())}"
    if secret is None:
        return head + "."
    return head + "." + _b64(hmac.new(secret, head.encode(), hashlib.sha256).digest())


FORGED = {
    "alg none": unsigned({"alg": "none", "typ": "JWT"}),
    "HS256 with the public key": unsigned({"alg": "HS256", "typ": "JWT"}, PUBLIC_PEM),
    "wrong key": mint(OTHER_KEY),
    "expired": mint(exp=int(time.time()) - 3600),
    "not yet valid": mint(nbf=int(time.time()) + 43_200),
    "wrong issuer": mint(iss="https://evil.test"),
    "wrong audience": mint(aud="someone-else"),
    "no exp": mint(exp=None),
    "no sub": mint(sub=None),
    "a sub that is no name": mint(sub="alice\r\nBus-Principal: root"),
    "tampered payload": (lambda t: t.split(".")[0] + "." + _b64(b'{"sub":"root"}') + ".")(mint()),
    "garbage": "a.b.c",
    "oversized": mint(pad="x" * 9000),
}


@pytest.fixture
def pem(tmp_path: Path) -> Path:
    path = tmp_path / "public.pem"
    path.write_bytes(PUBLIC_PEM)
    return path


@pytest.fixture
async def jwt_edge(tasks: Bus, nats_url: str, pem: Path) -> AsyncIterator[httpx.AsyncClient]:
    tokens = Tokens(public_key=pem, issuer=ISSUER, audience=AUDIENCE)
    async for client in serve(create_app(app, nats_url, api_keys=KEYS, tokens=tokens)):
        yield client


async def sse_status(edge: httpx.AsyncClient, headers: dict[str, str]) -> int:
    async with edge.stream("GET", "/events?subject=tasks.>", headers=headers) as answer:
        return answer.status_code


async def surfaces(edge: httpx.AsyncClient, token: str) -> dict[str, int]:
    """The status each surface answers this token with (a WebSocket refused at the
    handshake answers 403, or 400/431 for a header too large, as uvicorn does). The read
    waits for what was published: the projection applies it a moment later."""
    h = bearer(token)
    mcp = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
    published = await edge.post("/api/v1/events/tasks.j1.created", json={"title": "x"}, headers=h)
    after = f"?after_seq={published.json()['seq']}" if published.status_code == 201 else ""
    codes = {
        "publish": published.status_code,
        "hot read": (await edge.get(f"/api/v1/projections/task/j1{after}", headers=h)).status_code,
        "stream read": (await edge.get("/api/v1/streams/TASKS/events", headers=h)).status_code,
        "sse": await sse_status(edge, h),
        "mcp": (await edge.post("/mcp", json=mcp, headers=h)).status_code,
        "mcp legacy": (await edge.post("/mcp/v2/tools/list", headers=h)).status_code,
    }
    url = str(edge.base_url.copy_with(scheme="ws").join("/ws?subject=tasks.>"))
    try:
        async with connect(url, additional_headers=h):
            codes["ws"] = 101
    except InvalidStatus as exc:
        codes["ws"] = exc.response.status_code
    return codes


async def test_forged_tokens_are_refused_on_every_surface(
    jwt_edge: httpx.AsyncClient, tasks: Bus
) -> None:
    for name, token in FORGED.items():
        codes = await surfaces(jwt_edge, token)
        assert codes.pop("ws") in (400, 401, 431), name  # refused at the handshake
        assert codes == dict.fromkeys(codes, 401), name
        answer = await jwt_edge.post(
            "/api/v1/events/tasks.j1.created", json={"title": "x"}, headers=bearer(token)
        )
        challenge = answer.headers["www-authenticate"]
        assert challenge.startswith('Bearer error="invalid_token"'), name
        assert answer.headers["content-type"] == "application/problem+json"
        for part in (p for p in token.split(".") if len(p) > 8):
            assert part not in answer.text, name
            assert part not in challenge, name
    assert (await tasks.streams.info("TASKS")).messages == 0  # nothing was stored


async def test_the_reasons_say_what_is_wrong(jwt_edge: httpx.AsyncClient) -> None:
    async def reason(token: str) -> str:
        answer = await jwt_edge.get("/api/v1/projections", headers=bearer(token))
        return str(answer.json()["detail"])

    assert await reason(FORGED["expired"]) == "the token has expired"
    assert await reason(FORGED["not yet valid"]) == "the token is not valid yet"
    assert await reason(FORGED["wrong issuer"]) == "the token's issuer is not accepted"
    assert await reason(FORGED["wrong audience"]) == "the token's audience is not accepted"
    assert await reason(FORGED["HS256 with the public key"]) == (
        "the token's algorithm is not accepted"
    )
    assert await reason(FORGED["alg none"]) == "the token's algorithm is not accepted"
    assert await reason(FORGED["oversized"]) == "the token is too long"


async def test_scopes_from_the_scope_claim(jwt_edge: httpx.AsyncClient, tasks: Bus) -> None:
    full = await surfaces(jwt_edge, mint())
    assert full.pop("mcp") not in (401, 403)  # in: what the session says is the SDK's affair
    assert full == {**dict.fromkeys(full, 200), "publish": 201, "ws": 101}
    reader = await surfaces(jwt_edge, mint(scope="bus:read"))
    assert reader.pop("mcp") not in (401, 403)
    assert reader == {**dict.fromkeys(reader, 200), "publish": 403, "ws": 101}
    nothing = await surfaces(jwt_edge, mint(scope="openid profile"))
    assert nothing == dict.fromkeys(nothing, 403)  # MCP's gate wants read: every tool reads
    refused = await jwt_edge.post(
        "/api/v1/events/tasks.j2.created", json={"title": "x"}, headers=bearer(mint(scope=""))
    )
    assert refused.json()["detail"] == "this key or token lacks the 'write' scope"
    admin = mint(scope="bus:admin")
    assert (
        await jwt_edge.post(
            "/api/v1/events/tasks.j3.created", json={"title": "x"}, headers=bearer(admin)
        )
    ).status_code == 201
    arguments = {"subject": "tasks.j4.created", "data": {"title": "x"}}
    called = await jwt_edge.post(
        "/mcp/v2/tools/call",
        json={"name": "publish_event", "arguments": arguments},
        headers=bearer(mint(scope="bus:read")),
    )
    assert called.json()["isError"] is True
    assert "403" in called.json()["content"][0]["text"]


async def test_api_keys_still_work_beside_tokens(jwt_edge: httpx.AsyncClient) -> None:
    ok = await jwt_edge.post(
        "/api/v1/events/tasks.k1.created", json={"title": "x"}, headers=bearer("w-key")
    )
    assert ok.status_code == 201


class JwksServer:
    """A JWKS endpoint on loopback whose keys the test changes; it counts the fetches."""

    def __init__(self) -> None:
        self.keys: list[dict[str, Any]] = []
        self.fetches = 0
        self.api = FastAPI()

        @self.api.get("/jwks")
        async def jwks() -> dict[str, Any]:
            self.fetches += 1
            return {"keys": self.keys}


@pytest.fixture
async def jwks() -> AsyncIterator[tuple[JwksServer, str]]:
    served = JwksServer()
    server, task, port = await start_edge(served.api, "127.0.0.1", 0)
    try:
        yield served, f"http://127.0.0.1:{port}/jwks"
    finally:
        await stop_edge(server, task)


def jwk(public: Any, kid: str, codec: Any) -> dict[str, Any]:
    return {**json.loads(codec.to_jwk(public)), "kid": kid}


async def test_jwks_rotation_refetches_on_an_unknown_kid(jwks: tuple[JwksServer, str]) -> None:
    served, url = jwks
    ec_a = ec.generate_private_key(ec.SECP256R1())
    ed_b = ed25519.Ed25519PrivateKey.generate()
    served.keys = [jwk(ec_a.public_key(), "a", ECAlgorithm)]
    tokens = Tokens(jwks_url=url, jwks_refresh=0)
    first = await tokens.verify(mint(ec_a, "ES256", {"kid": "a"}, sub="svc-a"))
    assert (first.name, first.scopes) == ("svc-a", {"read", "write"})
    await tokens.verify(mint(ec_a, "ES256", {"kid": "a"}, sub="svc-a2"))
    assert served.fetches == 1  # a known kid: no fetch

    served.keys = [jwk(ed_b.public_key(), "b", OKPAlgorithm)]  # rotated: a is gone
    assert (await tokens.verify(mint(ed_b, "EdDSA", {"kid": "b"}))).name == "alice"
    assert served.fetches == 2
    with pytest.raises(InvalidToken, match="not known"):
        await tokens.verify(mint(ec_a, "ES256", {"kid": "a"}, sub="late"))
    with pytest.raises(InvalidToken, match="names no key"):
        await tokens.verify(mint(ed_b, "EdDSA"))
    # a symmetric key published in the JWKS is never used: HS256 under its kid is refused
    served.keys.append({"kty": "oct", "kid": "s", "k": _b64(b"k" * 32)})
    with pytest.raises(InvalidToken):
        await tokens.verify(mint(b"k" * 32, "HS256", {"kid": "s"}))
    # an Ed25519 key's kid only verifies EdDSA (algorithms pinned to the key, not the token)
    with pytest.raises(InvalidToken, match="algorithm"):
        await tokens.verify(mint(ec_a, "ES256", {"kid": "b"}))


async def test_an_unknown_kid_does_not_make_every_request_a_fetch(
    jwks: tuple[JwksServer, str],
) -> None:
    served, url = jwks
    tokens = Tokens(jwks_url=url)  # the default: one fetch per 10 s at most
    key = ec.generate_private_key(ec.SECP256R1())
    for n in range(5):
        with pytest.raises(InvalidToken):
            await tokens.verify(mint(key, "ES256", {"kid": f"k{n}"}))
    assert served.fetches == 1


async def test_an_unreachable_jwks_refuses_without_hanging() -> None:
    tokens = Tokens(jwks_url="http://127.0.0.1:9/jwks")
    key = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(InvalidToken, match="not known"):
        await tokens.verify(mint(key, "ES256", {"kid": "x"}))


async def test_hs256_and_a_bounded_cache() -> None:
    secret = "s" * 40
    tokens = Tokens(secret=secret, cache_size=3)
    made = [mint(secret, "HS256", sub=f"u{n}", iss=None, aud=None) for n in range(10)]
    for token in made:
        assert (await tokens.verify(token)).name.startswith("u")
    assert len(tokens._cache) <= 3
    assert (await tokens.verify(made[-1])).name == "u9"  # cached: the same answer
    with pytest.raises(InvalidToken, match="algorithm"):  # RS256 against an HS256 edge
        await tokens.verify(mint())


def test_configuration_is_checked(tmp_path: Path, pem: Path) -> None:
    with pytest.raises(ConfigError, match="one of"):
        Tokens()
    with pytest.raises(ConfigError, match="one of"):
        Tokens(secret="s" * 40, public_key=pem)
    with pytest.raises(ConfigError, match="32"):
        Tokens(secret="short")
    private = tmp_path / "private.pem"
    private.write_bytes(
        RSA_KEY.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    with pytest.raises(ConfigError):
        Tokens(public_key=private)
    junk = tmp_path / "junk.pem"
    junk.write_text("not a key")
    with pytest.raises(ConfigError, match="not a public key"):
        Tokens(public_key=junk)


async def test_an_oversized_jwks_is_not_taken(jwks: tuple[JwksServer, str]) -> None:
    served, url = jwks
    key = ec.generate_private_key(ec.SECP256R1())
    served.keys = [jwk(key.public_key(), "a", ECAlgorithm), {"kty": "x", "pad": "p" * 300_000}]
    with pytest.raises(InvalidToken, match="not known"):
        await Tokens(jwks_url=url).verify(mint(key, "ES256", {"kid": "a"}))


def test_settings_make_the_verifier(pem: Path) -> None:
    from services.runtime.settings import Settings

    assert Settings().edge_options()["tokens"] is None
    tokens = Settings(jwt_public_key=pem, jwt_issuer=ISSUER).edge_options()["tokens"]
    assert isinstance(tokens, Tokens)
    assert tokens.issuer == ISSUER
