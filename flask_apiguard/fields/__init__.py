"""Hardened marshmallow fields and validators, importable from one place.

Every field here is a :class:`marshmallow.fields.String` subclass: it refuses non-string input
with ``"Not a valid string."``, takes every keyword argument ``fields.String`` takes
(``required``, ``load_default``, ``validate``, ``data_key``, ``error_messages``…) and never
puts the rejected value into an error message, so a 400 response or a log line cannot echo
an attacker's payload or a user's password back.

Fields
------

:class:`SanitizedHTML` ``(tags=DEFAULT_TAGS, attributes=DEFAULT_ATTRIBUTES,
protocols=DEFAULT_PROTOCOLS, *, backend=None, link_rel="noopener noreferrer",
css_properties=DEFAULT_CSS_PROPERTIES, max_length=10_000, max_tags=1_000, **kwargs)``
    Loads rich text as sanitized HTML: an allow-list of tags, attributes and URL schemes.
    The backend is bleach by default, or nh3 when the app's ``APIGUARD_SANITIZER`` is
    ``"nh3"`` (read at load time), or whatever ``backend=`` says. Both backends drop the
    same attack vectors and both add ``rel="noopener noreferrer"`` to links.

:class:`SafeString` ``(max_length=None, *, allow_newlines=False, **kwargs)``
    Loads plain, single-line text (names, titles, usernames): NFC-normalised, with no control
    characters, no bidirectional controls, no zero-width spaces and no ``<`` / ``>``.

:class:`Password` ``(min_length=12, max_length=128, *, blocklist=True, require_upper=False,
require_lower=False, require_digit=False, require_symbol=False, min_score=None,
context_fields=(), **kwargs)``
    Loads a new password following NIST SP 800-63B: length bounds, a blocklist of common
    passwords and of mostly repeated or sequential characters, the user's own name or e-mail
    (``context_fields``), no composition rules unless asked for, an optional zxcvbn strength
    score.
    Load-only, and never serialised.

Validators
----------

Plain callables for ``validate=``; each raises :exc:`marshmallow.ValidationError` with a
message that says what to fix and never contains the value.

:class:`Email` ``(*, max_length=254, error=None)``
    An email address (marshmallow's ``validate.Email`` rules), at most 254 characters, no
    control characters.
:class:`UUID` ``(*, error=None)``
    A UUID in canonical text form, ``8-4-4-4-12`` hexadecimal digits (either case).
:class:`URL` ``(*, schemes=("http", "https"), require_tld=True, max_length=2048, error=None)``
    An absolute ``http``/``https`` URL with a fully qualified host (marshmallow's
    ``validate.URL`` rules); ``javascript:``, ``data:`` and other schemes are refused.
:class:`Length` ``(min=None, max=None, *, error=None)``
    A length within bounds (``len()``, so strings, lists, mappings).
:class:`Pattern` ``(regex, flags=0, error=None)``
    A string that *fully* matches a regular expression compiled once, at construction.

Constants
---------

:data:`DEFAULT_TAGS`, :data:`DEFAULT_ATTRIBUTES`, :data:`DEFAULT_PROTOCOLS`,
:data:`DEFAULT_CSS_PROPERTIES`
    The default allow-lists of :class:`SanitizedHTML`, to extend rather than copy, e.g.
    ``SanitizedHTML(tags=DEFAULT_TAGS | {"h2", "h3"})``.

Example::

    from marshmallow import Schema
    from flask_apiguard.fields import URL, Password, SafeString, SanitizedHTML

    class SignUp(Schema):
        name = SafeString(required=True, max_length=80)
        password = Password(required=True)
        homepage = SafeString(validate=URL())
        bio = SanitizedHTML(load_default="", max_length=20_000)

Import every name from here. Each is defined in a submodule, which is not part of the API:
``html`` (:class:`SanitizedHTML`, its allow-lists and its bleach and nh3 backends),
``text`` (:class:`SafeString` and the character checks the others share), ``password``
(:class:`Password` and its blocklist) and ``validators`` (:class:`Email`, :class:`UUID`,
:class:`URL`, :class:`Length`, :class:`Pattern`).
"""

from __future__ import annotations

from .html import (
    DEFAULT_ATTRIBUTES,
    DEFAULT_CSS_PROPERTIES,
    DEFAULT_PROTOCOLS,
    DEFAULT_TAGS,
    SanitizedHTML,
)
from .password import Password
from .text import SafeString
from .validators import URL, UUID, Email, Length, Pattern

__all__ = [
    "DEFAULT_ATTRIBUTES",
    "DEFAULT_CSS_PROPERTIES",
    "DEFAULT_PROTOCOLS",
    "DEFAULT_TAGS",
    "URL",
    "UUID",
    "Email",
    "Length",
    "Password",
    "Pattern",
    "SafeString",
    "SanitizedHTML",
]
