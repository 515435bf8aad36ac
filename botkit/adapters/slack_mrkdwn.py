"""Markdown, as models write it, rendered as Slack mrkdwn that can ping nobody; and split to Slack's sizes.

Headings become bold lines, ``**bold**`` ``*bold*``, ``*italic*`` and ``_italic_``
``_italic_``, ``~~strike~~`` ``~strike~``, ``[text](url)`` Slack's ``<url|text>``;
inline code and code blocks are kept as written. Every ``&``, ``<`` and ``>``
is escaped, so the only markup in the result is the links built here: their
url must be ``http(s)://`` without ``|`` or ``>`` (anything else is shown as
plain text), and ``&``, ``<``, ``>`` are escaped in both url and text. No
rendering can therefore make a mention (``<@U..>``, ``<#C..>``, ``<!here>``,
``<!subteam^..>``) or a broadcast. Slack counts a message's length as sent,
escapes included, so parts are measured after rendering.
"""

from __future__ import annotations

import re

from botkit.adapters.edits import split_text

FENCE_LINE = re.compile(r"^[ \t]*```")
HEADING = re.compile(r"^[ \t]{0,3}#{1,6}[ \t]+(.*)$")
SAFE_URL = re.compile(r"https?://[^\s|>]+", re.IGNORECASE)

# One inline construct, tried left to right; the first alternative that matches at a place wins.
# What a construct holds never contains its own delimiter, so an opener without a closer is given
# up at the next delimiter: rendering stays linear in the text, whatever the model writes.
_INLINE = re.compile(
    r"(?P<code>`[^`\n]+`|``(?:[^`\n]|`(?!`))+``)"
    r"|!?\[(?P<label>[^\[\]\n]*)\]\((?P<url>(?:[^\s()]|\([^\s()]*\))+)(?:[ \t]+\"[^\"\n]*\")?\)"
    r"|\*\*(?P<bold>(?=\S)(?:(?!\*\*).)+?(?<=\S))\*\*"
    r"|(?<!\w)__(?P<bold2>(?=\S)(?:(?!__).)+?(?<=\S))__(?!\w)"
    r"|~~(?P<strike>(?=\S)(?:(?!~~).)+?(?<=\S))~~"
    r"|(?<![*\w])\*(?P<italic>[^\s*](?:[^*\n]*[^\s*])?)\*(?![*\w])"
    r"|(?<!\w)_(?P<italic2>[^\s_](?:[^_\n]*[^\s_])?)_(?!\w)"
)


def heading_title(line: str) -> str | None:
    """The title of a Markdown heading line (``## Title ##`` -> ``Title``), or None for another line."""
    heading = HEADING.match(line)
    if heading is None:
        return None
    title = heading.group(1).rstrip(" \t")
    closed = title.rstrip("#")
    if closed != title and (not closed or closed[-1] in " \t"):
        title = closed.rstrip(" \t")
    return title.replace("**", "").replace("__", "")


def escape_mrkdwn(text: str) -> str:
    """Text as Slack shows it literally: the three characters mrkdwn treats as markup, escaped."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def link(label: str, url: str) -> str:
    """``<url|label>`` for a plain http(s) url; anything else as plain text, ``label (url)``."""
    if not SAFE_URL.fullmatch(url):
        return escape_mrkdwn(f"{label} ({url})" if label else url)
    return f"<{escape_mrkdwn(url)}|{escape_mrkdwn(label)}>" if label else f"<{escape_mrkdwn(url)}>"


def render_inline(text: str) -> str:
    """One line of Markdown as mrkdwn."""
    pieces: list[str] = []
    cursor = 0
    for match in _INLINE.finditer(text):
        pieces.append(escape_mrkdwn(text[cursor : match.start()]))
        cursor = match.end()
        found = {name: value for name, value in match.groupdict().items() if value is not None}
        if "code" in found:
            pieces.append(escape_mrkdwn(found["code"]))
        elif "url" in found:
            pieces.append(link(found["label"], found["url"]))
        elif "bold" in found or "bold2" in found:
            pieces.append(f"*{render_inline(found.get('bold', found.get('bold2', '')))}*")
        elif "strike" in found:
            pieces.append(f"~{render_inline(found['strike'])}~")
        else:
            pieces.append(f"_{render_inline(found.get('italic', found.get('italic2', '')))}_")
    pieces.append(escape_mrkdwn(text[cursor:]))
    return "".join(pieces)


def render_mrkdwn(text: str) -> str:
    """``text`` (Markdown) as Slack mrkdwn: formatting converted, code verbatim, everything else escaped."""
    lines: list[str] = []
    in_code = False
    for line in text.split("\n"):
        if FENCE_LINE.match(line):
            in_code = not in_code
            lines.append(escape_mrkdwn(line))
        elif in_code:
            lines.append(escape_mrkdwn(line))
        elif (title := heading_title(line)) is not None:
            lines.append(f"*{render_inline(title)}*" if title.strip() else "")
        else:
            lines.append(render_inline(line))
    return "\n".join(lines)


def mrkdwn_parts(text: str, limit: int) -> list[str]:
    """``text`` rendered as mrkdwn, in parts of at most ``limit`` characters *as sent* (escapes counted)."""

    def as_sent(part: str) -> int:
        # Rendering seldom shortens text much (``**b**`` is sent as ``*b*``): a text far longer than
        # the limit is cut without rendering all of it for each part, which would take quadratic time.
        return len(part) if len(part) > 2 * limit else len(render_mrkdwn(part))

    return [render_mrkdwn(part) for part in split_text(text, limit, measure=as_sent)]
