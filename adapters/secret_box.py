"""Envelope encryption with destroyable per-account keys (crypto-shredding).

The event log is append-only, so a secret written to it can never be deleted. Secrets therefore
go in sealed: each account has a random 256-bit data key, secrets are encrypted under it with
AES-256-GCM, and only the ciphertext enters an event. The data key itself lives outside the
log, in `account_keys`, wrapped (AES-256-GCM again) by a key derived from `SPOOL_SECRET_KEY`.
Destroying an account's data key (`shred`) makes every secret of that account in the log
unreadable for good, while the log itself stays untouched.

Each ciphertext is bound to its account and key version through GCM's associated data, so a
sealed value copied into another account's event does not open there. After a shred, the next
`seal` creates a fresh key under a new version; old ciphertexts name the old version and stay
dead.
"""

from __future__ import annotations

import base64
import os

import asyncpg
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from spool.domain.storage_config import Sealed

__all__ = ["Sealed", "SecretUnavailable", "open_", "seal", "shred", "wrapping_key"]

_NONCE = 12
_WRAP_INFO = b"spool account-key wrap v1"
_ALG = "AES-256-GCM"


class SecretUnavailable(Exception):
    """A sealed secret cannot be opened: its key was shredded, or it was tampered with."""


def wrapping_key(secret_key: str) -> bytes:
    """The key-encryption key: HKDF-SHA256 of `SPOOL_SECRET_KEY`, for this purpose only.

    Deriving (rather than using the secret key directly) keeps the JWT signing and webhook
    secrets, which come from the same setting, independent of this one.
    """
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_WRAP_INFO).derive(
        secret_key.encode()
    )


def _wrap_aad(account_id: str, version: int) -> bytes:
    return f"spool:account-key:{account_id}:{version}".encode()


def _seal_aad(account_id: str, version: int) -> bytes:
    return f"spool:secret:{account_id}:{version}".encode()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


async def _data_key(
    pool: asyncpg.Pool, secret_key: str, account_id: str, *, create: bool
) -> tuple[int, bytes] | None:
    """The account's live data key and its version; made (or re-made after a shred) if
    `create`. None when there is no live key and `create` is false."""
    kek = AESGCM(wrapping_key(secret_key))
    async with pool.acquire() as conn, conn.transaction():
        # Only a seal may (re)create the key, so only a seal needs to queue behind others.
        lock = " FOR UPDATE" if create else ""
        row = await conn.fetchrow(
            f"SELECT key_version, wrapped_key FROM account_keys WHERE account_id = $1{lock}",
            account_id,
        )
        if row is not None and row["wrapped_key"] is not None:
            version: int = row["key_version"]
            wrapped: bytes = row["wrapped_key"]
            try:
                key = kek.decrypt(
                    wrapped[:_NONCE], wrapped[_NONCE:], _wrap_aad(account_id, version)
                )
            except InvalidTag:
                # SPOOL_SECRET_KEY changed since the key was wrapped: nothing can open it now.
                raise SecretUnavailable(
                    "the account's data key does not open with this SPOOL_SECRET_KEY"
                ) from None
            return version, key
        if not create:
            return None
        version = 1 if row is None else row["key_version"] + 1
        key = AESGCM.generate_key(bit_length=256)
        nonce = os.urandom(_NONCE)
        wrapped = nonce + kek.encrypt(nonce, key, _wrap_aad(account_id, version))
        if row is None:
            # Two first seals of one account race here: the row lock above does not exist yet.
            # ON CONFLICT makes the loser fail loudly rather than overwrite the winner's key.
            await conn.execute(
                "INSERT INTO account_keys (account_id, key_version, wrapped_key) "
                "VALUES ($1, $2, $3)",
                account_id,
                version,
                wrapped,
            )
        else:
            await conn.execute(
                "UPDATE account_keys SET key_version = $2, wrapped_key = $3, "
                "created_at = now(), destroyed_at = NULL WHERE account_id = $1",
                account_id,
                version,
                wrapped,
            )
        return version, key


async def seal(pool: asyncpg.Pool, secret_key: str, account_id: str, plaintext: bytes) -> Sealed:
    """Encrypt `plaintext` under the account's data key (created on first use)."""
    try:
        found = await _data_key(pool, secret_key, account_id, create=True)
    except asyncpg.UniqueViolationError:
        # Lost the race to create the account's first key: use the winner's.
        found = await _data_key(pool, secret_key, account_id, create=False)
    assert found is not None
    version, key = found
    nonce = os.urandom(_NONCE)
    ciphertext = AESGCM(key).encrypt(nonce, plaintext, _seal_aad(account_id, version))
    return Sealed(key_version=version, nonce=_b64(nonce), ciphertext=_b64(ciphertext), alg=_ALG)


async def open_(pool: asyncpg.Pool, secret_key: str, account_id: str, sealed: Sealed) -> bytes:
    """Decrypt what `seal` made for this account; SecretUnavailable if it cannot be."""
    if sealed.alg != _ALG:
        raise SecretUnavailable(f"unknown cipher {sealed.alg!r}")
    found = await _data_key(pool, secret_key, account_id, create=False)
    if found is None or found[0] != sealed.key_version:
        raise SecretUnavailable("the key that sealed this secret was destroyed")
    version, key = found
    try:
        nonce = base64.b64decode(sealed.nonce, validate=True)
        ciphertext = base64.b64decode(sealed.ciphertext, validate=True)
        return AESGCM(key).decrypt(nonce, ciphertext, _seal_aad(account_id, version))
    except (InvalidTag, ValueError):
        raise SecretUnavailable(
            "the sealed secret does not open (altered, or another account's)"
        ) from None


async def shred(pool: asyncpg.Pool, account_id: str) -> bool:
    """Destroy the account's data key: every secret it sealed is unreadable from now on.

    The row stays, with its version and `destroyed_at`, so a later key gets a new version and
    the destruction is on record. Returns whether there was a live key to destroy.
    """
    status: str = await pool.execute(
        "UPDATE account_keys SET wrapped_key = NULL, destroyed_at = now() "
        "WHERE account_id = $1 AND wrapped_key IS NOT NULL",
        account_id,
    )
    return status.endswith(" 1")
