"""Keys that follow an identity provider: one :class:`KeySource` per issuer fetches its JWKS
(through its OpenID discovery document, when asked), keeps it for a TTL and refreshes it.

* **The hot path is a dict lookup.** :meth:`KeySource.keys_for` answers from the current set
  without I/O. When the TTL has passed, one background thread refreshes it while every request
  keeps using the current set, so a valid request never waits for the network.
* **Unknown ``kid``.** A token naming a key the set does not have triggers one refetch, at
  most once per cooldown (``APIGUARD_JWT_JWKS_REFETCH_COOLDOWN``), single-flight: one fetch
  per issuer at a time, other callers wait for it briefly or use the current set. A flood of
  made-up ``kid``\\ s therefore costs at most one fetch per cooldown.
* **Failure keeps the last good keys.** A failed fetch changes nothing but ``last_error``;
  while no set was ever fetched, :meth:`keys_for` raises :class:`KeysUnavailable` (the
  pipeline answers 503) and the next attempt comes after the cooldown.
* **Fetching is careful.** ``https://`` only (``http://`` for loopback hosts), connect and
  read timeouts, a size cap, JSON only, no redirect to another host, and only public signing
  keys that fit the issuer's algorithms are kept. No URL is ever taken from a token.
"""

from __future__ import annotations

import json
import re
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from ...errors import ApiGuardConfigError
from ...readers import url_problem
from .keys import Key, load_jwk

#: Seconds allowed to connect, for each read, and (give or take one read) for the whole body
#: of a JWKS or discovery document.
TIMEOUT = 2.0
#: The largest JWKS or discovery document read (bytes); a larger one is refused.
MAX_DOCUMENT = 256 * 1024
#: A provider's ``Cache-Control: max-age`` shortens the TTL, but never below this.
MIN_TTL = 30.0
#: How long a request with an unknown ``kid`` waits for another request's fetch.
WAIT = TIMEOUT + 0.5
_MAX_AGE = re.compile(r"(?:^|,)\s*max-age\s*=\s*(\d+)", re.I)
_JSON_TYPES = re.compile(r"application/(?:[\w.-]+\+)?json", re.I)


def _monotonic() -> float:
    return time.monotonic()  # read through the module, so that a test can move it


class KeysUnavailable(Exception):
    """No key set was ever fetched from this issuer (the provider was never reached)."""


class FetchError(Exception):
    """A JWKS or discovery document could not be fetched or used; the message says why."""


class _SameHostRedirects(urllib.request.HTTPRedirectHandler):
    """Follows a redirect only to the same scheme, host and port."""

    def redirect_request(self, req: urllib.request.Request, fp: Any, code: int, msg: str,
                         headers: Any, newurl: str) -> urllib.request.Request | None:
        old, new = urlsplit(req.full_url), urlsplit(newurl)
        if (old.scheme, old.netloc) != (new.scheme, new.netloc):
            raise FetchError(f"the provider redirected to another host ({new.netloc}); "
                             "redirects are followed on the same host only.")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


_OPENER = urllib.request.build_opener(_SameHostRedirects)
_OPENER.addheaders = [("Accept", "application/json"), ("User-Agent", "flask-apiguard")]


def fetch_json(url: str) -> tuple[dict[str, Any], float | None]:
    """The JSON object at ``url`` and the response's ``Cache-Control: max-age`` (if any).

    :raises FetchError: for a refused URL, a network error or timeout, an HTTP error, a
        document over :data:`MAX_DOCUMENT` bytes, or one that is not a JSON object.
    """
    problem = url_problem(url)
    if problem:
        raise FetchError(problem)
    try:
        with _OPENER.open(url, timeout=TIMEOUT) as response:
            content_type = response.headers.get("Content-Type", "")
            if not _JSON_TYPES.match(content_type.split(";")[0].strip()):
                raise FetchError(f"{url} answered {content_type or 'no content type'!s}, not JSON.")
            body = _read_before(response, time.monotonic() + TIMEOUT, url)
            cache_control = response.headers.get("Cache-Control", "")
    except FetchError:
        raise
    except urllib.error.HTTPError as exc:
        raise FetchError(f"{url} answered HTTP {exc.code}.") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise FetchError(f"{url} could not be reached ({reason}).") from None
    if len(body) > MAX_DOCUMENT:
        raise FetchError(f"{url} sent more than {MAX_DOCUMENT} bytes.")
    try:
        document = json.loads(body)
    except ValueError:
        raise FetchError(f"{url} did not send valid JSON.") from None
    if not isinstance(document, dict):
        raise FetchError(f"{url} did not send a JSON object.")
    match = _MAX_AGE.search(cache_control)
    no_cache = "no-store" in cache_control.lower() or "no-cache" in cache_control.lower()
    max_age = 0.0 if no_cache else float(match.group(1)) if match else None
    return document, max_age


def _read_before(response: Any, deadline: float, url: str) -> bytes:
    """The body, read by chunks until it ends, passes :data:`MAX_DOCUMENT` (one byte more is
    enough to refuse it) or ``deadline`` passes: a provider trickling a byte at a time cannot
    hold the fetch (and the issuer's lock) for longer than a read's timeout past it."""
    chunks: list[bytes] = []
    size = 0
    read = getattr(response, "read1", response.read)
    while size <= MAX_DOCUMENT:
        if time.monotonic() > deadline:
            raise FetchError(f"{url} took more than {TIMEOUT:g} s to send its document.")
        chunk = read(MAX_DOCUMENT + 1 - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


@dataclass(frozen=True, slots=True)
class SourceSettings:
    """Where one issuer's keys come from and how long they are kept."""

    #: The JWKS URL, or ``None`` when it is found through ``discovery``.
    jwks_url: str | None
    #: The discovery document's URL, or ``None``.
    discovery: str | None
    #: The ``iss`` the discovery document must name (``None``: not checked).
    issuer: str | None
    algorithms: tuple[str, ...]
    ttl: float
    cooldown: float


class KeySource:
    """One issuer's remote key set: fetched, cached for the TTL, refreshed carefully.

    :param settings: where the keys come from, the TTL and the cooldown.
    :param on_change: called (with no argument) after a fetch changed the set of keys.
    :param fetch: the fetching function (:func:`fetch_json`).
    :param clock: a monotonic clock (``time.monotonic``).
    """

    def __init__(self, settings: SourceSettings, *, on_change: Callable[[], None] | None = None,
                 fetch: Callable[[str], tuple[dict[str, Any], float | None]] = fetch_json,
                 clock: Callable[[], float] | None = None) -> None:
        self.settings = settings
        self._on_change = on_change
        self._fetch = fetch
        self._clock = clock or _monotonic
        self._lock = threading.Lock()
        self._refreshing = False
        #: The current keys by ``kid`` (replaced whole, never mutated: readers need no lock).
        self.keys: Mapping[str, Key] = {}
        self.ever_fetched = False
        self.expires_at = 0.0
        self.last_attempt: float | None = None
        #: Why the last attempt failed, or ``None`` after a success.
        self.last_error: str | None = None
        #: How many fetch attempts were made (each fetches the JWKS, and the discovery
        #: document before it when configured).
        self.fetch_count = 0

    @property
    def name(self) -> str:
        return self.settings.jwks_url or self.settings.discovery or "?"

    # -- the hot path -------------------------------------------------------------------------
    def keys_for(self, kid: str) -> Key | None:
        """The key named ``kid``, or ``None`` when the provider does not have it (after at
        most one refetch per cooldown).

        :raises KeysUnavailable: while no key set was ever fetched.
        """
        key = self.keys.get(kid)
        if key is not None:
            self.tick()
            return key
        self._refetch()
        if not self.ever_fetched:
            raise KeysUnavailable()
        return self.keys.get(kid)

    def tick(self) -> None:
        """Start a background refresh when the TTL has passed (one comparison otherwise)."""
        if self._clock() >= self.expires_at and self.ever_fetched and not self._refreshing:
            self._refresh_in_background()

    # -- fetching -----------------------------------------------------------------------------
    def refresh(self) -> bool:
        """Fetch now, whatever the cooldown (start-up, ``flask apiguard check``); waits for a
        fetch already running instead of starting another. True when the set is usable."""
        with self._lock:
            self._fetch_locked()
        return self.ever_fetched

    def _cooling(self) -> bool:
        return self.last_attempt is not None and \
            self._clock() - self.last_attempt < self.settings.cooldown

    def _refetch(self) -> None:
        """Single-flight refetch for an unknown ``kid``: at most once per cooldown; a caller
        arriving during another's fetch waits for it (at most :data:`WAIT` seconds)."""
        if self._lock.locked():  # a fetch is running: wait for it, then use its keys
            if self._lock.acquire(timeout=WAIT):
                self._lock.release()
            return
        if self._cooling():
            return
        if not self._lock.acquire(timeout=WAIT):
            return
        try:
            if not self._cooling():  # another caller may have fetched while this one waited
                self._fetch_locked()
        finally:
            self._lock.release()

    def _refresh_in_background(self) -> None:
        """The TTL has passed: one thread refreshes, every request keeps the current set."""
        if self._cooling() or not self._lock.acquire(blocking=False):
            return
        self._refreshing = True

        def run() -> None:
            try:
                self._fetch_locked()
            finally:
                self._refreshing = False
                self._lock.release()

        threading.Thread(target=run, name="apiguard-jwks-refresh", daemon=True).start()

    def _fetch_locked(self) -> None:
        """Fetch the set (the caller holds the lock); never raises."""
        self.last_attempt = self._clock()
        self.fetch_count += 1
        try:
            keys, max_age = self._fetch_keys()
        except FetchError as exc:
            self.last_error = str(exc)
            return
        except Exception as exc:  # a refresh must never break a request
            self.last_error = f"{self.name}: unexpected {type(exc).__name__}."
            return
        ttl = self.settings.ttl
        if max_age is not None and max_age < ttl:
            ttl = max(max_age, min(ttl, MIN_TTL))
        changed = set(self.keys) != set(keys)
        self.keys = keys
        self.expires_at = self._clock() + ttl
        self.ever_fetched = True
        self.last_error = None
        if changed and self._on_change is not None:
            self._on_change()

    def _fetch_keys(self) -> tuple[dict[str, Key], float | None]:
        settings = self.settings
        jwks_url = settings.jwks_url
        if settings.discovery is not None:
            document, _ = self._fetch(settings.discovery)
            named = document.get("issuer")
            if settings.issuer is not None and named != settings.issuer:
                raise FetchError(
                    f"the discovery document at {settings.discovery} names the issuer "
                    f"{named!r}, not {settings.issuer!r}; its keys are not used."
                )
            jwks_url = document.get("jwks_uri")
            if not isinstance(jwks_url, str):
                raise FetchError(f"the discovery document at {settings.discovery} has no jwks_uri.")
            problem = url_problem(jwks_url)
            if problem:
                raise FetchError(f"jwks_uri of {settings.discovery}: {problem}")
        assert jwks_url is not None
        document, max_age = self._fetch(jwks_url)
        entries = document.get("keys")
        if not isinstance(entries, list):
            raise FetchError(f"{jwks_url} is not a JWKS (no 'keys' list).")
        keys = usable_keys(entries, settings.algorithms)
        if not keys:
            raise FetchError(f"{jwks_url} has no signing key for {list(settings.algorithms)}.")
        return keys, max_age


def usable_keys(entries: list[Any], algorithms: tuple[str, ...]) -> dict[str, Key]:
    """The public signing keys of a fetched JWKS that serve one of ``algorithms``, by ``kid``.
    Keys without a ``kid``, secret (``oct``) or private keys, encryption keys and keys of
    another type are dropped."""
    keys: dict[str, Key] = {}
    for entry in entries:
        if not isinstance(entry, Mapping):
            continue
        kid = entry.get("kid")
        if not isinstance(kid, str) or not kid or entry.get("kty") == "oct" or "d" in entry:
            continue
        try:
            key = load_jwk(entry, algorithms)
        except ApiGuardConfigError:
            continue
        if key is not None:
            keys[kid] = key
    return keys
