"""Step 10, the last part: load request data through marshmallow schemas built at import time."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flask.wrappers import Request
from marshmallow import EXCLUDE, Schema, ValidationError, fields

from ..errors import ValidationFailed
from ..fields import Password
from . import NO_BODY

_DETAIL = {
    "json": "The request body did not pass validation.",
    "query": "The query parameters did not pass validation.",
    "form": "The form data did not pass validation.",
    "headers": "The request headers did not pass validation.",
    "path": "The URL path parameters did not pass validation.",
}


def build_schema(schema: Any, location: str) -> tuple[Schema, frozenset[str]]:
    """A schema instance from a class, an instance or a dict of fields, and its list fields."""
    if isinstance(schema, Mapping):
        for name, field in schema.items():
            if not isinstance(field, fields.Field) and not (
                isinstance(field, type) and issubclass(field, fields.Field)
            ):
                raise TypeError(f"@validate: the value for {name!r} is not a marshmallow field.")
        instance: Schema = Schema.from_dict(dict(schema), name=f"Validate{location.title()}")()
    elif isinstance(schema, type) and issubclass(schema, Schema):
        instance = schema()
    elif isinstance(schema, Schema):
        instance = schema
    else:
        raise TypeError(
            "@validate takes a marshmallow Schema class, a Schema instance or a dict of fields, "
            f"not {type(schema).__name__}."
        )
    for field in instance.fields.values():
        if isinstance(field, Password) and field.context_fields:
            field.context_keys()  # a misnamed context field fails here, when declared
    list_fields = frozenset(
        field.data_key or name
        for name, field in instance.load_fields.items()
        if isinstance(field, fields.List | fields.Tuple)
    )
    return instance, list_fields


def _own_unknown(schema: Schema) -> bool:
    """True when the schema's class declares ``Meta.unknown`` itself."""
    return any("unknown" in vars(getattr(cls, "Meta", object)) for cls in type(schema).__mro__)


def _multi(data: Any, list_fields: frozenset[str]) -> dict[str, Any]:
    return {
        key: (values if key in list_fields else values[0])
        for key, values in data.lists()
    }


def collect(request: Request, location: str, schema: Schema, list_fields: frozenset[str],
            document: Any) -> Any:
    """The raw data of ``location`` as a plain mapping for ``schema.load``."""
    if location == "json":
        return {} if document is NO_BODY else document
    if location == "query":
        return _multi(request.args, list_fields)
    if location == "form":
        data = _multi(request.form, list_fields)
        data.update(_multi(request.files, list_fields))
        return data
    if location == "headers":
        headers = request.headers
        wanted = (f.data_key or name for name, f in schema.load_fields.items())
        return {name: headers[name] for name in wanted if name in headers}
    return dict(request.view_args or {})


def load(request: Request, location: str, schema: Schema, list_fields: frozenset[str],
         document: Any) -> Any:
    """Validate and load ``location``; raise 400 ``validation_error`` with per-field messages."""
    data = collect(request, location, schema, list_fields, document)
    try:
        if location == "headers" and not _own_unknown(schema):
            return schema.load(data, unknown=EXCLUDE)
        return schema.load(data)
    except ValidationError as exc:
        raise ValidationFailed(_DETAIL[location], extra={"errors": _normalise(exc.messages)}) from None


def _normalise(messages: Any) -> Any:
    """marshmallow error messages with every key a string (list indexes become "0", "1"…)."""
    if isinstance(messages, Mapping):
        return {str(k): _normalise(v) for k, v in messages.items()}
    if isinstance(messages, list | tuple):
        return [_normalise(m) for m in messages]
    return messages if isinstance(messages, str | int | float | bool) or messages is None else str(messages)
