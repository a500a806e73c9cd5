"""Unicode tricks through SafeString and Password: NUL bytes, control characters, bidi
overrides ("Trojan Source"), zero-width characters, decomposed vs composed forms, look-alike
characters that normalisation does or does not fold, and oversized input."""

from __future__ import annotations

import time
import unicodedata
from typing import Any

import pytest
from marshmallow import Schema, ValidationError, fields

from flask_apiguard.fields import Password, SafeString

CONTROL = "Must not contain control characters."
BIDI = "Must not contain bidirectional text control characters."
INVISIBLE = "Must not contain zero-width or other invisible characters."
SURROGATE = "Must be valid Unicode text (an unpaired surrogate was found)."


def load(field: fields.Field, value: Any) -> Any:
    return Schema.from_dict({"value": field})().load({"value": value})["value"]


def errors(field: fields.Field, value: Any) -> list[str]:
    with pytest.raises(ValidationError) as info:
        load(field, value)
    messages = info.value.messages
    assert isinstance(messages, dict)
    return [str(m) for m in messages["value"]]


# -- NUL and other control characters -------------------------------------------------------

@pytest.mark.parametrize(
    "value",
    [
        pytest.param("admin\x00", id="nul_terminator_truncation"),
        pytest.param("\x00", id="nul_alone"),
        pytest.param("name\x00.png", id="nul_in_file_name"),
        pytest.param("ok\x1b[31mred\x1b[0m", id="ansi_escape_sequence_terminal_injection"),
        pytest.param("user\r\nX-Injected: 1", id="crlf_header_injection"),
        pytest.param("line\nforged log line", id="lf_log_forging"),
        pytest.param("a\x08b", id="backspace"),
        pytest.param("a\x7fb", id="delete"),
        pytest.param("a\x85b", id="c1_next_line"),
        pytest.param("a\x9bb", id="c1_control_sequence_introducer"),
        pytest.param("a\u2028b", id="line_separator"),
        pytest.param("a\u2029b", id="paragraph_separator"),
        pytest.param("tab\tseparated", id="tab"),
    ],
)
def test_control_characters_are_refused(value: str) -> None:
    messages = errors(SafeString(), value)
    assert messages == [CONTROL]
    assert value not in messages[0]


def test_nul_is_refused_even_with_allow_newlines() -> None:
    assert errors(SafeString(allow_newlines=True), "multi\nline\x00") == [CONTROL]
    assert errors(SafeString(allow_newlines=True), "esc\x1b") == [CONTROL]


# -- bidi controls ("Trojan Source", CVE-2021-42574) ------------------------------------------

BIDI_CONTROLS = {
    "U+202A_left_to_right_embedding": "\u202a",
    "U+202B_right_to_left_embedding": "\u202b",
    "U+202C_pop_directional_formatting": "\u202c",
    "U+202D_left_to_right_override": "\u202d",
    "U+202E_right_to_left_override": "\u202e",
    "U+2066_left_to_right_isolate": "\u2066",
    "U+2067_right_to_left_isolate": "\u2067",
    "U+2068_first_strong_isolate": "\u2068",
    "U+2069_pop_directional_isolate": "\u2069",
    "U+200E_left_to_right_mark": "\u200e",
    "U+200F_right_to_left_mark": "\u200f",
    "U+061C_arabic_letter_mark": "\u061c",
}


@pytest.mark.parametrize("char", BIDI_CONTROLS.values(), ids=BIDI_CONTROLS.keys())
def test_bidi_controls_are_refused(char: str) -> None:
    assert errors(SafeString(), f"abc{char}def") == [BIDI]


def test_trojan_source_file_name_spoof_is_refused() -> None:
    # RLO reverses what follows it on screen: this displays as "invoice_exe.pdf" while the
    # name really ends in ".exe".
    spoof = "invoice_\u202efdp.exe"
    messages = errors(SafeString(), spoof)
    assert messages == [BIDI]
    assert spoof not in messages[0]


def test_trojan_source_isolate_shuffle_is_refused() -> None:
    assert errors(SafeString(), "if access_level != \u2067\u2066user\u2069 \u2066// admin") == [
        BIDI
    ]


def test_right_to_left_text_itself_is_accepted() -> None:
    assert load(SafeString(), "שלום עולם") == "שלום עולם"
    assert load(SafeString(), "مرحبا بالعالم") == "مرحبا بالعالم"


# -- zero-width and invisible characters ----------------------------------------------------

@pytest.mark.parametrize(
    "value",
    [
        pytest.param("ad\u200bmin", id="zero_width_space_in_username"),
        pytest.param("\ufeffadmin", id="byte_order_mark_prefix"),
        pytest.param("ad\u2060min", id="word_joiner"),
        pytest.param("a\u2062b", id="invisible_times"),
    ],
)
def test_invisible_characters_are_refused(value: str) -> None:
    assert errors(SafeString(), value) == [INVISIBLE]


def test_zero_width_joiners_in_emoji_and_scripts_are_accepted() -> None:
    family = "\U0001f468\u200d\U0001f469\u200d\U0001f467"  # man ZWJ woman ZWJ girl
    assert load(SafeString(), family) == family
    persian = "\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645"  # ZWNJ inside a word
    assert load(SafeString(), persian) == persian


def test_lone_surrogate_is_refused() -> None:
    assert errors(SafeString(), "abc\ud800def") == [SURROGATE]
    assert errors(SafeString(), "\udfff") == [SURROGATE]


# -- decomposed vs composed forms -----------------------------------------------------------

def test_decomposed_and_composed_forms_load_equal() -> None:
    composed, decomposed = "Zoë Ångström", unicodedata.normalize("NFD", "Zoë Ångström")
    assert composed != decomposed
    assert load(SafeString(), decomposed) == load(SafeString(), composed) == composed


def test_hangul_jamo_compose_to_syllables() -> None:
    jamo = "\u1112\u1161\u11ab\u1100\u1173\u11af"  # 6 conjoining jamo
    assert load(SafeString(max_length=2), jamo) == "한글"


def test_stacked_combining_marks_count_once_composed() -> None:
    # U+1F82: alpha with psili, varia and ypogegrammeni, 4 code points decomposed.
    decomposed = unicodedata.normalize("NFD", "\u1f82") * 3
    assert len(decomposed) == 12
    assert load(SafeString(max_length=3), decomposed) == "\u1f82" * 3


def test_combining_marks_that_do_not_compose_still_count() -> None:
    zalgo = "e" + "\u0301\u0302\u0303\u0304" * 5
    assert errors(SafeString(max_length=10), zalgo) == ["Longer than maximum length 10."]


# -- look-alikes: what NFC folds and what it does not ---------------------------------------

@pytest.mark.parametrize(
    ("lookalike", "canonical"),
    [
        pytest.param("\u212b", "\u00c5", id="angstrom_sign_to_a_ring"),
        pytest.param("\u2126", "\u03a9", id="ohm_sign_to_omega"),
        pytest.param("\u212a", "K", id="kelvin_sign_to_k"),
        pytest.param("\u037e", ";", id="greek_question_mark_to_semicolon"),
        pytest.param("\u1fef", "`", id="greek_varia_to_grave_accent"),
    ],
)
def test_nfc_folds_canonical_singletons(lookalike: str, canonical: str) -> None:
    assert load(SafeString(), f"x{lookalike}y") == f"x{canonical}y"


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("p\u0430ypal", id="cyrillic_a_in_latin_word"),
        pytest.param("\uff41dmin", id="fullwidth_a"),
        pytest.param("\ufb01le", id="fi_ligature"),
        pytest.param("\U0001d41a\U0001d41d\U0001d426\U0001d422\U0001d427", id="math_bold"),
    ],
)
def test_nfc_keeps_compatibility_and_cross_script_lookalikes(value: str) -> None:
    """NFC is not a confusables check: these stay as sent (compare identifiers with
    NFKC/casefold or a confusables skeleton where that matters)."""
    assert load(SafeString(), value) == value


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("\uff1cscript\uff1e", id="fullwidth_angle_brackets"),
        pytest.param("\u2039b\u203a", id="single_angle_quotation_marks"),
    ],
)
def test_angle_bracket_lookalikes_are_not_markup(value: str) -> None:
    assert load(SafeString(), value) == value  # NFC does not turn them into < or >


def test_composed_angle_bracket_via_combining_mark_is_refused() -> None:
    # "<" + U+0338 COMBINING LONG SOLIDUS OVERLAY composes to U+226E under NFC; the plain
    # "<" alone is still refused.
    assert load(SafeString(), "a<\u0338b") == "a\u226eb"
    assert errors(SafeString(), "a<b") == ["Must not contain '<' or '>'."]


# -- oversized input ------------------------------------------------------------------------

def test_safe_string_refuses_a_megabyte_quickly() -> None:
    field = SafeString(max_length=80)
    started = time.perf_counter()
    assert errors(field, "\ufdfa" * 1_000_000) == ["Longer than maximum length 80."]
    assert time.perf_counter() - started < 0.5


# -- Password -------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "value",
    [
        pytest.param("tq7-Vexo-plum-Zr\x00", id="trailing_nul_bcrypt_truncation"),
        pytest.param("\x00tq7-Vexo-plum-Zr", id="leading_nul"),
        pytest.param("tq7-Vexo\x1b-plum-Zr", id="escape"),
        pytest.param("tq7-Vexo-plum-Zr\n", id="trailing_newline"),
    ],
)
def test_password_with_control_characters_is_refused(value: str) -> None:
    messages = errors(Password(), value)
    assert messages == [CONTROL]
    assert "tq7-Vexo" not in messages[0]


def test_password_with_lone_surrogate_is_refused() -> None:
    assert errors(Password(), "tq7-Vexo-plum-Zr\ud800") == [SURROGATE]


def test_password_accepts_spaces_and_any_script() -> None:
    for value in ("correct horse battery staple", "пароль на русском языке",
                  "パスワードはとても長いです", "mot de passe très sûr"):
        assert load(Password(), value) == unicodedata.normalize("NFKC", value)


def test_password_decomposed_and_composed_forms_are_the_same_password() -> None:
    composed = "mot de passe très sûr"
    decomposed = unicodedata.normalize("NFD", composed)
    assert load(Password(), decomposed) == load(Password(), composed) == composed


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("a" * 1_000_000, id="one_megabyte_ascii"),
        pytest.param("\ufdfa" * 1_000_000, id="one_megabyte_18x_nfkc_expansion"),
        pytest.param("\u1f82" * 1_000_000, id="one_megabyte_composed_greek"),
    ],
)
def test_megabyte_password_is_refused_before_any_expensive_work(
    value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    field = Password(min_score=4)

    def must_not_run(*args: Any, **kwargs: Any) -> dict[str, Any]:
        raise AssertionError("zxcvbn ran on an oversized password")

    monkeypatch.setattr(field, "_zxcvbn", must_not_run)
    started = time.perf_counter()
    messages = errors(field, value)
    elapsed = time.perf_counter() - started
    assert messages == ["Must be at most 128 characters long."]
    assert elapsed < 0.5, f"took {elapsed:.2f}s"


def test_password_just_within_the_bound_after_expansion() -> None:
    # U+FDFA expands to 18 characters under NFKC: 7 of them are 126 characters, 8 are 144.
    assert len(load(Password(blocklist=False), "\ufdfa" * 7)) == 126
    assert errors(Password(), "\ufdfa" * 8) == ["Must be at most 128 characters long."]
