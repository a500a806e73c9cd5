"""JWT verification and issuing with pyjwt, the way RFC 8725 (JWT best current practice) asks.

* Algorithms are pinned to ``APIGUARD_JWT_ALGORITHMS``; ``none`` is refused at start-up and the
  HMAC and public-key families are never mixed, so a public key can never serve as an HMAC
  secret (algorithm confusion).
* Keys are parsed once at start-up. With ``APIGUARD_JWT_KEYS`` (or a provider's JWKS) a
  token's ``kid`` only selects among the known keys; ``jku``, ``x5u``, ``jwk`` and ``x5c``
  are never read.
* Verified tokens are kept in a bounded cache keyed by the exact token string. A hit skips
  the signature check but re-checks ``exp``, ``nbf``, ``iat`` and the maximum age; revocation
  is checked by the pipeline for every request, cached or not.

The layer is four modules: :mod:`.keys` parses and checks the configured keys once, at
start-up; :mod:`.remote` fetches and keeps an identity provider's keys (one ``KeySource``
per issuer); :mod:`.issuers` holds the trusted issuers, each with its keys, audience,
algorithms and claim names; :mod:`.tokens` holds :class:`JwtLayer`, which picks the issuer,
verifies and issues tokens.
"""

from __future__ import annotations

from .tokens import JwtLayer

__all__ = ["JwtLayer"]
