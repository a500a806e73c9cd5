"""``@deprecated``: what it records, the headers its responses carry, 410 after the sunset, the
signal, and how ``routes`` and ``check`` show it."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any

import pytest
from flask import Flask
from flask.views import MethodView

from flask_apiguard import ApiGuard, deprecated, public, require_jwt, roles, signals
from flask_apiguard.policy import Deprecation, get_policy

from .conftest import bearer, problem, token_for

PAST = datetime(2020, 1, 1, tzinfo=UTC)
FUTURE = datetime(2099, 6, 30, tzinfo=UTC)


# -- recording --------------------------------------------------------------------------------

def test_records_the_declaration_and_returns_the_view() -> None:
    def view() -> None: ...

    assert deprecated(sunset="2099-06-30", link="https://docs.example/v1",
                      replacement="/api/v2/notes")(view) is view
    policy = get_policy(view)
    assert policy is not None
    assert policy.deprecation == Deprecation(
        sunset=datetime(2099, 6, 30, tzinfo=UTC), link="https://docs.example/v1",
        replacement="/api/v2/notes", since=None)


def test_bare_decorator() -> None:
    def view() -> None: ...

    assert deprecated(view) is view
    policy = get_policy(view)
    assert policy is not None and policy.deprecation == Deprecation(None, None, None, None)


@pytest.mark.parametrize("sunset, expected", [
    ("2099-06-30", datetime(2099, 6, 30, tzinfo=UTC)),
    ("2099-06-30T12:00:00+02:00", datetime(2099, 6, 30, 10, tzinfo=UTC)),
    ("2099-06-30T12:00:00Z", datetime(2099, 6, 30, 12, tzinfo=UTC)),
    (datetime(2099, 6, 30, 12, tzinfo=timezone(timedelta(hours=-5))),
     datetime(2099, 6, 30, 17, tzinfo=UTC)),
    (date(2099, 6, 30), datetime(2099, 6, 30, tzinfo=UTC)),
])
def test_sunset_forms(sunset: Any, expected: datetime) -> None:
    def view() -> None: ...

    deprecated(sunset=sunset)(view)
    policy = get_policy(view)
    assert policy is not None and policy.deprecation is not None
    assert policy.deprecation.sunset == expected


def test_naive_datetime_is_refused_at_import() -> None:
    with pytest.raises(TypeError, match="naive datetime"):
        deprecated(sunset=datetime(2099, 6, 30))


@pytest.mark.parametrize("kwargs", [
    {"sunset": "30/06/2099"},
    {"sunset": "2099-06-30T12:00:00"},     # naive, as a string
    {"sunset": 1700000000},
    {"link": "https://x.example/a b"},
    {"replacement": "</v2>; rel=evil"},
    {"since": "2099-07-01", "sunset": "2099-06-30"},
])
def test_bad_arguments_are_refused_at_import(kwargs: dict[str, Any]) -> None:
    with pytest.raises(TypeError):
        deprecated(**kwargs)


def test_method_level_declaration_wins_over_the_class() -> None:
    from flask_apiguard.policy import declared_policy

    @deprecated(sunset="2099-01-01")
    class Items(MethodView):
        def get(self) -> Any: ...

        @deprecated(sunset="2098-01-01")
        def post(self) -> Any: ...

    view = Items.as_view("items")
    get = declared_policy(view, "GET").deprecation
    post = declared_policy(view, "POST").deprecation
    assert get is not None and get.sunset == datetime(2099, 1, 1, tzinfo=UTC)
    assert post is not None and post.sunset == datetime(2098, 1, 1, tzinfo=UTC)


# -- enforcement --------------------------------------------------------------------------------

@pytest.fixture
def deprecated_app(make_app: Callable[..., Flask]) -> Callable[..., Flask]:
    def factory(**config: Any) -> Flask:
        app = make_app(init=False, **config)

        @app.get("/v1/items")
        @require_jwt
        @deprecated(sunset=FUTURE, link="https://docs.example/v1", replacement="/v2/items",
                    since="2026-01-01")
        def v1_items() -> Any:
            return {"items": []}

        @app.get("/v0/items")
        @public
        @deprecated(sunset=PAST, replacement="/v2/items")
        def v0_items() -> Any:
            return {"items": []}

        @app.get("/v2/items")
        @require_jwt
        def v2_items() -> Any:
            return {"items": []}

        ApiGuard(app)
        return app

    return factory


def test_responses_carry_deprecation_sunset_and_link(deprecated_app: Any) -> None:
    app = deprecated_app()
    response = app.test_client().get("/v1/items", headers=bearer(token_for(app)))
    assert response.status_code == 200
    assert response.headers["Deprecation"] == f"@{int(datetime(2026, 1, 1, tzinfo=UTC).timestamp())}"
    assert response.headers["Sunset"] == "Tue, 30 Jun 2099 00:00:00 GMT"
    assert response.headers["Link"] == ('<https://docs.example/v1>; rel="deprecation"; '
                                        'type="text/html", </v2/items>; rel="successor-version"')


def test_error_responses_carry_them_too(deprecated_app: Any) -> None:
    response = deprecated_app().test_client().get("/v1/items")
    assert problem(response)["error"] == "unauthorized"
    assert response.headers["Deprecation"].startswith("@")
    assert "Sunset" in response.headers


def test_without_since_the_deprecation_date_is_the_epoch() -> None:
    assert Deprecation(None, None, None, None).headers() == (("Deprecation", "@0"),)


def test_a_view_that_is_not_deprecated_gets_none_of_them(deprecated_app: Any) -> None:
    app = deprecated_app()
    response = app.test_client().get("/v2/items", headers=bearer(token_for(app)))
    assert response.status_code == 200
    for name in ("Deprecation", "Sunset", "Link"):
        assert name not in response.headers


def test_past_the_sunset_the_view_is_gone_before_authentication(deprecated_app: Any) -> None:
    app = deprecated_app()
    response = app.test_client().get("/v0/items", headers={"Authorization": "Bearer garbage"})
    body = problem(response)
    assert response.status_code == 410
    assert body["error"] == "gone"
    assert "/v2/items" in body["detail"]
    assert response.headers["Sunset"] == "Wed, 01 Jan 2020 00:00:00 GMT"
    assert 'rel="successor-version"' in response.headers["Link"]


def test_an_unauthenticated_caller_learns_it_is_gone(make_app: Callable[..., Flask]) -> None:
    app = make_app(init=False)

    @app.get("/old")
    @roles("admin")
    @deprecated(sunset=PAST)
    def old() -> Any:
        return {}

    ApiGuard(app)
    assert app.test_client().get("/old").status_code == 410


def test_enforcement_can_be_switched_off(deprecated_app: Any) -> None:
    app = deprecated_app(APIGUARD_SUNSET_ENFORCE=False)
    response = app.test_client().get("/v0/items")
    assert response.status_code == 200
    assert response.headers["Sunset"] == "Wed, 01 Jan 2020 00:00:00 GMT"


def test_a_preflight_to_a_gone_view_is_still_answered(deprecated_app: Any) -> None:
    app = deprecated_app(APIGUARD_CORS_ORIGINS=["https://app.example"])
    response = app.test_client().options("/v0/items", headers={
        "Origin": "https://app.example", "Access-Control-Request-Method": "GET"})
    assert response.status_code in (200, 204)
    gone = app.test_client().get("/v0/items", headers={"Origin": "https://app.example"})
    assert gone.status_code == 410
    assert gone.headers["Access-Control-Allow-Origin"] == "https://app.example"


def test_signal_names_the_endpoint_and_the_caller(deprecated_app: Any) -> None:
    app = deprecated_app()
    seen: list[dict[str, Any]] = []

    def receiver(sender: Any, **event: Any) -> None:
        seen.append({"sender": sender, **event})

    with signals.deprecated_called.connected_to(receiver, app):
        client = app.test_client()
        client.get("/v1/items", headers=bearer(token_for(app, "carol")))
        client.get("/v0/items")
        client.get("/v2/items", headers=bearer(token_for(app)))
    first, second = seen
    assert first["sender"] is app
    assert first["endpoint"] == "v1_items"
    assert first["identity"].subject == "carol"
    assert first["status"] == 200
    assert first["method"] == "GET" and first["path"] == "/v1/items"
    assert first["sunset"] == FUTURE
    assert first["request_id"]
    assert second["endpoint"] == "v0_items" and second["status"] == 410


def test_a_failing_receiver_does_not_change_the_response(deprecated_app: Any) -> None:
    app = deprecated_app()

    def receiver(sender: Any, **event: Any) -> None:
        raise RuntimeError("boom")

    with signals.deprecated_called.connected_to(receiver, app):
        response = app.test_client().get("/v1/items", headers=bearer(token_for(app)))
    assert response.status_code == 200


def test_gone_is_logged_as_a_refusal(deprecated_app: Any, caplog: pytest.LogCaptureFixture) -> None:
    app = deprecated_app()
    with caplog.at_level("WARNING", logger="flask_apiguard.security"):
        app.test_client().get("/v0/items")
    [record] = [r for r in caplog.records if r.name == "flask_apiguard.security"]
    entry = json.loads(record.getMessage())
    assert entry["event"] == "gone" and entry["status"] == 410 and entry["endpoint"] == "v0_items"


# -- routes and check ---------------------------------------------------------------------------

def test_routes_json_and_table_show_deprecated_routes(deprecated_app: Any) -> None:
    app = deprecated_app()
    runner = app.test_cli_runner()
    rows = {r["endpoint"]: r for r in json.loads(
        runner.invoke(args=["apiguard", "routes", "--json"]).output)}
    assert rows["v1_items"]["deprecated"] is True
    assert rows["v1_items"]["sunset"] == "2099-06-30T00:00:00Z"
    assert rows["v0_items"]["sunset"] == "2020-01-01T00:00:00Z"
    assert rows["v2_items"]["deprecated"] is False and rows["v2_items"]["sunset"] is None
    table = runner.invoke(args=["apiguard", "routes"]).output
    assert "v1_items [deprecated, sunset 2099-06-30]" in table
    assert "v0_items [deprecated, gone since 2020-01-01]" in table


def test_check_warns_before_and_after_a_sunset(make_app: Callable[..., Flask]) -> None:
    app = make_app(init=False)
    soon = datetime.now(UTC) + timedelta(days=3)

    @app.get("/soon")
    @deprecated(sunset=soon)
    def soon_view() -> Any:
        return {}

    @app.get("/past")
    @deprecated(sunset=PAST)
    def past_view() -> Any:
        return {}

    @app.get("/later")
    @deprecated(sunset=FUTURE)
    def later_view() -> Any:
        return {}

    ApiGuard(app)
    result = app.test_cli_runner().invoke(args=["apiguard", "check", "--json"])
    found = {(f["id"], f["key"]): f for f in json.loads(result.output)}
    assert found[("sunset-soon", "soon_view")]["severity"] == "low"
    assert found[("sunset-passed", "past_view")]["severity"] == "medium"
    assert "410" in found[("sunset-passed", "past_view")]["message"]
    assert not any(key == "later_view" for _, key in found)


@pytest.mark.parametrize("argument", ["link", "replacement"])
def test_a_link_that_cannot_be_a_header_value_is_refused_at_import(argument: str) -> None:
    # A non-ASCII link was accepted, and gunicorn then refused the Link header: a 500 per call.
    with pytest.raises(TypeError, match="ASCII"):
        deprecated(**{argument: "https://example.com/d\u00e9pr\u2192"})
