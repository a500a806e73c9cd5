"""What decorators record, how levels merge, and contradictions caught at import time."""

from __future__ import annotations

from typing import Any

import pytest
from flask.views import MethodView
from marshmallow import fields

from flask_apiguard import (
    allow_networks,
    concurrency_limit,
    public,
    rate_limit,
    rate_limit_exempt,
    require_api_key,
    require_jwt,
    roles,
    scopes,
    validate,
)
from flask_apiguard.policy import POLICY_ATTR, Policy, declared_policy, get_policy


def test_decorators_only_record_and_return_the_same_function() -> None:
    def view() -> None:
        return None

    decorated = roles("admin")(require_jwt(rate_limit("5/minute")(validate({"a": fields.Int()})(view))))
    assert decorated is view
    policy = get_policy(view)
    assert isinstance(policy, Policy)
    assert policy.methods == {"jwt"}
    assert policy.role_rules == [(frozenset({"admin"}), "any")]
    assert [spec.limit for spec in policy.rate_limits] == ["5/minute"]
    assert set(policy.validations) == {"json"}


def test_order_does_not_matter() -> None:
    def a() -> None: ...

    def b() -> None: ...

    public(rate_limit_exempt(a))
    rate_limit_exempt(public(b))
    assert get_policy(a) == get_policy(b)


@pytest.mark.parametrize("build", [
    lambda v: public(roles("x")(v)),
    lambda v: roles("x")(public(v)),
    lambda v: public(require_jwt(v)),
    lambda v: scopes("s")(public(v)),
    lambda v: roles("x")(require_jwt(optional=True)(v)),
    lambda v: require_api_key(require_jwt(optional=True)(v)),
])
def test_contradictions_raise_type_error(build: Any) -> None:
    def view() -> None: ...

    with pytest.raises(TypeError):
        build(view)


def test_bad_decorator_arguments() -> None:
    with pytest.raises(TypeError, match=r"any.*all"):
        roles("a", require="some")
    with pytest.raises(TypeError, match="at least one"):
        roles()
    with pytest.raises(TypeError, match="location"):
        validate({"a": fields.Int()}, location="cookies")
    with pytest.raises(TypeError, match="identifier"):
        validate({"a": fields.Int()}, arg_name="not valid")
    with pytest.raises(TypeError, match="marshmallow"):
        validate(object())

    def view() -> None: ...

    validate({"a": fields.Int()})(view)
    with pytest.raises(TypeError, match="twice"):
        validate({"b": fields.Int()})(view)


def test_validate_refuses_a_class() -> None:
    with pytest.raises(TypeError, match="class"):
        @validate({"a": fields.Int()})
        class Nope(MethodView):
            pass


def test_class_method_and_view_levels_merge() -> None:
    @roles("reader")
    class Articles(MethodView):
        @roles("editor")
        @rate_limit("1/second")
        def post(self) -> None: ...

        def get(self) -> None: ...

    view = Articles.as_view("articles")
    post = declared_policy(view, "POST")
    assert post.role_rules == [(frozenset({"reader"}), "any"), (frozenset({"editor"}), "any")]
    assert [s.limit for s in post.rate_limits] == ["1/second"]
    head = declared_policy(view, "HEAD")  # HEAD is served by get
    assert head.role_rules == [(frozenset({"reader"}), "any")]


def test_networks_and_concurrency_add_up_across_levels() -> None:
    @allow_networks("10.0.0.0/8")
    @concurrency_limit(4)
    class Jobs(MethodView):
        @allow_networks("10.8.0.0/16")
        @concurrency_limit(1, key="user")
        def post(self) -> None: ...

        def get(self) -> None: ...

    view = Jobs.as_view("jobs")
    post, get = declared_policy(view, "POST"), declared_policy(view, "GET")
    assert [n.texts() for n in post.networks] == [["10.0.0.0/8"], ["10.8.0.0/16"]]
    assert post.concurrency == [(4, "auto"), (1, "user")]
    assert [n.texts() for n in get.networks] == [["10.0.0.0/8"]]
    assert get.concurrency == [(4, "auto")]


def test_a_subclass_gets_its_own_policy() -> None:
    @require_jwt
    class Base(MethodView):
        pass

    @roles("admin")
    class Child(Base):
        pass

    assert get_policy(Base).role_rules == []  # type: ignore[union-attr]
    assert get_policy(Child).role_rules == [(frozenset({"admin"}), "any")]  # type: ignore[union-attr]
    assert get_policy(Child).methods == {"jwt"}  # type: ignore[union-attr]
    assert POLICY_ATTR in vars(Child)


def _wrapped_copy(view: Any) -> Any:
    """What a caching or logging decorator does: functools.wraps copies ``__dict__``."""
    import functools

    @functools.wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return view(*args, **kwargs)

    return wrapper


_DECORATORS = [
    pytest.param(public, id="public"),
    pytest.param(require_jwt, id="require_jwt"),
    pytest.param(require_jwt(optional=True), id="optional"),
    pytest.param(require_api_key(scopes=["k"]), id="require_api_key"),
    pytest.param(roles("other"), id="roles"),
    pytest.param(scopes("s"), id="scopes"),
    pytest.param(rate_limit("1/minute"), id="rate_limit"),
    pytest.param(rate_limit_exempt, id="rate_limit_exempt"),
    pytest.param(rate_limit(limit=lambda: "1/minute", exempt_when=lambda: False),
                 id="rate_limit_callable"),
    pytest.param(allow_networks("10.0.0.0/8"), id="allow_networks"),
    pytest.param(concurrency_limit(2), id="concurrency_limit"),
    pytest.param(validate({"q": fields.Int()}, location="query"), id="validate"),
]


@pytest.mark.parametrize("decorator", _DECORATORS)
def test_a_decorator_on_a_wrapped_copy_leaves_the_original_alone(decorator: Any) -> None:
    # functools.wraps shared one Policy object: public(cached(view)) opened the original view.
    def plain() -> None: ...

    def declared() -> None: ...

    rate_limit("9/minute")(declared)
    for view in (plain, declared):
        before = get_policy(view)
        snapshot = before.copy() if before is not None else None
        decorator(_wrapped_copy(view))
        after = get_policy(view)
        assert after == snapshot and after is before


@pytest.mark.parametrize("decorator", _DECORATORS)
def test_a_decorator_on_the_original_leaves_an_earlier_wrapped_copy_alone(decorator: Any) -> None:
    def view() -> None: ...

    rate_limit("9/minute")(view)
    wrapper = _wrapped_copy(view)
    snapshot = get_policy(wrapper).copy()  # type: ignore[union-attr]
    decorator(view)
    assert get_policy(wrapper) == snapshot


def test_a_wrapped_copy_keeps_what_the_original_declared() -> None:
    def view() -> None: ...

    roles("admin")(view)
    wrapper = _wrapped_copy(view)
    rate_limit("1/minute")(wrapper)
    policy = get_policy(wrapper)
    assert policy is not None
    assert policy.role_rules == [(frozenset({"admin"}), "any")]
    assert [spec.limit for spec in policy.rate_limits] == ["1/minute"]
    assert get_policy(view).rate_limits == []  # type: ignore[union-attr]


def test_a_decorator_on_a_proxy_that_shares_the_wrapped_functions_attributes_is_refused() -> None:
    # wrapt's FunctionWrapper forwards setattr: public(cached(stats)) opened stats itself.
    wrapt = pytest.importorskip("wrapt")

    @wrapt.decorator
    def cached(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
        return wrapped(*args, **kwargs)

    def stats() -> None: ...

    rate_limit("9/minute")(stats)
    for decorator in (public, rate_limit_exempt, roles("x"), require_jwt):
        with pytest.raises(TypeError, match="wrapt-style proxy"):
            decorator(cached(stats))
    assert get_policy(stats).public is False  # type: ignore[union-attr]
    assert get_policy(stats).rate_limit_exempt is False  # type: ignore[union-attr]
    # reading through such a proxy gives what the function declared
    assert get_policy(cached(stats)) is get_policy(stats)


def test_every_decorated_base_class_counts() -> None:
    # The class policy was read with getattr: only the first decorated base in the MRO counted.
    @roles("admin")
    class AdminView(MethodView):
        pass

    @rate_limit("50 per minute")
    class LimitedView(MethodView):
        pass

    class Reports(LimitedView, AdminView):
        def get(self) -> None: ...

    policy = declared_policy(Reports.as_view("reports"), "GET")
    assert policy.role_rules == [(frozenset({"admin"}), "any")]
    assert [spec.limit for spec in policy.rate_limits] == ["50 per minute"]


def test_a_partial_or_a_wrapper_without_a_dict_copy_keeps_the_functions_policy() -> None:
    # A view registered as functools.partial(view, ...) lost the view's @roles.
    import functools

    def export(fmt: str) -> None: ...

    roles("admin")(export)
    as_csv = functools.partial(export, "csv")

    def bare(*args: Any) -> None: ...

    functools.update_wrapper(bare, export, updated=())  # __wrapped__, no __dict__ copy
    for view in (as_csv, bare):
        assert declared_policy(view, "GET").role_rules == [(frozenset({"admin"}), "any")]
    rate_limit("1/minute")(as_csv)  # decorating the partial builds on what it stands for
    assert get_policy(as_csv).role_rules == [(frozenset({"admin"}), "any")]  # type: ignore[union-attr]
    assert get_policy(export).rate_limits == []  # type: ignore[union-attr]
