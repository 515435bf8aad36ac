"""Rule-based detectors: e-mail addresses, phone and card numbers, API keys and tokens, prompt injection;
and text hidden in invisible Unicode tag characters.

Every pattern is linear on any input: a match can only start at a token
boundary, repetitions are bounded and possessive where a retry could not
help, so a 100 KB message of ``eyJeyJ...`` or ``1 1 1 ...`` is scanned in
milliseconds. A rule with a literal prefix is searched for by that prefix
(fast in ``re``); the others first ask a cheap ``hint`` (is there an ``@``, are
there nine digits?) and are skipped when it says no. Checks a regex cannot
make (the Luhn digit of a card, how many digits a phone number has) run on
each match.

A core module, public (``botkit.detectors``): the moderation plugin checks
chat with these rules, and ``botkit export`` scrubs training data with the same
ones (``pii_scrubber``), so what the bot redacts and what an export scrubs are
found by one set of rules.
"""

from __future__ import annotations

import base64
import binascii
import functools
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

CATEGORIES = ("blocklist", "profanity", "email", "phone", "card", "secret", "injection")


@dataclass(frozen=True, slots=True)
class Finding:
    """Something a detector found: ``[start, end)`` of the original text is what a redaction replaces."""

    category: str
    rule: str
    start: int
    end: int
    excerpt: str  # the original text of the span; never stored as is (see ``masked``)
    score: float | None = None

    def moved(self, offset: int) -> Finding:
        return Finding(
            self.category, self.rule, self.start + offset, self.end + offset, self.excerpt, self.score
        )


@dataclass(frozen=True, slots=True)
class Rule:
    category: str
    name: str
    pattern: str
    check: Callable[[str], bool] | None = None  # on the matched text (or its ``value`` group)
    hint: Callable[[str], bool] | None = None  # a cheap test: can the rule match this text at all?
    not_after: str | None = None  # a match right after text that this pattern ends is no finding

    @property
    def regex(self) -> re.Pattern[str]:
        return _compiled(self.pattern)


@functools.cache
def _compiled(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


def has_digits(count: int) -> Callable[[str], bool]:
    return lambda text: len(text) >= count and sum(map(text.count, "0123456789")) >= count


def has(*needles: str, gate: str = "") -> Callable[[str], bool]:
    """Whether ``text`` holds one of ``needles``; looked for only where it holds ``gate``, a character
    that every needle has and ordinary prose rarely does (a one-character search is much faster).
    """

    def hint(text: str) -> bool:
        if gate and gate not in text:
            return False
        for needle in needles:
            if needle in text:
                return True
        return False

    return hint


def luhn_valid(digits: str) -> bool:
    total = 0
    for position, char in enumerate(reversed(digits)):
        value = ord(char) - 48
        if position % 2:
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
    return total % 10 == 0


def only_digits(text: str) -> str:
    return "".join(c for c in text if c.isdigit())


def plausible_card(text: str) -> bool:
    digits = only_digits(text)
    return 13 <= len(digits) <= 19 and luhn_valid(digits)


def plausible_phone(text: str) -> bool:
    """Enough digits for a phone number, and not a placeholder-like run (``0123 456 789``, ``000 000 0000``)."""
    digits = only_digits(text)
    if not 9 <= len(digits) <= 15:
        return False
    steps = {(ord(b) - ord(a)) % 10 for a, b in zip(digits, digits[1:], strict=False)}
    return steps not in ({0}, {1}, {9})  # one digit repeated, counting up, counting down


def discord_bot_token(text: str) -> bool:
    """A Discord bot token's first part is the bot's user id (a 17-20 digit snowflake) in base64."""
    head = text.split(".", 1)[0]
    try:
        user_id = base64.urlsafe_b64decode(head + "=" * (-len(head) % 4))
    except (binascii.Error, ValueError):
        return False
    return user_id.isdigit() and 17 <= len(user_id) <= 20


_DISCORD_HINT = re.compile(r"\.[^\s.]{6,7}\.")


def discord_hint(text: str) -> bool:
    """Two dots 7 or 8 characters apart with no space between: far cheaper than the rule's regex."""
    return _DISCORD_HINT.search(text) is not None


_UNDERSCORED = has("shp", "_v1_", "gsk_", "r8_", "lin_api_", "whsec_", gate="_")
_HYPHENATED = has("PMAK-", "AGE-SECRET-KEY-", gate="-")


def provider_hint(text: str) -> bool:
    return _UNDERSCORED(text) or _HYPHENATED(text) or ("hvs." in text)


def google_oauth_hint(text: str) -> bool:
    return ("-" in text and "GOCSPX-" in text) or ("9" in text and "ya29." in text)


def aws_secret_hint(text: str) -> bool:
    return ("=" in text or ":" in text) and ("ecret" in text or "ECRET" in text)


def url_credentials_hint(text: str) -> bool:
    return "@" in text and "://" in text


def mixed_secret(text: str) -> bool:
    """A credential value, not a word: it has a letter and a digit or symbol."""
    return any(c.isalpha() for c in text) and not text.isalpha()


# A token starts here: not inside a word, nor after a hyphen. A number starts here: not inside a
# mention or channel id (<@123>, <#123>, <@&123>), an emoji id (<:x:123>), a URL or a longer number.
NUMBER_START = r"(?<![\w@#&:/=.+\-])"
TOKEN_START = r"(?<![\w\-])"
TOKEN_END = r"(?![\w\-])"
# Words before a number that say it is an identifier, not a phone number ("order no. 0412 345 678").
ID_LABEL = (
    r"\b(?i:order|invoice|ref(?:erence)?|ticket|case|tracking|account|acct|customer|client|booking"
    r"|reservation|confirmation|transaction|receipt|parcel|shipment|policy|member(?:ship)?|serial|sku|item"
    r"|id|iban|isbn)(?:[ \t]?(?i:number|num|nr|no)\.?)?[ \t]?:?[ \t]{0,2}\Z"
)


RULES: tuple[Rule, ...] = (
    Rule(
        "secret",
        "private_key",
        r"-----BEGIN[A-Z ]{0,40}PRIVATE KEY-----(?:[\r\n]++(?!-----)[A-Za-z0-9+/=:,\- ]{1,200}+){0,400}+"
        r"(?:[\r\n]++-----END[A-Z ]{0,40}PRIVATE KEY-----)?",
        hint=has("-----BEGIN"),
    ),
    Rule(
        "secret",
        "aws_access_key",
        r"(?<![A-Za-z0-9])(?:AKIA|ASIA|ABIA|ACCA)[A-Z0-9]{16}(?![A-Za-z0-9])",
        hint=has("AKIA", "ASIA", "ABIA", "ACCA"),
    ),
    Rule(
        "secret",
        "github_token",
        TOKEN_START + r"(?:gh[pousr]_[A-Za-z0-9]{36,251}+|github_pat_\w{22,251}+)" + TOKEN_END,
        hint=has("gh"),
    ),
    Rule(
        "secret",
        "slack_token",
        TOKEN_START + r"xox[abeoprs]-[A-Za-z0-9\-]{10,250}+" + TOKEN_END,
        hint=has("xox"),
    ),
    Rule(
        "secret",
        "slack_webhook",
        r"https://hooks\.slack\.com/services/[A-Za-z0-9/_\-]{20,200}+",
        hint=has("hooks.slack.com"),
    ),
    Rule(
        "secret",
        "stripe_key",
        TOKEN_START + r"[srp]k_(?:live|test)_[A-Za-z0-9]{16,247}+" + TOKEN_END,
        hint=has("k_live_", "k_test_"),
    ),
    Rule(
        "secret",
        "openai_key",
        TOKEN_START + r"sk-(?:proj-|ant-)?[A-Za-z0-9_\-]{20,250}+" + TOKEN_END,
        hint=has("sk-"),
    ),
    Rule("secret", "google_api_key", TOKEN_START + r"AIza[A-Za-z0-9_\-]{35}" + TOKEN_END, hint=has("AIza")),
    Rule(
        "secret",
        "google_oauth",
        TOKEN_START + r"(?:GOCSPX-[A-Za-z0-9_\-]{28}|ya29\.[A-Za-z0-9_\-]{20,2000}+)" + TOKEN_END,
        hint=google_oauth_hint,
    ),
    Rule(
        "secret",
        "slack_app_token",
        TOKEN_START + r"xapp-\d-[A-Z0-9]{8,20}+-\d{8,20}+-[a-f0-9]{32,128}+" + TOKEN_END,
        hint=has("xapp-", gate="-"),
    ),
    Rule(
        "secret",
        "discord_bot_token",
        r"[MNO](?<![\w\-.].)[A-Za-z0-9_\-]{23,27}+\.[A-Za-z0-9_\-]{6,7}+\.[A-Za-z0-9_\-]{27,40}+(?![\w\-]|\.\w)",
        discord_bot_token,
        discord_hint,
    ),
    Rule(
        "secret",
        "discord_webhook",
        r"https://(?:(?:canary|ptb)\.)?discord(?:app)?\.com/api/(?:v\d{1,2}/)?webhooks/\d{17,20}/"
        r"[A-Za-z0-9_\-]{60,100}+",
        hint=has("/webhooks/", gate="/"),
    ),
    Rule(
        "secret",
        "huggingface_token",
        TOKEN_START + r"(?:hf|api_org)_[A-Za-z0-9]{34,40}" + TOKEN_END,
        hint=has("hf_", "api_org_", gate="_"),
    ),
    Rule(
        "secret",
        "gitlab_token",
        TOKEN_START
        + r"gl(?:pat|dt|rt|ptt|cbt|ft|imt|oas|soat|ffct|agent)-[A-Za-z0-9_\-]{20,250}+"
        + TOKEN_END,
        hint=has("gl", gate="-"),
    ),
    Rule("secret", "npm_token", TOKEN_START + r"npm_[A-Za-z0-9]{36}" + TOKEN_END, hint=has("npm_", gate="_")),
    Rule(
        "secret",
        "pypi_token",
        TOKEN_START + r"pypi-AgE[A-Za-z0-9_\-]{50,1000}+" + TOKEN_END,
        hint=has("pypi-AgE", gate="-"),
    ),
    Rule(
        "secret",
        "telegram_bot_token",
        r"(?<![\w:/\-])\d{5,16}+:A[A-Za-z0-9_\-]{34}" + TOKEN_END,
        hint=has(":A", gate=":"),
    ),
    Rule(
        "secret",
        "sendgrid_key",
        TOKEN_START + r"SG\.[A-Za-z0-9_\-]{22}\.[A-Za-z0-9_\-]{43}" + TOKEN_END,
        hint=has("SG.", gate="G"),
    ),
    Rule(
        "secret",
        "provider_token",  # prefixed tokens of other widely used services
        TOKEN_START + r"(?:shp(?:at|ca|pa|ss)_[a-fA-F0-9]{32}|do[opr]_v1_[a-f0-9]{64}|gsk_[A-Za-z0-9]{52}"
        r"|r8_[A-Za-z0-9]{37}|lin_api_[A-Za-z0-9]{40}|PMAK-[a-f0-9]{24}-[a-f0-9]{34}|whsec_[A-Za-z0-9+/]{32,88}+"
        r"|hvs\.[A-Za-z0-9_\-]{90,200}+|AGE-SECRET-KEY-1[02-9AC-HJ-NP-Z]{58})" + TOKEN_END,
        hint=provider_hint,
    ),
    Rule(
        "secret",
        "aws_secret_key",
        r"(?<![\w\-])(?i:aws_?secret_?(?:access_?)?key)[\"']?[ \t]{0,3}+[:=][ \t]{0,3}+[\"']?"
        r"(?P<value>[A-Za-z0-9/+]{40})(?![A-Za-z0-9/+=])",
        hint=aws_secret_hint,
    ),
    Rule(
        "secret",
        "url_credentials",  # scheme://user:password@host: the password
        r"(?<![\w+.\-])[A-Za-z][A-Za-z0-9+.\-]{1,20}+://[^\s:/@]{0,100}+:(?P<value>[^\s/@]{1,200}+)@",
        hint=url_credentials_hint,
    ),
    Rule(
        "secret",
        "jwt",
        TOKEN_START
        + r"eyJ[A-Za-z0-9_\-]{5,2000}+\.eyJ[A-Za-z0-9_\-]{5,8000}+\.[A-Za-z0-9_\-]{0,2000}+"
        + TOKEN_END,
        hint=has("eyJ"),
    ),
    Rule(
        "secret",
        "bearer_token",
        TOKEN_START + r"[Bb]earer[ \t]++(?P<value>[A-Za-z0-9._~+/\-]{20,4000}+=*+)",
        hint=has("earer"),
    ),
    Rule(
        "secret",
        "credential",
        r"(?<![\w\-])(?i:api[_\-]?key|secret(?:[_\-]?key)?|access[_\-]?token|auth[_\-]?token|client[_\-]?secret"
        r"|account[_\-]?key|password|passwd)[\"']?[ \t]{0,3}+[:=][ \t]{0,3}+[\"']?(?P<value>[A-Za-z0-9_\-+/=.~!#$%^&*]{8,200}+)",
        mixed_secret,
        has("=", ":"),
    ),
    Rule(
        "email",
        "email",
        r"(?<![\w.%+\-])[A-Za-z0-9._%+\-]{1,64}+@(?:[A-Za-z0-9](?:[A-Za-z0-9\-]{0,61}[A-Za-z0-9])?\.){1,8}"
        r"[A-Za-z]{2,24}+(?![\w\-@])",
        hint=has("@"),
    ),
    Rule(
        "card", "card", NUMBER_START + r"[2-6](?:[ \-]?\d){12,18}(?![\w@\-])", plausible_card, has_digits(13)
    ),
    Rule(
        "phone",
        "phone",
        NUMBER_START + r"(?:\+\d{1,3}(?:[ .\-]?\(?\d{1,4}\)?){1,5}+(?:[ .\-]?\d{2,4}){0,3}"
        r"|\(\d{3}\)[ ]?\d{3}[\-. ]\d{4}|\d{3}[\-. ]\d{3}[\-. ]\d{4}|0\d{1,4}(?:[ \-]\d{2,8}){1,4})(?![\w@\-])",
        plausible_phone,
        has_digits(9),
        not_after=ID_LABEL,
    ),
    # Prompt injection, matched on the folded text (lower case, no accents or invisible characters).
    Rule(
        "injection",
        "ignore_instructions",
        r"\b(?:ignore|disregard|forget|override|bypass)\b(?:\W++\w++){0,4}?\W++"
        r"(?:instructions?|prompts?|rules|guidelines|directives|programming)\b",
        hint=has("ignore", "disregard", "forget", "override", "bypass"),
    ),
    Rule(
        "injection",
        "reveal_prompt",
        r"\b(?:reveal|show|print|repeat|output|leak|tell me)\b(?:\W++\w++){0,4}?\W++"
        r"(?:system|initial|hidden|original|secret)\W++(?:prompt|instructions|message)s?\b",
        hint=has("prompt", "instructions", "message"),
    ),
    Rule(
        "injection",
        "jailbreak_persona",
        r"\b(?:you are now|from now on|act as|pretend|imagine|roleplay|role-play|role play|play the role)\b"
        r"(?:\W++\w++){0,8}?\W++(?:dan|jailbroken|unfiltered|uncensored|unrestricted|unchained"
        r"|(?:no|without|free of|free from)\W++(?:any\W++)?"
        r"(?:rules|restrictions|filters|limits|guidelines|ethics|morals|censorship))\b",
        hint=has("now", "act", "pretend", "imagine", "role"),
    ),
    Rule(
        "injection",
        "jailbreak_name",
        r"\b(?:do anything now|developer mode (?:enabled|on)|dan mode|jailbreak mode)\b",
        hint=has("now", "mode"),
    ),
    Rule(
        "injection",
        "template_tokens",
        r"<\|(?:im_start|im_end|system|user|assistant|endoftext|eot_id|start_header_id)\|>"
        r"|(?m:^[ \t]*#{2,4}[ \t]*(?:instruction|response|system)[ \t]*:)",
        hint=has("<|", "#"),
    ),
)

PEM = next(rule for rule in RULES if rule.name == "private_key")


def rules_for(categories: Iterable[str]) -> tuple[Rule, ...]:
    wanted = set(categories)
    return tuple(rule for rule in RULES if rule.category in wanted and rule is not PEM)


def scan(rules: Sequence[Rule], text: str) -> list[Finding]:
    """Matches of ``rules`` in ``text``; where two overlap, the earlier (then the first listed) wins."""
    found: list[tuple[int, int, int, Rule]] = []
    if not rules:
        return []
    for order, rule in enumerate(rules):
        if rule.hint is not None and not rule.hint(text):
            continue
        for match in rule.regex.finditer(text):
            if rule.not_after is not None and _compiled(rule.not_after).search(
                text, max(0, match.start() - 40), match.start()
            ):
                continue
            start, end = match.span("value") if "value" in match.re.groupindex else match.span()
            if rule.check is None or rule.check(text[start:end]):
                found.append((start, order, end, rule))
    found.sort(key=lambda item: (item[0], item[1]))
    findings: list[Finding] = []
    for start, _, end, rule in found:
        if findings and start < findings[-1].end:
            continue
        findings.append(Finding(rule.category, rule.name, start, end, text[start:end]))
    return findings


PLACEHOLDERS = {
    "email": "[email removed]",
    "phone": "[phone number removed]",
    "card": "[card number removed]",
    "secret": "[secret removed]",
}
DEFAULT_PLACEHOLDER = "[removed]"


def redact(text: str, findings: Sequence[Finding]) -> str:
    """``text`` with each finding's span replaced by its placeholder; overlapping spans merge."""
    if not findings:
        return text
    spans: list[list] = []
    for finding in sorted(findings, key=lambda f: (f.start, -f.end)):
        if spans and finding.start < spans[-1][1]:
            spans[-1][1] = max(spans[-1][1], finding.end)
        else:
            spans.append(
                [finding.start, finding.end, PLACEHOLDERS.get(finding.category, DEFAULT_PLACEHOLDER)]
            )
    pieces: list[str] = []
    cursor = 0
    for start, end, placeholder in spans:
        pieces += (text[cursor:start], placeholder)
        cursor = end
    pieces.append(text[cursor:])
    return "".join(pieces)


# Unicode tag characters (U+E0000-U+E007F) are invisible, and U+E0020-U+E007E mirror printable
# ASCII: a message can carry text that no reader sees but a model reads ("ASCII smuggling"). Their
# one legitimate use is an emoji tag sequence: the black flag, a subdivision code in tag letters and
# digits, the cancel tag (England's flag is black flag + "gbeng" + cancel tag).
TAG_FIRST, TAG_LAST = 0xE0000, 0xE007F
_TAG_RUN = re.compile("[\U000e0000-\U000e007f]+")
_TAG_FLAG = re.compile("\U0001f3f4[\U000e0030-\U000e0039\U000e0061-\U000e007a]{3,7}\U000e007f")


def has_tags(text: str) -> bool:
    """Whether ``text`` holds a tag character at all (cheap: most text has none)."""
    return not text.isascii() and _TAG_RUN.search(text) is not None


def is_tag(char: str) -> bool:
    return TAG_FIRST <= ord(char) <= TAG_LAST


def tag_as_ascii(char: str) -> str:
    """A tag character as the ASCII character it mirrors ("" for the controls); any other as it is."""
    if is_tag(char):
        code = ord(char)
        return chr(code - TAG_FIRST) if 0xE0020 <= code <= 0xE007E else ""
    return char


def strip_hidden_tags(text: str) -> str:
    """``text`` without tag characters, except inside emoji flag tag sequences (subdivision flags)."""
    if not has_tags(text):
        return text
    flags = [match.span() for match in _TAG_FLAG.finditer(text)]
    pieces: list[str] = []
    cursor = 0
    for start, end in [*flags, (len(text), len(text))]:
        pieces += (_TAG_RUN.sub("", text[cursor:start]), text[start:end])
        cursor = end
    return "".join(pieces)


PII_CATEGORIES = ("email", "phone", "card", "secret")


def pii_scrubber() -> Callable[[str], tuple[str, bool]]:
    """``scrub(text) -> (text, found)``: e-mail addresses, phone and card numbers, keys and tokens replaced.

    The placeholders are the moderation plugin's. The whole text is scanned at
    once (moderation scans a reply sentence by sentence as it streams), so a
    number that a very long unpunctuated text would split across two of
    moderation's segments is still found here.
    """
    rules = rules_for(PII_CATEGORIES)

    def scrub(text: str) -> tuple[str, bool]:
        findings = scan(rules, text)
        if PEM.hint is not None and PEM.hint(text):
            findings += scan([PEM], text)
        return redact(text, findings), bool(findings)

    return scrub
