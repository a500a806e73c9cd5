"""Who may issue tokens: one :class:`Issuer` per trusted issuer, each with its own keys,
audience, algorithms and claim names.

Without ``APIGUARD_JWT_ISSUERS`` there is one issuer, built from the top-level keys: the app's
own keys, and the provider's (``APIGUARD_JWT_JWKS_URL`` or ``APIGUARD_JWT_OIDC_DISCOVERY``)
when set. With it, a token's unverified ``iss`` only picks the issuer; every check after that
uses that issuer's settings alone, so a token signed by one issuer's key but naming another
is refused, and a token naming an unknown issuer is refused without any fetch.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ...config import GuardConfig
from ...errors import ApiGuardConfigError, InvalidToken, ServiceUnavailable
from ...readers import discovery_url
from .keys import Key, LoadedKeys
from .remote import KeySource, KeysUnavailable, SourceSettings


@dataclass(frozen=True, slots=True)
class Issuer:
    """One trusted issuer: where its keys come from and what its tokens must say."""

    #: The ``iss`` its tokens carry (``None``: not checked, single-issuer mode only).
    name: str | None
    audience: list[str] | None
    algorithms: tuple[str, ...]
    roles_claim: str
    scopes_claim: str
    #: Keys configured in the app, by ``kid``.
    local: Mapping[str, Key] = field(default_factory=dict)
    #: The single configured key (tokens without a ``kid``).
    default: Key | None = None
    #: The provider's keys, fetched.
    source: KeySource | None = None

    def key_for(self, header: Mapping[str, Any]) -> Key:
        """The key a token's header names; raises ``InvalidToken``, or ``ServiceUnavailable``
        while the provider's keys were never fetched."""
        if self.local or self.source is not None:
            kid = header.get("kid")
            if isinstance(kid, str) and kid:
                key = self.local.get(kid)
                if key is None and self.source is not None:
                    try:
                        key = self.source.keys_for(kid)
                    except KeysUnavailable:
                        raise ServiceUnavailable(
                            "The identity provider's keys could not be fetched yet; try again "
                            "shortly.") from None
                if key is not None:
                    return key
            elif self.default is not None:
                return self.default
            raise InvalidToken("The token does not name a known signing key.")
        if self.default is None:
            raise InvalidToken("Bearer tokens are not accepted: no JWT key is configured.")
        return self.default


def build_issuers(config: GuardConfig, loaded: LoadedKeys,
                  on_change: Callable[[], None]) -> dict[str | None, Issuer]:
    """The trusted issuers by ``iss``: one under its own name, or under ``None`` when
    ``APIGUARD_JWT_ISSUERS`` is not set (then ``iss`` is checked only when
    ``APIGUARD_JWT_ISSUER`` is set)."""
    local_keys = bool(loaded.by_kid) or loaded.default is not None
    audience = list(config.jwt_audience) if config.jwt_audience else None

    def source(jwks_url: str | None, discovery: str | None, issuer: str | None,
               algorithms: tuple[str, ...]) -> KeySource:
        return KeySource(SourceSettings(jwks_url, discovery, issuer, algorithms,
                                        float(config.jwt_jwks_cache_ttl),
                                        float(config.jwt_jwks_refetch_cooldown)),
                         on_change=on_change)

    if config.jwt_issuers is None:
        remote = None
        if config.jwt_jwks_url is not None or config.jwt_oidc_discovery:
            discovery = discovery_url(config.jwt_issuer) \
                if config.jwt_oidc_discovery and config.jwt_issuer else None
            remote = source(config.jwt_jwks_url, discovery, config.jwt_issuer,
                            config.jwt_algorithms)
        own = Issuer(config.jwt_issuer, audience, config.jwt_algorithms, config.jwt_roles_claim,
                     config.jwt_scopes_claim, loaded.by_kid, loaded.default, remote)
        return {None: own}
    issuers: dict[str | None, Issuer] = {}
    if local_keys:
        if config.jwt_issuer is None:
            raise ApiGuardConfigError(
                "APIGUARD_JWT_ISSUER: with APIGUARD_JWT_ISSUERS and keys of the app's own, set "
                "the app's own issuer, so that its tokens can be told from the providers'."
            )
        issuers[config.jwt_issuer] = Issuer(
            config.jwt_issuer, audience, config.jwt_algorithms, config.jwt_roles_claim,
            config.jwt_scopes_claim, loaded.by_kid, loaded.default)
    for entry in config.jwt_issuers:
        name = entry["issuer"]
        issuers[name] = Issuer(
            name,
            list(entry["audience"]) if entry["audience"] else None,
            entry["algorithms"],
            entry["roles_claim"] or config.jwt_roles_claim,
            entry["scopes_claim"] or config.jwt_scopes_claim,
            source=source(entry["jwks_url"], entry["discovery"], name, entry["algorithms"]),
        )
    return issuers


def claim_value(claims: Mapping[str, Any], name: str) -> Any:
    """The value of claim ``name``: the claim of that exact name when there is one (Auth0's
    ``https://example.com/roles``, Cognito's ``cognito:groups``), else a dotted path into
    nested objects (Keycloak's ``realm_access.roles``, ``resource_access.my-api.roles``). A
    name part may itself contain dots (``resource_access.my.api.roles``): each way of
    cutting the name is tried, shortest first part first."""
    if name in claims:
        return claims[name]
    cut = name.find(".")
    while cut > 0:
        head = claims.get(name[:cut])
        if isinstance(head, Mapping):
            found = claim_value(head, name[cut + 1:])
            if found is not None:
                return found
        cut = name.find(".", cut + 1)
    return None
