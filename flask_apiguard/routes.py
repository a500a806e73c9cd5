"""The routes the guard adds to an app when asked: the OpenAPI document
(``APIGUARD_OPENAPI_ROUTE``) and the public JWKS of the app's own keys (``APIGUARD_JWKS_ROUTE``).
Both are ``@public``."""

from __future__ import annotations

import json

from flask import Flask, current_app
from flask.typing import ResponseReturnValue
from werkzeug.wrappers import Response

from . import openapi
from .config import GuardConfig
from .policy import public
from .state import current_state

#: The endpoint of the route ``APIGUARD_OPENAPI_ROUTE`` adds.
OPENAPI_ENDPOINT = "apiguard_openapi"


@public
def _serve_openapi() -> ResponseReturnValue:
    """The app's OpenAPI document (``APIGUARD_OPENAPI_ROUTE``), built at its first request."""
    state = current_state()
    if state.openapi_document is None:
        document = openapi.document_for(current_app, state)
        state.openapi_document = json.dumps(document, indent=2).encode()
    return Response(state.openapi_document, mimetype="application/json")


#: The endpoint of the route ``APIGUARD_JWKS_ROUTE`` adds.
JWKS_ENDPOINT = "apiguard_jwks"


@public
def _serve_jwks() -> ResponseReturnValue:
    """The public JWKS of the app's own keys (``APIGUARD_JWKS_ROUTE``)."""
    answer = Response(json.dumps(current_state().jwt.jwks()), mimetype="application/jwk-set+json")
    answer.headers["Cache-Control"] = "public, max-age=300"
    return answer


def add_routes(app: Flask, config: GuardConfig) -> None:
    """Add the routes ``config`` asks for."""
    if config.openapi_route is not None:
        app.add_url_rule(config.openapi_route, endpoint=OPENAPI_ENDPOINT,
                         view_func=_serve_openapi, methods=["GET"])
    if config.jwks_route is not None:
        app.add_url_rule(config.jwks_route, endpoint=JWKS_ENDPOINT, view_func=_serve_jwks,
                         methods=["GET"])
