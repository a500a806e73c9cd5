"""flask_apiguard.fields: every field and validator, loaded through a marshmallow Schema."""

from __future__ import annotations

import gzip
import importlib.resources
import random
import re
import secrets
import string
import sys
import threading
import types
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask
from marshmallow import Schema, ValidationError, fields

import flask_apiguard.fields as apiguard_fields
import flask_apiguard.fields.html as apiguard_html
import flask_apiguard.fields.password as apiguard_password
from flask_apiguard.fields import (
    DEFAULT_ATTRIBUTES,
    DEFAULT_PROTOCOLS,
    DEFAULT_TAGS,
    URL,
    UUID,
    Email,
    Length,
    Password,
    Pattern,
    SafeString,
    SanitizedHTML,
)

BACKENDS = ("bleach", "nh3")
#: Sanitized differently by the two backends (bleach leaves entities as they are, nh3 decodes
#: them), so the output tells which backend ran.
FINGERPRINT = "x&colon;y"
BY_BACKEND = {"bleach": "x&colon;y", "nh3": "x:y"}


def load(field: fields.Field, value: Any) -> Any:
    return Schema.from_dict({"value": field})().load({"value": value})["value"]


def errors(field: fields.Field, value: Any) -> list[str]:
    with pytest.raises(ValidationError) as info:
        load(field, value)
    messages = info.value.messages
    assert isinstance(messages, dict)
    found = messages["value"]
    assert isinstance(found, list)
    return [str(m) for m in found]


def assert_not_echoed(messages: list[str], value: str) -> None:
    for message in messages:
        assert value not in message


def fake_guard(sanitizer: str) -> Any:
    """What this module reads of the extension: ``extensions["apiguard"].config.sanitizer``."""
    return types.SimpleNamespace(config=types.SimpleNamespace(sanitizer=sanitizer))


# -- module surface ---------------------------------------------------------------------------

def test_every_public_name_is_exported_and_documented() -> None:
    expected = {
        "SanitizedHTML", "SafeString", "Password", "Email", "UUID", "URL", "Length", "Pattern",
        "DEFAULT_TAGS", "DEFAULT_ATTRIBUTES", "DEFAULT_PROTOCOLS", "DEFAULT_CSS_PROPERTIES",
    }
    assert set(apiguard_fields.__all__) == expected
    doc = apiguard_fields.__doc__ or ""
    for name in expected:
        assert getattr(apiguard_fields, name) is not None
        assert name in doc, f"{name} is not described in the module docstring"
        if isinstance(getattr(apiguard_fields, name), type):
            assert getattr(apiguard_fields, name).__doc__


def test_blocklist_data_file_is_gzipped_lowercase_one_per_line() -> None:
    data = importlib.resources.files("flask_apiguard").joinpath("data")
    raw = data.joinpath("common-passwords.txt.gz").read_bytes()
    assert raw[:2] == b"\x1f\x8b"  # still gzip'ed, as shipped
    lines = gzip.decompress(raw).decode("utf-8").splitlines()
    assert len(lines) > 19_000
    assert all(line == line.strip().lower() and line for line in lines)
    assert {"password", "123456", "qwerty", "password1234"} <= set(lines)
    notice = data.joinpath("NOTICE").read_text(encoding="utf-8")
    assert "Django" in notice and "Royce Williams" in notice
    assert "Redistribution and use in source and binary forms" in notice


def test_blocklist_is_loaded_once() -> None:
    assert apiguard_password._common_passwords() is apiguard_password._common_passwords()


# -- SanitizedHTML ----------------------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
def test_sanitized_html_keeps_the_default_allow_list(backend: str) -> None:
    html = (
        '<p>A <b>bold</b>, <strong>strong</strong>, <i>i</i>, <em>em</em> and '
        '<code>code</code> <abbr title="HyperText">HTML</abbr> text.<br></p>'
        "<ul><li>one</li></ul><ol><li>two</li></ol><blockquote>q</blockquote><pre>pre</pre>"
        '<a href="https://example.com/a?b=1" title="t">link</a>'
    )
    out = load(SanitizedHTML(backend=backend), html)
    for tag in DEFAULT_TAGS - {"a", "abbr", "br"}:
        assert f"<{tag}>" in out
    assert '<abbr title="HyperText">HTML</abbr>' in out
    assert "<br>" in out
    assert 'href="https://example.com/a?b=1"' in out and 'title="t"' in out


@pytest.mark.parametrize("backend", BACKENDS)
def test_sanitized_html_drops_script_with_its_content(backend: str) -> None:
    out = load(SanitizedHTML(backend=backend), "<p>hi</p><script>alert(document.cookie)</script>")
    assert out == "<p>hi</p>"


@pytest.mark.parametrize("backend", BACKENDS)
def test_sanitized_html_drops_style_element_content(backend: str) -> None:
    out = load(SanitizedHTML(backend=backend), "<style>body{display:none}</style><b>x</b>")
    assert out == "<b>x</b>"


@pytest.mark.parametrize("backend", BACKENDS)
def test_sanitized_html_keeps_text_of_other_removed_tags(backend: str) -> None:
    assert load(SanitizedHTML(backend=backend), "<span>kept</span> <div>too</div>").split() == [
        "kept", "too"
    ]


@pytest.mark.parametrize("backend", BACKENDS)
def test_sanitized_html_drops_event_handlers_and_style(backend: str) -> None:
    out = load(SanitizedHTML(backend=backend), '<b onclick="steal()" style="color:red">x</b>')
    assert out == "<b>x</b>"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("value", [1, 1.5, True, ["<b>"], {"a": "b"}])
def test_sanitized_html_refuses_non_strings(backend: str, value: Any) -> None:
    assert errors(SanitizedHTML(backend=backend), value) == ["Not a valid string."]


@pytest.mark.parametrize("backend", BACKENDS)
def test_sanitized_html_tags_attributes_protocols_override_defaults(backend: str) -> None:
    field = SanitizedHTML(
        tags={"a", "b", "h2"}, attributes={"a": ["href"]}, protocols=("https",), backend=backend
    )
    out = load(field, '<h2>T</h2><b>b</b><i>i</i><a href="http://x.example" title="t">x</a>'
                      '<a href="https://y.example">y</a>')
    assert "<h2>T</h2><b>b</b>i" in out
    assert "http://x.example" not in out and "title" not in out
    assert 'href="https://y.example"' in out


@pytest.mark.parametrize("backend", BACKENDS)
def test_default_allow_lists_can_be_extended(backend: str) -> None:
    field = SanitizedHTML(tags=DEFAULT_TAGS | {"h3"}, attributes=DEFAULT_ATTRIBUTES,
                          protocols=DEFAULT_PROTOCOLS | {"tel"}, backend=backend)
    out = load(field, '<h3>x</h3><a href="tel:+15550100">call</a>')
    assert "<h3>x</h3>" in out and 'href="tel:+15550100"' in out


@pytest.mark.parametrize("backend", BACKENDS)
def test_links_get_the_same_rel_with_both_backends(backend: str) -> None:
    out = load(SanitizedHTML(backend=backend), '<a href="/r" rel="opener">x</a>')
    assert out == '<a href="/r" rel="noopener noreferrer">x</a>'


@pytest.mark.parametrize("backend", BACKENDS)
def test_link_rel_none_leaves_rel_alone(backend: str) -> None:
    assert load(SanitizedHTML(link_rel=None, backend=backend), '<a href="/r">x</a>') == (
        '<a href="/r">x</a>'
    )
    field = SanitizedHTML(attributes={"a": ["href", "rel"]}, link_rel=None, backend=backend)
    assert load(field, '<a href="/r" rel="tag">x</a>') == '<a href="/r" rel="tag">x</a>'


@pytest.mark.parametrize("backend", BACKENDS)
def test_allowed_style_keeps_only_plain_allowed_declarations(backend: str) -> None:
    field = SanitizedHTML(attributes={"p": ["style"]}, backend=backend)
    out = load(field, '<p style="color: red; position: fixed; font-weight:700; '
                      'background-color: url(javascript:alert(1)); text-align: e\\78pression(1)">'
                      "x</p>")
    assert out == '<p style="color: red; font-weight: 700">x</p>'
    assert load(field, '<p style="position: fixed">x</p>') == "<p>x</p>"
    custom = SanitizedHTML(attributes={"p": ["style"]}, css_properties={"margin"},
                           backend=backend)
    assert load(custom, '<p style="margin: 0 auto; color: red">x</p>') == (
        '<p style="margin: 0 auto">x</p>'
    )


def test_both_backends_give_the_same_style_result() -> None:
    html = '<p style="color: rgb(10, 20, 30); background-color:#fff; behavior: url(x.htc)">x</p>'
    outs = {load(SanitizedHTML(attributes={"p": ["style"]}, backend=b), html) for b in BACKENDS}
    assert outs == {'<p style="color: rgb(10, 20, 30); background-color: #fff">x</p>'}


@pytest.mark.parametrize(
    "kwargs",
    [
        {"tags": {"b", "script"}},
        {"tags": {"iframe"}},
        {"tags": {"object"}},
        {"attributes": {"b": ["onclick"]}},
        {"attributes": {"*": ["onmouseover"]}},
        {"protocols": ("http", "javascript")},
        {"protocols": ("https", "data")},
        {"protocols": ("VBScript:",)},
        {"attributes": {"a": ["href", "rel"]}},  # rel needs link_rel=None
        {"backend": "lxml"},
        {"max_length": -1},
    ],
    ids=lambda kwargs: ",".join(f"{k}={v}" for k, v in kwargs.items()),
)
def test_unsafe_or_inconsistent_configuration_is_refused(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        SanitizedHTML(**kwargs)


@pytest.mark.parametrize("backend", BACKENDS)
def test_sanitized_html_max_length_bounds_the_input(backend: str) -> None:
    field = SanitizedHTML(max_length=20, backend=backend)
    assert load(field, "<b>12345678901</b>") == "<b>12345678901</b>"
    payload = "<b>" + "x" * 30 + "</b>"
    messages = errors(field, payload)
    assert messages == ["Longer than maximum length 20."]
    assert_not_echoed(messages, "xxxx")


def test_sanitized_html_refuses_deep_markup_before_parsing() -> None:
    # SanitizedHTML parsed any amount of markup; over max_length or max_tags it now refuses first.
    class Note(Schema):
        body = SanitizedHTML(backend="bleach")

    messages = Note().validate({"body": "<ul><li>" * 1_001})
    assert messages == {"body": ["Too much markup: at most 1000 tags."]}
    assert Note().validate({"body": "x" * 10_001}) == {"body": ["Longer than maximum length 10000."]}
    assert Note().load({"body": "<b>ok</b>"}) == {"body": "<b>ok</b>"}


def test_sanitized_html_takes_string_field_keywords() -> None:
    schema = Schema.from_dict({
        "body": SanitizedHTML(load_default=""),
        "title": SanitizedHTML(required=True, data_key="Title"),
    })()
    assert schema.load({"Title": "<b>t</b>"}) == {"body": "", "title": "<b>t</b>"}
    with pytest.raises(ValidationError) as info:
        schema.load({})
    assert info.value.messages == {"Title": ["Missing data for required field."]}


def test_validators_run_on_the_sanitized_value() -> None:
    field = SanitizedHTML(validate=Length(max=5))
    assert load(field, "<script>long long long</script>abc") == "abc"


# -- backend choice -------------------------------------------------------------------------

def test_backend_is_bleach_outside_an_app_context() -> None:
    field = SanitizedHTML()
    assert field.current_backend() == "bleach"
    assert load(field, FINGERPRINT) == BY_BACKEND["bleach"]


def test_backend_is_bleach_for_an_app_without_apiguard() -> None:
    field = SanitizedHTML()
    with Flask(__name__).app_context():
        assert field.current_backend() == "bleach"
        assert load(field, FINGERPRINT) == BY_BACKEND["bleach"]


@pytest.mark.parametrize("sanitizer", BACKENDS)
def test_backend_follows_the_app_config_at_load_time(sanitizer: str) -> None:
    field = SanitizedHTML()  # built once, at import time in real code
    app = Flask(__name__)
    app.extensions["apiguard"] = fake_guard(sanitizer)
    with app.app_context():
        assert field.current_backend() == sanitizer
        assert load(field, FINGERPRINT) == BY_BACKEND[sanitizer]
    assert load(field, FINGERPRINT) == BY_BACKEND["bleach"]


def test_one_field_serves_apps_with_different_sanitizers() -> None:
    field = SanitizedHTML()
    nh3_app, bleach_app = Flask("a"), Flask("b")
    nh3_app.extensions["apiguard"] = fake_guard("nh3")
    bleach_app.extensions["apiguard"] = fake_guard("bleach")
    for app, backend in ((nh3_app, "nh3"), (bleach_app, "bleach"), (nh3_app, "nh3")):
        with app.app_context():
            assert load(field, FINGERPRINT) == BY_BACKEND[backend]


@pytest.mark.parametrize(("explicit", "configured"), [("bleach", "nh3"), ("nh3", "bleach")])
def test_explicit_backend_wins_over_app_config(explicit: str, configured: str) -> None:
    field = SanitizedHTML(backend=explicit)
    app = Flask(__name__)
    app.extensions["apiguard"] = fake_guard(configured)
    with app.app_context():
        assert field.current_backend() == explicit
        assert load(field, FINGERPRINT) == BY_BACKEND[explicit]


def test_explicit_nh3_backend_works_without_an_app() -> None:
    assert load(SanitizedHTML(backend="nh3"), FINGERPRINT) == BY_BACKEND["nh3"]


def test_unknown_configured_sanitizer_is_an_error_not_a_silent_fallback() -> None:
    app = Flask(__name__)
    app.extensions["apiguard"] = fake_guard("html5lib")
    with app.app_context(), pytest.raises(RuntimeError, match="APIGUARD_SANITIZER"):
        load(SanitizedHTML(), "<b>x</b>")


def test_explicit_nh3_without_nh3_installed_says_how_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "nh3", None)  # makes ``import nh3`` raise ImportError
    with pytest.raises(ImportError, match=re.escape('pip install "flask-apiguard[nh3]"')):
        SanitizedHTML(backend="nh3")


def test_real_apiguard_with_nh3_sanitizer_uses_nh3(make_app: Callable[..., Flask]) -> None:
    package = pytest.importorskip("flask_apiguard")
    if not hasattr(package, "ApiGuard"):
        pytest.skip("flask_apiguard.ApiGuard is not available")
    from flask_apiguard import public, validate

    app = make_app(init=False, APIGUARD_SANITIZER="nh3")

    @app.post("/notes")
    @public
    @validate({"body": SanitizedHTML(required=True)})
    def notes(json_data: dict[str, Any]) -> Any:
        return {"body": json_data["body"]}

    package.ApiGuard(app)
    assert app.extensions["apiguard"].config.sanitizer == "nh3"
    response = app.test_client().post(
        "/notes", json={"body": "<b onclick=x()>hi</b><script>alert(1)</script>" + FINGERPRINT}
    )
    assert response.status_code == 200, response.data
    assert response.get_json() == {"body": "<b>hi</b>" + BY_BACKEND["nh3"]}
    with app.app_context():
        assert SanitizedHTML().current_backend() == "nh3"


# -- cleaners built once --------------------------------------------------------------------

def test_bleach_cleaner_is_built_once_per_field_and_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    built: list[object] = []
    real = apiguard_html._BleachCleaner

    class Counting(real):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            built.append(self)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(apiguard_html, "_BleachCleaner", Counting)
    field = SanitizedHTML()
    assert len(built) == 1  # in __init__, for this thread
    for _ in range(5):
        assert load(field, "<b>x</b><script>y</script>") == "<b>x</b>"
    assert len(built) == 1

    def in_thread() -> None:
        for _ in range(3):
            load(field, "<i>x</i>")

    worker = threading.Thread(target=in_thread)
    worker.start()
    worker.join()
    assert len(built) == 2  # a bleach Cleaner is not thread-safe: one per thread


def test_nh3_cleaner_is_built_once(monkeypatch: pytest.MonkeyPatch) -> None:
    import nh3
    built: list[object] = []
    real = nh3.Cleaner

    def counting(**kwargs: Any) -> Any:
        built.append(kwargs)
        return real(**kwargs)

    monkeypatch.setattr(nh3, "Cleaner", counting)
    field = SanitizedHTML()
    app = Flask(__name__)
    app.extensions["apiguard"] = fake_guard("nh3")
    with app.app_context():
        for _ in range(5):
            assert load(field, "<b>x</b><script>y</script>") == "<b>x</b>"
    assert len(built) == 1


def test_schema_instances_share_the_fields_cleaners(monkeypatch: pytest.MonkeyPatch) -> None:
    built: list[object] = []
    real = apiguard_html._BleachCleaner

    class Counting(real):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            built.append(self)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(apiguard_html, "_BleachCleaner", Counting)

    class Note(Schema):
        body = SanitizedHTML()

    for _ in range(5):  # a view that builds its schema per request
        assert Note().load({"body": "<b>x</b>"}) == {"body": "<b>x</b>"}
    assert len(built) == 1


@pytest.mark.parametrize("backend", BACKENDS)
def test_concurrent_loads_give_correct_results(backend: str) -> None:
    field = SanitizedHTML(backend=backend)
    failures: list[str] = []

    def work(n: int) -> None:
        for i in range(40):
            html = f"<p>{n}-{i}<script>x</script><a href='javascript:alert({i})'>l</a></p>"
            out = load(field, html)
            if out != f'<p>{n}-{i}<a rel="noopener noreferrer">l</a></p>':
                failures.append(out)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []


# -- SafeString -----------------------------------------------------------------------------

def test_safe_string_accepts_plain_text() -> None:
    assert load(SafeString(), "Zoë O'Brien-Smith & Co. (2024) #1 ✓ 😀") == (
        "Zoë O'Brien-Smith & Co. (2024) #1 ✓ 😀"
    )
    assert load(SafeString(), "") == ""


def test_safe_string_normalises_to_nfc() -> None:
    decomposed = "Ame\u0301lie"
    assert load(SafeString(), decomposed) == "Am\u00e9lie"


def test_safe_string_max_length_counts_after_nfc() -> None:
    field = SafeString(max_length=5)
    assert load(field, "e\u0301" * 5) == "\u00e9" * 5  # 10 code points in, 5 after NFC
    messages = errors(field, "e\u0301" * 6)
    assert messages == ["Longer than maximum length 5."]


def test_safe_string_max_length_message_does_not_echo() -> None:
    messages = errors(SafeString(max_length=3), "secret-value")
    assert messages == ["Longer than maximum length 3."]
    assert_not_echoed(messages, "secret")


@pytest.mark.parametrize("value", ["<b>", "a > b", "1<2", "<script>alert(1)</script>"])
def test_safe_string_refuses_angle_brackets(value: str) -> None:
    messages = errors(SafeString(), value)
    assert messages == ["Must not contain '<' or '>'."]
    assert_not_echoed(messages, value)


@pytest.mark.parametrize("value", ["a\nb", "a\tb", "a\rb", "a\r\nb"])
def test_safe_string_refuses_tab_and_newlines_by_default(value: str) -> None:
    assert errors(SafeString(), value) == ["Must not contain control characters."]


def test_safe_string_allow_newlines_for_multi_line_text() -> None:
    field = SafeString(allow_newlines=True)
    assert load(field, "line 1\n\tline 2") == "line 1\n\tline 2"
    assert load(field, "windows\r\nline") == "windows\nline"
    assert errors(field, "lone\rcarriage return") == ["Must not contain control characters."]
    assert errors(field, "nul\x00") == ["Must not contain control characters."]


@pytest.mark.parametrize("value", [1, None, ["a"], {"a": 1}])
def test_safe_string_refuses_non_strings(value: Any) -> None:
    field = SafeString()
    if value is None:
        assert errors(field, value) == ["Field may not be null."]
    else:
        assert errors(field, value) == ["Not a valid string."]


def test_safe_string_takes_validators() -> None:
    field = SafeString(max_length=64, validate=Pattern(r"[a-z0-9_.-]{3,64}",
                                                       error="Use 3-64 of a-z, 0-9, _ . -."))
    assert load(field, "alice_01") == "alice_01"
    assert errors(field, "Alice!") == ["Use 3-64 of a-z, 0-9, _ . -."]


def test_safe_string_refuses_a_negative_max_length() -> None:
    with pytest.raises(ValueError):
        SafeString(max_length=-1)


# -- Password -------------------------------------------------------------------------------

PASSPHRASE = "tq7-Vexo-plum-Zr"  # 16 characters, not in the blocklist


def test_password_accepts_a_passphrase() -> None:
    assert len(PASSPHRASE) == 16
    assert load(Password(), PASSPHRASE) == PASSPHRASE
    random_one = secrets.token_urlsafe(12)  # 16 random characters
    assert load(Password(), random_one) == random_one
    assert load(Password(), "correct horse battery staple") == "correct horse battery staple"


@pytest.mark.parametrize("common", ["password1234", "PASSWORD1234", "PassWord1234", "qwertyuiop12",
                                    " password1234 "])
def test_password_refuses_common_passwords_case_insensitively(common: str) -> None:
    messages = errors(Password(), common)
    assert messages == ["This password is too common. Choose one that is harder to guess."]
    assert_not_echoed(messages, common.strip())


def test_password_blocklist_can_be_turned_off() -> None:
    assert load(Password(blocklist=False), "password1234") == "password1234"


def test_password_min_length() -> None:
    messages = errors(Password(), "Xk9-vT2-pq4")  # 11 characters
    assert messages == ["Must be at least 12 characters long."]
    assert_not_echoed(messages, "Xk9-vT2-pq4")
    assert load(Password(min_length=8), "Xk9-vT2-") == "Xk9-vT2-"


def test_password_max_length() -> None:
    longest = secrets.token_urlsafe(96)  # 128 random characters
    assert load(Password(), longest) == longest
    messages = errors(Password(), longest + "x")
    assert messages == ["Must be at most 128 characters long."]
    assert errors(Password(max_length=20), "y" * 21) == ["Must be at most 20 characters long."]


def test_password_is_normalised_to_nfkc_and_lengths_count_after() -> None:
    # U+FB01 LATIN SMALL LIGATURE FI becomes "fi": 6 characters in, 12 after NFKC.
    assert load(Password(blocklist=False), "\ufb01" * 6) == "fi" * 6
    assert errors(Password(max_length=12, blocklist=False), "\ufb01" * 7) == [
        "Must be at most 12 characters long."
    ]
    fullwidth = "\uff34\uff51\uff17\uff0d\uff36\uff45\uff58\uff4f\uff0d\uff50\uff4c\uff55\uff4d"
    assert load(Password(), fullwidth) == "Tq7-Vexo-plum"


def test_password_blocklist_applies_after_normalisation() -> None:
    fullwidth = "".join(chr(ord(c) + 0xFEE0) for c in "password1234")
    assert errors(Password(), fullwidth) == [
        "This password is too common. Choose one that is harder to guess."
    ]


def test_password_has_no_composition_rules_by_default() -> None:
    for value in ("alllowercaseletters", "ALLUPPERCASELETTERS", "with spaces only here",
                  "пароль-на-русском-языке", "🔑🐍🌵🎻🍄🌙🎲🧭🪁🦉🍋🎈"):
        assert load(Password(), value) == value


@pytest.mark.parametrize(
    ("option", "missing", "message"),
    [
        ("require_upper", "tq7-vexo-plum-zr", "Must contain an uppercase letter."),
        ("require_lower", "TQ7-VEXO-PLUM-ZR", "Must contain a lowercase letter."),
        ("require_digit", "tqx-Vexo-plum-Zr", "Must contain a digit."),
        ("require_symbol", "tq7xVexoxplumxZr",
         "Must contain a symbol (a character that is not a letter or a digit)."),
    ],
)
def test_password_composition_options(option: str, missing: str, message: str) -> None:
    field = Password(**{option: True})
    assert load(field, PASSPHRASE) == PASSPHRASE
    messages = errors(field, missing)
    assert messages == [message]
    assert_not_echoed(messages, missing)


def test_password_reports_length_and_composition_together() -> None:
    field = Password(require_upper=True, require_digit=True, require_symbol=True)
    assert errors(field, "short") == [
        "Must be at least 12 characters long.",
        "Must contain an uppercase letter.",
        "Must contain a digit.",
        "Must contain a symbol (a character that is not a letter or a digit).",
    ]


def test_password_min_score_with_zxcvbn() -> None:
    field = Password(min_score=3)
    assert load(field, "Vq8#zL2!mR4$wK9x") == "Vq8#zL2!mR4$wK9x"
    messages = errors(field, "correcthorse")  # zxcvbn score 2
    assert len(messages) == 1
    assert messages[0].startswith("Too easy to guess.")
    assert "Add another word or two." in messages[0]
    assert "correcthorse" not in messages[0]
    # blocklist=False: the sequence check would refuse it before zxcvbn scores it.
    sequence = Password(min_score=1, blocklist=False)
    assert errors(sequence, "abcdefghijkl")[0].startswith("Too easy to guess.")
    assert load(Password(min_score=0, blocklist=False), "abcdefghijkl") == "abcdefghijkl"


def test_password_zxcvbn_only_sees_the_first_72_characters(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    field = Password(min_score=2)
    seen: list[str] = []

    def fake_zxcvbn(password: str, *args: Any, **kwargs: Any) -> dict[str, Any]:
        seen.append(password)
        return {"score": 4, "feedback": {}}

    monkeypatch.setattr(field, "_zxcvbn", fake_zxcvbn)
    value = "Vq8#zL2!mR4$wK9x" * 8  # 128 characters
    assert load(field, value) == value
    assert seen == [value[:72]]


def test_password_zxcvbn_is_not_run_when_other_checks_fail(monkeypatch: pytest.MonkeyPatch) -> None:
    field = Password(min_score=4)

    def must_not_run(*args: Any, **kwargs: Any) -> dict[str, Any]:
        raise AssertionError("zxcvbn ran")

    monkeypatch.setattr(field, "_zxcvbn", must_not_run)
    assert errors(field, "password1234") == [
        "This password is too common. Choose one that is harder to guess."
    ]


@pytest.mark.parametrize("score", [-1, 5, 10])
def test_password_min_score_must_be_a_zxcvbn_score(score: int) -> None:
    with pytest.raises(ValueError, match="min_score"):
        Password(min_score=score)


def test_password_min_score_without_zxcvbn_says_how_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "zxcvbn", None)
    with pytest.raises(ImportError, match=re.escape('pip install "flask-apiguard[zxcvbn]"')):
        Password(min_score=2)
    assert load(Password(), PASSPHRASE) == PASSPHRASE  # zxcvbn is only needed for min_score


@pytest.mark.parametrize(("min_length", "max_length"), [(0, 128), (20, 10), (-1, 5)])
def test_password_inconsistent_lengths_are_refused(min_length: int, max_length: int) -> None:
    with pytest.raises(ValueError):
        Password(min_length=min_length, max_length=max_length)


def test_password_is_load_only_and_never_serialised() -> None:
    schema = Schema.from_dict({"user": fields.String(), "password": Password()})()
    assert schema.load({"user": "u", "password": PASSPHRASE})["password"] == PASSPHRASE
    assert schema.dump({"user": "u", "password": PASSPHRASE}) == {"user": "u"}
    leaky = Schema.from_dict({"password": Password(load_only=False)})()
    assert leaky.dump({"password": PASSPHRASE}) == {"password": None}
    assert PASSPHRASE not in repr(leaky.dump({"password": PASSPHRASE}))


@pytest.mark.parametrize("value", [123456789012345, None, ["x" * 20], b"\xff\xfe" * 8])
def test_password_refuses_non_strings(value: Any) -> None:
    messages = errors(Password(), value)
    assert messages[0] in {"Not a valid string.", "Field may not be null.",
                           "Not a valid utf-8 string."}


# -- Password: repetitive and sequential characters (NIST SP 800-63B §5.1.1.2) ---------------

PATTERN = ("This password is mostly repeated or sequential characters (such as aaaa, abcabc, "
           "1234 or qwerty). Choose one that is harder to guess.")


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("aaaaaaaaaaaaaaaa", id="one_character"),
        pytest.param("AAAAaaaaAAAAaaaa", id="one_character_any_case"),
        pytest.param("abcabcabcabc", id="short_unit"),
        pytest.param("Zq" * 8, id="two_character_unit"),
        pytest.param("x7#-" * 4, id="four_character_unit"),
        pytest.param("🔑" * 12, id="emoji"),
        pytest.param("Vq8#zL2!" + "a" * 16, id="run_after_a_short_start"),
    ],
)
def test_password_refuses_repeated_characters(value: str) -> None:
    messages = errors(Password(), value)
    assert messages == [PATTERN]
    assert_not_echoed(messages, value)


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("123456789012", id="digits_up"),
        pytest.param("9876543210987", id="digits_down"),
        pytest.param("7890123456789", id="digits_wrap_up"),
        pytest.param("0987654321098", id="digits_wrap_down"),
        pytest.param("abcdefghijklm", id="letters_up"),
        pytest.param("ZYXWVUTSRQPO", id="letters_down_capitals"),
        pytest.param("qwertyuiopasdf", id="top_row_then_home_row"),
        pytest.param("poiuytrewqlkjh", id="top_row_down"),
        pytest.param("asdfghjklzxcvbnm", id="home_and_bottom_rows"),
        pytest.param("mnbvcxzlkjhgfdsa", id="bottom_and_home_rows_down"),
        pytest.param("!@#$%^&*()xy", id="shifted_number_row"),
        pytest.param("hello12345678", id="word_then_digits"),
        pytest.param("aaaa1234qwerabcd", id="patterns_mixed"),
        pytest.param("abcdabcdabcd", id="repeated_sequence"),
    ],
)
def test_password_refuses_sequences(value: str) -> None:
    messages = errors(Password(), value)
    assert messages == [PATTERN]
    assert_not_echoed(messages, value)


GOOD_PASSPHRASES = [
    PASSPHRASE,
    "correct horse battery staple",
    "Tr0ub4dor&3-plus-more",
    "abc of gardening in 2024",
    "my 2024 summer abcd trip!",
    "tq7-Vexo-plum-Zr-1234",
    "banana split sundae",
    "Mississippi river boat",
    "hahaha that was so funny",
    "Xk9-vT2-pq4Z 1234567890",
    "alllowercaseletters",
    "пароль-на-русском-языке",
    "🔑🐍🌵🎻 key snake cactus",
    "Vq8#zL2!mR4$wK9x" * 8,
]


@pytest.mark.parametrize("value", GOOD_PASSPHRASES)
def test_password_with_a_few_short_patterns_is_accepted(value: str) -> None:
    assert load(Password(), value) == value


def test_password_random_strings_are_accepted() -> None:
    rng = random.Random(800_63)
    alphabet = string.ascii_letters + string.digits + string.punctuation
    for length in (12, 16, 24):
        for _ in range(300):
            value = "".join(rng.choice(alphabet) for _ in range(length))
            assert load(Password(), value) == value
    for _ in range(100):
        value = "".join(rng.choice(string.digits) for _ in range(16))
        assert load(Password(), value) == value


def test_password_patterns_are_refused_only_when_the_rest_is_too_short() -> None:
    # 15 of 28 characters are predictable (the a's after the first), but the other 13 make
    # a password on their own.
    assert load(Password(), "Vq8#zL2!mR4$" + "a" * 16) == "Vq8#zL2!mR4$" + "a" * 16
    # The same run next to 11 unpredictable characters: fewer than min_length.
    assert errors(Password(), "Vq8#zL2!mR" + "a" * 16) == [PATTERN]
    assert load(Password(min_length=10), "Vq8#zL2!mR" + "a" * 16) == "Vq8#zL2!mR" + "a" * 16


def test_password_pattern_check_goes_with_the_blocklist_switch() -> None:
    # The login-form field, Password(min_length=1, blocklist=False), must keep accepting
    # passwords chosen before this check existed.
    login = Password(min_length=1, blocklist=False)
    for value in ("aaaaaaaaaaaaaaaa", "123456789012", "qwertyuiopasdf"):
        assert load(login, value) == value


def test_password_on_the_blocklist_gets_only_the_common_message() -> None:
    assert errors(Password(), "qwertyuiop12") == [
        "This password is too common. Choose one that is harder to guess."
    ]


def test_password_reports_patterns_with_length_and_composition() -> None:
    assert errors(Password(min_length=20, require_upper=True), "abcdefghijklmn") == [
        "Must be at least 20 characters long.",
        "Must contain an uppercase letter.",
        PATTERN,
    ]


# -- Password: context-specific words (NIST SP 800-63B §5.1.1.2) ------------------------------

class SignUp(Schema):
    username = fields.String()
    email = fields.String()
    password = Password(context_fields=("username", "email"))


def personal(field: str) -> str:
    return f"This password contains your {field}. Choose one that does not."


def signup_errors(data: dict[str, Any]) -> dict[str, Any]:
    with pytest.raises(ValidationError) as info:
        SignUp().load(data)
    messages = info.value.messages
    assert isinstance(messages, dict)
    return messages


@pytest.mark.parametrize(
    ("password", "expected"),
    [
        pytest.param("Alice-Liddell-rocks", ["username"], id="username"),
        pytest.param("my-ALICE-liddell!!", ["username"], id="username_any_case"),
        pytest.param("wonderland-w.rabbit-1865", ["email"], id="email_local_part"),
        pytest.param("hi w.rabbit@example.org!", ["email"], id="whole_email"),
        pytest.param("w.rabbit alice-liddell", ["username", "email"], id="both"),
    ],
)
def test_password_refuses_the_users_own_name_or_email(password: str, expected: list[str]) -> None:
    data = {"username": "alice-liddell", "email": "W.Rabbit@Example.org", "password": password}
    messages = signup_errors(data)
    assert messages == {"password": [personal(field) for field in expected]}
    assert_not_echoed(messages["password"], password)
    assert_not_echoed(messages["password"], "alice-liddell")


def test_password_context_is_compared_after_normalisation() -> None:
    fullwidth = "".join(chr(ord(c) + 0xFEE0) for c in "ALICE")
    messages = signup_errors({"username": "alice", "password": f"tq7-{fullwidth}-plum"})
    assert messages == {"password": [personal("username")]}


def test_password_without_the_context_values_is_accepted() -> None:
    data = {"username": "alice-liddell", "email": "w.rabbit@example.org", "password": PASSPHRASE}
    assert SignUp().load(data)["password"] == PASSPHRASE


@pytest.mark.parametrize(
    "data",
    [
        pytest.param({"username": "al", "email": "jo@example.org"}, id="shorter_than_3"),
        pytest.param({}, id="missing"),
        pytest.param({"username": "", "email": "  "}, id="blank"),
        pytest.param({"username": None}, id="null"),
    ],
)
def test_password_context_ignores_short_missing_or_empty_values(data: dict[str, Any]) -> None:
    password = "al-jo-tq7-Vexo-plum"
    schema = Schema.from_dict({
        "username": fields.String(allow_none=True),
        "email": fields.String(),
        "password": Password(context_fields=("username", "email")),
    })()
    assert schema.load({**data, "password": password})["password"] == password


def test_password_context_ignores_values_that_are_not_strings() -> None:
    messages = signup_errors({"username": ["alice"], "password": "alice-in-wonderland"})
    assert messages == {"username": ["Not a valid string."]}


def test_password_context_follows_the_fields_data_key() -> None:
    schema = Schema.from_dict({
        "user_name": fields.String(data_key="userName"),
        "password": Password(context_fields=("user_name",)),
    })()
    with pytest.raises(ValidationError) as info:
        schema.load({"userName": "dinah-the-cat", "password": "dinah-the-cat-1865"})
    assert info.value.messages == {"password": [personal("userName")]}


def test_password_context_is_reported_with_the_other_messages() -> None:
    messages = signup_errors({"username": "alice", "password": "alice-x"})
    assert messages == {"password": ["Must be at least 12 characters long.", personal("username")]}


def test_password_context_check_runs_with_the_blocklist_off() -> None:
    schema = Schema.from_dict({
        "username": fields.String(),
        "password": Password(blocklist=False, context_fields=("username",)),
    })()
    with pytest.raises(ValidationError) as info:
        schema.load({"username": "alice", "password": "alice-in-wonderland"})
    assert info.value.messages == {"password": [personal("username")]}


def test_password_context_works_in_a_nested_schema() -> None:
    outer = Schema.from_dict({"username": fields.String(), "account": fields.Nested(SignUp)})()
    with pytest.raises(ValidationError) as info:
        outer.load({"username": "outer-name", "account": {
            "username": "alice", "password": "outer-name-alice"}})
    assert info.value.messages == {"account": {"password": [personal("username")]}}


def test_password_context_fields_must_name_fields_of_the_schema() -> None:
    schema = Schema.from_dict({
        "username": fields.String(),
        "password": Password(context_fields=("usernme",)),
    })()
    with pytest.raises(ValueError, match="'usernme' is not a field of the schema"):
        schema.load({"username": "alice", "password": PASSPHRASE})


@pytest.mark.parametrize("context_fields", ["username", ("password",)])
def test_password_context_fields_is_a_collection_of_other_fields(context_fields: Any) -> None:
    with pytest.raises(ValueError, match="context_fields"):
        Schema.from_dict({
            "username": fields.String(),
            "password": Password(context_fields=context_fields),
        })().load({"username": "alice", "password": PASSPHRASE})


# -- validators -----------------------------------------------------------------------------

@pytest.mark.parametrize("value", ["alice@example.com", "a.b+tag@sub.example.co.uk",
                                   "x@localhost", "zoë@exämple.com"])
def test_email_accepts_addresses(value: str) -> None:
    assert load(fields.String(validate=Email()), value) == value


@pytest.mark.parametrize("value", ["", "alice", "alice@", "@example.com", "a@b", "a b@example.com",
                                   "alice@example.com\n", '"a\x01b"@example.com',
                                   "a@example.com<script>"])
def test_email_refuses_invalid_addresses(value: str) -> None:
    messages = errors(fields.String(validate=Email()), value)
    assert messages == ["Not a valid email address."]
    if value:
        assert_not_echoed(messages, value)


def test_email_max_length_254() -> None:
    local = "a" * 64
    domain = ".".join(["b" * 60] * 3) + ".example.com"  # 64 + 1 + 195 > 254
    assert len(f"{local}@{domain}") > 254
    assert errors(fields.String(validate=Email()), f"{local}@{domain}") == [
        "Not a valid email address."
    ]
    assert load(fields.String(validate=Email(max_length=300)), f"{local}@{domain}")


def test_email_custom_error() -> None:
    field = fields.String(validate=Email(error="Give an email address, e.g. a@example.com."))
    assert errors(field, "nope") == ["Give an email address, e.g. a@example.com."]


@pytest.mark.parametrize("value", [str(uuid.uuid4()), str(uuid.uuid4()).upper(),
                                   "00000000-0000-0000-0000-000000000000"])
def test_uuid_accepts_canonical_strings(value: str) -> None:
    assert load(fields.String(validate=UUID()), value) == value


@pytest.mark.parametrize("value", ["", "not-a-uuid", uuid.uuid4().hex, "{" + str(uuid.uuid4()) + "}",
                                   "urn:uuid:" + str(uuid.uuid4()), " " + str(uuid.uuid4()),
                                   str(uuid.uuid4()) + "\n", str(uuid.uuid4())[:-1] + "g"])
def test_uuid_refuses_other_forms(value: str) -> None:
    messages = errors(fields.String(validate=UUID()), value)
    assert messages == ["Not a valid UUID."]
    if value.strip():
        assert_not_echoed(messages, value.strip())


def test_uuid_as_a_plain_callable() -> None:
    check = UUID()
    value = str(uuid.uuid4())
    assert check(value) == value
    with pytest.raises(ValidationError):
        check(uuid.UUID(value))  # type: ignore[arg-type]


@pytest.mark.parametrize("value", ["https://example.com", "http://example.com/a/b?c=d#e",
                                   "https://sub.example.co.uk:8443/x", "http://localhost:5000/",
                                   "https://203.0.113.9/"])
def test_url_accepts_http_and_https(value: str) -> None:
    assert load(fields.String(validate=URL()), value) == value


@pytest.mark.parametrize(
    "value",
    ["javascript:alert(1)", "JavaScript://example.com/%0Aalert(1)", "data:text/html,<script>",
     "vbscript:msgbox(1)", "ftp://example.com/f", "file:///etc/passwd", "mailto:a@example.com",
     "//example.com/x", "/relative/path", "https://intranet/", "https://", "example.com",
     "https://exa mple.com", "https://example.com/\x00", "https://example.com/\t",
     "https://example.com/ x", ""],
)
def test_url_refuses_other_schemes_and_malformed_urls(value: str) -> None:
    messages = errors(fields.String(validate=URL()), value)
    assert messages == ["Not a valid URL."]
    if len(value) > 8:
        assert_not_echoed(messages, value)


def test_url_options() -> None:
    assert load(fields.String(validate=URL(require_tld=False)), "http://intranet/") == (
        "http://intranet/"
    )
    assert errors(fields.String(validate=URL(schemes={"https"})), "http://example.com") == [
        "Not a valid URL."
    ]
    long_url = "https://example.com/" + "a" * 2048
    assert errors(fields.String(validate=URL()), long_url) == ["Not a valid URL."]
    assert load(fields.String(validate=URL(max_length=4096)), long_url) == long_url
    with pytest.raises(ValueError):
        URL(schemes=())


def test_length_validator() -> None:
    assert load(fields.String(validate=Length(min=2, max=4)), "abc") == "abc"
    assert errors(fields.String(validate=Length(min=2)), "a") == ["Shorter than minimum length 2."]
    assert errors(fields.String(validate=Length(max=2)), "abc") == ["Longer than maximum length 2."]
    assert errors(fields.String(validate=Length(min=2, max=4)), "abcdef") == [
        "Length must be between 2 and 4."
    ]
    assert load(fields.List(fields.Integer(), validate=Length(max=2)), [1, 2]) == [1, 2]
    assert errors(fields.List(fields.Integer(), validate=Length(max=2)), [1, 2, 3]) == [
        "Longer than maximum length 2."
    ]
    custom = fields.String(validate=Length(max=3, error="Use {max} characters at most."))
    assert errors(custom, "abcd") == ["Use 3 characters at most."]
    with pytest.raises(ValidationError):
        Length(max=1)(5)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Length(min=5, max=1)


def test_pattern_uses_fullmatch() -> None:
    field = fields.String(validate=Pattern(r"[a-z]+"))
    assert load(field, "abc") == "abc"
    assert errors(field, "abc1") == ["Does not match the expected format."]  # re.match would pass
    assert errors(field, "abc\n") == ["Does not match the expected format."]  # $ would pass


def test_pattern_is_compiled_once() -> None:
    check = Pattern(r"[a-z]{2}\d", re.IGNORECASE)
    compiled = check.regex
    assert isinstance(compiled, re.Pattern)
    assert compiled.flags & re.IGNORECASE
    for value in ("ab1", "AB2", "Xy3"):
        assert check(value) == value
    assert check.regex is compiled


def test_pattern_accepts_a_compiled_pattern() -> None:
    compiled = re.compile(r"\d{4}")
    check = Pattern(compiled)
    assert check.regex is compiled
    assert check("2024") == "2024"
    with pytest.raises(ValueError):
        Pattern(compiled, re.IGNORECASE)


def test_pattern_error_does_not_echo_and_refuses_non_strings() -> None:
    check = Pattern(r"\d+", error="Use digits only.")
    with pytest.raises(ValidationError) as info:
        check("<img src=x onerror=alert(1)>")
    assert info.value.messages == ["Use digits only."]
    with pytest.raises(ValidationError):
        check(123)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "build",
    [
        lambda: Pattern(r"x", error="Bad value {input}"),
        lambda: Email(error="{input} is not an email"),
        lambda: URL(error="Bad {input}"),
        lambda: UUID(error="{input}"),
        lambda: Length(max=1, error="{input} too long"),
        lambda: Length(max=1, error="{}"),
    ],
)
def test_custom_messages_cannot_echo_the_input(build: Callable[[], object]) -> None:
    with pytest.raises(ValueError, match="placeholder"):
        build()


def test_validators_have_a_useful_repr() -> None:
    assert "regex='\\\\d+'" in repr(Pattern(r"\d+"))
    assert "min=1, max=2" in repr(Length(1, 2))
    assert "https" in repr(URL())


def test_password_pattern_check_survives_a_character_that_lowercases_to_two() -> None:
    # One "İ" (lowercase: two characters) switched case-folding, and so the check, off.
    for value in ("ABCDEFGHIJKLMNOP\u0130", "QWERTYUIOPASDFGH\u0130"):
        assert errors(Password(), value) == [PATTERN]
