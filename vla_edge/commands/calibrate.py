"""``vla-edge calibrate``: set the confidence gate from held-out rollouts in the reference world.

    vla-edge calibrate --bundle DIR --chains 100 --target-miss-rate 0.1 --out thresholds.json
    vla-edge calibrate --bundle DIR --chains 100 --target-miss-rate 0.1 --write-bundle

Rolls the bundle's policy out autonomously on the robot's own executor in simulated time (``vla_edge.simulation``:
ONNX Runtime, K samples per chunk, every verdict recorded) on chains whose seeds differ from the benchmark's, keeps
every chunk's signals and the judge's verdict of each step, fits the gate on the first chains (default: one
combined failure score, ``vla_edge.calibration.fit_failure_score``; ``--gate per-signal``: a threshold per
signal; both with conformal risk control for the target miss rate) and measures false alarms and misses on the
remaining chains. See docs/confidence.md for the rules and their guarantees.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from vla_edge.errors import VlaEdgeError
from vla_edge.paths import REFERENCE_BUNDLE_DIR


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "calibrate", help="set confidence thresholds from held-out rollouts (split conformal) for a target miss rate"
    )
    parser.add_argument("--bundle", type=Path, default=REFERENCE_BUNDLE_DIR, help="bundle directory")
    parser.add_argument("--chains", type=int, default=100, help="held-out 10-step chains to roll out (default 100)")
    rule = parser.add_mutually_exclusive_group()
    rule.add_argument("--target-miss-rate", type=float, default=None,
                      help="expected fraction of failed steps the gate lets through (default 0.1)")
    rule.add_argument("--false-alarm-rate", type=float, default=None,
                      help="instead: the fraction of good steps each signal may flag (needs no failures)")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--write-bundle", action="store_true",
                       help="write the thresholds into the bundle's manifest (then sign the bundle again)")
    where.add_argument("--out", type=Path, help="write a thresholds JSON file (point confidence.thresholds_file at it)")
    parser.add_argument("--precision", choices=["fp32", "int8", "int4"], default="int8")
    parser.add_argument("--samples", type=int, default=8, help="K noise samples per chunk, as the daemon uses")
    parser.add_argument("--seed", type=int, default=1000, help="seed root of the held-out chains (benchmark: 0)")
    parser.add_argument("--calibrate-jerk", action="store_true",
                        help="fit the jerk threshold too (never below 1.05) instead of the action space's 1.05")
    parser.add_argument("--gate", choices=["score", "per-signal"], default="score",
                        help="score (default): one combined failure score fitted on the rollouts (weights >= 0; "
                        "signals that do not predict failure dropped) with a threshold for the target miss rate; "
                        "per-signal: a threshold per signal")
    parser.add_argument("--test-fraction", type=float, default=0.3,
                        help="share of the chains kept out of fitting, to measure the rates (default 0.3)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from vla_edge import calibration as cal

    if args.chains < 2:
        raise VlaEdgeError(f"--chains must be at least 2 (some to fit, some to test), got {args.chains}")
    if not 0.0 <= args.test_fraction < 1.0:
        raise VlaEdgeError(f"--test-fraction must be in [0, 1), got {args.test_fraction}")
    if args.samples < 2:
        raise VlaEdgeError("--samples must be at least 2: the spread signal needs several samples")
    for name in ("target_miss_rate", "false_alarm_rate"):
        value = getattr(args, name)
        if value is not None and not 0.0 < value < 1.0:
            raise VlaEdgeError(f"--{name.replace('_', '-')} must be between 0 and 1 (exclusive), got {value}")
    target = args.target_miss_rate if args.target_miss_rate is not None else 0.1

    # The rollouts need the simulated world; imported here so other commands never load it.
    from vla_edge.simulation import (
        base_monitor,
        chain_setup,
        chunk_steps,
        open_policy,
        run_autonomous,
        simulation_settings,
        step_scores,
    )

    console = Console(stderr=True)
    bundle, policy = open_policy(args.bundle, args.precision)
    monitor = base_monitor(bundle)
    settings = simulation_settings(bundle.manifest, num_samples=args.samples)
    chains = []
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=True) as progress:
        task = progress.add_task("held-out chains", total=args.chains)
        for index in range(args.chains):
            chains.append(run_autonomous(chain_setup(args.seed, index), policy, monitor, settings))
            progress.advance(task)
    n_test = min(args.chains - 1, math.ceil(args.test_fraction * args.chains)) if args.test_fraction > 0 else 0
    fit_chains, test_chains = chains[: args.chains - n_test], chains[args.chains - n_test :]
    everything = step_scores(chains)
    common = dict(
        bundle=f"{bundle.manifest.name} {bundle.manifest.version} ({bundle.path})", precision=args.precision,
        num_samples=args.samples, chains=args.chains, seed=args.seed,
        auroc={s: _finite(cal.auroc(v, everything.failed)) for s, v in everything.values.items()},
    )
    if args.gate == "score" and args.false_alarm_rate is None:
        score_fit = cal.fit_failure_score(chunk_steps(fit_chains), target, fixed=cal.fixed_thresholds(True))
        thresholds = score_fit.thresholds
        test = chunk_steps(test_chains) if test_chains else None
        test_rates = None
        if test is not None and test.n_steps:
            flags = cal.gate_flags(test, thresholds)
            failed = test.failed.astype(bool)
            test_rates = cal.Rates(float(flags[~failed].mean()) if (~failed).any() else math.nan,
                                   float((~flags[failed]).mean()) if failed.any() else math.nan,
                                   int((~failed).sum()), int(failed.sum()))
        report = cal.CalibrationReport(
            thresholds=thresholds, gate="score", rule="target_miss_rate", target=target,
            miss_bound=score_fit.level_bound, calibration=cal.RatesModel.of(score_fit.calibration),
            test=cal.RatesModel.of(test_rates) if test_rates is not None else None, **common,
        )
        fitted_rates = score_fit.calibration
    else:
        fit = step_scores(fit_chains)
        test_scores = step_scores(test_chains) if test_chains else None
        signals, fixed = cal.calibrated_signals(args.calibrate_jerk), cal.fixed_thresholds(args.calibrate_jerk)
        if args.false_alarm_rate is not None:
            result = cal.calibrate_false_alarm(fit, args.false_alarm_rate, signals, fixed)
        else:
            result = cal.calibrate_miss_rate(fit, target, signals, fixed)
        gate = {**fixed, **result.thresholds}
        thresholds = result.thresholds
        report = cal.CalibrationReport(
            thresholds=thresholds, gate="per-signal", rule=result.rule, target=result.target, level=result.level,
            miss_bound=result.miss_bound, calibration=cal.RatesModel.of(result.calibration),
            test=cal.RatesModel.of(cal.rates(test_scores, gate)) if test_scores is not None and test_scores.n_steps
            else None, **common,
        )
        fitted_rates = result.calibration
    _print(report, Console())
    if fitted_rates.n_success < 20:
        print(f"warning: only {fitted_rates.n_success} successful steps were fitted; the thresholds are coarse "
              "(each is one of very few values): roll out more chains")
    if args.write_bundle:
        path, signed = cal.write_thresholds_to_bundle(bundle.path, thresholds, replace=report.gate == "score")
        print(f"thresholds written into {path}")
        if signed:
            print("the bundle's signature no longer matches its manifest: sign it again with "
                  f"`vla-edge bundle sign {bundle.path} --key KEY`")
    else:
        path = cal.write_thresholds_file(report, args.out)
        print(f"thresholds written to {path}; set confidence.thresholds_file = \"{path}\" in the daemon's config")
    return 0


def _finite(value: float) -> float | None:
    return None if not math.isfinite(value) else round(value, 4)


def _print(report, console) -> None:
    from rich.table import Table

    level = "" if report.level is None else f", level {report.level:.4g}"
    table = Table(title=f"calibration ({report.gate} gate, {report.rule.replace('_', ' ')} {report.target:g}{level})")
    table.add_column("signal")
    table.add_column("threshold", justify="right")
    table.add_column("AUROC (step failure)", justify="right")
    for name, value in report.thresholds.items():
        auc = report.auroc.get(name)
        table.add_row(name, f"{value:.4g}", "n/a" if auc is None else f"{auc:.3f}")
    console.print(table)
    for label, rates in (("fit", report.calibration), ("test", report.test)):
        if rates is None:
            continue
        fa = "n/a" if rates.false_alarm is None else f"{rates.false_alarm:.1%}"
        miss = "n/a" if rates.miss is None else f"{rates.miss:.1%}"
        console.print(f"{label}: false alarms {fa} of {rates.n_success} good steps, "
                      f"misses {miss} of {rates.n_failed} failed steps")
    if report.miss_bound is not None:
        console.print(f"promised: expected miss rate <= {report.target:g} (risk-control bound on the fit split "
                      f"{report.miss_bound:.3f})")
