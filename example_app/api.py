"""The routes. Every view states its policy with decorators; ApiGuard enforces them."""

from __future__ import annotations

import functools
import secrets
import sqlite3
import time
from typing import Any

from flask import Blueprint, abort, current_app, request
from werkzeug.security import check_password_hash, generate_password_hash

from flask_apiguard import (
    ApiGuard,
    current_identity,
    deprecated,
    public,
    rate_limit,
    require_api_key,
    require_jwt,
    roles,
    scopes,
    validate,
)

from . import schemas
from .db import create_user, ensure_provider_user, find_user, get_db

bp = Blueprint("api", __name__, url_prefix="/api")


@functools.lru_cache(maxsize=4)
def _dummy_hash(method: str) -> str:
    """Checked when the user does not exist, so that a wrong username costs as much as a wrong
    password (no user enumeration by timing)."""
    return generate_password_hash(secrets.token_urlsafe(16), method=method)


#: One extension object for every app ``create_app`` builds (its state lives on each app).
guard = ApiGuard()


@bp.get("/health")
@public
def health() -> Any:
    return {"status": "healthy"}


# -- authentication ---------------------------------------------------------------------------

@bp.post("/auth/login")
@public
@rate_limit("5 per 15 minutes", key="ip", count="failures")
@validate(schemas.Login)
def login(json_data: dict[str, Any]) -> Any:
    if current_app.config["EXAMPLE_PROVIDER_MODE"]:
        abort(404, "Sign in with your identity provider: this app issues no tokens of its own.")
    user = find_user(get_db(), json_data["username"])
    stored = user["password_hash"] if user else _dummy_hash(current_app.config["EXAMPLE_PASSWORD_METHOD"])
    if not check_password_hash(stored, json_data["password"]) or user is None:
        abort(401, "Wrong username or password.")
    lifetime = current_app.config["APIGUARD_JWT_EXPIRES_IN"]
    token = guard.issue_token(user["username"], roles=user["roles"], scopes=schemas.KEY_SCOPES)
    # A token response must not be stored by caches (RFC 6749 section 5.1).
    return ({"access_token": token, "token_type": "Bearer", "expires_in": lifetime}, 200,
            {"Cache-Control": "no-store"})


@bp.post("/auth/logout")
@require_jwt
def logout() -> Any:
    if current_app.config["EXAMPLE_PROVIDER_MODE"]:
        abort(404, "Sign out with your identity provider: this app issues no tokens of its own.")
    header = request.headers["Authorization"]
    guard.revoke_token(header.split(None, 1)[1].strip())
    return "", 204


@bp.get("/me")
@require_jwt
@require_api_key
def me() -> Any:
    return {
        "subject": current_identity.subject,
        "roles": sorted(current_identity.roles),
        "scopes": sorted(current_identity.scopes),
        "method": current_identity.method,
    }


# -- users (admins only) ----------------------------------------------------------------------

@bp.post("/users")
@require_jwt
@roles("admin")
@validate(schemas.CreateUser)
def create_user_view(json_data: dict[str, Any]) -> Any:
    db = get_db()
    try:
        create_user(db, json_data["username"], json_data["email"], json_data["password"],
                    json_data["roles"])
        db.commit()
    except sqlite3.IntegrityError:
        abort(409, "That username is taken.")
    return {"username": json_data["username"], "email": json_data["email"],
            "roles": sorted(json_data["roles"])}, 201


# -- the caller's own API keys -----------------------------------------------------------------

@bp.post("/keys")
@require_jwt
@rate_limit("10/hour")
@validate(schemas.CreateKey)
def create_key(json_data: dict[str, Any]) -> Any:
    plaintext, key = guard.api_keys.create(
        json_data["name"], scopes=json_data["scopes"], owner=current_identity.subject,
        expires_in=json_data["expires_days"] * 86400,
    )
    # The plaintext is returned once; only its hash is stored.
    return {"key": plaintext, **key.to_dict()}, 201


@bp.get("/keys")
@require_jwt
def list_keys() -> Any:
    keys = guard.api_keys.list(owner=current_identity.subject)
    return {"keys": [k.to_dict() for k in keys]}


@bp.delete("/keys/<key_id>")
@require_jwt
def revoke_key(key_id: str) -> Any:
    key = guard.api_keys.get(key_id)
    if key is None or key.owner != current_identity.subject:
        abort(404, "No such key.")
    guard.api_keys.revoke(key_id)
    return "", 204


# -- notes: each belongs to its creator (object-level authorization) ---------------------------

def _note(row: sqlite3.Row) -> dict[str, Any]:
    return {"id": row["id"], "title": row["title"], "body": row["body"],
            "created_at": row["created_at"], "updated_at": row["updated_at"]}


_MAX_ID = 2**63 - 1  # SQLite's INTEGER range


def _own_note(note_id: int) -> sqlite3.Row:
    """The caller's note, or 404: another user's note is indistinguishable from a missing one."""
    if note_id > _MAX_ID:
        abort(404, "No such note.")
    row = get_db().execute("SELECT * FROM notes WHERE id = ? AND owner = ?",
                           (note_id, current_identity.subject)).fetchone()
    if row is None:
        abort(404, "No such note.")
    return row


@bp.get("/notes")
@require_jwt
@require_api_key
@scopes("notes:read")
@validate(schemas.NoteQuery, location="query")
def list_notes(query_data: dict[str, Any]) -> Any:
    """Your notes, a page at a time (the successor of GET /api/v1/notes)."""
    rows = get_db().execute(
        "SELECT * FROM notes WHERE owner = ? ORDER BY id LIMIT ? OFFSET ?",
        (current_identity.subject, query_data["limit"], query_data["offset"]),
    ).fetchall()
    return {"notes": [_note(r) for r in rows]}


#: When GET /api/v1/notes stops answering (410 gone from then on).
V1_SUNSET = "2030-06-30"


@bp.get("/v1/notes")
@require_jwt
@require_api_key
@scopes("notes:read")
@deprecated(sunset=V1_SUNSET, since="2026-12-01", replacement="/api/notes")
def list_notes_v1() -> Any:
    """Version 1 of the listing: a bare array of at most 50 notes. Use GET /api/notes."""
    rows = get_db().execute("SELECT * FROM notes WHERE owner = ? ORDER BY id LIMIT 50",
                            (current_identity.subject,)).fetchall()
    return [_note(r) for r in rows]


@bp.post("/notes")
@require_jwt
@require_api_key
@scopes("notes:write")
@rate_limit("30/minute")
@validate(schemas.NoteIn)
def create_note(json_data: dict[str, Any]) -> Any:
    db = get_db()
    if current_app.config["EXAMPLE_PROVIDER_MODE"] and current_identity.method == "jwt":
        ensure_provider_user(db, current_identity.subject or "")  # first note of a provider user
    if find_user(db, current_identity.subject or "") is None:
        # e.g. an API key made with the CLI and no --owner: it has no user to own notes
        abort(403, "Only a user account can own notes: create the key with an owner.")
    now = time.time()
    cursor = db.execute(
        "INSERT INTO notes (owner, title, body, created_at, updated_at) VALUES (?, ?, ?, ?, ?)",
        (current_identity.subject, json_data["title"], json_data["body"], now, now),
    )
    db.commit()
    return _note(_own_note(int(cursor.lastrowid or 0))), 201


@bp.get("/notes/<int:note_id>")
@require_jwt
@require_api_key
@scopes("notes:read")
def get_note(note_id: int) -> Any:
    return _note(_own_note(note_id))


@bp.patch("/notes/<int:note_id>")
@require_jwt
@require_api_key
@scopes("notes:write")
@validate(schemas.NotePatch)
def update_note(note_id: int, json_data: dict[str, Any]) -> Any:
    note = _own_note(note_id)
    title = json_data.get("title", note["title"])
    body = json_data.get("body", note["body"])
    db = get_db()
    db.execute("UPDATE notes SET title = ?, body = ?, updated_at = ? WHERE id = ?",
               (title, body, time.time(), note_id))
    db.commit()
    return _note(_own_note(note_id))


@bp.delete("/notes/<int:note_id>")
@require_jwt
@require_api_key
@scopes("notes:write")
def delete_note(note_id: int) -> Any:
    _own_note(note_id)
    db = get_db()
    db.execute("DELETE FROM notes WHERE id = ?", (note_id,))
    db.commit()
    return "", 204
