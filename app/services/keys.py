"""API keys: create, list, revoke, and find the key a request presents.

A key is 32 random bytes (`secrets`), shown once when it is created; the database keeps only its
SHA-256. A high-entropy key needs no slow password hash: nobody can search 2**256 keys for a hash.
Keys are found by their hash (an indexed, unique column); the hash found is compared again in
constant time, so the answer never depends on how many leading characters of a guess were right.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.db import utcnow
from app.models import ApiKey

MAX_KEY_LENGTH = 128  # ours are 47 characters; a bootstrap key may be longer
KEY_PREFIX = "dsk_"  # "darts-service key": tells a leaked key apart from other secrets in a scan
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")
# last_used_at is written at most this often per key: not one write per request.
LAST_USED_RESOLUTION = timedelta(seconds=60)


class KeyStoreError(ValueError):
    """A key operation that cannot be done (a bad or taken name, an unknown key); the message says why."""


@dataclass(frozen=True)
class Owner:
    """Who a request acts for: its key's name (the owner of what it creates) and whether it is an admin."""

    name: str
    admin: bool = False


def hash_key(key: str) -> str:
    """The hex SHA-256 of a key: what the database stores."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def check_name(name: str) -> str:
    if not NAME_PATTERN.fullmatch(name):
        raise KeyStoreError(
            f"invalid key name {name!r}: 1 to 64 characters, letters, digits and . _ @ -, "
            "starting with a letter or digit"
        )
    return name


def create_key(session: Session, name: str, *, admin: bool = False) -> tuple[ApiKey, str]:
    """Store a new key named `name` (unique); returns its row and the key itself (not stored anywhere)."""
    check_name(name)
    if session.scalar(select(ApiKey.id).where(ApiKey.name == name)) is not None:
        raise KeyStoreError(f"a key named {name!r} exists already (names are unique, even once revoked)")
    key = new_key()
    row = ApiKey(name=name, key_hash=hash_key(key), admin=admin, created_at=utcnow())
    session.add(row)
    try:
        session.commit()
    except IntegrityError as exc:  # the same name created at the same moment elsewhere
        session.rollback()
        raise KeyStoreError(f"a key named {name!r} exists already") from exc
    return row, key


#: The name of the admin key `darts-service migrate` stores from BOOTSTRAP_ADMIN_KEY.
BOOTSTRAP_KEY_NAME = "admin"
#: A bootstrap key shorter than this is refused: it is the deployment's first admin credential.
MIN_BOOTSTRAP_KEY_LENGTH = 24


def store_bootstrap_key(session: Session, key: str) -> bool:
    """Store `key` (chosen by the operator, from BOOTSTRAP_ADMIN_KEY) as the admin key named `admin`,
    unless that key is known already or a key of that name exists. Returns whether it was stored.

    Only its hash is kept, as for every key; KeyStoreError for a key too short to be a secret.
    """
    if (
        not key.startswith(KEY_PREFIX)
        or not MIN_BOOTSTRAP_KEY_LENGTH <= len(key) <= MAX_KEY_LENGTH
        or not key.isprintable()
        or key.strip() != key
    ):
        raise KeyStoreError(
            f"BOOTSTRAP_ADMIN_KEY must start with {KEY_PREFIX!r} and have {MIN_BOOTSTRAP_KEY_LENGTH} to 128 "
            "printable characters without spaces around them"
        )
    if is_known(session, key):
        return False
    if session.scalar(select(ApiKey.id).where(ApiKey.name == BOOTSTRAP_KEY_NAME)) is not None:
        return False
    session.add(ApiKey(name=BOOTSTRAP_KEY_NAME, key_hash=hash_key(key), admin=True, created_at=utcnow()))
    session.commit()
    return True


def create_unique_key(session: Session, base: str, *, admin: bool = False) -> tuple[ApiKey, str]:
    """A key named `base`, or `base-2`, `base-3`, ... when that name is taken."""
    taken = set(session.scalars(select(ApiKey.name).where(ApiKey.name.startswith(base))))
    name, number = base, 1
    while name in taken:
        number += 1
        name = f"{base}-{number}"
    return create_key(session, name, admin=admin)


def list_keys(session: Session) -> list[ApiKey]:
    return list(session.scalars(select(ApiKey).order_by(ApiKey.created_at, ApiKey.id)))


def revoke_key(session: Session, name: str) -> ApiKey:
    """Revoke the key named `name` (idempotent: a revoked key keeps its first revocation time)."""
    row = session.scalar(select(ApiKey).where(ApiKey.name == name))
    if row is None:
        raise KeyStoreError(f"no key named {name!r}")
    if row.revoked_at is None:
        row.revoked_at = utcnow()
        session.commit()
    return row


def is_known(session: Session, key: str) -> bool:
    """Whether `key` is (or was, before its revocation) a key of this database."""
    return session.scalar(select(ApiKey.id).where(ApiKey.key_hash == hash_key(key))) is not None


def well_formed(key: str) -> bool:
    """Whether `key` has the shape of a key this service makes (the only ones worth looking up)."""
    return key.startswith(KEY_PREFIX) and len(key) <= MAX_KEY_LENGTH


@dataclass(frozen=True)
class KeyUse:
    """A valid key's owner, and the row id of the key when its `last_used_at` is due to be written."""

    owner: Owner
    stale_use_of: int | None


def find_key(session: Session, key: str, *, now: datetime | None = None) -> KeyUse | None:
    """The owner of a valid, unrevoked `key` (None for anything else), without writing anything."""
    if not well_formed(key):
        return None
    digest = hash_key(key)
    row = session.scalar(select(ApiKey).where(ApiKey.key_hash == digest))
    if row is None or not hmac.compare_digest(row.key_hash, digest) or row.revoked_at is not None:
        return None
    now = now or utcnow()
    stale = row.last_used_at is None or now - row.last_used_at >= LAST_USED_RESOLUTION
    return KeyUse(Owner(name=row.name, admin=row.admin), row.id if stale else None)


def record_use(session: Session, key_id: int, *, now: datetime | None = None) -> None:
    """Write when the key `key_id` was last used."""
    session.execute(update(ApiKey).where(ApiKey.id == key_id).values(last_used_at=now or utcnow()))
    session.commit()


def authenticate(session: Session, key: str, *, now: datetime | None = None) -> Owner | None:
    """The owner of a valid, unrevoked `key`; None for anything else. Records when the key was last used."""
    use = find_key(session, key, now=now)
    if use is None:
        return None
    if use.stale_use_of is not None:
        record_use(session, use.stale_use_of, now=now)
    return use.owner
