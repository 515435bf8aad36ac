"""The red-team gate of ``botkit finetune deploy``: an adapter whose red-team results regress is refused.

``botkit redteam --lora ADAPTER --baseline --json DIR/redteam.json`` writes the results of the
adapter and of the base model beside the adapter file; deploy reads that file (a contract of
data: finetune never imports the redteam plugin) and holds it to ``[finetune.gate]``: no
suite's pass rate more than ``max_drop`` under the base model's, and each suite of
``min_pass_rate`` at least its rate. ``--force`` deploys anyway, printing what it missed.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from botkit import BotkitError

from .settings import GateSettings

REPORT_FILE = "redteam.json"
REPORT_FORMAT = "botkit redteam report 1"  # the "format" of botkit redteam's --json report

Echo = Callable[[str], None]


class GateRefused(BotkitError):
    """The adapter's red-team results miss ``[finetune.gate]`` (or are missing where required)."""


def how_to_measure(adapter: Path) -> str:
    return f"botkit redteam --lora {adapter} --baseline --json {adapter.parent / REPORT_FILE}"


def read_report(path: Path) -> dict[str, Any]:
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise GateRefused(f"{path}: cannot read the red-team results: {error}") from None
    if not isinstance(report, dict) or report.get("format") != REPORT_FORMAT:
        raise GateRefused(f'{path}: not a botkit redteam report (no "format": {REPORT_FORMAT!r})')
    return report


def problems(report: Mapping[str, Any], gate: GateSettings) -> list[str]:
    """Each way the report misses the gate, in words (empty: it passes)."""
    found = []
    suites = report.get("suites", {})
    base = report.get("baseline", {}).get("suites", {})
    for name, suite in suites.items():
        before = base.get(name, {}).get("pass_rate")
        if before is not None and before - suite["pass_rate"] > gate.max_drop + 1e-9:
            found.append(
                f"{name}: pass rate {suite['pass_rate']:.1%} against the base model's {before:.1%} "
                f"(at most {gate.max_drop * 100:g} points lower: [finetune.gate] max_drop)"
            )
    for name, least in gate.min_pass_rate.items():
        if name not in suites:
            found.append(f"{name}: not in the red-team results ([finetune.gate] min_pass_rate names it)")
        elif suites[name]["pass_rate"] < least:
            found.append(
                f"{name}: pass rate {suites[name]['pass_rate']:.1%} is under {least:.0%} "
                "([finetune.gate] min_pass_rate)"
            )
    return found


def gate_summary(adapter: Path, gate: GateSettings) -> str:
    """What ``check_gate`` holds ``adapter`` to, in a line (for a page that asks before deploying)."""
    path = adapter.parent / REPORT_FILE
    least = ", ".join(f"{name} {rate:.0%}" for name, rate in gate.min_pass_rate.items()) or "none"
    rules = f"no suite more than {gate.max_drop * 100:g} points under the base model's, least pass rates: {least}"
    if path.is_file():
        return f"[finetune.gate]: {rules}; red-team results: {path}"
    if gate.required:
        return f"[finetune.gate]: {rules}; no red-team results beside the adapter ({path}), which required = true refuses"
    return f"[finetune.gate]: not checked: no red-team results beside the adapter ({path}), and required = false"


def check_gate(adapter: Path, gate: GateSettings, force: bool, echo: Echo, warn: Echo) -> None:
    """Hold the red-team results beside ``adapter`` to ``gate``; ``GateRefused`` unless ``force``."""
    path = adapter.parent / REPORT_FILE
    if not path.is_file():
        if gate.required:
            refuse(
                [
                    f"no red-team results beside the adapter ({path}); measure them with `{how_to_measure(adapter)}`"
                ],
                force,
                warn,
            )
        return
    report = read_report(path)
    if not report.get("baseline") and gate.max_drop < 1:
        warn(
            f"warning: {path} has no base model's results (botkit redteam --baseline): "
            "[finetune.gate] max_drop cannot be checked"
        )
    echo(
        f"red-team results of {report.get('date')} ({path}, adapter {report.get('adapter') or 'none'}): "
        + ", ".join(f"{name} {suite['pass_rate']:.0%}" for name, suite in report.get("suites", {}).items())
    )
    missed = problems(report, gate)
    if missed:
        refuse(missed, force, warn)


def refuse(missed: list[str], force: bool, warn: Echo) -> None:
    if not force:
        raise GateRefused(
            "the adapter misses [finetune.gate]; nothing was deployed (--force deploys anyway):\n  "
            + "\n  ".join(missed)
        )
    for line in missed:
        warn(f"warning: {line}")
    warn("warning: deploying anyway (--force)")
