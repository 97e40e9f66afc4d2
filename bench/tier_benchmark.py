"""Policy tiers side by side on ten-step chains: local only, local + remote, local + operator,
local + remote + operator (and the remote policy alone, for its capability).

    python -m bench.tier_benchmark --chains 30 --out bench/results/tiers      # starts a Triton server itself
    python -m bench.tier_benchmark --quick --out /tmp/tiers                   # 3 chains, smoke

Every configuration runs the SAME chains with the SAME local noise on the robot's own executor in simulated time
(``vla_edge.simulation``; with an operator, the chain benchmark's gated task runner): only the router differs.
With a remote tier, the executor's router is the daemon's own ``TieredPlanner``: a chunk whose local verdict
fails is sent to a real Triton server (``vla-edge remote serve`` on the remote bundle, over gRPC with the
daemon's deadline) and the remote verdict decides. Without an operator, the executor runs in shadow mode: the
chunk of the last tier asked is actuated whatever its verdict (the chain benchmark's "autonomous" mode); with
one, a chunk no tier passes holds and escalates to the scripted operator, who takes over.

Reported per configuration: chain success, operator touches per chain, per-step success of the policy's own
attempts, p50/p99 latency of one planning step (local inference, plus the remote round trip when asked; wall
time on this machine), and how many chunks each tier settled. JSON + a table out.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry

from bench.chain_benchmark import run_gated
from hil.harness import free_port
from vla_edge.confidence import DEFAULT_THRESHOLDS, ConfidenceMonitor
from vla_edge.paths import REFERENCE_BUNDLE_DIR, REMOTE_BUNDLE_DIR
from vla_edge.policy import PolicyRunner
from vla_edge.remote import RemotePolicyClient
from vla_edge.routing import TieredPlanner, TierMetrics, output_limits
from vla_edge.simulation import (
    base_monitor,
    chain_setup,
    open_policy,
    robot_for,
    run_autonomous,
    simulation_settings,
)


class TritonServe:
    """``vla-edge remote serve`` in a child process (its own process group), until closed."""

    def __init__(self, bundle: Path, log_path: Path) -> None:
        self.port = free_port()
        self._log = log_path.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "vla_edge.cli", "remote", "serve", "--bundle", str(bundle), "--port",
             str(self.port), "--http-port", str(free_port()), "--threads", "1"],
            stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
        )

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.port}"

    def close(self) -> None:
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)
        except ProcessLookupError:
            pass
        self._log.close()


CONFIGS = (
    ("local only", False, False),
    ("local + remote", True, False),
    ("local + operator", False, True),
    ("local + remote + operator", True, True),
)


def _policy_chunks(runs) -> list:
    return [c for run in runs if run.driver == "policy" for c in run.chunks]


def _row(name: str, chains: int, successes: list[bool], touches: list[int], step_success: list[bool],
         chunks: list, remote_outcomes: dict[str, int], settled: dict[str, int] | None = None) -> dict[str, Any]:
    """``settled``: the router's own count of every chunk it settled (one planned just before a step ended is
    never collected by the executor, so the chunk records miss it); without a router, from the records."""
    latencies = np.asarray([c.latency_ms for c in chunks])
    if settled is None:
        settled = dict(Counter("operator" if not c.passed else c.tier for c in chunks))
    return {
        "config": name,
        "chains": chains,
        "chain_success": float(np.mean(successes)),
        "operator_touches_per_chain": float(np.mean(touches)),
        "policy_step_success": float(np.mean(step_success)) if step_success else None,
        "p50_step_latency_ms": float(np.percentile(latencies, 50)),
        "p99_step_latency_ms": float(np.percentile(latencies, 99)),
        "chunks": int(latencies.size),
        "settled_by": dict(settled),
        "remote_outcomes": remote_outcomes,
    }


def run_config(name: str, remote: bool, operator: bool, args: argparse.Namespace, local: PolicyRunner,
               monitor: ConfidenceMonitor, remote_url: str | None, limits, state_dir: Path) -> dict[str, Any]:
    """The configuration on the robot's own executor: the daemon's ``TieredPlanner`` as its router when remote;
    with an operator, the gated task runner of the chain benchmark; without, the executor in shadow mode."""
    tier_metrics = CountingTierMetrics(CollectorRegistry())
    planner = None
    if remote:
        client = RemotePolicyClient(remote_url, "vla_remote", args.deadline_ms, limits)  # type: ignore[arg-type]
        planner = TieredPlanner(client, monitor, tier_metrics, seed=args.seed)
    settings = simulation_settings(local.manifest, num_samples=args.samples)
    successes, touches, step_success, chunks = [], [], [], []
    for index in range(args.chains):
        setup = chain_setup(args.seed, index)
        if operator:
            chain = run_gated(setup, local, monitor, settings, state_dir, args.operator_delay_s, router=planner)
            successes.append(chain.success)
            touches.append(sum(chain.touches.values()))
            attempts = [r for r in chain.runs if r.driver == "policy" and r.outcome == "done"]
            step_success.extend(bool(r.success) for r in attempts)
            chunks.extend(_policy_chunks(chain.runs))
        else:
            free = run_autonomous(setup, local, monitor, settings, router=planner)
            successes.append(free.success)
            touches.append(0)
            step_success.extend(bool(s.success) for s in free.steps)
            chunks.extend(_policy_chunks(free.steps))
    settled = None
    if planner is not None:
        planner.close()
        settled = {tier: int(count) for tier, count in tier_metrics.settled.items() if count}
    return _row(name, args.chains, successes, touches, step_success, chunks, dict(tier_metrics.remote_outcomes),
                settled)


class CountingTierMetrics(TierMetrics):
    """The planner's metrics, also counting the remote tier's outcomes for the table."""

    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__(registry)
        self.registry = registry
        self.remote_outcomes: Counter[str] = Counter()

    def record(self, tier: str, outcome: str, seconds: float | None) -> None:
        super().record(tier, outcome, seconds)
        if tier == "remote":
            self.remote_outcomes[outcome] += 1

    @property
    def settled(self) -> dict[str, float]:
        """Chunks settled by each tier, as the planner counted them (``vla_edge_tier_decisions_total``)."""
        value = self.registry.get_sample_value
        return {tier: value("vla_edge_tier_decisions_total", {"tier": tier}) or 0.0
                for tier in ("local", "remote", "operator")}


def remote_alone(args: argparse.Namespace, monitor: ConfidenceMonitor) -> dict[str, Any]:
    """The remote bundle run in-process with no gate: its capability on the same chains."""
    bundle, runner = open_policy(args.remote_bundle, "fp32")
    own = base_monitor(bundle).with_thresholds(dict(DEFAULT_THRESHOLDS))
    settings = simulation_settings(runner.manifest, num_samples=args.samples)
    successes, steps, chunks = [], [], []
    for index in range(args.chains):
        chain = run_autonomous(chain_setup(args.seed, index), runner, own, settings)
        successes.append(chain.success)
        steps.extend(bool(s.success) for s in chain.steps)
        chunks.extend(_policy_chunks(chain.steps))
    row = _row("remote policy alone (in-process, reference)", args.chains, successes, [0] * len(successes), steps,
               chunks, {})
    row["settled_by"] = {}
    return row


def print_table(rows: list[dict[str, Any]], console: Any) -> None:
    from rich.table import Table

    table = Table(title="policy tiers on ten-step chains")
    for column in ("configuration", "chain success", "operator touches / chain", "policy step success",
                   "p50 step ms", "p99 step ms", "chunks settled by"):
        table.add_column(column)
    for row in rows:
        settled = ", ".join(f"{k} {v}" for k, v in sorted(row["settled_by"].items())) or "-"
        step = row["policy_step_success"]
        table.add_row(row["config"], f"{row['chain_success']:.0%}", f"{row['operator_touches_per_chain']:.2f}",
                      "-" if step is None else f"{step:.1%}", f"{row['p50_step_latency_ms']:.1f}",
                      f"{row['p99_step_latency_ms']:.1f}", settled)
    console.print(table)


def main(argv: list[str] | None = None) -> int:
    from rich.console import Console

    parser = argparse.ArgumentParser(prog="python -m bench.tier_benchmark", description=__doc__.splitlines()[0])
    parser.add_argument("--chains", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--bundle", type=Path, default=REFERENCE_BUNDLE_DIR, help="the board's (local) bundle")
    parser.add_argument("--precision", choices=["fp32", "int8", "int4"], default="int8")
    parser.add_argument("--remote-bundle", type=Path, default=REMOTE_BUNDLE_DIR)
    parser.add_argument("--remote-url", default=None, help="use a running server instead of starting one")
    parser.add_argument("--deadline-ms", type=float, default=200.0)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--operator-delay-s", type=float, default=5.0)
    parser.add_argument("--thresholds", default="auto", help="auto (the bundle's, else defaults), or a JSON file")
    parser.add_argument("--out", type=Path, default=Path("bench/results/tiers"))
    parser.add_argument("--quick", action="store_true", help="3 chains (smoke)")
    args = parser.parse_args(argv)
    if args.quick:
        args.chains = min(args.chains, 3)
    console = Console(width=150)
    bundle, local = open_policy(args.bundle, args.precision)
    if args.thresholds == "auto":
        thresholds = dict(bundle.manifest.confidence_thresholds or DEFAULT_THRESHOLDS)
        source = "bundle" if bundle.manifest.confidence_thresholds else "default"
    else:
        from vla_edge.service import load_thresholds

        thresholds, source = load_thresholds(Path(args.thresholds)), args.thresholds
    monitor = base_monitor(bundle).with_thresholds(thresholds)
    args.out.mkdir(parents=True, exist_ok=True)
    server = None
    url = args.remote_url
    if url is None:
        server = TritonServe(args.remote_bundle, args.out / "triton.log")
        url = server.url
    try:
        probe = RemotePolicyClient(url, "vla_remote", args.deadline_ms, output_limits(bundle.manifest))
        if not probe.wait_ready(180.0):
            raise SystemExit(f"the Triton server at {url} was not ready in 180 s; see {args.out / 'triton.log'}")
        probe.close()
        rows = []
        with tempfile.TemporaryDirectory(prefix="vla-edge-tiers-") as state_dir:
            for name, remote, operator in CONFIGS:
                started = time.perf_counter()
                # A state directory per configuration: the task runner would resume another's checkpoints.
                config_dir = Path(state_dir) / name.replace(" ", "").replace("+", "_")
                rows.append(run_config(name, remote, operator, args, local, monitor, url,
                                       output_limits(bundle.manifest), config_dir))
                console.print(f"  {name}: {time.perf_counter() - started:.0f} s")
    finally:
        if server is not None:
            server.close()
    rows.append(remote_alone(args, monitor))
    print_table(rows, console)
    summary = {
        "rows": rows,
        "local_bundle": f"{bundle.manifest.name} {bundle.manifest.version} ({args.precision})",
        "remote_bundle": str(args.remote_bundle),
        "thresholds": {"source": source, "values": thresholds},
        "deadline_ms": args.deadline_ms,
        "command": "python -m bench.tier_benchmark " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    path = args.out / "tier_benchmark.json"
    path.write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    console.print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
