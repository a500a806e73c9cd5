"""Steps 6 and 10: body size, media type, JSON well-formedness, depth, operator keys and
repeated query parameters, all before any schema sees the data.

The depth of a JSON document is measured on the raw bytes, without recursion, before the
parser runs: a 10 000-deep body is refused without ever reaching Python's recursion limit.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from typing import Any

from flask.wrappers import Request
from werkzeug.datastructures import ImmutableMultiDict, MultiDict
from werkzeug.exceptions import RequestEntityTooLarge

from ..config import GuardConfig
from ..errors import (
    DuplicateParameter,
    InvalidBody,
    MalformedJSON,
    PayloadTooLarge,
    UnsupportedMediaType,
)
from . import NO_BODY

FORM_TYPES = frozenset({"application/x-www-form-urlencoded", "multipart/form-data"})
#: A JSON string, or an unterminated one up to the end: every match ends where the scan goes on,
#: so the substitution below is linear even on hostile input such as '"\"\"\"…'.
_STRING = re.compile(rb'"(?:[^"\\]++|\\(?:.|\Z))*+(?:"|\Z)', re.DOTALL)
_KEEP_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_OPEN = frozenset(b"[{")
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89abcdefABCDEF]")


def is_json_type(mimetype: str) -> bool:
    """``application/json`` or any ``application/*+json``."""
    return mimetype == "application/json" or (
        mimetype.startswith("application/") and mimetype.endswith("+json")
    )


def depth_exceeds(data: bytes, limit: int) -> bool:
    """True when the JSON text in ``data`` nests arrays/objects deeper than ``limit``.

    Strings are blanked first so brackets inside them do not count; the scan is iterative
    and linear. An unterminated string hides the brackets after it, which is safe: the parser
    stops at that string, never deeper than the brackets counted before it.
    """
    if data.count(b"[") + data.count(b"{") <= limit:
        return False
    depth = 0
    for byte in _STRING.sub(b'""', data).translate(None, _KEEP_BRACKETS):
        if byte in _OPEN:
            depth += 1
            if depth > limit:
                return True
        else:
            depth -= 1
    return False


def operator_key_path(document: Any) -> bool:
    """True when any object key, at any depth, starts with ``$``. Iterative."""
    stack = [document]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            for key, value in node.items():
                if key.startswith("$"):
                    return True
                if isinstance(value, dict | list):
                    stack.append(value)
        elif isinstance(node, list):
            stack.extend(item for item in node if isinstance(item, dict | list))
    return False


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e999 would become Infinity, which JSON cannot carry
        raise ValueError("number out of range")
    return value


#: One decoder for every request (``json.loads`` with options would build one per call).
_DECODER = json.JSONDecoder(parse_constant=_reject_constant, parse_float=_finite_float)


def _streamed(environ: dict[str, Any]) -> bool:
    """A body with no declared length that the server still delivers (and terminates)."""
    return "HTTP_TRANSFER_ENCODING" in environ or bool(environ.get("wsgi.input_terminated"))


def _declared_length(environ: dict[str, Any]) -> int | None:
    """``Content-Length`` as werkzeug reads it: None for a streamed body, 0 when invalid."""
    if "HTTP_TRANSFER_ENCODING" in environ and "chunked" in environ["HTTP_TRANSFER_ENCODING"].lower():
        return None
    raw = environ.get("CONTENT_LENGTH")
    if raw is None or raw == "":
        return None
    try:
        return max(0, int(raw)) if raw.strip().isdigit() else 0
    except ValueError:
        return 0


class BodyGuard:
    """The size, media-type and JSON checks, configured once."""

    __slots__ = ("duplicate_params", "json_only", "max_depth", "max_length", "operator_keys")

    def __init__(self, config: GuardConfig, app_max_length: int | None) -> None:
        limits = [n for n in (config.max_content_length, app_max_length) if n is not None]
        self.max_length = min(limits) if limits else None
        self.max_depth = config.max_json_depth
        self.json_only = config.json_only
        self.operator_keys = config.reject_operator_keys
        self.duplicate_params = config.duplicate_params

    # -- step 6 -------------------------------------------------------------------------------
    def check_size(self, request: Request) -> int | None:
        """413 when the body is over the limit, before the view or the form parser read it.

        With a ``Content-Length`` the header decides and nothing is read. A streamed body
        (``Transfer-Encoding: chunked``) has no announced size, so at most one byte more than
        the limit is read into the request's cache here, and the answer is 413 when that byte
        came; werkzeug's own cap would silently cut such a body at the limit instead.

        Returns the declared length (None for a streamed body or none), for :meth:`check_body`.
        """
        environ = request.environ
        limit = self.max_length
        length = _declared_length(environ)
        if length is not None:
            if limit is not None and length > limit:
                raise self._too_large()
            request.max_content_length = limit
            return length
        if not _streamed(environ):
            request.max_content_length = limit  # werkzeug reads nothing without a length
            return None
        # No declared length but a stream the server terminates: chunked HTTP/1.1, or an
        # HTTP/2 request without content-length. Read it now (bounded), so that every later
        # check sees the real body.
        request.max_content_length = None if limit is None else limit + 1
        try:
            data = request.get_data(cache=True)
        except RequestEntityTooLarge:
            raise self._too_large() from None
        if limit is not None and len(data) > limit:
            raise self._too_large()
        return None

    def _too_large(self) -> PayloadTooLarge:
        return PayloadTooLarge(f"The request body may be at most {self.max_length} bytes.")

    # -- step 10 ------------------------------------------------------------------------------
    def check_body(self, request: Request, accepts_form: bool, length: int | None) -> Any:
        """Check the body (``length`` as :meth:`check_size` returned it); return the parsed
        JSON document, or :data:`NO_BODY` when there is none (or it is a form)."""
        if length == 0 or (length is None and not getattr(request, "_cached_data", None)):
            return NO_BODY  # no body (a streamed one was read, and cached, at step 6)
        # the common case without parsing the header: exactly "application/json"
        if request.environ.get("CONTENT_TYPE") == "application/json" \
                or is_json_type(request.mimetype):
            return self._parse_json(request, length)
        mimetype = request.mimetype
        if accepts_form and mimetype in FORM_TYPES:
            self._read(request, form=True)
            return NO_BODY
        if self.json_only:
            expected = "application/json or a form" if accepts_form else "application/json"
            raise UnsupportedMediaType(f"The request body must be {expected}.")
        return NO_BODY

    def _read(self, request: Request, length: int | None = None, *, form: bool = False) -> bytes:
        try:
            if form:
                request.form  # noqa: B018 - parse now, under the size limit
                return b""
            cached: bytes | None = getattr(request, "_cached_data", None)
            if cached is not None:
                return cached
            environ = request.environ
            if length is not None and "stream" not in request.__dict__:
                # A declared length already checked against the limit, and nobody has opened
                # the stream yet: read exactly that many bytes from the WSGI input, as
                # werkzeug's LimitedStream would, and cache them where get_data() and the
                # form parser look.
                data: bytes = environ["wsgi.input"].read(length) if length else b""
                request._cached_data = data
                return data
            return request.get_data(cache=True)
        except RequestEntityTooLarge:
            raise self._too_large() from None

    def _parse_json(self, request: Request, length: int | None) -> Any:
        data = self._read(request, length)
        if not data:
            return NO_BODY
        try:
            # JSON between systems is UTF-8 (RFC 8259 section 8.1). Decoding strictly first
            # refuses UTF-16/32 bodies (whose escapes would hide a "$" from the byte checks
            # below) and UTF-8-encoded surrogates, which Python's own decoder would let through.
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise MalformedJSON("The request body is not valid UTF-8 JSON.") from None
        if depth_exceeds(data, self.max_depth):
            raise InvalidBody(f"The JSON body nests deeper than {self.max_depth} levels.")
        try:
            document = _DECODER.decode(text)
            if _SURROGATE_ESCAPE.search(data):
                json.dumps(document, ensure_ascii=False).encode("utf-8")
        except (ValueError, RecursionError):
            raise MalformedJSON() from None
        if self.operator_keys and (b"$" in data or b"\\u0024" in data) and operator_key_path(document):
            raise InvalidBody("Object keys may not start with '$'.")
        request._cached_json = (document, document)
        return document

    def check_query(self, request: Request, list_fields: Iterable[str]) -> None:
        """Apply ``APIGUARD_DUPLICATE_PARAMS`` to the query string."""
        if not request.environ.get("QUERY_STRING") or self.duplicate_params == "allow":
            return
        args: MultiDict[str, str] = request.args
        allowed = frozenset(list_fields)
        repeated = [k for k, values in args.lists() if len(values) > 1 and k not in allowed]
        if not repeated:
            return
        if self.duplicate_params == "reject":
            raise DuplicateParameter(
                f"The query parameter {sorted(repeated)[0][:64]!r} was given more than once."
            )
        pick = 0 if self.duplicate_params == "first" else -1
        request.args = ImmutableMultiDict(
            [(k, v) for k, values in args.lists()
             for v in (values if k in allowed else [values[pick]])]
        )
