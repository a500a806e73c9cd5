"""The API key and the store's operations: created once and shown once, stored only as a
hash, looked up by id.

A key reads ``<prefix>_<key_id>_<secret>``: ``key_id`` is 16 hex characters (the lookup key,
safe to log), ``secret`` 64 hex characters (256 bits from the OS random source). Only the
SHA-256 of the secret is stored; a fast hash is enough because the secret is random, not a
password. Verification always hashes the presented secret and compares it, in constant time,
with a stored digest, or with a dummy one when the key id is unknown, so an unknown id and a
wrong secret cost the same and get the same answer.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
import unicodedata
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from ..identity import Identity

_DUMMY_DIGEST = hashlib.sha256(b"flask-apiguard: no such key").hexdigest()
_KEY_ID_BYTES = 8
_SECRET_BYTES = 32
_MAX_PRESENTED = 200


@dataclass(frozen=True, slots=True)
class ApiKey:
    """What is known about a key; never its secret nor the secret's hash."""

    key_id: str
    name: str
    scopes: frozenset[str]
    roles: frozenset[str]
    owner: str | None
    created_at: datetime
    expires_at: datetime | None
    revoked: bool

    @property
    def is_expired(self) -> bool:
        return self.expires_at is not None and self.expires_at <= datetime.now(UTC)

    @property
    def is_active(self) -> bool:
        return not self.revoked and not self.is_expired

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready view (for APIs listing a caller's keys)."""
        return {
            "key_id": self.key_id,
            "name": self.name,
            "scopes": sorted(self.scopes),
            "roles": sorted(self.roles),
            "owner": self.owner,
            "created_at": self.created_at.isoformat(),
            "expires_at": self.expires_at.isoformat() if self.expires_at else None,
            "revoked": self.revoked,
        }


def identity_of(key: ApiKey) -> Identity:
    return Identity(
        subject=key.owner or f"apikey:{key.key_id}",
        roles=key.roles,
        scopes=key.scopes,
        method="api_key",
        key_id=key.key_id,
    )


def _timestamp(value: float | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value, UTC)


def _plain(text: str) -> bool:
    """No control, format (bidi) or separator characters: safe to print in a terminal."""
    return not any(unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp") for ch in text)


def _names(values: Iterable[str], what: str) -> frozenset[str]:
    if isinstance(values, str):
        values = [values]
    items = frozenset(values)
    for item in items:
        if not isinstance(item, str) or not item or len(item) > 200 or not _plain(item):
            raise ValueError(
                f"api_keys.create: {what} must be non-empty strings of at most 200 printable "
                "characters."
            )
    return items


class ApiKeyStore:
    """The operations; subclasses only persist records (``key``, ``digest``)."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self._pattern = re.compile(
            rf"{re.escape(prefix)}_([0-9a-f]{{{_KEY_ID_BYTES * 2}}})_([0-9a-f]{{{_SECRET_BYTES * 2}}})"
        )

    # -- public API ---------------------------------------------------------------------------
    def create(
        self,
        name: str,
        *,
        scopes: Iterable[str] = (),
        roles: Iterable[str] = (),
        owner: str | None = None,
        expires_in: int | float | timedelta | None = None,
    ) -> tuple[str, ApiKey]:
        """Create a key; return ``(plaintext, ApiKey)``. The plaintext is never stored: show it once."""
        if not isinstance(name, str) or not name.strip() or len(name) > 200 or not _plain(name):
            raise ValueError(
                "api_keys.create: name must be a non-empty string of at most 200 printable characters."
            )
        if owner is not None and (not isinstance(owner, str) or not owner or len(owner) > 200
                                  or not _plain(owner)):
            raise ValueError("api_keys.create: owner must be a printable, non-empty string or None.")
        if isinstance(expires_in, timedelta):
            expires_in = expires_in.total_seconds()
        if expires_in is not None and (isinstance(expires_in, bool) or expires_in <= 0):
            raise ValueError("api_keys.create: expires_in must be a positive number of seconds.")
        now = time.time()
        key = ApiKey(
            key_id=secrets.token_hex(_KEY_ID_BYTES),
            name=name,
            scopes=_names(scopes, "scopes"),
            roles=_names(roles, "roles"),
            owner=owner,
            created_at=datetime.fromtimestamp(now, UTC),
            expires_at=_timestamp(now + expires_in) if expires_in is not None else None,
            revoked=False,
        )
        secret = secrets.token_hex(_SECRET_BYTES)
        self._insert(key, hashlib.sha256(secret.encode()).hexdigest())
        return f"{self.prefix}_{key.key_id}_{secret}", key

    def verify(self, plaintext: str) -> ApiKey | None:
        """The key if ``plaintext`` is a valid, unexpired, unrevoked key; otherwise None."""
        match = self._pattern.fullmatch(plaintext) if len(plaintext) <= _MAX_PRESENTED else None
        key_id, secret = match.groups() if match else ("", plaintext[:_MAX_PRESENTED])
        digest = hashlib.sha256(secret.encode("utf-8", "replace")).hexdigest()
        # The same work whether the key id exists or not: one lookup of a digest, one
        # constant-time comparison; the key's record is read only once the secret matched.
        found = self._lookup(key_id) if match else None
        stored = found[0] if found is not None else None
        if not hmac.compare_digest(digest, stored or _DUMMY_DIGEST) or found is None:
            return None
        key = found[1]()
        return key if key is not None and key.is_active else None

    def revoke(self, key_id: str) -> bool:
        """Revoke a key; True if it existed and was not revoked yet."""
        record = self._fetch(key_id) if _is_key_id(key_id) else None
        if record is None or record[0].revoked:
            return False
        self._set_revoked(key_id)
        return True

    def get(self, key_id: str) -> ApiKey | None:
        record = self._fetch(key_id) if _is_key_id(key_id) else None
        return record[0] if record is not None else None

    def list(self, owner: str | None = None) -> list[ApiKey]:
        """Every key (or only ``owner``'s), oldest first, revoked and expired ones included."""
        keys = [k for k in self._all(owner) if owner is None or k.owner == owner]
        return sorted(keys, key=lambda k: (k.created_at, k.key_id))

    # -- persistence --------------------------------------------------------------------------
    def _insert(self, key: ApiKey, digest: str) -> None:
        raise NotImplementedError

    def _fetch(self, key_id: str) -> tuple[ApiKey, str] | None:
        raise NotImplementedError

    def _digest(self, key_id: str) -> str | None:
        record = self._fetch(key_id)
        return record[1] if record is not None else None

    def _lookup(self, key_id: str) -> tuple[str, Callable[[], ApiKey | None]] | None:
        """The stored digest of ``key_id`` and how to read its record, called by ``verify``
        only once the secret matched. Here the digest and the record are two reads; a store
        that gets both in one (the SQL store) overrides this."""
        stored = self._digest(key_id)
        if stored is None:
            return None

        def load() -> ApiKey | None:
            record = self._fetch(key_id)
            return record[0] if record is not None else None

        return stored, load

    def _set_revoked(self, key_id: str) -> None:
        raise NotImplementedError

    def _all(self, owner: str | None = None) -> Iterable[ApiKey]:
        """Every key, or (where the store can select) only ``owner``'s."""
        raise NotImplementedError


_KEY_ID = re.compile(f"[0-9a-f]{{{_KEY_ID_BYTES * 2}}}")


def _is_key_id(key_id: object) -> bool:
    """Whether ``key_id`` has the form of a key id: a lookup with anything else could match a
    real id through a database's collation (MySQL compares ``ABC `` equal to ``abc``)."""
    return isinstance(key_id, str) and _KEY_ID.fullmatch(key_id) is not None
