"""The HTTP API's keys in the database: made, found by the key a request carries, listed and revoked. A key is
`ask_` and 256 random bits; only its SHA-256 is stored (a key that long needs no slow hash). Plain functions on a
caller-owned Session, no commits."""

from __future__ import annotations

import hashlib
import secrets
import uuid
from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from agent_service.models import ApiKey

KEY_PREFIX = "ask_"


def key_hash(key: str) -> str:
    """The stored form of `key`."""
    return hashlib.sha256(key.encode()).hexdigest()


def create_key(session: Session, *, tenant: str, name: str | None = None) -> tuple[ApiKey, str]:
    """A new key of `tenant`: its row and the key itself, which is never stored or shown again."""
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    row = ApiKey(tenant=tenant, key_hash=key_hash(key), name=name)
    session.add(row)
    session.flush()
    return row, key


def find_key(session: Session, key: str) -> ApiKey | None:
    """The row of an unrevoked `key`; None for an unknown or revoked one."""
    return session.scalar(select(ApiKey).where(ApiKey.key_hash == key_hash(key), ApiKey.revoked_at.is_(None)))


def unrevoked_key(session: Session, key_id: uuid.UUID) -> ApiKey | None:
    """The row of key `key_id` unless it is unknown or revoked."""
    return session.scalar(select(ApiKey).where(ApiKey.id == key_id, ApiKey.revoked_at.is_(None)))


def revoke_key(session: Session, key_id: uuid.UUID, *, now: datetime) -> bool:
    """Revoke a key by its id; False when there is no such key that is not revoked yet."""
    unrevoked = (ApiKey.id == key_id, ApiKey.revoked_at.is_(None))
    revoked = session.scalars(update(ApiKey).where(*unrevoked).values(revoked_at=now).returning(ApiKey.id))
    return revoked.first() is not None


def list_keys(session: Session, *, tenant: str | None = None) -> list[ApiKey]:
    """Every key (of `tenant`), newest first; the keys themselves are not known."""
    query = select(ApiKey).order_by(ApiKey.created_at.desc())
    if tenant is not None:
        query = query.where(ApiKey.tenant == tenant)
    return list(session.scalars(query))
