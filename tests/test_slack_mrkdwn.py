"""Markdown rendered as Slack mrkdwn: formatting converted, code kept, and no way to a mention or a broadcast."""

from __future__ import annotations

import random
import re
import time

import pytest

from botkit.adapters.slack_mrkdwn import mrkdwn_parts, render_mrkdwn

# What Slack reads as markup in a message's text: a link is the only kind a reply may hold.
LINK = re.compile(r"<https?://[^\s|<>]+(?:\|[^<>]*)?>", re.IGNORECASE)
ENTITY = re.compile(r"&(?:amp|lt|gt);")


def assert_inert(shown: str) -> None:
    """Nothing in ``shown`` is markup but http(s) links: no <@U..>, <#C..>, <!here>, <!subteam^..>."""
    rest = LINK.sub("", shown)
    assert "<" not in rest and ">" not in rest, shown
    assert "&" not in ENTITY.sub("", shown), shown  # every & is one of the three escapes


@pytest.mark.parametrize(
    ("markdown", "mrkdwn"),
    [
        ("# Plants", "*Plants*"),
        ("### How they **grow** ###", "*How they grow*"),
        ("**bold** and __bold__", "*bold* and *bold*"),
        ("*italic* and _italic_", "_italic_ and _italic_"),
        ("~~gone~~", "~gone~"),
        ("**bold _and italic_**", "*bold _and italic_*"),
        ("[the docs](https://example.org/a?b=1&c=2)", "<https://example.org/a?b=1&amp;c=2|the docs>"),
        ("[wiki](https://en.wikipedia.org/wiki/Rust_(language))", "<https://en.wikipedia.org/wiki/Rust_(language)|wiki>"),
        ("![a cat](https://example.org/cat.png)", "<https://example.org/cat.png|a cat>"),
        ("[a & b <c>](https://x.org)", "<https://x.org|a &amp; b &lt;c&gt;>"),
        ("`**not bold** <b>`", "`**not bold** &lt;b&gt;`"),
        ("```python\nx = a < b and **c**\n# not a heading\n```", "```python\nx = a &lt; b and **c**\n# not a heading\n```"),
        ("- item *one*\n- item two", "- item _one_\n- item two"),
        ("snake_case_name, 2*3*4, a * b", "snake_case_name, 2*3*4, a * b"),
        ("1 < 2 && 3 > 2", "1 &lt; 2 &amp;&amp; 3 &gt; 2"),
        ("> quoted", "&gt; quoted"),  # Slack shows an escaped > at the start of a line as a quote
    ],
)  # fmt: skip
def test_markdown_becomes_mrkdwn(markdown, mrkdwn):
    assert render_mrkdwn(markdown) == mrkdwn


@pytest.mark.parametrize(
    ("markdown", "mrkdwn"),
    [
        ("[click](javascript:alert(1))", "click (javascript:alert(1))"),
        ("[mail](mailto:a@b.org)", "mail (mailto:a@b.org)"),
        ("[x](slack://channel?id=C1)", "x (slack://channel?id=C1)"),
        ("[x](https://a.org/|<!here>)", "x (https://a.org/|&lt;!here&gt;)"),
        ("[x](https://a.org/>)", "x (https://a.org/&gt;)"),
        ("[<!here>](https://a.org)", "<https://a.org|&lt;!here&gt;>"),
        ("[<!channel|all>](https://a.org/<!everyone>)", "&lt;!channel|all&gt; (https://a.org/&lt;!everyone&gt;)"),
        ("[<@U123>](https://a.org/&lt;@U1&gt;)", "<https://a.org/&amp;lt;@U1&amp;gt;|&lt;@U123&gt;>"),
    ],
)  # fmt: skip
def test_links_cannot_smuggle_markup_and_other_schemes_stay_text(markdown, mrkdwn):
    assert render_mrkdwn(markdown) == mrkdwn
    assert_inert(render_mrkdwn(markdown))


FRAGMENTS = [
    "<", ">", "&", "|", "!", "@", "#", "^", "[", "]", "(", ")", "*", "**", "_", "__", "~~", "`", "```",
    "\n", " ", "# ", "here", "channel", "everyone", "U123", "C42", "subteam^S1", "https://", "http://a.b/",
    "HTTPS://X.ORG", "javascript:", "mailto:", "&lt;", "&gt;", "&amp;", "<!here>", "<@U1>", "<#C1|x>",
    "[a](", "](https://e.org/", "\u200b", "é", "\U0001f1ec\U0001f1e7",
]  # fmt: skip


def test_no_rendering_makes_a_mention_a_broadcast_or_stray_markup():
    chance = random.Random(14)
    for _ in range(4000):
        text = "".join(chance.choice(FRAGMENTS) for _ in range(chance.randint(1, 30)))
        assert_inert(render_mrkdwn(text))


def test_parts_fit_as_sent_even_when_escaping_makes_the_text_longer():
    text = "a & b <c> " * 5000  # 50,000 characters of Markdown, about 100,000 as sent
    parts = mrkdwn_parts(text, 40_000)
    assert all(len(part) <= 40_000 for part in parts)
    assert ENTITY.sub(lambda m: {"&amp;": "&", "&lt;": "<", "&gt;": ">"}[m.group(0)], " ".join(parts)) == (
        text.strip()
    )
    for limit in (100, 999):
        assert all(len(part) <= limit for part in mrkdwn_parts("&" * 3000 + " x" * 300, limit))


@pytest.mark.parametrize(
    "text",
    [
        "**a " * 10_000,
        "*a " * 13_000,
        "_a " * 13_000,
        "~~a " * 10_000,
        "__a " * 10_000,
        "# " + " " * 39_000 + "x",
    ],
)
def test_rendering_stays_linear_on_openers_that_never_close(text):
    started = time.perf_counter()
    assert_inert(render_mrkdwn(text))
    assert time.perf_counter() - started < 1.5  # a quadratic scan of these took 6 to 12 seconds


def test_a_long_reply_is_split_into_small_parts_in_linear_time():
    text = "Plants **grow** by turning _light_ & water into sugar, see [docs](https://x.org). " * 500
    started = time.perf_counter()
    parts = mrkdwn_parts(text, 100)
    assert time.perf_counter() - started < 1.0  # rendering all the rest for each part took 2.5 seconds
    assert len(parts) >= 400 and all(len(part) <= 100 for part in parts)
    assert sum(part.count("<https://x.org|docs>") for part in parts) == 500 and "**" not in "".join(parts)
