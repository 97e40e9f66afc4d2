"""The chain benchmark's figures over several seed roots: per seed and their spread (issue 14's evaluation table).

    python -m bench.seed_spread artifacts/eval-14/int8/7101 artifacts/eval-14/int8/7102 artifacts/eval-14/int8/7103

Reads the ``chain_benchmark.json`` that ``bench.chain_benchmark --out DIR`` wrote in each DIR (same precision and
arrangements, different ``--seed``) and prints one markdown table: a row per figure and arrangement, a column per
seed, then the mean and the range (min–max) over the seeds. Nothing is re-run; the figures are the benchmark's own.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

TOUCH_KINDS = ("low_confidence", "stalled", "verify")

Figure = tuple[str, str, Callable[[dict[str, Any], str], float | None], str]  # label, column, value, format


def _config(summary: dict[str, Any], name: str) -> dict[str, Any]:
    return summary["configs"][name]


def _verifier(key: str) -> Callable[[dict[str, Any], str], float | None]:
    def value(summary: dict[str, Any], name: str) -> float | None:
        verifier = _config(summary, name).get("verifier")
        return None if verifier is None else verifier.get(key)
    return value


def figures(arrangements: Sequence[str]) -> list[Figure]:
    """The rows of the table, in order: what was promised (issue 14's targets) first."""
    rows: list[Figure] = [
        ("chain success", "autonomous", lambda s, _: s["autonomous"]["chain_success"], "pct"),
        ("gate precision (autonomous steps)", "autonomous", lambda s, _: s["gate_on_autonomous_steps"]["precision"],
         "pct"),
        ("gate recall (autonomous steps)", "autonomous", lambda s, _: s["gate_on_autonomous_steps"]["recall"], "pct"),
    ]
    for name in arrangements:
        rows += [
            ("chain success", name, lambda s, n: _config(s, n)["chain_success"], "pct"),
            ("operator touches per chain", name, lambda s, n: _config(s, n)["touches_per_chain"], "f2"),
            *[(f"  {kind}", name, lambda s, n, k=kind: _config(s, n)["touches_per_chain_by_kind"].get(k, 0.0), "f2")
              for kind in TOUCH_KINDS],
            ("low-confidence chunks actuated", name, lambda s, n: _config(s, n)["low_confidence_chunks_actuated"],
             "int"),
            ("failed steps let through (of all steps)", name,
             lambda s, n: _config(s, n)["failed_steps_let_through_rate"], "pct2"),
            ("refusals recovered by a re-sample per chain", name,
             lambda s, n: _config(s, n)["refusals_recovered_per_chain"], "f2"),
            ("autonomous step retries per chain", name, lambda s, n: _config(s, n)["step_retries_per_chain"], "f2"),
        ]
        rows += [
            ("verifier false-accept rate (failed windows accepted)", name, _verifier("false_accept_rate"), "pct"),
            ("verifier unsure (the operator asked)", name, _verifier("unsure_rate"), "pct"),
        ]
    return rows


def _fmt(value: float | None, kind: str) -> str:
    if value is None:
        return "—"
    if kind == "pct":
        return f"{value:.1%}"
    if kind == "pct2":
        return f"{value:.2%}"
    if kind == "int":
        return f"{value:.0f}"
    return f"{value:.2f}"


def table(summaries: Sequence[dict[str, Any]]) -> str:
    """One markdown table over the seeds of ``summaries`` (each a chain_benchmark.json)."""
    if not summaries:
        raise ValueError("no chain_benchmark.json given")
    arrangements = list(summaries[0]["configs"])
    for s in summaries[1:]:
        if list(s["configs"]) != arrangements or s.get("precision") != summaries[0].get("precision"):
            raise ValueError("the runs differ in precision or arrangements; compare like with like")
    seeds = [str(s["seed"]) for s in summaries]
    head = ["arrangement", "figure", *[f"seed {x}" for x in seeds], "mean", "range over seeds"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, column, value, kind in figures(arrangements):
        values = [value(s, column) for s in summaries]
        known = [v for v in values if v is not None]
        mean = sum(known) / len(known) if known else None
        spread = f"{_fmt(min(known), kind)}–{_fmt(max(known), kind)}" if known else "—"
        lines.append("| " + " | ".join([column, label, *[_fmt(v, kind) for v in values], _fmt(mean, kind), spread])
                     + " |")
    chains = {s["chains"] for s in summaries}
    lines.append("")
    lines.append(f"{summaries[0].get('bundle', '')}, {summaries[0].get('precision', '')}, "
                 f"{'/'.join(str(c) for c in sorted(chains))} chains per seed, seeds {', '.join(seeds)}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="--out directories of bench.chain_benchmark")
    args = parser.parse_args(argv)
    summaries = []
    for run in args.runs:
        path = run / "chain_benchmark.json"
        try:
            summaries.append(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, json.JSONDecodeError) as exc:
            print(f"error: cannot read {path}: {exc}", file=sys.stderr)
            return 2
    try:
        print(table(summaries), end="")
    except (ValueError, KeyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
