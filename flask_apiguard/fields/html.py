"""The :class:`~flask_apiguard.fields.SanitizedHTML` field, its allow-lists and its two
sanitiser backends, bleach and nh3.

Both backends are given the same allow-lists, then the same extra checks run after each
(:class:`_AttributePolicy`: URL schemes however encoded, and a small ``style`` filter), so
that they agree on what is safe. The bleach path runs them in an html5lib filter
(:class:`_PostFilter`), the nh3 path in its ``attribute_filter``.
"""

from __future__ import annotations

import functools
import html
import re
import threading
from collections.abc import Iterable, Iterator, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, cast

from bleach.sanitizer import Cleaner as _BleachCleaner
from flask import current_app, has_app_context
from marshmallow import fields

if TYPE_CHECKING:
    from bleach.css_sanitizer import CSSSanitizer
    from html5lib.filters.base import Filter as _Html5libFilter

    from ..state import GuardState
else:
    from bleach.html5lib_shim import Filter as _Html5libFilter

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
            # the app's guard, if any (looked up, not imported: the state imports the layers,
            # and the validation layer these fields)
            state: GuardState | None = current_app.extensions.get("apiguard")
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
