"""The JWT layer: :class:`JwtLayer` verifies bearer tokens against the keys of
:mod:`.keys` and issues new ones."""

from __future__ import annotations

import re
import secrets
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import jwt

from ...config import GuardConfig
from ...errors import InvalidToken, TokenExpired
from ...identity import Identity
from .issuers import Issuer, build_issuers, claim_value
from .keys import Key, load_keys, public_jwk, thumbprint
from .remote import TIMEOUT, KeySource

#: Seconds start-up waits for the identity providers' keys (a slow one is fetched later).
START_WAIT = 2 * TIMEOUT + 1

_B64TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
_RESERVED = frozenset({"sub", "exp", "iat", "jti", "iss", "aud", "nbf", "scope"})


@dataclass(frozen=True, slots=True)
class _Verified:
    identity: Identity
    exp: float | None
    nbf: float | None
    iat: float | None
    jti: str | None


class JwtLayer:
    """Verifies bearer tokens and issues new ones for one app."""

    def __init__(self, config: GuardConfig) -> None:
        self.algorithms = config.jwt_algorithms
        self.max_length = config.jwt_max_length
        self.max_age = config.jwt_max_age
        self.issuer = config.jwt_issuer
        self.audience = list(config.jwt_audience) if config.jwt_audience else None
        self.leeway = config.jwt_leeway
        self.required = list(config.jwt_required_claims)
        self.expires_in = config.jwt_expires_in
        self.roles_claim = config.jwt_roles_claim
        self.cache_size = config.jwt_cache_size
        self._cache: dict[str, _Verified] = {}
        self._lock = threading.Lock()
        loaded = load_keys(config)
        self.keys, self.default_key, self.signing_kid = loaded
        #: The trusted issuers by ``iss`` (one under ``None`` without APIGUARD_JWT_ISSUERS).
        self.issuers: dict[str | None, Issuer] = build_issuers(config, loaded, self.forget_verified)
        self.single = self.issuers.get(None)
        #: The identity providers' key sets.
        self.sources: tuple[KeySource, ...] = tuple(
            issuer.source for issuer in self.issuers.values() if issuer.source is not None)
        self.decode_options: dict[str, Any] = {
            "require": self.required,
            "verify_signature": True,
            "verify_exp": True,
            "verify_nbf": True,
            "verify_iat": True,
            "verify_aud": True,
            "verify_iss": True,
            "verify_sub": True,
            "verify_jti": True,
            "enforce_minimum_key_length": True,
        }
        self._no_iss_options = {**self.decode_options, "verify_iss": False}

    def fetch_keys(self) -> None:
        """Fetch every identity provider's keys once (at start-up), in parallel; a provider
        that cannot be reached is retried by requests, after the cooldown."""
        threads = [threading.Thread(target=source.refresh, daemon=True) for source in self.sources]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + START_WAIT
        for thread in threads:  # a provider that stalls delays start-up by START_WAIT at most
            thread.join(max(0.0, deadline - time.monotonic()))

    def forget_verified(self) -> None:
        """Empty the verified-token cache (a provider's key set changed: a token of a removed
        key must be checked again)."""
        with self._lock:
            self._cache.clear()

    def jwks(self) -> dict[str, Any]:
        """The public JWKS of the app's own asymmetric keys (never an HMAC secret)."""
        keys = []
        for kid, key in self.keys.items():
            jwk = public_jwk(kid, key, self.algorithms)
            if jwk is not None:
                keys.append(jwk)
        if self.default_key is not None:
            jwk = public_jwk("", self.default_key, self.algorithms)
            if jwk is not None:
                jwk["kid"] = thumbprint(jwk)
                keys.append(jwk)
        return {"keys": keys}

    # -- verification -------------------------------------------------------------------------
    def verify_header(self, header: str) -> tuple[Identity, str | None]:
        """Verify the token of an ``Authorization: Bearer <token>`` value (the caller matched
        the scheme); see :meth:`verify`."""
        parts = header.split()
        if len(parts) != 2:
            raise InvalidToken("The Authorization header must be 'Bearer <token>'.")
        token = parts[1]
        cached = self._cache.get(token)  # only tokens that passed every check get here
        if cached is not None:
            for source in self.sources:  # a key set past its TTL is refreshed all the same
                source.tick()
            self._check_times(cached, time.time())
            return cached.identity, cached.jti
        if not _B64TOKEN.fullmatch(token):
            raise InvalidToken("The Authorization header must be 'Bearer <token>'.")
        return self.verify(token)

    def verify(self, token: str) -> tuple[Identity, str | None]:
        """The identity and ``jti`` of a valid token; raises ``InvalidToken``/``TokenExpired``."""
        if len(token) > self.max_length:
            raise InvalidToken("The token is too long.")
        cached = self._cache.get(token)
        if cached is not None:
            for source in self.sources:  # a key set past its TTL is refreshed all the same
                source.tick()
            self._check_times(cached, time.time())
            return cached.identity, cached.jti
        claims, issuer = self._decode(token)
        verified = self._identity(claims, issuer)
        self._check_times(verified, time.time())
        if self.cache_size:
            with self._lock:
                while len(self._cache) >= self.cache_size:
                    self._cache.pop(next(iter(self._cache)))
                self._cache[token] = verified
        return verified.identity, verified.jti

    def _check_times(self, verified: _Verified, now: float) -> None:
        leeway = self.leeway
        if verified.exp is not None and verified.exp <= now - leeway:
            raise TokenExpired()
        if verified.nbf is not None and verified.nbf > now + leeway:
            raise InvalidToken("The token is not valid yet.")
        if verified.iat is not None and verified.iat > now + leeway:
            raise InvalidToken("The token was issued in the future.")
        if self.max_age is not None and verified.iat is not None and \
                now - verified.iat > self.max_age + leeway:
            raise TokenExpired("The token is older than the maximum age.")

    def _select_key(self, header: Mapping[str, Any]) -> Key:
        if self.keys:
            kid = header.get("kid")
            if not isinstance(kid, str) or kid not in self.keys:
                raise InvalidToken("The token does not name a known signing key.")
            return self.keys[kid]
        if self.default_key is None:
            raise InvalidToken("Bearer tokens are not accepted: no JWT key is configured.")
        return self.default_key

    def _issuer_of(self, token: str) -> Issuer:
        """The issuer whose rules apply: the only one, or the one the token's ``iss`` names
        (read unverified, only to pick; nothing else of the token is trusted yet)."""
        if self.single is not None:
            return self.single
        try:
            unverified = jwt.decode(token, options={"verify_signature": False})
        except (jwt.PyJWTError, ValueError, TypeError):
            raise InvalidToken("The token is malformed.") from None
        issuer = self.issuers.get(unverified.get("iss")) \
            if isinstance(unverified.get("iss"), str) else None
        if issuer is None:
            raise InvalidToken("The token was not issued by a trusted issuer.")
        return issuer

    def _decode(self, token: str) -> tuple[dict[str, Any], Issuer]:
        try:
            header = jwt.get_unverified_header(token)
        except (jwt.PyJWTError, ValueError, TypeError):
            raise InvalidToken("The token is malformed.") from None
        issuer = self._issuer_of(token)
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in issuer.algorithms:
            raise InvalidToken("The token's algorithm is not accepted.")
        if "crit" in header:
            raise InvalidToken("The token uses a critical header extension that is not supported.")
        key = issuer.key_for(header)
        if alg not in key.algorithms:
            raise InvalidToken("The token's algorithm does not match its key.")
        options = self.decode_options if issuer.name is not None else self._no_iss_options
        try:
            claims = jwt.decode(
                token,
                key.verify,
                algorithms=[alg],
                audience=issuer.audience,
                issuer=issuer.name,
                leeway=self.leeway,
                options=options,  # type: ignore[arg-type]
            )
        except jwt.ExpiredSignatureError:
            raise TokenExpired() from None
        except jwt.ImmatureSignatureError:
            raise InvalidToken("The token is not valid yet.") from None
        except jwt.InvalidAudienceError:
            raise InvalidToken("The token is not meant for this service (audience).") from None
        except jwt.InvalidIssuerError:
            raise InvalidToken("The token was not issued by a trusted issuer.") from None
        except jwt.MissingRequiredClaimError as exc:
            raise InvalidToken(f"The token lacks the required '{exc.claim}' claim.") from None
        except jwt.InvalidSignatureError:
            raise InvalidToken("The token's signature is invalid.") from None
        except (jwt.PyJWTError, ValueError, TypeError, OverflowError):
            raise InvalidToken("The token is malformed.") from None
        if not isinstance(claims, dict):
            raise InvalidToken("The token is malformed.")
        if issuer.audience is None and "aud" in claims:  # even "" or [] (pyjwt lets those pass)
            raise InvalidToken("The token names an audience, and this service expects none.")
        return claims, issuer

    def _identity(self, claims: dict[str, Any], issuer: Issuer) -> _Verified:
        roles = _claim_names(claim_value(claims, issuer.roles_claim), "roles", split=False)
        scopes = _claim_names(claim_value(claims, issuer.scopes_claim), "scope", split=True)
        times: list[float | None] = []
        for name in ("exp", "nbf", "iat"):
            value = claims.get(name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
                raise InvalidToken(f"The token's '{name}' claim must be a number.")
            try:
                times.append(float(value) if value is not None else None)
            except OverflowError:
                raise InvalidToken(f"The token's '{name}' claim is out of range.") from None
        subject = claims.get("sub")
        jti = claims.get("jti")
        for name, value in (("sub", subject), ("jti", jti)):
            # JSON may carry lone surrogates ("\ud800"), which no storage key can hold
            if isinstance(value, str) and not value.isascii():
                try:
                    value.encode("utf-8")
                except UnicodeEncodeError:
                    raise InvalidToken(f"The token's '{name}' claim is not valid text.") from None
        identity = Identity(
            subject=subject if isinstance(subject, str) else None,
            roles=roles,
            scopes=scopes,
            claims=MappingProxyType(claims),
            method="jwt",
        )
        return _Verified(identity, times[0], times[1], times[2], jti if isinstance(jti, str) else None)

    # -- issuing ------------------------------------------------------------------------------
    def issue(self, subject: str, *, roles: Iterable[str] = (), scopes: Iterable[str] = (),
              expires_in: int | None = None, **claims: Any) -> str:
        if not isinstance(subject, str) or not subject:
            raise TypeError("issue_token: subject must be a non-empty string.")
        reserved = _RESERVED & claims.keys() | ({self.roles_claim} & claims.keys())
        if reserved:
            raise TypeError(f"issue_token: {sorted(reserved)} are set by ApiGuard; use the arguments.")
        kid = self.signing_kid
        key = self.keys[kid] if kid is not None else self.default_key
        if key is None or key.sign is None:
            raise RuntimeError(
                "issue_token needs a signing key: set APIGUARD_JWT_SECRET (HS*), "
                "APIGUARD_JWT_PRIVATE_KEY, or a private key in APIGUARD_JWT_KEYS."
            )
        algorithm = next(a for a in self.algorithms if a in key.algorithms)
        lifetime = self.expires_in if expires_in is None else int(expires_in)
        if lifetime <= 0:
            raise ValueError("issue_token: expires_in must be positive.")
        now = int(time.time())
        payload: dict[str, Any] = {"sub": subject, "iat": now, "exp": now + lifetime,
                                   "jti": secrets.token_urlsafe(18)}
        if self.issuer is not None:
            payload["iss"] = self.issuer
        if self.audience:
            payload["aud"] = self.audience[0] if len(self.audience) == 1 else self.audience
        role_list = _as_list(roles, "roles")
        if role_list:
            payload[self.roles_claim] = role_list
        scope_list = _as_list(scopes, "scopes")
        if scope_list:
            if any(" " in s for s in scope_list):
                raise ValueError("issue_token: scope names cannot contain spaces.")
            payload["scope"] = " ".join(scope_list)
        payload.update(claims)
        headers = {"kid": kid} if kid is not None else None
        return jwt.encode(payload, key.sign, algorithm=algorithm, headers=headers)

    def decode_for_revocation(self, token: str) -> tuple[str, float | None, float | None]:
        """The ``jti``, ``exp`` and ``iat`` of a token signed with our keys (expired ones too)."""
        try:
            header = jwt.get_unverified_header(token)
            key = self._select_key(header)
            alg = header.get("alg")
            if alg not in key.algorithms or alg not in self.algorithms:
                raise InvalidToken()
            claims = jwt.decode(token, key.verify, algorithms=[alg],
                                options={"verify_exp": False, "verify_aud": False,
                                         "verify_iss": False, "verify_nbf": False,
                                         "verify_iat": False})
        except (jwt.PyJWTError, InvalidToken, ValueError, TypeError):
            raise ValueError("revoke_token: not a token signed by this application's keys.") from None
        jti = claims.get("jti")
        if not isinstance(jti, str) or not jti:
            raise ValueError("revoke_token: the token has no 'jti' claim, so it cannot be revoked.")
        return jti, _number(claims.get("exp")), _number(claims.get("iat"))


def _number(value: Any) -> float | None:
    """A numeric claim as a float, or None (absent, not a number, or out of range)."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        return None
    try:
        return float(value)
    except OverflowError:  # such a token is refused by verify() anyway
        return None


def _claim_names(value: Any, claim: str, *, split: bool) -> frozenset[str]:
    """The names in a roles or ``scope`` claim: a string (split on spaces when ``split``) or
    a list of strings."""
    if value is None:
        return frozenset()
    if isinstance(value, str):
        return frozenset(value.split()) if split else frozenset({value})
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return frozenset(value)
    raise InvalidToken(f"The token's '{claim}' claim must be a string or a list of strings.")


def _as_list(values: Iterable[str], what: str) -> list[str]:
    if isinstance(values, str):
        values = [values]
    items = list(values)
    if not all(isinstance(v, str) and v for v in items):
        raise TypeError(f"issue_token: {what} must be non-empty strings.")
    return items
