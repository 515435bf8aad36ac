"""Checking a text: which findings, what each one does, and what may be shown of a reply still streaming.

A text is cut into *segments*: sentences (ended by ``.``, ``!`` or ``?`` after a
word, then whitespace) and lines. Every detector looks at one segment at a
time, and a segment's findings depend on nothing else, so while a reply
streams the segments already closed are not scanned again: only the open
one, at the end, is, and only for the categories whose action changes what
is shown (block, redact). Private-key blocks, which span lines, are searched
in the whole text (only when it contains ``-----BEGIN``).

The classifier (profanity) is run apart, by ``classify``: it is the slow part,
the one an async caller runs off the event loop with a timeout, and its
result goes into ``check(..., classified=)``. A detector or the classifier that
raises leaves only its own category unchecked, for that text: the verdict's
``unchecked`` says which and why, and every other category is still applied.

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
import threading
import traceback
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import PurePath
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
    unchecked: dict[str, str] = field(default_factory=dict)  # category -> why it could not be checked

    @property
    def blocked(self) -> bool:
        return any(d.action == "block" for d in self.decisions)


@dataclass(slots=True)
class Classified:
    """The classifier's findings in a text, or why it could not give them (``unchecked``)."""

    findings: list[Finding] = field(default_factory=list)
    unchecked: dict[str, str] = field(default_factory=dict)


def failure(error: BaseException) -> str:
    """What went wrong, for the log: the error's type and where, never its message (it may quote the text)."""
    frames = traceback.extract_tb(error.__traceback__)
    if not frames:
        return type(error).__name__
    last = frames[-1]
    return f"{type(error).__name__} at {PurePath(last.filename).name}:{last.lineno} in {last.name}"


def guarded(category: str, unchecked: dict[str, str], detect: Callable[[], list[Finding]]) -> list[Finding]:
    """``detect()``'s findings; if it raises, none, and ``category`` is noted as unchecked."""
    try:
        return detect()
    except Exception as error:  # noqa: BLE001 - one failing detector must not take the others with it
        unchecked.setdefault(category, failure(error))
        return []


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

    def scan(self, segment: str, open_ended: bool = False) -> tuple[list[Finding], dict[str, str]]:
        """Findings of one segment, offsets relative to it, and the categories that could not be checked.

        ``open_ended``: the segment is the open end of a streaming reply, whose
        last sentence may go on; its profanity finding then reaches to the end.
        """
        unchecked: dict[str, str] = {}
        findings = self._rules(segment, unchecked)
        folding = [
            category
            for category, on in [
                ("blocklist", bool(self.blocklist or self.patterns)),
                ("injection", bool(self.injection)),
                ("profanity", self.classifier is not None),
            ]
            if on
        ]
        if not folding:
            return findings, unchecked
        try:
            folded = fold(segment)
        except Exception as error:  # noqa: BLE001 - the rules above need no folding and still count
            unchecked.update(dict.fromkeys(folding, failure(error)))
            return findings, unchecked

        def found(category: str, rule: str, start: int, end: int, score: float | None = None) -> Finding:
            start, end = folded.span(start, end)
            return Finding(category, rule, start, end, segment[start:end], score)

        def blocklist() -> list[Finding]:
            hits = []
            if self.blocklist:
                for word in self.blocklist.find(folded.text):
                    hits.append(found("blocklist", f"word:{word.entry}", word.start, word.end))
            if self.patterns:
                views = {folded.text, leet_view(folded.text)}
                for pattern in self.patterns:
                    spans = {
                        m.span() for view in views for m in pattern.finditer(view) if m.end() > m.start()
                    }
                    for start, end in sorted(spans):
                        hits.append(found("blocklist", f"pattern:{pattern.pattern}"[:255], start, end))
            return hits

        def injection() -> list[Finding]:
            return [found("injection", f.rule, f.start, f.end) for f in scan(self.injection, folded.text)]

        def profanity(classifier: ProfanityModel) -> list[Finding]:
            hits = []
            pieces = list(units(folded.text))
            for number, (start, end) in enumerate(pieces, 1):
                score = classifier.score(folded.text[start:end])
                if score >= self.threshold:
                    hit = found("profanity", "classifier", start, end, score)
                    if open_ended and number == len(pieces):  # the last sentence may go on
                        hit = Finding(hit.category, hit.rule, hit.start, len(segment), hit.excerpt, score)
                    hits.append(hit)
            return hits

        if self.blocklist or self.patterns:
            findings += guarded("blocklist", unchecked, blocklist)
        if self.injection:
            findings += guarded("injection", unchecked, injection)
        if self.classifier is not None:
            classifier = self.classifier
            findings += guarded("profanity", unchecked, lambda: profanity(classifier))
        return findings, unchecked

    def _rules(self, segment: str, unchecked: dict[str, str]) -> list[Finding]:
        """The regular-expression rules (e-mail, phone, card, secret), all at once so that overlaps resolve."""
        try:
            return scan(self.rules, segment)
        except Exception:  # noqa: BLE001 - find the failing category; the others still count
            findings: list[Finding] = []
            for category in dict.fromkeys(rule.category for rule in self.rules):
                rules = [rule for rule in self.rules if rule.category == category]
                findings += guarded(category, unchecked, lambda rules=rules: scan(rules, segment))
            return sorted(findings, key=lambda f: f.start)


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

        # The classifier is kept apart (``scoring``): it is what may be slow or fail.
        quick = set(self.actions) - {"profanity"}
        self.every = detectors(quick)
        # While a reply streams, its open end is scanned only for what changes what is shown.
        self.hiding = detectors({c for c in quick if self.actions[c] in HIDES})
        scores = classifier is not None and "profanity" in self.actions
        self.scoring = detectors({"profanity"}) if scores else None
        self.scoring_hides = self.actions.get("profanity") in HIDES
        self.pem = "secret" in self.actions
        self.holds_partial_words = any(self.actions.get(c) in HIDES for c in PII)


@dataclass(slots=True)
class _Stream:
    """What was found in the closed segments of a reply's text so far (a cache: same result as a rescan)."""

    text: str
    closed_end: int
    closed: list[Finding]
    unchecked: dict[str, str]


class _Streams:
    """The ``_Stream`` of the latest replies; used from the event loop and from the classifier's threads."""

    def __init__(self) -> None:
        self._kept: OrderedDict[str, _Stream] = OrderedDict()
        self._lock = threading.Lock()

    def take(self, stream: str | None, text: str) -> _Stream:
        """The cache of ``stream`` if ``text`` extends what it holds (it is taken out), or an empty one."""
        with self._lock:
            previous = self._kept.pop(stream, None) if stream is not None else None
        if previous is not None and text.startswith(previous.text):
            return _Stream(
                previous.text, previous.closed_end, list(previous.closed), dict(previous.unchecked)
            )
        return _Stream(text, 0, [], {})

    def closed_end(self, stream: str | None, text: str) -> int:
        with self._lock:
            previous = self._kept.get(stream) if stream is not None else None
        return previous.closed_end if previous is not None and text.startswith(previous.text) else 0

    def keep(self, stream: str, entry: _Stream) -> None:
        with self._lock:
            self._kept[stream] = entry
            while len(self._kept) > STREAMS_KEPT:
                self._kept.popitem(last=False)

    def forget(self, stream: str) -> None:
        with self._lock:
            self._kept.pop(stream, None)


class Moderator:
    """Checks texts in both directions with the configured detectors and actions."""

    def __init__(self, settings: ModerationSettings, classifier: ProfanityModel | None = None) -> None:
        self.settings = settings
        self.classifier = classifier
        self.policies: dict[Direction, Policy] = {
            "in": Policy(settings.input_actions, settings, classifier),
            "out": Policy(settings.output_actions, settings, classifier),
        }
        self._checked = _Streams()
        self._scored = _Streams()
        self._gave_up: OrderedDict[str, str] = OrderedDict()  # stream -> why its classifier check stopped
        # Messages, per direction and category, that a failed or timed-out check let through
        # unchecked or had refused (counted by the plugin, which decides what happens).
        self.failures: Counter[tuple[Direction, str]] = Counter()

    def check(
        self,
        text: str,
        direction: Direction,
        final: bool = True,
        stream: str | None = None,
        classified: Classified | None = None,
    ) -> Verdict:
        """Decide on ``text``. ``final=False``: a reply so far (``stream`` names it, to reuse earlier work).

        ``classified``: what ``classify`` gave for the same arguments; without it
        the classifier runs here, on the caller's thread.
        """
        policy = self.policies[direction]
        if not policy.actions:
            return Verdict(text)
        if classified is None:
            classified = self.classify(text, direction, final, stream)
        open_end = policy.every if final else policy.hiding
        findings, unchecked = self._findings(
            self._checked, policy.every, open_end, text, stream, final, policy.pem
        )
        findings += classified.findings
        unchecked.update(classified.unchecked)
        if final:
            decisions = [Decision(f, policy.actions[f.category]) for f in findings]
            redacted = [d.finding for d in decisions if d.action == "redact"]
            return Verdict(redact(text, redacted), decisions, unchecked)
        # A finding is settled once text follows it and it does not reach into the word being written.
        tail = max(text.rfind(" "), text.rfind("\n"), text.rfind("\t"), text.rfind("\r")) + 1
        settled_before = min(tail + 1, len(text))
        decisions = [Decision(f, policy.actions[f.category]) for f in findings if f.end < settled_before]
        if any(d.action == "block" for d in decisions):  # the reply stops here: record all it holds
            every, _ = self._findings(
                self._checked, policy.every, policy.every, text, None, False, policy.pem
            )
            every += classified.findings
            decisions = [Decision(f, policy.actions[f.category]) for f in every if f.end < settled_before]
        hiding = [f for f in findings if policy.actions[f.category] in HIDES]
        pending = [f for f in hiding if f.end >= settled_before]
        shown = self._shown_end(policy, text, tail, pending, hiding)
        redacted = [d.finding for d in decisions if d.action == "redact" and d.finding.end <= shown]
        return Verdict(redact(text[:shown], redacted), decisions, unchecked)

    def classify(
        self, text: str, direction: Direction, final: bool = True, stream: str | None = None
    ) -> Classified:
        """The classifier's findings (profanity) for ``check``: the slow part, and one that may fail.

        Safe to call from a worker thread. A stream whose classifier check was
        given up (``give_up``) is not classified again.
        """
        policy = self.policies[direction]
        if policy.scoring is None:
            return Classified()
        why = self._gave_up.get(stream) if stream is not None else None  # one read: the loop may forget it
        if why is not None:
            return Classified(unchecked={"profanity": why})
        open_end = policy.scoring if final or policy.scoring_hides else None
        findings, unchecked = self._findings(
            self._scored, policy.scoring, open_end, text, stream, final, False
        )
        return Classified(findings, unchecked)

    def classifier_due(
        self, text: str, direction: Direction, final: bool = True, stream: str | None = None
    ) -> bool:
        """Whether ``classify`` would run the classifier; if not, it is quick enough for the event loop."""
        policy = self.policies[direction]
        if policy.scoring is None or stream is not None and stream in self._gave_up:
            return False
        start = self._scored.closed_end(stream, text)
        return bool(segment_ends(text, start)) or (final or policy.scoring_hides) and start < len(text)

    def give_up(self, stream: str, why: str) -> None:
        """Classify ``stream`` no more (its check timed out): its later checks say profanity is unchecked."""
        self._gave_up[stream] = why
        while len(self._gave_up) > STREAMS_KEPT:
            self._gave_up.popitem(last=False)

    @staticmethod
    def _findings(
        streams: _Streams,
        every: Detectors,
        open_end: Detectors | None,
        text: str,
        stream: str | None,
        final: bool,
        pem: bool,
    ) -> tuple[list[Finding], dict[str, str]]:
        """Everything found in closed segments (from the stream's cache when it has them) and the open end."""
        cache = streams.take(stream, text)
        start, findings, unchecked = cache.closed_end, cache.closed, cache.unchecked
        for end in segment_ends(text, start):
            found, failed = every.scan(text[start:end])
            findings += [f.moved(start) for f in found]
            unchecked.update(failed)
            start = end
        if stream is not None:
            streams.keep(stream, _Stream(text, start, list(findings), dict(unchecked)))
        if open_end is not None and start < len(text):
            found, failed = open_end.scan(text[start:], open_ended=not final)
            findings += [f.moved(start) for f in found]
            unchecked = unchecked | failed
        if pem and PEM.hint is not None and PEM.hint(text):
            findings += guarded("secret", unchecked, lambda: scan([PEM], text))
        return findings, unchecked

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
        self._checked.forget(stream)
        self._scored.forget(stream)
        self._gave_up.pop(stream, None)
