"""The :class:`~flask_apiguard.fields.Password` field: NIST SP 800-63B checks, the shipped
blocklist of common passwords (``flask_apiguard/data/common-passwords.txt.gz``, read once on
first use), the repeated and sequential character patterns, and the user's own details
(``context_fields``)."""

from __future__ import annotations

import functools
import gzip
import importlib.resources
import itertools
import operator
import re
import unicodedata
from collections.abc import Callable, Iterable, Iterator, Mapping
from types import MappingProxyType
from typing import Any

from marshmallow import Schema, ValidationError, fields

from .text import _CONTROL, _MAX_COMPOSITION, _SURROGATE, _bounded_normalize

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
    # one character for one (a few lowercase to two, "İ" for one: those are kept as they are,
    # so that one of them cannot switch case-folding off for the whole password)
    text = "".join(low if len(low := ch.lower()) == 1 else ch for ch in password)
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
