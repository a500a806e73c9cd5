"""The OpenAPI 3.1 document of an app, written from the policies the pipeline enforces.

Every documented operation is one compiled :class:`~flask_apiguard.policy.Route`: its
``security`` is what the pipeline accepts, its error responses are the problem+json answers
the pipeline can give for it, its parameters and request body are its ``@validate`` schemas
(converted by apispec's ``MarshmallowPlugin``). Nothing is read from the views' code but
their declarations, so the document cannot describe a policy the guard does not enforce.

When the app already has an OpenAPI document (APIFlask's ``app.spec``, flask-smorest's
``Api.spec``), the guard's part (security schemes, per-operation ``security``, its error
responses, ``deprecated``) is merged into that one instead (:func:`merge_into`): one
document per app.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .document import build
from .merge import host_document, is_apiflask, merge_into, merge_into_apiflask

if TYPE_CHECKING:
    from flask import Flask

    from ..state import GuardState

__all__ = ["build", "document_for", "host_document", "is_apiflask", "merge_into",
           "merge_into_apiflask"]


def document_for(app: Flask, state: GuardState, *, title: str | None = None,
                 version: str | None = None) -> dict[str, Any]:
    """The app's one OpenAPI document: APIFlask's or flask-smorest's with the guard's part
    merged in, or else the guard's own."""
    host = host_document(app)
    if host is not None:
        info = host.setdefault("info", {})
        if title:
            info["title"] = title
        if version:
            info["version"] = version
        return merge_into(host, state)
    return build(app, state, title=title, version=version)
