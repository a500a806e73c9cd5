"""The guard's part of each OpenAPI operation: which operations there are (one per compiled
:class:`~flask_apiguard.policy.Route`), their path templates, ``security``, the problem+json
responses the pipeline can give, and the security schemes they use."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from werkzeug.routing import Map, Rule
from werkzeug.routing.converters import (
    AnyConverter,
    BaseConverter,
    FloatConverter,
    IntegerConverter,
    PathConverter,
    UnicodeConverter,
    UUIDConverter,
)
from werkzeug.routing.rules import parse_converter_args

from ..policy import Route

if TYPE_CHECKING:

    from ..state import GuardState

OPENAPI_VERSION = "3.1.0"
#: The name of the problem+json schema in ``components.schemas`` (``ApiGuardProblem`` when a
#: document being merged into already has another ``Problem``).
PROBLEM = "Problem"
#: The security schemes, named after the contract's authentication methods.
JWT_SCHEME = "jwt"
API_KEY_SCHEME = "api_key"
PROBLEM_JSON = "application/problem+json"
FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")
#: Methods that carry a body by convention (a 413/415 is documented for them).
BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_VARIABLE = re.compile(
    r"<(?:(?P<converter>[a-zA-Z_][a-zA-Z0-9_]*)(?:\((?P<args>.*?)\))?:)?"
    r"(?P<variable>[a-zA-Z_][a-zA-Z0-9_]*)>"
)


def problem_schema() -> dict[str, Any]:
    """The JSON Schema of every error body (RFC 9457 plus the guard's members)."""
    return {
        "type": "object",
        "description": "An RFC 9457 problem, as every error of the API is answered.",
        "required": ["type", "title", "status", "detail", "error", "request_id"],
        "properties": {
            "type": {"type": "string", "description": "about:blank, or APIGUARD_ERROR_TYPE_BASE "
                                                      "followed by the error code."},
            "title": {"type": "string"},
            "status": {"type": "integer"},
            "detail": {"type": "string"},
            "error": {"type": "string", "description": "A stable, machine-readable code."},
            "request_id": {"type": "string"},
            "errors": {"type": "object", "description": "validation_error: messages per field."},
            "retry_after": {"type": "integer", "description": "429: seconds to wait."},
        },
    }


@dataclass(frozen=True, slots=True)
class Operation:
    """One documented (rule, method) and the route the pipeline enforces for it."""

    rule: Rule
    method: str
    path: str
    path_parameters: tuple[dict[str, Any], ...]
    route: Route


# -- which operations --------------------------------------------------------------------------

def operations(state: GuardState) -> Iterator[Operation]:
    """Every rule and method the app routes, as ``flask apiguard routes`` lists them: no
    ``OPTIONS`` (the guard answers it), ``HEAD`` only where its policy differs from ``GET``'s,
    and no method outside ``APIGUARD_ALLOWED_METHODS`` (always 405)."""
    allowed = state.config.allowed_methods
    for rule in sorted(state.url_map.iter_rules(), key=lambda r: (r.rule, r.endpoint)):
        if rule.endpoint not in state.view_functions:
            continue
        methods = sorted(m for m in (rule.methods or ()) if m != "OPTIONS" and m in allowed)
        path, parameters = path_template(rule, state.url_map)
        for method in methods:
            route = state.route(rule.endpoint, method)
            if method == "HEAD" and "GET" in methods and _same(route, state.route(rule.endpoint, "GET")):
                continue
            yield Operation(rule, method, path, parameters, route)


def _same(head: Route, get: Route) -> bool:
    return head.declared == get.declared


def path_template(rule: Rule, url_map: Map) -> tuple[str, tuple[dict[str, Any], ...]]:
    """``/notes/<int:note_id>`` as ``/notes/{note_id}``, with a path parameter per variable
    typed after its converter."""
    parameters = []
    for match in _VARIABLE.finditer(rule.rule):
        name = match.group("variable")
        converter_name = match.group("converter") or "default"
        args, kwargs = parse_converter_args(match.group("args")) if match.group("args") else ((), {})
        try:
            converter = url_map.converters[converter_name](url_map, *args, **kwargs)
        except Exception:  # a custom converter with a constructor of its own: a plain string
            converter = None
        parameters.append({"in": "path", "name": name, "required": True,
                           "schema": converter_schema(converter)})
    return _VARIABLE.sub(lambda m: "{" + m.group("variable") + "}", rule.rule), tuple(parameters)


def converter_schema(converter: BaseConverter | None) -> dict[str, Any]:
    """The JSON Schema of the values a werkzeug converter accepts."""
    if isinstance(converter, IntegerConverter | FloatConverter):
        schema: dict[str, Any] = {"type": "integer" if isinstance(converter, IntegerConverter)
                                  else "number"}
        if converter.min is not None:
            schema["minimum"] = converter.min
        elif not converter.signed:
            schema["minimum"] = 0
        if converter.max is not None:
            schema["maximum"] = converter.max
        return schema
    if isinstance(converter, UUIDConverter):
        return {"type": "string", "format": "uuid"}
    if isinstance(converter, AnyConverter):
        return {"type": "string", "enum": sorted(converter.items)}
    if isinstance(converter, UnicodeConverter | PathConverter):
        # werkzeug's own patterns for these ([^/]{1,}, [^/].*?) are also ECMA-262 patterns
        return {"type": "string", "minLength": 1, "pattern": f"^(?:{converter.regex})$"}
    return {"type": "string"}


# -- the guard's part of an operation ----------------------------------------------------------

def security(route: Route) -> list[dict[str, list[str]]]:
    """The alternatives the pipeline accepts; ``[]`` for a public route, ``{}`` among them when
    anonymous callers are let through."""
    if route.public:
        return []
    scopes = sorted({s for names in route.scope_rules for s in names})
    key_scopes = sorted(set(scopes) | route.api_key_scopes)
    alternatives: list[dict[str, list[str]]] = []
    if route.jwt:
        alternatives.append({JWT_SCHEME: scopes})
    if route.api_key:
        alternatives.append({API_KEY_SCHEME: key_scopes})
    if not route.required:
        alternatives.append({})
    return alternatives


def _problem(description: str, problem_ref: str, **headers: dict[str, Any]) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": description,
        "content": {PROBLEM_JSON: {"schema": {"$ref": problem_ref}}},
    }
    if headers:
        response["headers"] = {name.replace("_", "-"): header for name, header in headers.items()}
    return response


def _header(description: str, type_: str = "string", *, required: bool = False) -> dict[str, Any]:
    header: dict[str, Any] = {"description": description, "schema": {"type": type_}}
    if required:
        header["required"] = True
    return header


def _ratelimit_headers() -> dict[str, dict[str, Any]]:
    return {
        "RateLimit_Limit": _header("Requests allowed in the current window.", "integer"),
        "RateLimit_Remaining": _header("Requests left in the current window.", "integer"),
        "RateLimit_Reset": _header("Seconds until the window resets.", "integer"),
    }


def responses(state: GuardState, operation: Operation, problem_ref: str,
              documented_body: bool) -> dict[str, Any]:
    """The responses the pipeline can give for ``operation``, and the view's own as ranges."""
    config = state.config
    route = operation.route
    method = operation.method
    limited = bool(route.limits or route.limit_sources or route.concurrency)
    authenticated = not route.public and (route.jwt or route.api_key)
    checks_credentials = authenticated and config.auth_failure_limit is not None
    body = documented_body or method in BODY_METHODS

    success_headers: dict[str, Any] = {}
    if limited and config.ratelimit_headers:
        success_headers.update(_ratelimit_headers())
    deprecation_headers: dict[str, Any] = {}
    if route.deprecation is not None:
        deprecation_headers["Deprecation"] = _header(
            "RFC 9745: when the operation was (or will be) deprecated, as @<unix time>.",
            required=True)
        if route.deprecation.sunset is not None:
            deprecation_headers["Sunset"] = _header(
                "RFC 8594: when the operation stops answering (an HTTP-date).", required=True)
        if route.deprecation.link is not None or route.deprecation.replacement is not None:
            deprecation_headers["Link"] = _header(
                'rel="deprecation" (its documentation) and rel="successor-version".',
                required=True)
    success: dict[str, Any] = {
        "description": "The view's own answer: flask-apiguard documents the policy it "
                       "enforces, not the body the view returns.",
    }
    if success_headers or deprecation_headers:
        success["headers"] = {name.replace("_", "-"): h
                              for name, h in {**success_headers, **deprecation_headers}.items()}
    out: dict[str, Any] = {"2XX": success}

    def problem(description: str, **headers: dict[str, Any]) -> dict[str, Any]:
        return _problem(description, problem_ref, **headers, **deprecation_headers)

    bad_request = []
    if route.validations:
        bad_request.append("validation_error (a @validate schema refused the data)")
    if body:
        bad_request.append("malformed_json or invalid_body (JSON too deep, '$' keys)")
    if config.duplicate_params == "reject":
        bad_request.append("duplicate_parameter (a repeated query parameter)")
    if state.hosts is not None:
        bad_request.append("invalid_host")
    if bad_request:
        out["400"] = problem("Bad request: " + "; ".join(bad_request) + ".")
    if authenticated:
        out["401"] = problem(
            "Missing or invalid credentials: unauthorized, invalid_token, token_expired, "
            "token_revoked or invalid_api_key.",
            WWW_Authenticate=_header("The bearer challenge.", required=True))
    forbidden = []
    if route.role_rules or route.scope_rules or route.api_key_scopes:
        forbidden.append("forbidden (a role or scope is missing)")
    if config.force_https and method not in ("GET", "HEAD"):
        forbidden.append("https_required (sent over plain HTTP)")
    if forbidden:
        out["403"] = problem("Refused: " + "; ".join(forbidden) + ".")
    if operation.path_parameters:
        out["404"] = problem("not_found: no resource matches the path parameters.")
    if route.gone_at is not None:
        assert route.deprecation is not None and route.deprecation.sunset is not None
        out["410"] = problem(f"gone: from its sunset on ({route.deprecation.sunset.isoformat()}).")
    if body:
        out["413"] = problem("payload_too_large: the body is over the size limit.")
        if config.json_only:
            out["415"] = problem("unsupported_media_type: the body is not JSON"
                                 + (" or a form." if route.accepts_form else "."))
    if limited or checks_credentials:
        headers = {"Retry_After": _header("Seconds to wait.", "integer", required=True)}
        if limited and config.ratelimit_headers:
            headers.update(_ratelimit_headers())
        causes = []
        if limited:
            causes.append("rate_limit_exceeded")
        if checks_credentials:
            causes.append("too_many_auth_failures (too many failed credentials from this address)")
        out["429"] = problem("Too many requests: " + " or ".join(causes) + ".", **headers)
    out["4XX"] = problem("An error the view raised itself (abort(404), abort(409)…), answered "
                         "as problem+json.")
    out["500"] = problem("internal_error: an unhandled exception.")
    revocation = config.jwt_revocation and route.jwt and not route.public
    closed = config.ratelimit_on_storage_error == "closed" and (limited or checks_credentials)
    if revocation or closed:
        out["503"] = problem("service_unavailable: the shared storage could not be reached.")
    return dict(sorted(out.items()))


def extension(route: Route) -> dict[str, Any]:
    """``x-apiguard``: the parts of the policy OpenAPI has no field for."""
    info: dict[str, Any] = {}
    if route.role_rules:
        info["roles"] = [{"any_of" if require == "any" else "all_of": sorted(names)}
                         for names, require in route.role_rules]
    if route.limits:
        info["rate_limits"] = [str(limit.item) for limit in route.limits]
    if route.deprecation is not None and route.deprecation.sunset is not None:
        info["sunset"] = route.deprecation.sunset.isoformat().replace("+00:00", "Z")
    return info


def guard_operation(state: GuardState, operation: Operation, problem_ref: str,
                    documented_body: bool) -> dict[str, Any]:
    """What the guard says about one operation, with or without apispec."""
    route = operation.route
    op: dict[str, Any] = {
        "security": security(route),
        "responses": responses(state, operation, problem_ref, documented_body),
    }
    if route.deprecation is not None:
        op["deprecated"] = True
    extra = extension(route)
    if extra:
        op["x-apiguard"] = extra
    return op


def used_schemes(document: dict[str, Any]) -> set[str]:
    return {name for item in document.get("paths", {}).values() for op in item.values()
            if isinstance(op, dict) for requirement in op.get("security", ()) for name in requirement}


def security_schemes(state: GuardState, used: set[str]) -> dict[str, dict[str, Any]]:
    schemes = {
        JWT_SCHEME: {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
        API_KEY_SCHEME: {"type": "apiKey", "in": "header", "name": state.config.api_key_header},
    }
    return {name: scheme for name, scheme in schemes.items() if name in used}
