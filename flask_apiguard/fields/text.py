"""The :class:`~flask_apiguard.fields.SafeString` field and the character classes and
bounded Unicode normalisation that the other fields and validators share."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Mapping
from typing import Any, Literal

from marshmallow import ValidationError, fields

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

