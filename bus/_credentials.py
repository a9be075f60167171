"""How a Bus reaches NATS: the server URLs and the credentials, and URLs safe to show."""

from __future__ import annotations

import re
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ._errors import ConfigError


@dataclass(frozen=True)
class Credentials:
    """How to authenticate and encrypt; set at most one of user/token/creds/nkey_seed."""

    user: str | None = None
    password: str | None = None
    token: str | None = None
    creds: str | None = None  # path of a .creds file (JWT + nkey seed)
    nkey_seed: str | None = None  # path of an nkey seed file
    tls: ssl.SSLContext | None = None
    tls_ca: str | None = None  # or build the context from files
    tls_cert: str | None = None
    tls_key: str | None = None

    def connect_options(self) -> dict[str, Any]:
        chosen = [n for n in ("user", "token", "creds", "nkey_seed") if getattr(self, n)]
        if len(chosen) > 1:
            raise ConfigError(f"choose one way to authenticate, not {' and '.join(chosen)}")
        opts: dict[str, Any] = {}
        if self.user:
            opts.update(user=self.user, password=self.password or "")
        if self.token:
            opts["token"] = self.token
        if self.creds:
            opts["user_credentials"] = self.creds
        if self.nkey_seed:
            opts["nkeys_seed"] = self.nkey_seed
        tls = self.tls
        if tls is None and (self.tls_ca or self.tls_cert):
            tls = ssl.create_default_context(cafile=self.tls_ca)
            if self.tls_cert:
                tls.load_cert_chain(self.tls_cert, self.tls_key)
        if tls is not None:
            opts["tls"] = tls
        return opts


def redact_url(url: str) -> str:
    """A URL without its user and password, for messages, logs and status output."""
    return re.sub(r"//[^/@]*@", "//***@", url)


def split_urls(servers: str | Sequence[str]) -> list[str]:
    urls = [u.strip() for u in servers.split(",")] if isinstance(servers, str) else list(servers)
    urls = [u for u in urls if u]
    if not urls:
        raise ConfigError("no NATS server URL given")
    return urls


def is_auth_failure(exc: BaseException | None) -> bool:
    text = str(exc).lower()
    return exc is not None and ("authorization" in text or "authentication" in text)


def describe(exc: BaseException) -> str:
    """A connect failure in words, with a hint where credentials were refused."""
    text = str(exc) or type(exc).__name__
    if is_auth_failure(exc):
        return f"{text} (check the user/password, token, nkey or creds)"
    return text
