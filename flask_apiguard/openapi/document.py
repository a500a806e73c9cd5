"""The OpenAPI document of an app that has none of its own, written with apispec and its
``MarshmallowPlugin`` from the guard's operations."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin
from apispec.ext.marshmallow.common import resolve_schema_cls

from ..policy import handler_of
from .operations import (
    FORM_TYPES,
    OPENAPI_VERSION,
    PROBLEM,
    Operation,
    guard_operation,
    operations,
    problem_schema,
    security_schemes,
    used_schemes,
)

if TYPE_CHECKING:
    from flask import Flask

    from ..state import GuardState

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
    from ..fields import Password, SafeString, SanitizedHTML

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
    target = handler_of(view_class, operation.method) if view_class is not None else view
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
