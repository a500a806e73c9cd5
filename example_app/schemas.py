"""Request schemas, built once at import time and used through ``@validate``."""

from __future__ import annotations

import unicodedata

from marshmallow import Schema, ValidationError, fields, validate

from flask_apiguard.fields import Password, Pattern, SafeString, SanitizedHTML

ROLES = ("admin", "user")
KEY_SCOPES = ("notes:read", "notes:write")


class Login(Schema):
    username = SafeString(required=True, max_length=64)
    # Normalised like CreateUser's Password (NFKC) so that the same password matches, but
    # without strength rules: it is only compared with the stored hash.
    password = Password(required=True, min_length=1, blocklist=False)


class CreateUser(Schema):
    username = SafeString(
        required=True, max_length=64,
        validate=Pattern(r"[a-z0-9_.-]{3,64}", error="Use 3 to 64 of a-z, 0-9, _ . and -."),
    )
    email = fields.Email(required=True, validate=validate.Length(max=254))
    password = Password(required=True)
    roles = fields.List(fields.String(validate=validate.OneOf(ROLES)),
                        load_default=lambda: ["user"], validate=validate.Length(min=1))


def _key_name(value: str) -> None:
    """What the API key store accepts as a name: not blank, no format characters (SafeString
    keeps the zero-width joiners that emoji need; the store refuses every format character)."""
    if not value.strip() or any(unicodedata.category(ch) == "Cf" for ch in value):
        raise ValidationError("Use a non-blank name without invisible characters.")


class CreateKey(Schema):
    name = SafeString(required=True, max_length=100, validate=_key_name)
    scopes = fields.List(fields.String(validate=validate.OneOf(KEY_SCOPES)),
                         load_default=lambda: list(KEY_SCOPES))
    expires_days = fields.Integer(load_default=90, validate=validate.Range(min=1, max=365))


class NoteIn(Schema):
    title = SafeString(required=True, max_length=200)
    # bounded before sanitizing (max_length, max_tags) and after (Length)
    body = SanitizedHTML(load_default="", max_length=5000, max_tags=500,
                         validate=validate.Length(max=5000))


class NotePatch(Schema):
    title = SafeString(max_length=200)
    body = SanitizedHTML(max_length=5000, max_tags=500, validate=validate.Length(max=5000))


class NoteQuery(Schema):
    limit = fields.Integer(load_default=50, validate=validate.Range(min=1, max=200))
    offset = fields.Integer(load_default=0, validate=validate.Range(min=0, max=1_000_000))
