"""The trade-off, not one point: chain success against operator touches per chain, over the gate's and the
verifier's operating points, for each arrangement (gated, + recovery, + recovery + verifier, with and without
the remote tier).

    python -m bench.pareto --chains 100 --seed 2000 --out bench/results/pareto          # ~1 h on 2 shared cores
    python -m bench.pareto --quick --out /tmp/pareto                                     # smoke

The gate's operating points are combined failure scores fitted once on held-out autonomous rollouts
(``--calibration-seed``, default 1000) for each ``--gate-targets`` miss rate; the verifier's are accept thresholds
(``--accept-thresholds``; ``bundle`` is the verifier bundle's calibrated one). Every point runs the SAME chains
(``--seed``) on the robot's own executor in simulated time (``bench.chain_benchmark``). Choosing the default
operating point from the curve is a design choice, so the curve is drawn on development chains (seed root 2000,
docs/evaluation-seeds.md), never on an evaluation root. Writes pareto.json and pareto.png (the points, each
arrangement's curve, the Pareto front, and the default operating point marked).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.chain_benchmark import (
    ARRANGEMENTS,
    DEFAULT_ARRANGEMENTS,
    Bench,
    RemoteTier,
    gated_figures,
    pareto_front,
    save_pareto,
)
from vla_edge.calibration import CalibrationError, fit_failure_score, fixed_thresholds
from vla_edge.config import Settings
from vla_edge.paths import REFERENCE_BUNDLE_DIR, REFERENCE_VERIFIER_DIR
from vla_edge.simulation import (
    base_monitor,
    chain_setup,
    chunk_steps,
    collect_autonomous,
    open_policy,
    run_autonomous,
    simulation_settings,
)
from vla_edge.verifier import CheckpointVerifier


def _accept_values(spec: str, verifier: CheckpointVerifier | None) -> list[float | None]:
    values: list[float | None] = []
    for item in spec.split(","):
        item = item.strip()
        if item == "bundle":
            values.append(None)
        elif item:
            values.append(float(item))
    return values or [None]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.pareto", description=__doc__.splitlines()[0])
    parser.add_argument("--chains", type=int, default=100)
    parser.add_argument("--seed", type=int, default=2000)
    parser.add_argument("--bundle", type=Path, default=REFERENCE_BUNDLE_DIR)
    parser.add_argument("--precision", choices=["fp32", "int8", "int4"], default="int8")
    parser.add_argument("--calibration-chains", type=int, default=300)
    parser.add_argument("--calibration-seed", type=int, default=1000)
    parser.add_argument("--gate-targets", default="0.1,0.2,0.3,0.5", help="target miss rates of the gate")
    parser.add_argument("--accept-thresholds", default="bundle,0.5,0.999",
                        help="verifier accept thresholds for the +verifier arrangements (bundle: its calibrated one)")
    parser.add_argument("--arrangements", default=",".join(DEFAULT_ARRANGEMENTS))
    parser.add_argument("--verifier", type=Path, default=REFERENCE_VERIFIER_DIR)
    parser.add_argument("--remote-bundle", type=Path, default=None)
    parser.add_argument("--default-target", type=float, default=None,
                        help="the gate target of the default operating point (marked on the plot)")
    parser.add_argument("--operator-delay-s", type=float, default=5.0)
    parser.add_argument("--out", type=Path, default=Path("bench/results/pareto"))
    parser.add_argument("--quick", action="store_true", help="4 chains, 2 gate targets, 40 calibration chains")
    args = parser.parse_args(argv)
    if args.quick:
        args.chains, args.calibration_chains, args.gate_targets = 4, 40, "0.3,0.5"
    if args.seed == args.calibration_seed:
        parser.error("--seed and --calibration-seed must differ")
    arrangements = [a.strip() for a in args.arrangements.split(",") if a.strip()]
    targets = [float(t) for t in args.gate_targets.split(",")]
    started = time.perf_counter()

    bundle, policy = open_policy(args.bundle, args.precision)
    defaults = Settings()
    settings = simulation_settings(bundle.manifest, resample_tries=0)
    base = base_monitor(bundle)
    print(f"fitting the gate on {args.calibration_chains} autonomous chains (seed {args.calibration_seed}) …")
    steps = chunk_steps(collect_autonomous(policy, base, args.calibration_chains, args.calibration_seed, settings))
    gates: dict[float, dict[str, float]] = {}
    for target in targets:
        try:
            gates[target] = fit_failure_score(steps, target, fixed=fixed_thresholds(True)).thresholds
        except CalibrationError as exc:
            print(f"  target {target:g} skipped: {exc}")
    verifier = CheckpointVerifier(args.verifier) if any(ARRANGEMENTS[a].verifier for a in arrangements) else None
    accepts = _accept_values(args.accept_thresholds, verifier)

    points: list[dict[str, Any]] = []
    autonomous_success = []
    setups = [chain_setup(args.seed, i) for i in range(args.chains)]
    for setup in setups:
        autonomous_success.append(run_autonomous(setup, policy, base, settings).success)
    with tempfile.TemporaryDirectory(prefix="vla-edge-pareto-") as state_dir, RemoteTier(args, bundle) as remote:
        for target, thresholds in gates.items():
            monitor = base.with_thresholds(thresholds)
            router = remote.planner(monitor) if any(ARRANGEMENTS[a].remote for a in arrangements) else None
            for name in arrangements:
                arrangement = ARRANGEMENTS[name]
                for accept in (accepts if arrangement.verifier else [None]):
                    judge = None
                    if arrangement.verifier:
                        judge = CheckpointVerifier(args.verifier, accept_threshold=accept,
                                                   reject_threshold=None if accept is None else
                                                   min(verifier.reject_threshold, accept))  # type: ignore[union-attr]
                    bench = Bench(policy, monitor, settings, defaults.recovery.resample_tries,
                                  defaults.recovery.step_retries, args.operator_delay_s,
                                  Path(state_dir) / f"{target}-{accept}", judge, router)
                    chains = [bench.run(setup, arrangement) for setup in setups]
                    figures = gated_figures(chains)
                    accept_shown = judge.accept_threshold if judge is not None else None
                    point = {
                        "arrangement": name, "gate_target_miss_rate": target, "verifier_accept": accept_shown,
                        "chain_success": figures["chain_success"], "touches_per_chain": figures["touches_per_chain"],
                        "touches_per_chain_by_kind": figures["touches_per_chain_by_kind"],
                        "failed_steps_let_through_rate": figures["failed_steps_let_through_rate"],
                        "low_confidence_chunks_actuated": figures["low_confidence_chunks_actuated"],
                        "verifier": figures["verifier"],
                        "label": f"{name}, gate {target:g}" + ("" if accept_shown is None else
                                                              f", accept P > {accept_shown:.3g}"),
                    }
                    points.append(point)
                    print(f"  {point['label']}: success {point['chain_success']:.1%}, "
                          f"touches {point['touches_per_chain']:.2f}")
    default = None
    if args.default_target is not None:
        chosen = [p for p in points if p["arrangement"] == "gated+recovery+verifier"
                  and p["gate_target_miss_rate"] == args.default_target and p["verifier_accept"] is not None
                  and (verifier is None or abs(p["verifier_accept"] - verifier.accept_threshold) < 1e-12)]
        default = chosen[0] if chosen else None
    summary = {
        "chains": args.chains, "seed": args.seed, "precision": args.precision,
        "bundle": f"{bundle.manifest.name} {bundle.manifest.version}",
        "calibration": {"chains": args.calibration_chains, "seed": args.calibration_seed},
        "autonomous_chain_success": float(np.mean(autonomous_success)),
        "points": points, "pareto_front": [p["label"] for p in pareto_front(points)],
        "default": None if default is None else default["label"],
        "seconds": round(time.perf_counter() - started, 1),
        "command": "python -m bench.pareto " + " ".join(argv if argv is not None else __import__("sys").argv[1:]),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "pareto.json").write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    png = save_pareto(points, summary["autonomous_chain_success"], default, args.out / "pareto.png",
                      f"{args.chains} ten-step chains (seed root {args.seed}), {bundle.manifest.name} "
                      f"{args.precision}: chain success vs operator touches")
    print(f"wrote {args.out / 'pareto.json'} and {png} in {summary['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
