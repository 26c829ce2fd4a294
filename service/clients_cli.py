"""``handoff clients add|list|disable|enable`` and ``handoff keys rotate|generate``.

They work against HANDOFF_DATABASE_URL while the service runs: the registry is a table, and a
disabled client's tokens are refused on their next request.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from service.auth.client_secrets import (
    generate_client_id,
    generate_client_secret,
    hash_client_secret,
)
from service.auth.scopes import ScopeSet, ScopeSyntaxError
from service.settings import Settings
from service.storage import clients as store
from service.storage import repository as repo
from service.storage.db import create_engine, read_connection, write_transaction


class CliError(Exception):
    pass


def _load_jwks(path: str) -> dict[str, Any]:
    try:
        jwks = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CliError(f"cannot read a JWKS from {path}: {exc}") from exc
    keys = jwks.get("keys") if isinstance(jwks, dict) else None
    if not isinstance(keys, list) or not keys:
        raise CliError(f"{path} is not a JWK Set (an object with a non-empty 'keys' array)")
    for key in keys:
        if not isinstance(key, dict) or "d" in key:
            raise CliError(f"{path} must hold PUBLIC keys only (found a private key)")
    return dict(jwks)


async def add(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    try:
        scopes = ScopeSet.parse(args.scopes, strict=True)
    except ScopeSyntaxError as exc:
        raise CliError(f"--scopes: {exc}") from exc
    if not args.organization and not scopes.admin:
        raise CliError("--organization is required (only handoff/admin clients act for none)")
    methods = [m for m in (args.jwks_file, args.jwks_uri, args.secret) if m]
    if len(methods) != 1:
        raise CliError("give exactly one of --jwks-file, --jwks-uri or --secret")
    if args.jwks_uri and not args.jwks_uri.startswith("https://"):
        raise CliError("--jwks-uri must be an https:// URL")
    engine = create_engine(settings)
    try:
        if args.organization:
            rtype, _, rid = args.organization.partition("/")
            if rtype != "Organization" or not rid:
                raise CliError("--organization must look like Organization/<id>")
            async with read_connection(engine) as conn:
                if not await repo.resource_exists(conn, "Organization", rid):
                    raise CliError(f"{args.organization} does not exist in this database")
        secret = generate_client_secret() if args.secret else None
        record = store.ClientRecord(
            client_id=args.client_id or generate_client_id(),
            name=args.name,
            organization=args.organization,
            scopes=scopes.to_string(),
            secret_hash=hash_client_secret(secret) if secret else None,
            jwks=_load_jwks(args.jwks_file) if args.jwks_file else None,
            jwks_uri=args.jwks_uri,
            disabled=False,
            created=datetime.now(UTC),
        )
        async with write_transaction(engine) as conn:
            if await store.get_client(conn, record.client_id):
                raise CliError(f"client {record.client_id} already exists")
            await store.add_client(conn, record)
    finally:
        await engine.dispose()
    out = record.public()
    if secret:
        out["client_secret"] = secret  # shown once; only its hash is stored
    return out


async def list_all(settings: Settings) -> list[dict[str, Any]]:
    engine = create_engine(settings)
    try:
        async with read_connection(engine) as conn:
            return [c.public() for c in await store.list_clients(conn)]
    finally:
        await engine.dispose()


async def set_disabled(client_id: str, disabled: bool, settings: Settings) -> dict[str, Any]:
    engine = create_engine(settings)
    try:
        async with write_transaction(engine) as conn:
            if not await store.set_disabled(conn, client_id, disabled):
                raise CliError(f"no client {client_id}")
        return {"client_id": client_id, "disabled": disabled}
    finally:
        await engine.dispose()


async def rotate(settings: Settings) -> dict[str, Any]:
    from service.workflows.authn import Authenticator

    engine = create_engine(settings)
    auth = Authenticator(engine=engine, settings=settings)
    try:
        kid = await auth.rotate_keys()
    except RuntimeError as exc:
        raise CliError(str(exc)) from exc
    finally:
        await auth.close()
        await engine.dispose()
    return {"active_kid": kid}


def generate_key_file(
    out: str, *, alg: str, previous: str | None, public_out: str | None, force: bool
) -> dict[str, Any]:
    """A private signing-key set for HANDOFF_AUTH_SIGNING_KEYS_FILE (e.g. the Helm chart's
    Secret), written owner-only; returns the public JWKS. With ``previous``, the keys of that
    file are kept and its active key retired (tokens it signed verify until they expire)."""
    from service.auth.keys import SIGNING_ALGORITHMS, KeyRingError, SigningKeyRing

    if alg not in SIGNING_ALGORITHMS:
        raise CliError(f"--alg must be one of {', '.join(SIGNING_ALGORITHMS)}")
    target = Path(out)
    if target.exists() and not force and (previous is None or Path(previous) != target):
        raise CliError(f"{out} exists: pass --force to replace it, or --from {out} to rotate it")
    if previous is None:
        ring = SigningKeyRing.generate(alg)
    else:
        try:
            ring = SigningKeyRing.from_file(previous)
        except (OSError, KeyRingError) as exc:
            raise CliError(f"{previous}: {exc}") from exc
        now = datetime.now(UTC)
        # Keys retired longer ago than any token lives have nothing left to verify.
        ring.retire_before(now - timedelta(hours=1))
        ring.rotate(now=now, alg=alg)
    text = json.dumps(ring.to_dict(), indent=2) + "\n"
    partial = target.with_name(target.name + ".partial")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.replace(partial, target)  # never a half-written key file
    public = ring.public_jwks()
    if public_out:
        Path(public_out).write_text(json.dumps(public, indent=2) + "\n", encoding="utf-8")
    return public


def run(args: argparse.Namespace) -> None:
    settings = Settings()
    try:
        if args.command == "keys" and args.keys_command == "generate":
            result: Any = generate_key_file(
                args.out,
                alg=args.alg,
                previous=args.previous,
                public_out=args.public_out,
                force=args.force,
            )
        elif args.command == "keys":
            result = asyncio.run(rotate(settings))
        elif args.clients_command == "add":
            result = asyncio.run(add(args, settings))
        elif args.clients_command == "list":
            result = asyncio.run(list_all(settings))
        else:
            result = asyncio.run(
                set_disabled(args.client_id, args.clients_command == "disable", settings)
            )
    except CliError as exc:
        sys.stderr.write(f"handoff: {exc}\n")
        sys.exit(2)
    sys.stdout.write(json.dumps(result, indent=2) + "\n")


def add_parsers(sub: Any) -> None:
    clients = sub.add_parser("clients", help="manage OAuth clients")
    csub = clients.add_subparsers(dest="clients_command", required=True)
    add_p = csub.add_parser("add", help="register a backend client")
    add_p.add_argument("--name", required=True)
    add_p.add_argument("--organization", help="Organization/<id> the client acts for")
    add_p.add_argument("--scopes", required=True, help='e.g. "system/Task.rus system/*.rs"')
    add_p.add_argument("--client-id", help="choose the id (default: generated)")
    add_p.add_argument("--jwks-file", help="public JWKS for private_key_jwt")
    add_p.add_argument("--jwks-uri", help="https URL of the client's JWKS")
    add_p.add_argument("--secret", action="store_true", help="generate a client secret")
    csub.add_parser("list", help="list clients")
    for name in ("disable", "enable"):
        p = csub.add_parser(name, help=f"{name} a client (takes effect at once)")
        # Ids registered before generated ids became hex may begin with "-": pass them after "--".
        p.add_argument("client_id", help='an id beginning with "-" goes after "--"')
    clients.set_defaults(func=run)
    keys = sub.add_parser("keys", help="token-signing keys")
    ksub = keys.add_subparsers(dest="keys_command", required=True)
    ksub.add_parser(
        "rotate",
        help="new signing key in the database; old tokens keep verifying until expiry",
    )
    gen = ksub.add_parser(
        "generate",
        help="write a private signing-key file (HANDOFF_AUTH_SIGNING_KEYS_FILE, the Helm "
        "chart's Secret) and print its public JWKS",
    )
    gen.add_argument("--out", required=True, help="the private key file to write (mode 0600)")
    gen.add_argument("--alg", default="ES384", help="ES384 (default) or RS384")
    gen.add_argument(
        "--from",
        dest="previous",
        help="rotate: keep this file's keys, retire its active one, add a new one",
    )
    gen.add_argument("--public-out", help="also write the public JWKS to this file")
    gen.add_argument("--force", action="store_true", help="replace an existing --out file")
    keys.set_defaults(func=run)
