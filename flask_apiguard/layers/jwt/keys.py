"""The JWT layer's keys, parsed and checked once at start-up from ``APIGUARD_JWT_KEYS``,
``APIGUARD_JWT_SECRET``, ``APIGUARD_JWT_PUBLIC_KEY`` and ``APIGUARD_JWT_PRIVATE_KEY``.

Each key is tied to the configured algorithms it can serve, so that a token's ``alg`` can
never make a key act as another type (an RSA public key as an HMAC secret). HMAC secrets
must be as long as their hash, RSA keys at least 2048 bits.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import jwt

from ...config import GuardConfig
from ...errors import ApiGuardConfigError
from ...readers import HMAC_ALGORITHMS

_CURVE_ALGORITHMS = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512",
                     "secp256k1": "ES256K"}
_HMAC_MIN_BYTES = {"HS256": 32, "HS384": 48, "HS512": 64}


@dataclass(frozen=True, slots=True)
class Key:
    """One parsed key: what verifies a signature, what signs (``None`` for a public key),
    and the configured algorithms it serves."""

    verify: Any
    sign: Any | None
    algorithms: frozenset[str]


class LoadedKeys(NamedTuple):
    """What :func:`load_keys` found in the config."""

    #: ``APIGUARD_JWT_KEYS`` by ``kid``; a token's ``kid`` selects among them.
    by_kid: dict[str, Key]
    #: The single key of ``APIGUARD_JWT_SECRET`` or ``APIGUARD_JWT_PUBLIC_KEY``/``_PRIVATE_KEY``.
    default: Key | None
    #: The ``kid`` new tokens are signed with, when ``APIGUARD_JWT_KEYS`` is set.
    signing_kid: str | None


def load_keys(config: GuardConfig) -> LoadedKeys:
    """Parse the keys ``config`` names; raises :exc:`ApiGuardConfigError` naming the key
    and the fix for a key that is missing, malformed, too weak or of the wrong type."""
    allowed = config.jwt_algorithms
    if config.jwt_keys is not None:
        by_kid: dict[str, Key] = {}
        for kid, material in _key_set_entries(config.jwt_keys).items():
            if not isinstance(kid, str) or not kid:
                raise ApiGuardConfigError("APIGUARD_JWT_KEYS: every kid must be a non-empty string.")
            by_kid[kid] = _load_key(f"APIGUARD_JWT_KEYS[{kid!r}]", material, allowed)
        if not by_kid:
            raise ApiGuardConfigError("APIGUARD_JWT_KEYS: no signing key was found.")
        kid = config.jwt_signing_key_id or next(iter(by_kid))
        if kid not in by_kid:
            raise ApiGuardConfigError(
                f"APIGUARD_JWT_SIGNING_KEY_ID: {kid!r} is not a kid of APIGUARD_JWT_KEYS "
                f"({sorted(by_kid)})."
            )
        for key_name in ("JWT_SECRET", "JWT_PUBLIC_KEY", "JWT_PRIVATE_KEY"):
            if getattr(config, key_name.lower()) is not None:
                raise ApiGuardConfigError(
                    f"APIGUARD_{key_name}: set either APIGUARD_JWT_KEYS or a single key, not both."
                )
        return LoadedKeys(by_kid, None, kid)
    if config.uses_hmac:
        for key_name in ("JWT_PUBLIC_KEY", "JWT_PRIVATE_KEY"):
            if getattr(config, key_name.lower()) is not None:
                raise ApiGuardConfigError(
                    f"APIGUARD_{key_name}: PEM keys need public-key algorithms, but "
                    f"APIGUARD_JWT_ALGORITHMS is {list(allowed)}. Use RS256, ES256 or EdDSA."
                )
        secret = None
        if config.jwt_secret is not None:
            secret = _load_key("APIGUARD_JWT_SECRET", config.jwt_secret, allowed)
        return LoadedKeys({}, secret, None)
    if config.jwt_secret is not None:
        raise ApiGuardConfigError(
            f"APIGUARD_JWT_SECRET: an HMAC secret needs HS* algorithms, but "
            f"APIGUARD_JWT_ALGORITHMS is {list(allowed)}. Set APIGUARD_JWT_PUBLIC_KEY instead."
        )
    public = private = None
    if config.jwt_public_key is not None:
        public = _load_key("APIGUARD_JWT_PUBLIC_KEY", config.jwt_public_key, allowed)
    if config.jwt_private_key is not None:
        private = _load_key("APIGUARD_JWT_PRIVATE_KEY", config.jwt_private_key, allowed)
        if private.sign is None:
            raise ApiGuardConfigError(
                "APIGUARD_JWT_PRIVATE_KEY: this is a public key, not a private one."
            )
    if public is not None and private is not None:
        pair = Key(public.verify, private.sign, public.algorithms & private.algorithms)
        if not pair.algorithms:
            raise ApiGuardConfigError(
                "APIGUARD_JWT_PRIVATE_KEY: it does not match APIGUARD_JWT_PUBLIC_KEY's type."
            )
        return LoadedKeys({}, pair, None)
    return LoadedKeys({}, public or private, None)


def _key_set_entries(jwt_keys: Mapping[str, Any]) -> dict[str, Any]:
    """``APIGUARD_JWT_KEYS`` as ``{kid: key material}``: a JWKS (``{"keys": [...]}``, its
    signing keys only, each with a ``kid``) or already a mapping of kids to keys."""
    if not isinstance(jwt_keys.get("keys"), list):
        return dict(jwt_keys)
    entries: dict[str, Any] = {}
    for position, jwk in enumerate(jwt_keys["keys"]):
        kid = jwk.get("kid") if isinstance(jwk, Mapping) else None
        if not isinstance(kid, str) or not kid:
            raise ApiGuardConfigError(
                f"APIGUARD_JWT_KEYS: JWKS key #{position} has no 'kid'; every key "
                "needs one so that tokens can name it."
            )
        if jwk.get("use", "sig") == "sig":
            entries[kid] = jwk
    return entries


def _key_algorithms(key: Any, allowed: Iterable[str]) -> frozenset[str]:
    """The configured algorithms this key object can verify."""
    from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

    allowed = frozenset(allowed)
    if isinstance(key, bytes):
        return allowed & HMAC_ALGORITHMS
    if isinstance(key, rsa.RSAPrivateKey | rsa.RSAPublicKey):
        return frozenset(a for a in allowed if a[:2] in ("RS", "PS"))
    if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
        alg = _CURVE_ALGORITHMS.get(key.curve.name)
        return frozenset({alg}) & allowed if alg else frozenset()
    if isinstance(key, ed25519.Ed25519PrivateKey | ed25519.Ed25519PublicKey):
        return allowed & {"EdDSA", "Ed25519"}
    if isinstance(key, ed448.Ed448PrivateKey | ed448.Ed448PublicKey):
        return allowed & {"EdDSA"}
    return frozenset()


def _is_private_key(key: Any) -> bool:
    """Whether ``key`` is a private key object (a JWK or PEM can hold either)."""
    from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

    return isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
                      | ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey)


def _load_key(where: str, material: Any, allowed: tuple[str, ...]) -> Key:
    """Parse one key (an HMAC secret, a PEM public or private key, or a JWK dict)."""
    hmac = any(a in HMAC_ALGORITHMS for a in allowed)
    if isinstance(material, Mapping):
        if material.get("use", "sig") != "sig":
            raise ApiGuardConfigError(f"{where}: the JWK is not a signing key (use={material['use']!r}).")
        try:
            jwk = jwt.PyJWK(dict(material))
        except jwt.PyJWTError as exc:
            raise ApiGuardConfigError(f"{where}: not a usable JWK ({exc}).") from None
        key_object = jwk.key
        if isinstance(key_object, bytes):
            return Key(key_object, key_object, _hmac_algorithms(where, key_object, allowed))
        algorithms = _key_algorithms(key_object, allowed)
        if "alg" in material:
            algorithms &= {material["alg"]}
        public_key = getattr(key_object, "public_key", None)
        if callable(public_key) and _is_private_key(key_object):
            return _checked_key(where, public_key(), algorithms, allowed, sign=key_object)
        return _checked_key(where, key_object, algorithms, allowed)
    if isinstance(material, str):
        material = material.encode("utf-8")
    if not isinstance(material, bytes):
        raise ApiGuardConfigError(f"{where}: expected a PEM string, a secret or a JWK dict.")
    if hmac:
        if material.lstrip().startswith(b"-----BEGIN") or material.startswith(b"ssh-"):
            raise ApiGuardConfigError(
                f"{where}: a PEM or SSH key cannot be used as an HMAC secret. Use HS* with a "
                "random secret, or set APIGUARD_JWT_ALGORITHMS to RS256/ES256/EdDSA."
            )
        return Key(material, material, _hmac_algorithms(where, material, allowed))
    from cryptography.hazmat.primitives import serialization

    try:
        private = serialization.load_pem_private_key(material, password=None)
    except (ValueError, TypeError):
        private = None
    if private is not None:
        return _checked_key(where, private.public_key(), _key_algorithms(private, allowed),
                            allowed, sign=private)
    try:
        public = serialization.load_pem_public_key(material)
    except (ValueError, TypeError):
        raise ApiGuardConfigError(
            f"{where}: not a PEM public or private key (an encrypted private key is not supported)."
        ) from None
    return _checked_key(where, public, _key_algorithms(public, allowed), allowed)


def _hmac_algorithms(where: str, secret: bytes, allowed: Iterable[str]) -> frozenset[str]:
    """HS* algorithms need a secret at least as long as their hash (RFC 7518 section 3.2)."""
    algorithms = frozenset(allowed) & HMAC_ALGORITHMS
    needed = max(_HMAC_MIN_BYTES[a] for a in algorithms) if algorithms else 32
    if len(secret) < needed:
        raise ApiGuardConfigError(
            f"{where}: is {len(secret)} bytes; {sorted(algorithms)} need at least {needed} "
            "(RFC 7518 section 3.2). Generate one with: "
            'python -c "import secrets; print(secrets.token_urlsafe(64))"'
        )
    return algorithms


def _checked_key(where: str, key: Any, algorithms: frozenset[str], allowed: tuple[str, ...],
                 sign: Any = None) -> Key:
    """``key`` as a :class:`Key`, once checked to serve one of the configured algorithms
    and, for RSA, to have at least 2048 bits."""
    if not algorithms:
        raise ApiGuardConfigError(
            f"{where}: this {type(key).__name__} cannot verify any of APIGUARD_JWT_ALGORITHMS "
            f"{list(allowed)}. Use a key of the matching type (RSA for RS*/PS*, the matching "
            "curve for ES*, Ed25519 for EdDSA)."
        )
    from cryptography.hazmat.primitives.asymmetric import rsa

    if isinstance(key, rsa.RSAPublicKey) and key.key_size < 2048:
        raise ApiGuardConfigError(f"{where}: RSA keys need at least 2048 bits.")
    return Key(key, sign, algorithms)



def load_jwk(jwk: Mapping[str, Any], algorithms: tuple[str, ...]) -> Key:
    """One key of a fetched JWKS, checked as a configured one is.

    :raises ApiGuardConfigError: when it is unusable (the caller drops it).
    """
    return _load_key("JWKS", jwk, algorithms)


def public_jwk(kid: str, key: Key, algorithms: tuple[str, ...]) -> dict[str, Any] | None:
    """The public JWK of an asymmetric ``key`` (``None`` for an HMAC secret, which is never
    published), with ``kid``, ``use`` and the first of ``algorithms`` it serves as ``alg``."""
    if isinstance(key.verify, bytes):
        return None
    jwk = _to_jwk(key.verify)
    for private in ("d", "p", "q", "dp", "dq", "qi", "key_ops"):
        jwk.pop(private, None)
    alg = next((a for a in algorithms if a in key.algorithms), None)
    jwk.update({"kid": kid, "use": "sig"})
    if alg is not None:
        jwk["alg"] = alg
    return jwk


def _to_jwk(public: Any) -> dict[str, Any]:
    """The JWK dict of a public key object (pyjwt's ``to_jwk`` of its algorithm family)."""
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

    family: Any = RSAAlgorithm if isinstance(public, rsa.RSAPublicKey) else \
        ECAlgorithm if isinstance(public, ec.EllipticCurvePublicKey) else OKPAlgorithm
    jwk: dict[str, Any] = family.to_jwk(public, as_dict=True)
    return jwk


_THUMBPRINT_MEMBERS = {"RSA": ("e", "kty", "n"), "EC": ("crv", "kty", "x", "y"),
                       "OKP": ("crv", "kty", "x")}


def thumbprint(jwk: Mapping[str, Any]) -> str:
    """The RFC 7638 thumbprint of a public JWK (SHA-256, base64url): a ``kid`` for a key that
    was configured without one."""
    members = {name: jwk[name] for name in _THUMBPRINT_MEMBERS[jwk["kty"]]}
    digest = hashlib.sha256(json.dumps(members, separators=(",", ":"), sort_keys=True).encode())
    return base64.urlsafe_b64encode(digest.digest()).rstrip(b"=").decode()
