"""Policy tiers side by side on ten-step chains: local only, local + remote, local + operator,
local + remote + operator (and the remote policy alone, for its capability).

    python -m bench.tier_benchmark --chains 30 --out bench/results/tiers      # starts a Triton server itself
    python -m bench.tier_benchmark --quick --out /tmp/tiers                   # 3 chains, smoke

Every configuration runs the SAME chains with the SAME local noise, through the chain benchmark's simulated-time
executor and gated task runner (``bench.chain_benchmark``): only the planner differs. With a remote tier, a
chunk whose local verdict fails is sent to a real Triton server (``vla-edge remote serve`` on the remote bundle,
over gRPC with the daemon's deadline) by the daemon's own ``TieredPlanner``; the remote verdict decides. Without
an operator, the chunk of the last tier asked is actuated whatever its verdict (the chain benchmark's
"autonomous" mode); with one, a chunk no tier passes holds and escalates to the scripted operator, who takes over.

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench.chain_benchmark import (
    LoopSettings,
    base_monitor,
    chain_setup,
    open_policy,
    run_autonomous,
    run_gated,
    with_thresholds,
)
from hil.harness import free_port
from vla_edge.confidence import DEFAULT_THRESHOLDS, ChunkContext, ConfidenceMonitor, select_chunk
from vla_edge.paths import REFERENCE_BUNDLE_DIR, REMOTE_BUNDLE_DIR
from vla_edge.policy import EncodedObservation, PolicyRunner
from vla_edge.remote import RemotePolicyClient
from vla_edge.routing import RoutedChunk, TieredPlanner, TierMetrics, output_limits
from vla_edge.telemetry import Metrics
from vla_edge.types import ChunkSamples, Observation, Verdict



@dataclass
class TierStats:
    latencies_ms: list[float] = field(default_factory=list)
    settled: Counter[str] = field(default_factory=Counter)
    remote_outcomes: Counter[str] = field(default_factory=Counter)


class TieredPolicy:
    """What ``SimTimeExecutor`` calls as its policy (set_instruction / encode / sample), routed across tiers.

    ``sample`` runs the local policy, the local verdict and, when that fails, the ``TieredPlanner``; it returns
    the chosen tier's samples. `TieredMonitor` hands the executor the verdict already computed for them. The
    verdict context mirrors the executor's: the previous accepted chunk started ``horizon - replan`` ticks
    earlier, and the committed prefix action is the last executed one.
    """

    def __init__(self, local: PolicyRunner, monitor: ConfidenceMonitor, planner: TieredPlanner | None,
                 replan_when_remaining: int, stats: TierStats) -> None:
        self.local = local
        self.monitor = monitor
        self.planner = planner
        self.stats = stats
        self._offset = local.horizon - replan_when_remaining
        self._instruction = ""
        self._observation: tuple[np.ndarray, np.ndarray] | None = None
        self._previous: ChunkSamples | None = None
        self.last: RoutedChunk | None = None

    @property
    def horizon(self) -> int:
        return self.local.horizon

    @property
    def action_dim(self) -> int:
        return self.local.action_dim

    def set_instruction(self, text: str) -> float:
        self._instruction = text
        self._previous = None  # every step attempt starts without a previous chunk, as in the executor
        return self.local.set_instruction(text)

    def encode(self, image: np.ndarray, state: np.ndarray) -> EncodedObservation:
        self._observation = (image, state)
        return self.local.encode(image, state)

    def sample(self, encoded: EncodedObservation, num_samples: int, prefix: np.ndarray | None = None,
               noise: np.ndarray | None = None) -> ChunkSamples:
        started = time.perf_counter()
        local = self.local.sample(encoded, num_samples, prefix, noise)
        chunk = select_chunk(local.actions)
        context = ChunkContext(self._previous, 0, self._offset if self._previous is not None else 0,
                               None if prefix is None else prefix[-1])
        verdict = self.monitor.evaluate(local, chunk, context)
        if self.planner is None:
            routed = RoutedChunk(local, chunk, verdict, "local" if verdict.passed else "operator")
        else:
            assert self._observation is not None
            image, state = self._observation
            routed = self.planner.route(Observation(image, state, self._instruction, 0), prefix, num_samples,
                                        local, chunk, verdict, context, time.perf_counter() - started)
        self.stats.latencies_ms.append((time.perf_counter() - started) * 1e3)
        self.stats.settled[routed.tier] += 1
        if routed.remote_outcome is not None:
            self.stats.remote_outcomes[routed.remote_outcome] += 1
        self.last = routed
        self._previous = routed.samples
        return routed.samples


@dataclass(frozen=True)
class TieredMonitor:
    """The executor's monitor: the routed verdict for the routed samples (computed once, by the planner)."""

    policy: TieredPolicy
    base: ConfidenceMonitor

    @property
    def thresholds(self) -> dict[str, float]:
        return dict(self.base.thresholds)

    def evaluate(self, samples: ChunkSamples, chunk: np.ndarray, context: ChunkContext) -> Verdict:
        last = self.policy.last
        if last is not None and samples is last.samples:
            return last.verdict
        return self.base.evaluate(samples, chunk, context)


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


def run_config(name: str, remote: bool, operator: bool, args: argparse.Namespace, local: PolicyRunner,
               monitor: ConfidenceMonitor, remote_url: str | None, limits, state_dir: Path) -> dict[str, Any]:
    stats = TierStats()
    metrics = Metrics()
    planner = None
    if remote:
        client = RemotePolicyClient(remote_url, "vla_remote", args.deadline_ms, limits)  # type: ignore[arg-type]
        planner = TieredPlanner(client, monitor, TierMetrics(metrics), seed=args.seed)
    settings = LoopSettings(num_samples=args.samples)
    policy = TieredPolicy(local, monitor, planner, settings.replan_when_remaining, stats)
    gate = TieredMonitor(policy, monitor)
    chains, touches, step_success = [], [], []
    for index in range(args.chains):
        setup = chain_setup(args.seed, index)
        if operator:
            chain = run_gated(setup, policy, gate, settings, state_dir, args.operator_delay_s)  # type: ignore[arg-type]
            chains.append(chain.success)
            touches.append(sum(chain.touches.values()))
            attempts = [r for r in chain.runs if r.driver == "policy" and r.outcome == "done"]
            step_success.extend(bool(r.success) for r in attempts)
        else:
            chain = run_autonomous(setup, policy, gate, settings)  # type: ignore[arg-type]
            chains.append(chain.success)
            touches.append(0)
            step_success.extend(bool(s.success) for s in chain.steps)
    if planner is not None:
        planner.close()
    latencies = np.asarray(stats.latencies_ms)
    return {
        "config": name,
        "chains": args.chains,
        "chain_success": float(np.mean(chains)),
        "operator_touches_per_chain": float(np.mean(touches)),
        "policy_step_success": float(np.mean(step_success)) if step_success else None,
        "p50_step_latency_ms": float(np.percentile(latencies, 50)),
        "p99_step_latency_ms": float(np.percentile(latencies, 99)),
        "chunks": int(latencies.size),
        "settled_by": dict(stats.settled),
        "remote_outcomes": dict(stats.remote_outcomes),
    }


def remote_alone(args: argparse.Namespace, monitor: ConfidenceMonitor) -> dict[str, Any]:
    """The remote bundle run in-process with no gate: its capability on the same chains."""
    _, runner = open_policy(args.remote_bundle, "fp32")
    stats = TierStats()
    settings = LoopSettings(num_samples=args.samples)
    policy = TieredPolicy(runner, with_thresholds(base_monitor(runner.bundle), dict(DEFAULT_THRESHOLDS)), None,
                          settings.replan_when_remaining, stats)
    successes, steps = [], []
    for index in range(args.chains):
        chain = run_autonomous(chain_setup(args.seed, index), policy, TieredMonitor(policy, policy.monitor),
                               settings)  # type: ignore[arg-type]
        successes.append(chain.success)
        steps.extend(bool(s.success) for s in chain.steps)
    latencies = np.asarray(stats.latencies_ms)
    return {
        "config": "remote policy alone (in-process, reference)",
        "chains": args.chains,
        "chain_success": float(np.mean(successes)),
        "operator_touches_per_chain": 0.0,
        "policy_step_success": float(np.mean(steps)),
        "p50_step_latency_ms": float(np.percentile(latencies, 50)),
        "p99_step_latency_ms": float(np.percentile(latencies, 99)),
        "chunks": int(latencies.size),
        "settled_by": {},
        "remote_outcomes": {},
    }


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
    monitor = with_thresholds(base_monitor(bundle), thresholds)
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
