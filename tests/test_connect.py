"""Connecting: lifecycle, dead servers, and every way of authenticating (real servers)."""

from __future__ import annotations

import datetime
import ipaddress
import os
from pathlib import Path

import nkeys
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from bus import Bus, BusClosed, ConfigError, ConnectError, Credentials, EmbeddedServer
from bus._server import TLSFiles


async def test_lifecycle_and_no_reuse_after_close(nats_url: str) -> None:
    async with Bus(nats_url) as bus:
        assert bus.connected
    assert not bus.connected
    with pytest.raises(BusClosed):
        await bus.start()
    with pytest.raises(BusClosed):
        bus.nc  # noqa: B018
    connected = await Bus.connect(nats_url)
    await connected.close()
    await connected.close()  # idempotent


async def test_dead_url_is_a_clear_connect_error() -> None:
    with pytest.raises(ConnectError, match=r"nats://127\.0\.0\.1:1"):
        await Bus.connect("nats://127.0.0.1:1", connect_timeout=0.5)


def test_url_lists_and_auth_choices() -> None:
    assert Bus("nats://a:1, nats://b:2").urls == ["nats://a:1", "nats://b:2"]
    with pytest.raises(ConfigError, match="no NATS server URL"):
        Bus(" , ")
    with pytest.raises(ConfigError, match="one way to authenticate"):
        Bus("nats://a:1", credentials=Credentials(user="u", token="t"))


async def test_user_and_password(tmp_path: Path) -> None:
    with EmbeddedServer(store_dir=tmp_path, user="app", password="s3cret") as server:
        good = Credentials(user="app", password="s3cret")
        async with Bus(server.url, credentials=good) as bus:
            assert bus.connected
        with pytest.raises(ConnectError, match=r"(?i)authorization"):
            await Bus.connect(server.url, credentials=Credentials(user="app", password="wrong"))
        with pytest.raises(ConnectError, match=r"(?i)authorization"):
            await Bus.connect(server.url)


async def test_token(tmp_path: Path) -> None:
    with EmbeddedServer(store_dir=tmp_path, token="t0ken") as server:
        async with Bus(server.url, credentials=Credentials(token="t0ken")) as bus:
            assert bus.connected
        with pytest.raises(ConnectError, match=r"(?i)authorization"):
            await Bus.connect(server.url, credentials=Credentials(token="nope"))


async def test_nkey(tmp_path: Path) -> None:
    seed = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER)
    public = nkeys.from_seed(bytearray(seed)).public_key.decode()
    seed_file = tmp_path / "user.nk"
    seed_file.write_bytes(seed)
    with EmbeddedServer(store_dir=tmp_path / "nats", nkeys=[public]) as server:
        async with Bus(server.url, credentials=Credentials(nkey_seed=str(seed_file))) as bus:
            assert bus.connected
        other = tmp_path / "other.nk"
        other.write_bytes(nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER))
        with pytest.raises(ConnectError, match=r"(?i)authorization"):
            await Bus.connect(server.url, credentials=Credentials(nkey_seed=str(other)))


def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


async def test_tls(tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    with EmbeddedServer(store_dir=tmp_path / "nats", tls=TLSFiles(str(cert), str(key))) as server:
        assert server.url.startswith("tls://")
        async with Bus(server.url, credentials=Credentials(tls_ca=str(cert))) as bus:
            assert bus.connected
            assert await bus.streams.list() == []
        with pytest.raises(ConnectError):
            await Bus.connect(server.url.replace("tls://", "nats://"), connect_timeout=1)
