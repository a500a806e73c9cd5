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

import copy
import inspect
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin
from apispec.ext.marshmallow.common import resolve_schema_cls
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

from .policy import Route, _handler_of

if TYPE_CHECKING:
    from flask import Flask

    from .state import GuardState

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
    limited = bool(route.limits)
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


# -- the document of an app without one ---------------------------------------------------------

def _schema_names() -> Callable[[Any], str | None]:
    """apispec's schema name resolver: the class name without ``Schema``, unique within one
    document (a second ``Login`` class becomes ``Login2``); a dict of fields (built by
    ``Schema.from_dict``) is inlined."""
    taken: dict[str, type] = {}

    def resolve(schema: Any) -> str | None:
        cls = resolve_schema_cls(schema)
        cls = cls[0] if isinstance(cls, list) else cls
        if cls.__module__ == "marshmallow.schema" and cls.__name__.startswith("Validate"):
            return None  # @validate({...}): Schema.from_dict
        base = cls.__name__.removesuffix("Schema") or cls.__name__
        name, n = base, 1
        while name in taken and taken[name] is not cls:
            n += 1
            name = f"{base}{n}"
        taken[name] = cls
        return name

    return resolve


def _length_attributes(self: Any, field: Any, ret: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    """apispec attribute function: the ``min_length``/``max_length`` of flask-apiguard's own
    fields (``SafeString``, ``Password``, ``SanitizedHTML``) as ``minLength``/``maxLength``."""
    from .fields import Password, SafeString, SanitizedHTML

    out: dict[str, Any] = {}
    if isinstance(field, SafeString | Password | SanitizedHTML):
        maximum = getattr(field, "max_length", None)
        if maximum is not None and ("maxLength" not in ret or ret["maxLength"] > maximum):
            out["maxLength"] = maximum
    if isinstance(field, Password) and ("minLength" not in ret or ret["minLength"] < field.min_length):
        out["minLength"] = field.min_length
    return out


def _summary(operation: Operation, state: GuardState) -> str | None:
    view = state.view_functions[operation.rule.endpoint]
    view_class = getattr(view, "view_class", None)
    target = _handler_of(view_class, operation.method) if view_class is not None else view
    doc = inspect.getdoc(target) if target is not None else None
    return doc.strip().split("\n\n", 1)[0].replace("\n", " ") if doc else None


def _operation_ids(found: list[Operation]) -> list[str]:
    by_endpoint: dict[str, int] = {}
    for operation in found:
        by_endpoint[operation.rule.endpoint] = by_endpoint.get(operation.rule.endpoint, 0) + 1
    ids: list[str] = []
    for operation in found:
        base = operation.rule.endpoint
        if by_endpoint[base] > 1:
            base = f"{base}.{operation.method.lower()}"
        candidate, n = base, 1
        while candidate in ids:
            n += 1
            candidate = f"{base}_{n}"
        ids.append(candidate)
    return ids


def build(app: Flask, state: GuardState, *, title: str | None = None,
          version: str | None = None) -> dict[str, Any]:
    """The OpenAPI 3.1 document of ``app``, written by apispec from the compiled routes."""
    info = dict(state.config.openapi_info)
    info_title = title or info.pop("title", None) or app.name
    info_version = version or info.pop("version", None) or "0.0.0"
    info.pop("title", None)
    info.pop("version", None)
    plugin = MarshmallowPlugin(schema_name_resolver=cast(Any, _schema_names()))
    spec = APISpec(title=info_title, version=info_version, openapi_version=OPENAPI_VERSION,
                   plugins=[plugin], info=info)
    assert plugin.converter is not None
    plugin.converter.add_attribute_function(_length_attributes)  # type: ignore[no-untyped-call]
    problem_ref = f"#/components/schemas/{PROBLEM}"
    spec.components.schema(PROBLEM, problem_schema())

    found = list(operations(state))
    paths: dict[str, dict[str, Any]] = {}
    for operation, operation_id in zip(found, _operation_ids(found), strict=True):
        validations = {v.location: v.schema for v in operation.route.validations}
        op: dict[str, Any] = {"operationId": operation_id}
        summary = _summary(operation, state)
        if summary:
            op["summary"] = summary
        parameters = list(operation.path_parameters)
        if "path" in validations:
            # a @validate(location="path") schema says more than the converters; only the
            # rule's own variables are documented
            declared = {p["name"]: p for p in plugin.converter.schema2parameters(
                validations["path"], location="path")}
            parameters = [declared.get(p["name"], p) for p in parameters]
        parameters += [{"in": where, "schema": validations[location]}
                       for location, where in (("query", "query"), ("headers", "header"))
                       if location in validations]
        if parameters:
            op["parameters"] = parameters
        content: dict[str, Any] = {}
        if "json" in validations:
            content["application/json"] = {"schema": validations["json"]}
        if "form" in validations:
            content.update({media_type: {"schema": validations["form"]} for media_type in FORM_TYPES})
        if content:
            bodies = [validations[loc] for loc in ("json", "form") if loc in validations]
            op["requestBody"] = {
                "required": any(f.required for s in bodies for f in s.load_fields.values()),
                "content": content,
            }
        op.update(guard_operation(state, operation, problem_ref, bool(content)))
        paths.setdefault(operation.path, {})[operation.method.lower()] = op
    for path, item in paths.items():
        spec.path(path=path, operations=item)
    document = spec.to_dict()
    schemes = security_schemes(state, used_schemes(document))
    if schemes:
        document.setdefault("components", {})["securitySchemes"] = schemes
    return document


# -- merging into the document of APIFlask or flask-smorest ------------------------------------

def host_document(app: Flask) -> dict[str, Any] | None:
    """The OpenAPI document APIFlask or flask-smorest keeps for ``app``, if any (a copy)."""
    if is_apiflask(app):
        # APIFlask's public property: generated anew, its spec processor applied
        spec: Any = app.spec  # type: ignore[attr-defined]
        if isinstance(spec, str):  # SPEC_FORMAT = "yaml"
            import yaml

            spec = yaml.safe_load(spec)
        return cast(dict[str, Any], copy.deepcopy(spec))
    smorest = app.extensions.get("flask-smorest")
    if smorest and smorest.get("apis"):
        apis = smorest["apis"]
        entry = apis.get("") or next(iter(apis.values()))
        document: dict[str, Any] = entry["ext_obj"].spec.to_dict()
        return copy.deepcopy(document)
    return None


def is_apiflask(app: Flask) -> bool:
    try:
        from apiflask import APIFlask
    except ImportError:  # pragma: no cover - apiflask is optional
        return False
    return isinstance(app, APIFlask)


def merge_into(document: dict[str, Any], state: GuardState) -> dict[str, Any]:
    """Merge the guard's part into ``document`` (changed in place, and returned).

    Only the operations ``document`` already has are touched; their ``security`` becomes the
    one the pipeline enforces, the guard's error responses are added (as another media type
    where the document already has that status), and ``deprecated`` is set. Idempotent.
    """
    components = document.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    name = PROBLEM
    if schemas.get(name, problem_schema()) != problem_schema():
        name = "ApiGuardProblem"
    schemas[name] = problem_schema()
    problem_ref = f"#/components/schemas/{name}"
    known = {(op.path, op.method.lower()): op for op in operations(state)}
    paths = document.get("paths") or {}
    for path, item in paths.items():
        for method, op in item.items():
            operation = known.get((path, method))
            if operation is None or not isinstance(op, dict):
                continue
            ours = guard_operation(state, operation, problem_ref, "requestBody" in op)
            op["security"] = ours["security"]
            if ours.get("deprecated"):
                op["deprecated"] = True
            if "x-apiguard" in ours:
                op["x-apiguard"] = ours["x-apiguard"]
            theirs = op.setdefault("responses", {})
            has_success = any(str(code).startswith("2") for code in theirs)
            for status, response in ours["responses"].items():
                if status == "2XX":
                    if not has_success:
                        theirs[status] = response
                    continue
                if status not in theirs:
                    theirs[status] = response
                elif "$ref" not in theirs[status]:
                    theirs[status].setdefault("content", {}).setdefault(
                        PROBLEM_JSON, response["content"][PROBLEM_JSON])
    schemes = security_schemes(state, used_schemes(document))
    if schemes:
        components.setdefault("securitySchemes", {}).update(schemes)
    return document


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
