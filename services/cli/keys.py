"""`bus keys new`: a payload key for BUS_ENCRYPTION_KEYS, or (`--signing`) an nkeys seed for
BUS_SIGNING_SEED and its public key for the consumers' BUS_TRUSTED_SIGNERS.

Printed on stdout only (never logged), for the operator to put in a secret store."""

from __future__ import annotations

import click

from bus import Signer, new_key

from .console import emit, json_option


@click.group()
def keys() -> None:
    """Make keys for signed and encrypted events."""


@keys.command("new")
@click.option("--signing", is_flag=True, help="An Ed25519 signing seed instead of a payload key.")
@json_option
def new(signing: bool, as_json: bool) -> None:
    """Print a new payload key `id:base64` (put it first in the domain's list to rotate)."""
    if signing:
        signer, seed = Signer.generate()
        emit(as_json, {"seed": seed, "public_key": signer.public_key})
        if not as_json:
            click.echo(f"seed (keep in a file only the publisher reads): {seed}")
            click.echo(f"public key (list in BUS_TRUSTED_SIGNERS): {signer.public_key}")
        return
    key = new_key()
    emit(as_json, {"key": key, "id": key.split(":")[0]})
    if not as_json:
        click.echo(key)
