"""The red-team report: JSON (for ``--compare`` and CI) and Markdown, thresholds, and the difference of two runs.

A suite's pass rate is passed / probes: an error (a probe that got no verdict) counts against
it, as a failure does, so a broken backend never looks safe. The worst examples are a suite's
failures and errors (counterfactual probes: the largest gaps first).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from botkit import BotkitError

from .runner import ERROR, FAIL, PASS, ProbeResult

FORMAT = "botkit redteam report 1"
WORST_PER_SUITE = 3
EXCERPT = 300  # characters of a prompt or reply shown in the Markdown


class ReportError(BotkitError):
    """A report to compare with that cannot be read, or a threshold that is not one."""


def build(
    results: Sequence[ProbeResult],
    *,
    date: str,
    mode: str,
    backend: Mapping[str, Any] | None,
    run_id: str,
    descriptions: Mapping[str, str],
) -> dict[str, Any]:
    suites: dict[str, dict[str, Any]] = {}
    for name in dict.fromkeys(result.suite for result in results):
        own = [result for result in results if result.suite == name]
        counts = {outcome: sum(1 for r in own if r.outcome == outcome) for outcome in (PASS, FAIL, ERROR)}
        suites[name] = {
            "description": descriptions.get(name, ""),
            "probes": len(own),
            "passed": counts[PASS],
            "failed": counts[FAIL],
            "errors": counts[ERROR],
            "pass_rate": round(counts[PASS] / len(own), 4),
            "answered_by_model": sum(1 for r in own if r.model_answered),
            "worst": [r.id for r in worst(own)],
        }
    return {
        "format": FORMAT,
        "date": date,
        "run": run_id,
        "mode": mode,
        "backend": (backend or {}).get("type"),
        "model": (backend or {}).get("model"),
        "adapter": (backend or {}).get("adapter"),
        "suites": suites,
        "bias": bias_gaps(results),
        "probes": [result.as_json() for result in results],
    }


def summary(report: Mapping[str, Any]) -> dict[str, Any]:
    """What ``report["baseline"]`` keeps of the base model's run (``--baseline``): its adapter and pass rates."""
    keys = ("probes", "passed", "failed", "errors", "pass_rate")
    return {
        "adapter": report["adapter"],
        "suites": {name: {key: suite[key] for key in keys} for name, suite in report["suites"].items()},
    }


def worst(results: Iterable[ProbeResult]) -> list[ProbeResult]:
    bad = [r for r in results if r.outcome != PASS]

    def badness(result: ProbeResult) -> tuple[float, ...]:
        gap = result.gaps or {}
        return (
            result.outcome == FAIL,
            gap.get("refusal", 0),
            gap.get("sentiment", 0),
            gap.get("length_ratio", 0),
        )

    return sorted(bad, key=badness, reverse=True)[:WORST_PER_SUITE]


def bias_gaps(results: Iterable[ProbeResult]) -> dict[str, dict[str, float]]:
    """Per attribute: the counterfactual pairs run, and the mean of each gap over them."""
    by_attribute: dict[str, list[dict[str, float]]] = {}
    for result in results:
        if result.attribute is not None and result.gaps is not None:
            by_attribute.setdefault(result.attribute, []).append(result.gaps)
    summary = {}
    for attribute, found in sorted(by_attribute.items()):
        count = len(found)
        summary[attribute] = {
            "pairs": count,
            "refusal_gap": round(sum(g["refusal"] for g in found) / count, 4),
            "sentiment_gap": round(sum(g["sentiment"] for g in found) / count, 4),
            "length_gap": round(sum(g["length_ratio"] - 1 for g in found) / count, 4),
        }
    return summary


def excerpt(text: str) -> str:
    flat = " ".join(text.split())
    flat = flat if len(flat) <= EXCERPT else flat[: EXCERPT - 1] + "…"
    return flat.replace("|", "\\|").replace("`", "'")


def markdown(report: Mapping[str, Any]) -> str:
    base = report.get("baseline", {}).get("suites")
    lines = [
        "# botkit redteam report",
        "",
        f"- date: {report['date']}",
        f"- run: {report['run']} ({report['mode']})",
        f"- backend: {report['backend']}, model: {report['model']}, adapter: {report['adapter'] or 'none'}",
        "",
        "| suite | pass rate | passed | failed | errors | answered by the model |"
        + (" base model |" if base else ""),
        "|---|---|---|---|---|---|" + ("---|" if base else ""),
    ]
    for name, suite in report["suites"].items():
        lines.append(
            f"| {name} | {suite['pass_rate']:.1%} | {suite['passed']} | {suite['failed']} | "
            f"{suite['errors']} | {suite['answered_by_model']} of {suite['probes']} |"
            + (f" {_rate(base.get(name, {}).get('pass_rate'))} |" if base else "")
        )
    if report["bias"]:
        lines += ["", "## Bias: mean gap per attribute", ""]
        lines += ["| attribute | pairs | refusal gap | sentiment gap | length gap |", "|---|---|---|---|---|"]
        for attribute, gap in report["bias"].items():
            lines.append(
                f"| {attribute} | {gap['pairs']} | {gap['refusal_gap']:.2f} | {gap['sentiment_gap']:.2f} | "
                f"{gap['length_gap']:.2f} |"
            )
    probes = {(p["suite"], p["id"]): p for p in report["probes"]}
    shown = False
    for name, suite in report["suites"].items():
        if not suite["worst"]:
            continue
        if not shown:
            lines += ["", "## Worst examples"]
            shown = True
        lines += ["", f"### {name}", ""]
        for probe_id in suite["worst"]:
            probe = probes[(name, probe_id)]
            lines.append(f"- **{probe_id}** ({probe['outcome']}): {excerpt(probe['reason'] or '')}")
            lines.append(f"  - prompt: {excerpt(probe['prompts'][-1])}")
            for label, variant in probe.get("variants", {}).items():
                lines.append(f"  - {label} ({variant['value']}): {excerpt(variant['reply'])}")
            if not probe.get("variants"):
                for reply in probe["replies"]:
                    lines.append(f"  - reply: {excerpt(reply)}")
    return "\n".join(lines) + "\n"


def parse_threshold(text: str) -> tuple[str | None, float]:
    """``0.9`` (every suite) or ``SUITE=0.9``; a rate from 0 to 1."""
    suite, _, rate = text.rpartition("=") if "=" in text else (None, "", text)
    try:
        value = float(rate)
    except ValueError:
        value = -1.0
    if not 0 <= value <= 1 or suite == "":
        raise ReportError(
            f"--fail-under {text!r}: give a pass rate from 0 to 1, or SUITE=RATE (e.g. extraction=1)"
        )
    return suite, value


def below(report: Mapping[str, Any], thresholds: Sequence[tuple[str | None, float]]) -> list[str]:
    """Each suite whose pass rate is under its threshold, in words. A named suite that did not run is one."""
    problems = []
    suites = report["suites"]
    for suite, rate in thresholds:
        names = [suite] if suite is not None else list(suites)
        for name in names:
            if name not in suites:
                problems.append(f"{name}: did not run (threshold {rate:.0%})")
            elif suites[name]["pass_rate"] < rate:
                problems.append(f"{name}: pass rate {suites[name]['pass_rate']:.1%} is under {rate:.0%}")
    return problems


def load(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ReportError(f"--compare {path}: cannot read it as a report: {error}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ReportError(f'--compare {path}: not a botkit redteam report (no "format": {FORMAT!r})')
    return data


def compare(old: Mapping[str, Any], new: Mapping[str, Any]) -> str:
    """The difference of two reports in words: each suite's pass rate, and each probe that changed outcome."""
    lines = [
        f"compared with {old.get('date')} (model {old.get('model')}, adapter {old.get('adapter') or 'none'}):",
        "",
        "| suite | before | now | change |",
        "|---|---|---|---|",
    ]
    names = list(dict.fromkeys([*old["suites"], *new["suites"]]))
    for name in names:
        before = old["suites"].get(name, {}).get("pass_rate")
        now = new["suites"].get(name, {}).get("pass_rate")
        change = f"{(now - before) * 100:+.1f} points" if before is not None and now is not None else "-"
        lines.append(f"| {name} | {_rate(before)} | {_rate(now)} | {change} |")
    outcomes = {(p["suite"], p["id"]): p["outcome"] for p in old.get("probes", [])}
    changed = [
        f"- {p['suite']}/{p['id']}: {outcomes[(p['suite'], p['id'])]} -> {p['outcome']}"
        for p in new["probes"]
        if (p["suite"], p["id"]) in outcomes and outcomes[(p["suite"], p["id"])] != p["outcome"]
    ]
    if changed:
        lines += ["", "probes whose outcome changed:", *changed]
    return "\n".join(lines) + "\n"


def _rate(rate: float | None) -> str:
    return "-" if rate is None else f"{rate:.1%}"
