"""Merging the guard's part into the document APIFlask or flask-smorest already writes: one
document per app."""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any, cast

from .operations import (
    PROBLEM,
    PROBLEM_JSON,
    guard_operation,
    operations,
    problem_schema,
    security_schemes,
    used_schemes,
)

if TYPE_CHECKING:
    from flask import Flask

    from ..state import GuardState

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


def merge_into_apiflask(app: Flask, state: GuardState) -> None:
    """Chain the guard's part into APIFlask's spec processor, so that APIFlask's own spec
    route (and its docs UI) shows it too. A processor the app registers after ``init_app``
    replaces this one; :meth:`ApiGuard.openapi` merges either way."""
    previous = getattr(app, "spec_callback", None)

    def process(spec: Any) -> Any:
        if previous is not None:
            spec = previous(spec)
        if isinstance(spec, dict):  # not with SPEC_PROCESSOR_PASS_OBJECT (an APISpec)
            merge_into(spec, state)
        return spec

    app.spec_callback = process  # type: ignore[attr-defined]
