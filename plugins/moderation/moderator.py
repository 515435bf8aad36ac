"""Checking a text: which findings, what each one does, and what may be shown of a reply still streaming.

A text is cut into *segments*: sentences (ended by ``.``, ``!`` or ``?`` after a
word, then whitespace) and lines. Every detector looks at one segment at a
time, and a segment's findings depend on nothing else, so while a reply
streams the segments already closed are not scanned again: only the open
one, at the end, is, and only for the categories whose action changes what
is shown (block, redact). Private-key blocks, which span lines, are searched
in the whole text (only when it contains ``-----BEGIN``).

While streaming (``final=False``), a finding that may still grow is left for
later: one that reaches the end of the text or the trailing word being
written, and the classifier's verdict on the open sentence. Until it is
decided it is not shown either; and where redaction is on, neither is a
trailing word that could be the start of something to redact (it holds a
digit, ``@``, ``_``, ``-``, ``+``, ``=``, ``/`` or ``:``, or is 16 characters or
longer) nor a trailing run of digits and separators (a phone or card number
in the making). Everything else streams as it comes.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal

from botkit.detectors import PEM, Finding, Rule, redact, rules_for, scan

from .classifier import ProfanityModel
from .normalise import Blocklist, fold, leet_view
from .settings import Actions, ModerationSettings

Direction = Literal["in", "out"]
PII = ("email", "phone", "card", "secret")
HIDES = ("block", "redact")  # actions that change what is shown

_BREAK = re.compile(r"\n|[.!?](?<![.!?]{2})[.!?]*+(?=\s)")  # a run of stops starts only once
_SOFT_BREAK = re.compile(r"(?<=[^\W\d_])\s++(?=[^\W\d_])")  # between two letters: never inside a number
MIN_SEGMENT = 160  # sentences are scanned together until a segment has this many characters
MAX_SEGMENT = 1000  # a longer run without a sentence end is cut at a space between letters
MIN_UNIT = 24  # the classifier scores each sentence, shorter ones joined with the next
SUSPICIOUS = frozenset("0123456789@_-+=/\\:")
SECRET_STARTS = ("AKIA", "ASIA", "AIza", "eyJ")
LONG_WORD = 16
DIGITISH = frozenset("0123456789 -.()+/")
MAX_NUMBER_HOLD = 40
STREAMS_KEPT = 64


@dataclass(frozen=True, slots=True)
class Decision:
    finding: Finding
    action: str  # "block", "redact" or "flag"


@dataclass(slots=True)
class Verdict:
    """What a check decided: the text to pass on, and every decided finding with its action."""

    text: str
    decisions: list[Decision] = field(default_factory=list)

    @property
    def blocked(self) -> bool:
        return any(d.action == "block" for d in self.decisions)


def sentence_ends(text: str, start: int = 0) -> Iterator[int]:
    """Where sentences and lines end: after a newline, or ``.!?`` ending a word of two or more, then whitespace."""
    for match in _BREAK.finditer(text, start):
        at = match.start()
        # "J. R. R." and "b. a. d." are not sentences.
        if match.group() == "\n" or at >= 2 and text[at - 1].isalnum() and text[at - 2].isalnum():
            yield match.end()


def _soft_cuts(text: str, segment: int, limit: int) -> Iterator[int]:
    """Cuts of an overlong stretch ``[segment, limit)``: each at least MAX_SEGMENT after the previous one."""
    while limit - segment > MAX_SEGMENT:
        match = _SOFT_BREAK.search(text, segment + MAX_SEGMENT)
        if match is None or match.end() >= limit:
            return
        segment = match.end()
        yield segment


def segment_ends(text: str, start: int = 0) -> list[int]:
    """Ends of the segments of ``text`` from ``start`` (a segment end); the text after the last one is open.

    A text's segments never change as text is added to it: each end depends
    only on the text before it (and one character after).
    """
    ends: list[int] = []
    segment = start
    for stop in sentence_ends(text, start):
        for cut in _soft_cuts(text, segment, stop):
            ends.append(cut)
            segment = cut
        if stop - segment >= MIN_SEGMENT:
            ends.append(stop)
            segment = stop
    ends += _soft_cuts(text, segment, len(text) + 1)
    return ends


def units(folded: str) -> Iterator[tuple[int, int]]:
    """The sentences of a segment that the classifier scores, trimmed, short ones joined with the next."""
    start = 0
    for end in [*sentence_ends(folded), len(folded)]:
        if end - start >= MIN_UNIT or end == len(folded):
            piece = folded[start:end]
            if piece.strip():
                lead = len(piece) - len(piece.lstrip())
                yield start + lead, start + len(piece.rstrip())
            start = end


@dataclass(frozen=True, slots=True)
class Detectors:
    """The detectors of some categories, ready to scan a segment."""

    rules: tuple[Rule, ...]
    injection: tuple[Rule, ...]
    blocklist: Blocklist | None
    patterns: tuple[re.Pattern[str], ...]
    classifier: ProfanityModel | None
    threshold: float

    def scan(self, segment: str, open_ended: bool = False) -> list[Finding]:
        """Findings of one segment, offsets relative to it.

        ``open_ended``: the segment is the open end of a streaming reply, whose
        last sentence may go on; its profanity finding then reaches to the end.
        """
        findings = scan(self.rules, segment)
        if not (self.blocklist or self.patterns or self.injection or self.classifier):
            return findings
        folded = fold(segment)

        def found(category: str, rule: str, start: int, end: int, score: float | None = None) -> None:
            start, end = folded.span(start, end)
            findings.append(Finding(category, rule, start, end, segment[start:end], score))

        if self.blocklist:
            for word in self.blocklist.find(folded.text):
                found("blocklist", f"word:{word.entry}", word.start, word.end)
        if self.patterns:
            views = {folded.text, leet_view(folded.text)}
            for pattern in self.patterns:
                spans = {m.span() for view in views for m in pattern.finditer(view) if m.end() > m.start()}
                for start, end in sorted(spans):
                    found("blocklist", f"pattern:{pattern.pattern}"[:255], start, end)
        for finding in scan(self.injection, folded.text):
            found("injection", finding.rule, finding.start, finding.end)
        if self.classifier is not None:
            pieces = list(units(folded.text))
            for number, (start, end) in enumerate(pieces, 1):
                score = self.classifier.score(folded.text[start:end])
                if score >= self.threshold:
                    found("profanity", "classifier", start, end, score)
                    if open_ended and number == len(pieces):  # the last sentence may go on
                        last = findings.pop()
                        findings.append(
                            Finding(last.category, last.rule, last.start, len(segment), last.excerpt, score)
                        )
        return findings


class Policy:
    """The compiled settings of one direction."""

    def __init__(
        self, actions: Actions, settings: ModerationSettings, classifier: ProfanityModel | None
    ) -> None:
        self.actions = actions.enabled()
        blocklist = Blocklist(settings.blocklist)
        patterns = tuple(re.compile(p) for p in settings.blocklist_patterns)

        def detectors(categories: set[str]) -> Detectors:
            on = "blocklist" in categories
            return Detectors(
                rules=rules_for(c for c in PII if c in categories),
                injection=rules_for(["injection"]) if "injection" in categories else (),
                blocklist=blocklist if on and blocklist else None,
                patterns=patterns if on else (),
                classifier=classifier if "profanity" in categories else None,
                threshold=settings.profanity_threshold,
            )

        self.every = detectors(set(self.actions))
        # While a reply streams, its open end is scanned only for what changes what is shown.
        self.hiding = detectors({c for c, action in self.actions.items() if action in HIDES})
        self.pem = "secret" in self.actions
        self.holds_partial_words = any(self.actions.get(c) in HIDES for c in PII)


@dataclass(slots=True)
class _Stream:
    """What was found in the closed segments of a reply's text so far (a cache: same result as a rescan)."""

    text: str
    closed_end: int
    closed: list[Finding]


class Moderator:
    """Checks texts in both directions with the configured detectors and actions."""

    def __init__(self, settings: ModerationSettings, classifier: ProfanityModel | None = None) -> None:
        self.settings = settings
        self.policies: dict[Direction, Policy] = {
            "in": Policy(settings.input_actions, settings, classifier),
            "out": Policy(settings.output_actions, settings, classifier),
        }
        self._streams: OrderedDict[str, _Stream] = OrderedDict()

    def check(
        self, text: str, direction: Direction, final: bool = True, stream: str | None = None
    ) -> Verdict:
        """Decide on ``text``. ``final=False``: a reply so far (``stream`` names it, to reuse earlier work)."""
        policy = self.policies[direction]
        if not policy.actions:
            return Verdict(text)
        if final:
            findings = self._findings(policy, text, stream, policy.every, final=True)
            decisions = [Decision(f, policy.actions[f.category]) for f in findings]
            return Verdict(redact(text, [d.finding for d in decisions if d.action == "redact"]), decisions)
        findings = self._findings(policy, text, stream, policy.hiding, final=False)
        # A finding is settled once text follows it and it does not reach into the word being written.
        tail = max(text.rfind(" "), text.rfind("\n"), text.rfind("\t"), text.rfind("\r")) + 1
        settled_before = min(tail + 1, len(text))
        decisions = [Decision(f, policy.actions[f.category]) for f in findings if f.end < settled_before]
        if any(d.action == "block" for d in decisions):  # the reply stops here: record all it holds
            every = self._findings(policy, text, None, policy.every, final=False)
            decisions = [Decision(f, policy.actions[f.category]) for f in every if f.end < settled_before]
        hiding = [f for f in findings if policy.actions[f.category] in HIDES]
        pending = [f for f in hiding if f.end >= settled_before]
        shown = self._shown_end(policy, text, tail, pending, hiding)
        redacted = [d.finding for d in decisions if d.action == "redact" and d.finding.end <= shown]
        return Verdict(redact(text[:shown], redacted), decisions)

    def _findings(
        self, policy: Policy, text: str, stream: str | None, open_end: Detectors, final: bool
    ) -> list[Finding]:
        """Everything found in closed segments (from the stream's cache when it has them) and the open end."""
        previous = self._streams.pop(stream, None) if stream is not None else None
        if previous is not None and text.startswith(previous.text):
            start, findings = previous.closed_end, list(previous.closed)
        else:
            start, findings = 0, []
        for end in segment_ends(text, start):
            findings += [f.moved(start) for f in policy.every.scan(text[start:end])]
            start = end
        if stream is not None:
            self._streams[stream] = _Stream(text, start, list(findings))
            while len(self._streams) > STREAMS_KEPT:
                self._streams.popitem(last=False)
        if start < len(text):
            findings += [f.moved(start) for f in open_end.scan(text[start:], open_ended=not final)]
        if policy.pem and PEM.hint is not None and PEM.hint(text):
            findings += scan([PEM], text)
        return findings

    @staticmethod
    def _shown_end(
        policy: Policy, text: str, tail: int, pending: list[Finding], hiding: list[Finding]
    ) -> int:
        """How much of a streaming reply may be shown now."""
        end = len(text)
        word = text[tail:]
        if (
            policy.holds_partial_words
            and word
            and (len(word) >= LONG_WORD or word.startswith(SECRET_STARTS) or not SUSPICIOUS.isdisjoint(word))
        ):
            end = tail
        for finding in pending:
            end = min(end, finding.start)
        if policy.holds_partial_words:
            start = end
            while start > 0 and end - start < MAX_NUMBER_HOLD and text[start - 1] in DIGITISH:
                start -= 1
            if any(c.isdigit() for c in text[start:end]):
                while text[start].isspace():  # what was already shown before the number may stay
                    start += 1
                end = start
        for finding in sorted(hiding, key=lambda f: f.start, reverse=True):
            if finding.start < end < finding.end:
                end = finding.start
        return end

    def forget_stream(self, stream: str) -> None:
        self._streams.pop(stream, None)
