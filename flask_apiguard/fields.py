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
"""

from __future__ import annotations

import functools
import gzip
import html
import importlib.resources
import itertools
import operator
import re
import string
import threading
import unicodedata
from collections.abc import Callable, Iterable, Iterator, Mapping, Sized
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal, cast

from bleach.sanitizer import Cleaner as _BleachCleaner
from flask import current_app, has_app_context
from marshmallow import Schema, ValidationError, fields, validate

if TYPE_CHECKING:
    from bleach.css_sanitizer import CSSSanitizer
    from html5lib.filters.base import Filter as _Html5libFilter
else:
    from bleach.html5lib_shim import Filter as _Html5libFilter

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

# -- character classes ----------------------------------------------------------------------

#: Unicode category Cc (C0, DEL, C1) plus the line and paragraph separators U+2028/U+2029,
#: which break lines (and, before ES2019, JavaScript string literals) just like ``\n``.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
#: The same, less tab and line feed, for ``SafeString(allow_newlines=True)``.
_CONTROL_EXCEPT_NEWLINES = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029]")
#: Bidirectional controls ("Trojan Source", CVE-2021-42574): embeddings and overrides
#: U+202A-U+202E, isolates U+2066-U+2069, marks U+200E, U+200F and U+061C.
_BIDI = re.compile("[\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")
#: Invisible characters that hide inside identifiers ("ad\u200bmin"): zero-width space, word
#: joiner, invisible operators, zero-width no-break space (BOM). ZWJ/ZWNJ (U+200C, U+200D)
#: stay allowed: emoji sequences and several scripts need them.
_INVISIBLE = re.compile("[\u200b\u2060-\u2064\ufeff]")
#: Lone UTF-16 surrogates (JSON ``"\ud800"`` decodes to one); they cannot be encoded as UTF-8.
_SURROGATE = re.compile("[\ud800-\udfff]")
_ANGLE = re.compile("[<>]")

#: One NFC/NFKC output character absorbs at most 4 input code points (the longest canonical
#: decomposition, e.g. U+1F82, is 4 long), so an input longer than ``4 * max_length`` can be
#: refused before normalising it: normalisation is where a long input costs time (NFKC can
#: expand a character 18-fold).
_MAX_COMPOSITION = 4


def _template(error: str | None, default: str, allowed: Iterable[str] = ()) -> str:
    """``error`` (or ``default`` when it is ``None``), checked to use only the ``allowed``
    placeholders. ``{input}`` is never allowed: messages must not echo the rejected value.
    """
    if error is None:
        return default
    names = frozenset(allowed)
    for _, name, _, _ in string.Formatter().parse(error):
        if name is not None and name not in names:
            known = ", ".join(f"{{{n}}}" for n in sorted(names)) or "none"
            raise ValueError(
                f"The error message uses the placeholder {{{name}}}; the placeholders "
                f"available are: {known}. Messages never include the rejected value."
            )
    return error


# -- SanitizedHTML --------------------------------------------------------------------------

#: Tags kept by :class:`SanitizedHTML` unless ``tags=`` says otherwise.
DEFAULT_TAGS: frozenset[str] = frozenset(
    {"a", "abbr", "b", "blockquote", "br", "code", "em", "i", "li", "ol", "p", "pre",
     "strong", "ul"}
)
#: Attributes kept per tag (``"*"`` means on every tag) unless ``attributes=`` says otherwise.
DEFAULT_ATTRIBUTES: Mapping[str, frozenset[str]] = MappingProxyType({
    "a": frozenset({"href", "title"}),
    "abbr": frozenset({"title"}),
})
#: URL schemes allowed in ``href``/``src``; relative URLs are kept.
DEFAULT_PROTOCOLS: frozenset[str] = frozenset({"http", "https", "mailto"})
#: CSS properties kept in a ``style`` attribute, when ``style`` is an allowed attribute.
DEFAULT_CSS_PROPERTIES: frozenset[str] = frozenset(
    {"color", "background-color", "font-style", "font-weight", "text-align",
     "text-decoration"}
)

#: Tags removed *with their content* by both backends (bleach would otherwise keep the text of
#: a ``<script>`` and nh3 only drops script and style). They hold code, raw text that a browser
#: re-parses (the mutation-XSS family) or foreign SVG/MathML content.
_DROP_WITH_CONTENT: frozenset[str] = frozenset(
    {"script", "style", "template", "iframe", "frame", "frameset", "object", "embed",
     "applet", "noscript", "noembed", "noframes", "xmp", "plaintext", "title", "textarea",
     "svg", "math"}
)
#: Tags no allow-list may contain: they run code or change how the page loads.
_NEVER_ALLOWED_TAGS: frozenset[str] = frozenset(
    {"script", "iframe", "frame", "frameset", "object", "embed", "applet", "base", "meta",
     "link"}
)
_NEVER_ALLOWED_PROTOCOLS: frozenset[str] = frozenset({"javascript", "vbscript", "data"})
_BACKENDS = ("bleach", "nh3")
_CSS_VALUE = re.compile(
    r"(?:[a-z0-9#%.,+\- ]|(?:rgb|rgba|hsl|hsla)\([0-9.,%/ ]*\))+", re.IGNORECASE
)
#: Attributes holding a URL (bleach's list, plus ``srcset``, checked per candidate).
_URL_ATTRIBUTES: frozenset[str] = frozenset(
    {"href", "src", "cite", "action", "formaction", "longdesc", "poster", "background",
     "datasrc", "dynsrc", "lowsrc", "ping", "base", "data", "codebase", "srcset"}
)
#: Ignored when reading a URL's scheme: whitespace, controls, backticks, non-ASCII.
_URL_IGNORED = re.compile(r"[\x00-\x20\x7f-\U0010ffff`\s]+")
_URL_SCHEME = re.compile(r"([a-z][a-z0-9+.\-]*):")


def _fully_unescape(value: str) -> str:
    """Decode character references until nothing changes (a few rounds at most), so that
    ``&amp;#106;`` and ``&#0000106`` read as the ``j`` a lenient consumer could make of them."""
    for _ in range(4):
        decoded = html.unescape(value)
        if decoded == value:
            break
        value = decoded
    return value


class _AttributePolicy:
    """The attribute checks both backends run after their own, so that they agree.

    * URL attributes (``href``, ``src``…): the value is decoded as many times as it takes,
      stripped of whitespace, control, backtick and non-ASCII characters (what browsers,
      old and new, ignore or once treated as quotes), and dropped if what is left starts
      with a scheme outside ``protocols``. Relative URLs are kept.
    * ``style`` (only where allowed): keeps the declarations of ``css_properties`` whose
      value is plain: keywords, numbers, units, hex colours and ``rgb()``/``hsl()``.
      Anything else (``url()``, ``expression()``, escapes, comments) drops the declaration.
      It is bleach's ``css_sanitizer`` (``sanitize_css``), without the ``tinycss2``
      dependency.
    """

    def __init__(self, protocols: frozenset[str], css_properties: frozenset[str]) -> None:
        self.protocols = protocols
        self.css_properties = css_properties

    def url_allowed(self, value: str) -> bool:
        compact = _URL_IGNORED.sub("", _fully_unescape(value)).lower()
        scheme = _URL_SCHEME.match(compact)
        return scheme is None or scheme.group(1) in self.protocols

    def attribute_allowed(self, name: str, value: str) -> bool:
        if name == "srcset":
            candidates = (part.split(None, 1)[0] for part in value.split(",") if part.strip())
            return all(self.url_allowed(candidate) for candidate in candidates)
        return name not in _URL_ATTRIBUTES or self.url_allowed(value)

    def sanitize_css(self, style: str) -> str:
        kept = []
        for declaration in _fully_unescape(style).split(";"):
            name, sep, value = declaration.partition(":")
            name, value = name.strip().lower(), value.strip()
            if sep and name in self.css_properties and value and _CSS_VALUE.fullmatch(value):
                kept.append(f"{name}: {value}")
        return "; ".join(kept)

    def nh3_attribute_filter(self, tag: str, name: str, value: str) -> str | None:
        if name == "style":
            return self.sanitize_css(value) or None
        return value if self.attribute_allowed(name, value) else None


class _PostFilter(_Html5libFilter):
    """An html5lib filter run after bleach's sanitizer: removes the tags of ``drop`` with
    everything inside them, applies the :class:`_AttributePolicy`, and sets ``rel`` on
    ``<a>`` as nh3's ``link_rel`` does."""

    def __init__(
        self, source: Any, *, drop: frozenset[str], link_rel: str | None,
        policy: _AttributePolicy,
    ) -> None:
        super().__init__(source)
        self.drop = drop
        self.link_rel = link_rel
        self.policy = policy

    def __iter__(self) -> Iterator[dict[str, Any]]:
        depth = 0
        for token in super().__iter__():
            kind = token["type"]
            if kind in ("StartTag", "EndTag", "EmptyTag") and token["name"] in self.drop:
                if kind == "StartTag":
                    depth += 1
                elif kind == "EndTag" and depth:
                    depth -= 1
                continue
            if depth:
                continue
            if kind in ("StartTag", "EmptyTag"):
                attributes = token.setdefault("data", {})
                for key in list(attributes):
                    value = attributes[key]
                    if not self.policy.attribute_allowed(key[1], value) or (
                        key[1] == "style" and not value  # nothing left once filtered
                    ):
                        del attributes[key]
                if self.link_rel is not None and token["name"] == "a":
                    attributes[(None, "rel")] = self.link_rel
            yield token


class _Cleaners:
    """The cleaners of one :class:`SanitizedHTML`, built from arguments computed once.

    A bleach ``Cleaner`` is not thread-safe (its parser keeps state), so each thread gets
    its own, built on first use; the nh3 ``Cleaner`` is immutable and shared, built on first
    use so that nh3 stays an optional import.
    """

    def __init__(self, bleach_kwargs: dict[str, Any], nh3_kwargs: dict[str, Any]) -> None:
        self.bleach_kwargs = bleach_kwargs
        self.nh3_kwargs = nh3_kwargs
        self._local = threading.local()
        self._lock = threading.Lock()
        self._nh3: Any = None

    def bleach(self) -> _BleachCleaner:
        cleaner: _BleachCleaner | None = getattr(self._local, "cleaner", None)
        if cleaner is None:
            cleaner = _BleachCleaner(**self.bleach_kwargs)
            self._local.cleaner = cleaner
        return cleaner

    def nh3(self) -> Any:
        if self._nh3 is None:
            with self._lock:
                if self._nh3 is None:
                    try:
                        import nh3
                    except ImportError:
                        raise ImportError(
                            "The nh3 sanitizer is not installed. Run pip install "
                            '"flask-apiguard[nh3]", or use backend="bleach".'
                        ) from None
                    self._nh3 = nh3.Cleaner(**self.nh3_kwargs)
        return self._nh3


class SanitizedHTML(fields.String):
    """A string of HTML, loaded as sanitized HTML.

    Tags, attributes and URL schemes outside the allow-lists are removed (the text inside
    a removed tag is kept, escaped). The tags that carry code or re-parsed raw text —
    ``script``, ``style``, ``iframe``, ``object``, ``embed``, ``noscript``, ``template``,
    ``textarea``, ``title``, ``xmp``, ``svg``, ``math``… — are removed *with* their content.
    Event handlers (``on*``) and ``style`` are dropped unless allowed. A URL attribute
    (``href``, ``src``…) whose scheme is not in ``protocols`` is dropped, however it is
    spelled: mixed case, character references (even doubly encoded, ``&amp;#106;``, or
    without semicolons), embedded tabs, newlines, controls or backticks; so ``javascript:``,
    ``vbscript:`` and ``data:`` never survive. Relative URLs are kept. Comments are removed.

    Both backends apply the same allow-lists and the same extra checks (content dropping,
    URL and ``style`` checks, ``rel``), so they give the same *safe* result; the markup may
    differ in details (bleach keeps character references as sent and escapes a stray
    ``</b`` as text, nh3 decodes them and drops it). Both set ``rel="noopener noreferrer"``
    on every ``<a>`` by default: nh3 does it by itself (its ``link_rel``), and bleach is
    made to do the same.

    :param tags: the tags to keep. ``script``, ``iframe``, ``object``, ``embed``, ``applet``,
        ``frame``, ``frameset``, ``base``, ``meta`` and ``link`` are refused.
    :param attributes: the attributes to keep, per tag (``"*"``: on every tag). Event
        handlers (``on*``) are refused. Allowing ``style`` keeps the declarations of
        ``css_properties`` with plain values only.
    :param protocols: the URL schemes to keep in ``href``/``src``; relative URLs are kept.
        ``javascript``, ``vbscript`` and ``data`` are refused.
    :param backend: ``"bleach"`` or ``"nh3"``, overriding the app's ``APIGUARD_SANITIZER``.
        Without it the backend is read at load time from the ApiGuard of the current app;
        outside an app context, or for an app without ApiGuard, it is bleach.
    :param link_rel: the ``rel`` set on every ``<a>`` by both backends (nh3's default,
        reproduced for bleach); ``None`` to leave ``rel`` alone, which is required when
        ``rel`` is itself an allowed attribute.
    :param css_properties: the CSS properties kept when ``style`` is allowed.
    :param max_length: the most characters accepted *before* sanitizing (default 10 000),
        which bounds the parser's work; ``None`` for no bound. Use ``validate=Length(max=…)``
        to bound the sanitized result.
    :param max_tags: the most ``<`` characters accepted (default 1 000; ``None`` for no bound).
        HTML parsers spend time quadratic in the nesting depth, so deeply nested markup is
        refused before it is parsed.
    :param kwargs: the keyword arguments of :class:`marshmallow.fields.String`.
    :raises ValueError: for an unsafe or inconsistent allow-list.
    :raises ImportError: for ``backend="nh3"`` without nh3 installed.

    The bleach :class:`~bleach.sanitizer.Cleaner` and the nh3 :class:`nh3.Cleaner` are built
    from arguments computed once, here; a bleach ``Cleaner`` is not thread-safe, so each
    thread gets its own, built on first use and reused afterwards.
    """

    default_error_messages = {
        "too_long": "Longer than maximum length {max}.",
        "too_much_markup": "Too much markup: at most {max} tags.",
    }

    def __init__(
        self,
        tags: Iterable[str] = DEFAULT_TAGS,
        attributes: Mapping[str, Iterable[str]] = DEFAULT_ATTRIBUTES,
        protocols: Iterable[str] = DEFAULT_PROTOCOLS,
        *,
        backend: str | None = None,
        link_rel: str | None = "noopener noreferrer",
        css_properties: Iterable[str] = DEFAULT_CSS_PROPERTIES,
        max_length: int | None = 10_000,
        max_tags: int | None = 1_000,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if max_tags is not None and max_tags < 0:
            raise ValueError("max_tags must be a positive number or None.")
        self.max_tags = max_tags
        if backend is not None and backend not in _BACKENDS:
            raise ValueError(f"backend must be 'bleach' or 'nh3', not {backend!r}.")
        if max_length is not None and max_length < 0:
            raise ValueError("max_length must be a positive number of characters or None.")
        allowed_tags = frozenset(tag.lower() for tag in tags)
        allowed_attributes = {
            tag.lower(): frozenset(name.lower() for name in names)
            for tag, names in attributes.items()
        }
        allowed_protocols = frozenset(p.lower().rstrip(":") for p in protocols)
        _check_allow_lists(allowed_tags, allowed_attributes, allowed_protocols, link_rel)

        self.backend = backend
        self.max_length = max_length
        self.tags = allowed_tags
        self.attributes = allowed_attributes
        self.protocols = allowed_protocols
        self.link_rel = link_rel
        drop = _DROP_WITH_CONTENT - allowed_tags
        allows_style = any("style" in names for names in allowed_attributes.values())
        policy = _AttributePolicy(allowed_protocols, frozenset(css_properties))

        post_filter = functools.partial(_PostFilter, drop=drop, link_rel=link_rel, policy=policy)
        bleach_kwargs: dict[str, Any] = {
            # The drop-with-content tags are let through bleach's sanitizer (stripped of
            # every attribute) so that its parser treats them as elements, not text; the
            # filter after it then removes them with their content.
            "tags": allowed_tags | drop,
            "attributes": {tag: sorted(names) for tag, names in allowed_attributes.items()},
            "protocols": allowed_protocols,
            "strip": True,
            "strip_comments": True,
            "filters": [post_filter],
            "css_sanitizer": cast("CSSSanitizer", policy) if allows_style else None,
        }
        nh3_kwargs: dict[str, Any] = {
            "tags": set(allowed_tags),
            "clean_content_tags": set(drop),
            # Without a "*" entry nh3 keeps ammonia's generic attributes (lang, title) on
            # every tag; an explicit empty one makes the allow-list the whole list.
            "attributes": {"*": set()}
            | {tag: set(names) for tag, names in allowed_attributes.items()},
            "url_schemes": set(allowed_protocols),
            "strip_comments": True,
            "link_rel": link_rel,
            "attribute_filter": policy.nh3_attribute_filter,
        }
        # One holder, shared by the copies marshmallow makes of the field for each schema
        # instance, so the cleaners are built once per field, not once per Schema().
        self._cleaners = _Cleaners(bleach_kwargs, nh3_kwargs)
        if backend == "nh3":
            self._cleaners.nh3()
        else:
            self._cleaners.bleach()

    def current_backend(self) -> str:
        """The backend a load would use now: ``backend=``, else the sanitizer of the current
        app's ApiGuard (``APIGUARD_SANITIZER``), else ``"bleach"``."""
        if self.backend is not None:
            return self.backend
        if has_app_context():
            state = current_app.extensions.get("apiguard")
            if state is not None:
                sanitizer = state.config.sanitizer
                if sanitizer not in _BACKENDS:
                    raise RuntimeError(
                        f"APIGUARD_SANITIZER must be 'bleach' or 'nh3', not {sanitizer!r}."
                    )
                return str(sanitizer)
        return "bleach"

    def clean(self, markup: str) -> str:
        """Sanitize ``markup`` with the backend :meth:`current_backend` names."""
        if self.current_backend() == "nh3":
            return str(self._cleaners.nh3().clean(markup))
        return self._cleaners.bleach().clean(markup)

    def _deserialize(
        self, value: Any, attr: str | None, data: Mapping[str, Any] | None, **kwargs: Any
    ) -> str:
        text = super()._deserialize(value, attr, data, **kwargs)
        if self.max_length is not None and len(text) > self.max_length:
            raise self.make_error("too_long", max=self.max_length)
        if self.max_tags is not None and text.count("<") > self.max_tags:
            raise self.make_error("too_much_markup", max=self.max_tags)
        return self.clean(text)


def _check_allow_lists(
    tags: frozenset[str],
    attributes: Mapping[str, frozenset[str]],
    protocols: frozenset[str],
    link_rel: str | None,
) -> None:
    unsafe = sorted(tags & _NEVER_ALLOWED_TAGS)
    if unsafe:
        raise ValueError(
            f"SanitizedHTML cannot allow the tags {', '.join(unsafe)}: they run code or "
            "change how the page loads."
        )
    for tag, names in attributes.items():
        handlers = sorted(name for name in names if name.startswith("on"))
        if handlers:
            raise ValueError(
                f"SanitizedHTML cannot allow event handler attributes ({', '.join(handlers)} "
                f"on {tag!r})."
            )
    bad = sorted(protocols & _NEVER_ALLOWED_PROTOCOLS)
    if bad:
        raise ValueError(f"SanitizedHTML cannot allow the URL schemes {', '.join(bad)}.")
    if link_rel is not None and any("rel" in attributes.get(t, ()) for t in ("a", "*")):
        raise ValueError(
            "rel is an allowed attribute of <a>, so link_rel must be None (SanitizedHTML "
            "would otherwise overwrite it)."
        )


# -- SafeString -----------------------------------------------------------------------------

def _bounded_normalize(
    form: Literal["NFC", "NFKC"],
    text: str,
    max_length: int | None,
    too_long: Callable[[], ValidationError],
) -> str:
    """``unicodedata.normalize(form, text)``, refusing an input too long to fit in
    ``max_length`` after normalisation before spending time on it; then the exact check."""
    if max_length is not None and len(text) > _MAX_COMPOSITION * max_length:
        raise too_long()
    normalized = unicodedata.normalize(form, text)
    if max_length is not None and len(normalized) > max_length:
        raise too_long()
    return normalized


class SafeString(fields.String):
    """Plain text for names, titles and identifiers, normalised to Unicode NFC.

    Refused, after normalisation:

    * control characters (Unicode category Cc: NUL, ESC, DEL, C1…) and the line and
      paragraph separators U+2028/U+2029. Tab and line feed are control characters too:
      a ``SafeString`` is one line. With ``allow_newlines=True``, tab and line feed are
      accepted, and a CR LF pair becomes LF (as a browser's ``<textarea>`` sends it); a lone
      CR is still refused;
    * bidirectional controls (U+202A-U+202E, U+2066-U+2069, U+200E, U+200F, U+061C), which
      make text display in another order than it is stored ("Trojan Source");
    * invisible characters: zero-width space U+200B, word joiner and invisible operators
      U+2060-U+2064, zero-width no-break space U+FEFF (ZWJ and ZWNJ are kept: emoji and
      several scripts need them);
    * unpaired UTF-16 surrogates, which JSON can carry and UTF-8 cannot;
    * ``<`` and ``>``, so the value cannot open a tag even where a template forgets to
      escape it (quotes and ``&`` are allowed: still escape values placed in attributes).

    :param max_length: the most characters, counted after NFC normalisation.
    :param allow_newlines: accept tab and line feed, for multi-line text.
    :param kwargs: the keyword arguments of :class:`marshmallow.fields.String`.
    """

    default_error_messages = {
        "control": "Must not contain control characters.",
        "bidi": "Must not contain bidirectional text control characters.",
        "invisible": "Must not contain zero-width or other invisible characters.",
        "surrogate": "Must be valid Unicode text (an unpaired surrogate was found).",
        "angle": "Must not contain '<' or '>'.",
        "too_long": "Longer than maximum length {max}.",
    }

    def __init__(
        self, max_length: int | None = None, *, allow_newlines: bool = False, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        if max_length is not None and max_length < 0:
            raise ValueError("max_length must be a positive number of characters or None.")
        self.max_length = max_length
        self.allow_newlines = allow_newlines
        self._control = _CONTROL_EXCEPT_NEWLINES if allow_newlines else _CONTROL

    def _deserialize(
        self, value: Any, attr: str | None, data: Mapping[str, Any] | None, **kwargs: Any
    ) -> str:
        text = super()._deserialize(value, attr, data, **kwargs)
        if self.allow_newlines:
            text = text.replace("\r\n", "\n")
        text = _bounded_normalize(
            "NFC", text, self.max_length,
            lambda: self.make_error("too_long", max=self.max_length),
        )
        for key, pattern in (
            ("surrogate", _SURROGATE),
            ("control", self._control),
            ("bidi", _BIDI),
            ("invisible", _INVISIBLE),
            ("angle", _ANGLE),
        ):
            if pattern.search(text):
                raise self.make_error(key)
        return text


# -- Password -------------------------------------------------------------------------------

_BLOCKLIST_RESOURCE = ("data", "common-passwords.txt.gz")
#: zxcvbn's own limit: longer input raises, and its matching grows fast with length.
_ZXCVBN_MAX = 72


@functools.lru_cache(maxsize=1)
def _common_passwords() -> frozenset[str]:
    """The shipped blocklist (lowercase, one a line), read once on first use."""
    resource = importlib.resources.files("flask_apiguard").joinpath(*_BLOCKLIST_RESOURCE)
    text = gzip.decompress(resource.read_bytes()).decode("utf-8")
    return frozenset(line.strip() for line in text.splitlines() if line.strip())


def _is_symbol(char: str) -> bool:
    return not char.isalnum() and not char.isspace()


#: Orders that people type passwords in (800-63B §5.1.1.2 "sequential characters"), read in
#: both directions; compared in lowercase. The digits wrap around (``7890``, ``9012``,
#: ``0987``), as on the number row. Shifted digits are the number row's other face.
_SEQUENCES: tuple[tuple[str, bool], ...] = (
    ("abcdefghijklmnopqrstuvwxyz", False),
    ("0123456789", True),
    ("qwertyuiop", False),
    ("asdfghjkl", False),
    ("zxcvbnm", False),
    ("!@#$%^&*()", False),
)
#: A pattern shorter than this is not one: ``abc``, ``aaa``, ``2024`` are ordinary text.
_MIN_PATTERN = 4
#: Repeated blocks are looked for up to this many characters (``abcabc`` has a block of 3):
#: at most this many passes over the password. A longer block is, once, a long password.
_MAX_UNIT = 32
#: Context values shorter than this (``"al"``, ``"jo@…"``'s ``"jo"``) are not looked for.
_MIN_CONTEXT = 3


def _sequence_steps() -> Mapping[tuple[str, str], frozenset[int]]:
    """Every pair of neighbours in :data:`_SEQUENCES`, mapped to the ascending or descending
    orders it steps along (one number per sequence and direction). Built once, at import."""
    steps: dict[tuple[str, str], set[int]] = {}
    for number, (sequence, wraps) in enumerate(_SEQUENCES):
        pairs = list(itertools.pairwise(sequence))
        if wraps:
            pairs.append((sequence[-1], sequence[0]))
        for before, after in pairs:
            steps.setdefault((before, after), set()).add(2 * number)
            steps.setdefault((after, before), set()).add(2 * number + 1)
    return MappingProxyType({pair: frozenset(orders) for pair, orders in steps.items()})


_STEPS = _sequence_steps()
_NO_STEP: frozenset[int] = frozenset()
#: A run of equal positions in :func:`_predictable`'s comparison of the password with itself.
_TRUE_RUN = re.compile(b"\x01+")


def _predictable(password: str) -> int:
    """How many characters of ``password`` follow from the ones before them: in every run
    of :data:`_MIN_PATTERN` or more characters that is a sequence (``1234``, ``qwer``,
    ``zyxw``) or a block repeated right after itself (``aaaa``, ``abab``, ``abcabc``), each
    character but the run's first. Case is ignored; overlapping runs count once."""
    text = password.lower()
    if len(text) != len(password):  # a few characters lowercase to two
        text = password
    length = len(text)
    marked = bytearray(length)

    # Sequences: follow each run for as long as one order explains every step.
    start, orders = 0, _NO_STEP
    for index in range(1, length + 1):
        step = _STEPS.get((text[index - 1], text[index]), _NO_STEP) if index < length else _NO_STEP
        if orders and orders & step:
            orders &= step
            continue
        if index - start >= _MIN_PATTERN:
            marked[start + 1:index] = b"\x01" * (index - start - 1)
        start, orders = (index - 1, step) if step else (index, _NO_STEP)

    # Repeated blocks: where text[k] == text[k + unit] holds for at least a whole block,
    # the characters from text[k + unit] on are copies.
    for unit in range(1, min(length // 2, _MAX_UNIT) + 1):
        same = bytes(map(operator.eq, text, text[unit:]))
        for run in _TRUE_RUN.finditer(same):
            size = run.end() - run.start()
            if size >= unit and size + unit >= _MIN_PATTERN:
                marked[run.start() + unit:run.end() + unit] = b"\x01" * size
    return sum(marked)


def _fold(value: str) -> str:
    """How passwords and context values are compared: NFKC, then case-folded."""
    return unicodedata.normalize("NFKC", value).casefold()


class Password(fields.String):
    """A new password, checked as NIST SP 800-63B recommends.

    The value is normalised to Unicode NFKC first (800-63B §5.1.1.2), and the *normalised*
    password is what the field returns: hash that, and normalise the same way at login (e.g.
    with ``Password(min_length=1, blocklist=False)``) or passwords with compatibility
    characters will not match. Then, in this order:

    * ``max_length`` (default 128 characters) bounds the hashing cost. An input that cannot
      fit is refused before any normalisation, so a 1 MB "password" costs microseconds;
    * control characters (NUL included: some bcrypt implementations stop at a NUL, others
      raise) and unpaired surrogates are refused; spaces and any other Unicode are accepted;
    * ``min_length`` (default 12 characters);
    * the composition rules, all off by default as 800-63B asks: ``require_upper``,
      ``require_lower``, ``require_digit``, ``require_symbol`` (any character that is neither
      a letter, a digit nor a space), for policies that still demand them;
    * ``blocklist``: refuse the 19,640 common passwords shipped with the package (Django's
      list, from Royce Williams' breach corpus; see ``flask_apiguard/data/NOTICE``),
      compared case-insensitively and ignoring surrounding spaces; and refuse a password
      made *mostly* of repeated or sequential characters (below). ``blocklist=False``
      turns off both, as a login form needs;
    * ``context_fields``: names of other fields of the same schema holding the user's own
      details (``("username", "email")``). A password containing one of their values in the
      input is refused, compared after NFKC and case folding; for a value with an ``@`` the
      part before it is looked for too. Values shorter than 3 characters (after trimming
      spaces), missing, or not strings are skipped. The message names the field
      (its ``data_key``), never the value;
    * ``min_score`` (0-4): the zxcvbn strength score, computed on the first 72 characters
      only, and only when every other check passed (zxcvbn is slow on long input).

    Repeated and sequential characters (800-63B §5.1.1.2): a *pattern* is a run of 4 or
    more characters that is an ascending or descending sequence of the alphabet, of the
    digits (wrapping around, ``7890``, ``0987``), of a keyboard row (``qwertyuiop``,
    ``asdfghjkl``, ``zxcvbnm``, ``!@#$%^&*()``), or a block of up to 32 characters repeated
    right after itself (``aaaa``, ``abab``, ``abcabc``); case is ignored. Every character of
    a pattern but its first is *predictable*. A password is refused when more than half of
    its characters are predictable **and** the others are fewer than ``min_length``: so
    ``aaaaaaaaaaaaaaaa``, ``123456789012`` and ``qwertyuiopasdf`` are refused, while
    ``abc of gardening in 2024`` or a strong part followed by ``1234`` pass. A password on
    the common list gets only the common-password message.

    A too long password or a bad character is reported alone; the ``min_length``,
    composition, blocklist, pattern and context messages are reported together.

    ``load_only`` is ``True`` by default, and :meth:`_serialize` always returns ``None``:
    a password is never dumped, and no error message ever contains it.

    :raises ValueError: for inconsistent lengths or a score outside 0-4.
    :raises ImportError: when ``min_score`` is set and the ``zxcvbn`` package is missing
        (``pip install "flask-apiguard[zxcvbn]"``).
    """

    default_error_messages = {
        "too_short": "Must be at least {min} characters long.",
        "too_long": "Must be at most {max} characters long.",
        "control": "Must not contain control characters.",
        "surrogate": "Must be valid Unicode text (an unpaired surrogate was found).",
        "common": "This password is too common. Choose one that is harder to guess.",
        "pattern": (
            "This password is mostly repeated or sequential characters (such as aaaa, "
            "abcabc, 1234 or qwerty). Choose one that is harder to guess."
        ),
        "context": "This password contains your {field}. Choose one that does not.",
        "upper": "Must contain an uppercase letter.",
        "lower": "Must contain a lowercase letter.",
        "digit": "Must contain a digit.",
        "symbol": "Must contain a symbol (a character that is not a letter or a digit).",
        "weak": "Too easy to guess. {feedback}",
    }

    def __init__(
        self,
        min_length: int = 12,
        max_length: int = 128,
        *,
        blocklist: bool = True,
        require_upper: bool = False,
        require_lower: bool = False,
        require_digit: bool = False,
        require_symbol: bool = False,
        min_score: int | None = None,
        context_fields: Iterable[str] = (),
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("load_only", True)
        super().__init__(**kwargs)
        if min_length < 1 or max_length < min_length:
            raise ValueError("Password needs 1 <= min_length <= max_length.")
        if isinstance(context_fields, str):
            raise ValueError(
                "Password(context_fields=...) takes a collection of field names, e.g. "
                "context_fields=('username', 'email'), not a single string."
            )
        self.context_fields: tuple[str, ...] = tuple(context_fields)
        if min_score is not None and min_score not in range(5):
            raise ValueError("min_score is a zxcvbn score: 0, 1, 2, 3 or 4 (or None).")
        self.min_length = min_length
        self.max_length = max_length
        self.blocklist = blocklist
        self.min_score = min_score
        self._rules = tuple(
            (key, test)
            for key, wanted, test in (
                ("upper", require_upper, str.isupper),
                ("lower", require_lower, str.islower),
                ("digit", require_digit, str.isdigit),
                ("symbol", require_symbol, _is_symbol),
            )
            if wanted
        )
        self._zxcvbn: Callable[..., dict[str, Any]] | None = None
        if min_score is not None:
            try:
                from zxcvbn import zxcvbn
            except ImportError:
                raise ImportError(
                    'Password(min_score=...) needs the zxcvbn package. Run pip install '
                    '"flask-apiguard[zxcvbn]".'
                ) from None
            self._zxcvbn = zxcvbn

    def _serialize(self, value: Any, attr: str | None, obj: Any, **kwargs: Any) -> None:
        """Never output a password, whatever the schema says."""
        return None

    def _deserialize(
        self, value: Any, attr: str | None, data: Mapping[str, Any] | None, **kwargs: Any
    ) -> str:
        raw = super()._deserialize(value, attr, data, **kwargs)
        password = _bounded_normalize(
            "NFKC", raw, self.max_length,
            lambda: self.make_error("too_long", max=self.max_length),
        )
        if _SURROGATE.search(password):
            raise self.make_error("surrogate")
        if _CONTROL.search(password):
            raise self.make_error("control")

        errors: list[str] = []
        if len(password) < self.min_length:
            errors.append(self._message("too_short", min=self.min_length))
        for key, test in self._rules:
            if not any(test(char) for char in password):
                errors.append(self._message(key))
        if self.blocklist:
            if password.lower().strip() in _common_passwords():
                errors.append(self._message("common"))
            elif self._mostly_predictable(password):
                errors.append(self._message("pattern"))
        if self.context_fields and data is not None:
            errors.extend(
                self._message("context", field=key) for key in self._context_in(password, data)
            )
        if errors:
            raise ValidationError(errors)

        if self._zxcvbn is not None and self.min_score is not None:
            result = self._zxcvbn(password[:_ZXCVBN_MAX])
            if int(result["score"]) < self.min_score:
                advice = result.get("feedback") or {}
                parts = [advice.get("warning") or "", *(advice.get("suggestions") or ())]
                feedback = " ".join(p.strip() for p in parts if p and p.strip())
                raise self.make_error(
                    "weak",
                    feedback=feedback or "Use a longer passphrase of unrelated words.",
                )
        return password

    def _message(self, key: str, **kwargs: Any) -> str:
        return str(self.make_error(key, **kwargs).messages[0])

    def _mostly_predictable(self, password: str) -> bool:
        predictable = _predictable(password)
        return 2 * predictable > len(password) and len(password) - predictable < self.min_length

    def _context_in(self, password: str, data: Mapping[str, Any]) -> Iterator[str]:
        """The input keys of the :attr:`context_fields` whose value ``password`` contains."""
        folded = _fold(password)
        for key in self.context_keys():
            value = data.get(key)
            # NFKC shrinks a text at most _MAX_COMPOSITION-fold (and case folding only grows
            # it): a longer value cannot fit in the password, and is not normalised.
            if not isinstance(value, str) or len(value) > _MAX_COMPOSITION * len(folded):
                continue
            whole = _fold(value).strip()
            candidates = {whole, whole.rpartition("@")[0].strip()} if "@" in whole else {whole}
            if any(len(c) >= _MIN_CONTEXT and c in folded for c in candidates):
                yield key

    def context_keys(self) -> list[str]:
        """The input keys (``data_key`` or name) of the :attr:`context_fields`, read from the
        schema this field belongs to (marshmallow's public ``Field.parent`` and
        ``Schema.fields``). ``@validate`` calls it when the view is declared, so a name that
        is not a field of the schema fails at import time, not at the first request.

        :raises ValueError: for a name that is not another field of the same schema.
        """
        schema = self.parent
        if not isinstance(schema, Schema):
            raise ValueError(
                "Password(context_fields=...) reads the other fields of its schema: declare "
                "the Password directly on a Schema, not inside a List, Dict or Tuple."
            )
        keys = []
        for name in self.context_fields:
            field = schema.fields.get(name)
            if field is None or name == self.name:
                what = "the password field itself" if name == self.name else (
                    "not a field of the schema"
                )
                raise ValueError(
                    f"Password(context_fields=...): {name!r} is {what}. Name other fields of "
                    f"the same schema, e.g. context_fields=('username', 'email'); the schema "
                    f"has: {', '.join(sorted(schema.fields))}."
                )
            keys.append(field.data_key if field.data_key is not None else name)
        return keys


# -- validators -----------------------------------------------------------------------------

class Length(validate.Validator):
    """The value's ``len()`` is within ``min`` and ``max`` (both inclusive, both optional).

    :param min: the shortest length accepted.
    :param max: the longest length accepted.
    :param error: a message replacing the default; may use ``{min}`` and ``{max}``.
    """

    message_min = "Shorter than minimum length {min}."
    message_max = "Longer than maximum length {max}."
    message_all = "Length must be between {min} and {max}."

    def __init__(
        self,
        min: int | None = None,
        max: int | None = None,
        *,
        error: str | None = None,
    ) -> None:
        if min is not None and max is not None and min > max:
            raise ValueError("Length needs min <= max.")
        self.min = min
        self.max = max
        self.error = None if error is None else _template(error, error, ("min", "max"))

    def _repr_args(self) -> str:
        return f"min={self.min!r}, max={self.max!r}"

    def _fail(self, message: str) -> ValidationError:
        return ValidationError((self.error or message).format(min=self.min, max=self.max))

    def __call__(self, value: Sized) -> Sized:
        if not isinstance(value, Sized):
            raise ValidationError("Not a value with a length.")
        length = len(value)
        if self.min is not None and length < self.min:
            raise self._fail(self.message_min if self.max is None else self.message_all)
        if self.max is not None and length > self.max:
            raise self._fail(self.message_max if self.min is None else self.message_all)
        return value


class Pattern(validate.Validator):
    """The value is a string that *fully* matches ``regex`` (``re.fullmatch``: no anchors
    needed, and no prefix match slips through as it would with ``re.match``).

    The expression is compiled once, here. It runs on untrusted input: keep it free of
    nested quantifiers such as ``(a+)+`` and bound the length of the field first.

    :param regex: a pattern string, or a compiled ``re.Pattern`` (then ``flags`` must be 0).
    :param flags: ``re`` flags for a pattern string.
    :param error: a message replacing ``"Does not match the expected format."``; it cannot
        contain the value, so say what the format is, e.g. ``"Use 3-64 of a-z, 0-9, _ . -."``.
    """

    default_message = "Does not match the expected format."

    def __init__(
        self, regex: str | re.Pattern[str], flags: int = 0, error: str | None = None
    ) -> None:
        if isinstance(regex, re.Pattern):
            if flags:
                raise ValueError("Pass flags with a pattern string, not a compiled pattern.")
            self.regex: re.Pattern[str] = regex
        else:
            self.regex = re.compile(regex, flags)
        self.error: str = _template(error, self.default_message).format()

    def _repr_args(self) -> str:
        return f"regex={self.regex.pattern!r}"

    def __call__(self, value: str) -> str:
        if not isinstance(value, str) or self.regex.fullmatch(value) is None:
            raise ValidationError(self.error)
        return value


class Email(validate.Validator):
    """An email address: marshmallow's :class:`~marshmallow.validate.Email` rules, at most
    ``max_length`` characters (254, the longest address SMTP can carry, RFC 5321 §4.5.3.1),
    and no control characters (the quoted-string form would otherwise admit some).

    :param max_length: the longest address accepted.
    :param error: a message replacing ``"Not a valid email address."``.
    """

    default_message = "Not a valid email address."

    def __init__(self, *, max_length: int = 254, error: str | None = None) -> None:
        self.max_length = max_length
        self.error: str = _template(error, self.default_message).format()
        self._email = validate.Email()

    def _repr_args(self) -> str:
        return f"max_length={self.max_length!r}"

    def __call__(self, value: str) -> str:
        if (
            not isinstance(value, str)
            or len(value) > self.max_length
            or _CONTROL.search(value)
        ):
            raise ValidationError(self.error)
        try:
            self._email(value)
        except ValidationError:
            raise ValidationError(self.error) from None
        return value


class URL(validate.Validator):
    """An absolute URL with one of ``schemes`` and a fully qualified host name:
    marshmallow's :class:`~marshmallow.validate.URL` rules, plus a length bound and no
    control characters or whitespace. ``javascript:``, ``data:``, ``mailto:`` and
    scheme-relative ``//host`` URLs are refused.

    :param schemes: the schemes accepted, ``http`` and ``https`` by default.
    :param require_tld: refuse dotless host names such as ``http://intranet/``
        (``localhost`` and IP addresses are still accepted, as in marshmallow).
    :param max_length: the longest URL accepted.
    :param error: a message replacing ``"Not a valid URL."``.
    """

    default_message = "Not a valid URL."

    def __init__(
        self,
        *,
        schemes: Iterable[str] = ("http", "https"),
        require_tld: bool = True,
        max_length: int = 2048,
        error: str | None = None,
    ) -> None:
        self.schemes = frozenset(s.lower() for s in schemes)
        if not self.schemes:
            raise ValueError("URL needs at least one scheme.")
        self.require_tld = require_tld
        self.max_length = max_length
        self.error: str = _template(error, self.default_message).format()
        self._url = validate.URL(
            relative=False, absolute=True, schemes=set(self.schemes), require_tld=require_tld
        )

    def _repr_args(self) -> str:
        return f"schemes={sorted(self.schemes)!r}, require_tld={self.require_tld!r}"

    def __call__(self, value: str) -> str:
        if (
            not isinstance(value, str)
            or len(value) > self.max_length
            or "://" not in value
            or _CONTROL.search(value)
            or any(char.isspace() for char in value)
        ):
            raise ValidationError(self.error)
        try:
            self._url(value)
        except ValidationError:
            raise ValidationError(self.error) from None
        return value


_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.IGNORECASE)


class UUID(validate.Validator):
    """A string holding a UUID in its canonical text form: 32 hexadecimal digits in groups
    of 8-4-4-4-12 separated by hyphens, in either case. Braces, ``urn:uuid:``, missing
    hyphens and surrounding whitespace, which :class:`uuid.UUID` (and so marshmallow's
    ``fields.UUID``) tolerate, are refused. Use it on a string field,
    ``fields.String(validate=UUID())``; the loaded value stays a string.

    :param error: a message replacing ``"Not a valid UUID."``.
    """

    default_message = "Not a valid UUID."

    def __init__(self, *, error: str | None = None) -> None:
        self.error: str = _template(error, self.default_message).format()

    def __call__(self, value: str) -> str:
        if not isinstance(value, str) or _UUID.fullmatch(value) is None:
            raise ValidationError(self.error)
        return value
