"""Profanity classifier load: time and memory to get the model, from alt-profanity-check vs the shipped data.

Run from the repository root (alt-profanity-check installed, the ``testing`` extra)::

    .venv/bin/python bench/bench_profanity_load.py           # about 20 s

Each run is a fresh Python process that imports the moderation plugin, then
times one load and reads its resident memory (VmRSS) before and after:

- **alt-profanity-check**: import the package (scikit-learn, SciPy, joblib
  unpickle its model) and read its numbers out, as ``load_model()`` did before
  the weights shipped with botkit (``scripts/gen_profanity_weights.py``'s reader);
- **shipped data**: ``load_model()``, which reads ``profanity_weights.bin``.

The median of the runs is printed.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MEASURE = """
import json, re, sys, time
def rss_mb():
    with open("/proc/self/status") as status:
        return int(re.search(r"VmRSS:\\s+(\\d+)", status.read()).group(1)) / 1024
import botkit.plugins.moderation
from botkit.plugins.moderation.classifier import ProfanityModel, load_model
before, started = rss_mb(), time.perf_counter()
{load}
seconds, after = time.perf_counter() - started, rss_mb()
assert model.score("you are a fucking idiot") > 0.9
print(json.dumps({{"seconds": seconds, "rss_mb": after - before}}))
"""
CASES = {
    "alt-profanity-check (import + read-out)": (
        "sys.path.insert(0, {scripts!r}); import gen_profanity_weights as gen\n"
        "n = gen.read_model()\n"
        "model = ProfanityModel.from_numbers(n['tokens'], n['idf'], n['coefficients'], n['intercepts'], n['sigmoids'])"
    ).format(scripts=str(ROOT / "scripts")),
    "shipped data (load_model)": "model = load_model()",
}


def measure(load: str) -> dict[str, float]:
    done = subprocess.run(
        [sys.executable, "-c", MEASURE.format(load=load)],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    return json.loads(done.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    print(
        f"  {platform.python_implementation()} {platform.python_version()}, {args.runs} fresh processes each"
    )
    print("  | load | median s | median RSS delta MB |")
    print("  |---|---:|---:|")
    for name, load in CASES.items():
        runs = [measure(load) for _ in range(args.runs)]
        seconds = statistics.median(run["seconds"] for run in runs)
        rss = statistics.median(run["rss_mb"] for run in runs)
        print(f"  | {name} | {seconds:.3f} | {rss:.1f} |")


if __name__ == "__main__":
    main()
