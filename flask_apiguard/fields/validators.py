"""The validators :class:`~flask_apiguard.fields.Length`,
:class:`~flask_apiguard.fields.Pattern`, :class:`~flask_apiguard.fields.Email`,
:class:`~flask_apiguard.fields.URL` and :class:`~flask_apiguard.fields.UUID`: plain callables
for ``validate=`` whose messages never contain the value."""

from __future__ import annotations

import re
import string
from collections.abc import Iterable, Sized

from marshmallow import ValidationError, validate

from .text import _CONTROL


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
