"""``vla-edge demo``: the daemon on the reference bundle, driving the simulated arm through a 10-step task.

Everything runs on this machine: the simulated robot (world + motor-controller client + camera) in a child
process, the daemon here, the operator console on localhost. A simulated operator answers escalations after a
delay (``--operator console`` leaves them to you in the browser).
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import socket
import threading
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from vla_edge.commands.run import add_rerun_argument, install_stop_handlers
from vla_edge.config import load_settings
from vla_edge.errors import VlaEdgeError
from vla_edge.paths import REFERENCE_VERIFIER_DIR
from vla_edge.task import TaskEvent, TaskSpec

log = logging.getLogger("vla_edge.demo")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="run a 10-step task on the simulated arm with the reference bundle (all on localhost)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--seed", type=int, default=0, help="layout and task of the simulated world")
    parser.add_argument("--steps", type=int, default=10, help="steps in the task chain")
    parser.add_argument("--precision", choices=["fp32", "int8", "int4"], default=None,
                        help="bundle variant (default: the config's, int8)")
    parser.add_argument("--operator", choices=["auto", "console"], default="auto",
                        help="who answers escalations: a simulated operator, or you in the web console")
    parser.add_argument("--operator-delay", type=float, default=1.0, help="seconds the simulated operator waits")
    parser.add_argument("--no-verify", action="store_true", help="skip operator verification at checkpoints")
    parser.add_argument("--no-auto-verify", action="store_true",
                        help="no automatic checkpoint verifier: the operator verifies every checkpoint")
    parser.add_argument("--port", type=int, default=8780, help="operator console port on 127.0.0.1")
    parser.add_argument("--out", type=Path, default=Path("runs"), help="where the run's state and dataset go")
    parser.add_argument("--config", type=Path, default=None, help="optional TOML config for the daemon")
    add_rerun_argument(parser)
    parser.set_defaults(func=demo)


def demo(args: argparse.Namespace) -> int:
    from hil.harness import SimPorts, SimRobotProcess, SimulatedOperator, StepJudge
    from vla_edge.service import Daemon

    from vla_edge import preflight

    console = Console()
    if not 1 <= args.steps <= 100:
        raise VlaEdgeError(f"--steps must be between 1 and 100, got {args.steps}")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    run_dir = (args.out / f"demo-{stamp}").resolve()
    recording = importlib.util.find_spec("av") is not None and importlib.util.find_spec("pyarrow") is not None

    port = args.port if _port_free(args.port) else 0
    if port != args.port:
        console.print(f"[yellow]port {args.port} is busy; the operator console takes a free port[/]")
    ports = SimPorts.pick()
    overrides = {
        "camera": {"source": "sim", "sim_endpoint": ports.endpoint(ports.frames)},
        "stream": {"command_endpoint": ports.endpoint(ports.commands), "state_endpoint": ports.endpoint(ports.state),
                   "curve": False},
        "task": {"state_dir": str(run_dir / "state"), "verify_at_checkpoint": not args.no_verify},
        "recorder": {"enabled": recording, "dataset_dir": str(run_dir / "dataset")},
        "operator": {"port": port},
        "telemetry": {"metrics_port": 0, **({"rerun": args.rerun} if args.rerun else {})},
    }
    if args.precision:
        overrides["policy"] = {"precision": args.precision}
    if not args.no_verify and not args.no_auto_verify and (REFERENCE_VERIFIER_DIR / "manifest.json").exists():
        overrides["verifier"] = {"bundle": str(REFERENCE_VERIFIER_DIR)}
    # The whole configuration is checked before the simulated robot's process exists, so a bad config leaves
    # no child behind; once it exists, the finally below always stops and reaps it.
    settings = load_settings(args.config, **overrides)
    preflight.check(settings)
    run_dir.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(filename=run_dir / "daemon.log", level=logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    stop = threading.Event()
    install_stop_handlers(stop)
    robot = SimRobotProcess(args.seed, ports=ports, log_path=run_dir / "sim_robot.log")
    sim = None
    operator = None
    daemon = None
    try:
        robot.start()
        with console.status("starting the daemon and the simulated arm…"):
            daemon = Daemon(settings)
            daemon.start()
            sim = robot.channel()
            if not daemon.wait_for_controller(15.0):
                raise VlaEdgeError("the simulated arm's controller did not complete the handshake within 15 s")
            if not daemon.wait_for_camera(10.0):
                raise VlaEdgeError("no frame from the simulated camera within 10 s")
            instructions = sim.chain(args.steps, args.seed)
        daemon.ready()
        console.print(f"[bold]vla-edge demo[/] bundle [cyan]{daemon.bundle.manifest.name}[/] "
                      f"{daemon.bundle.manifest.version} ({settings.policy.precision}) on "
                      f"{', '.join(daemon.policy.providers_in_use)}")
        if daemon.console is not None:
            console.print(f"operator console: [link]{daemon.console.url}[/]   metrics: "
                          f"{daemon.metrics_server.url}/metrics")
        if daemon.rerun is not None:
            console.print(f"Rerun: {settings.telemetry.rerun}")
        if not recording:
            console.print("[yellow]recording off: install the 'record' extra (pyarrow, av) to record[/]")
        judge = StepJudge(sim)
        if args.operator == "auto":
            operator = SimulatedOperator(daemon.escalations, daemon.teleop, sim, judge, instructions,
                                         args.operator_delay).start()
        spec = TaskSpec(task_id=f"demo-{args.seed}-{stamp}", steps=tuple(instructions))
        printer = _ProgressPrinter(console, judge, len(instructions))
        started = time.monotonic()

        def on_event(event: TaskEvent) -> None:
            judge.on_event(event)
            printer.on_event(event)

        result = daemon.run_task(spec, stop, events=on_event)
        elapsed = time.monotonic() - started
        counters = daemon.executor.scheduler.counters
        rate = settings.scheduler.control_rate_hz or daemon.bundle.manifest.control_rate_hz
        _summary(console, result, judge, counters, elapsed, operator, run_dir if recording else None, rate)
        return 0 if result.status == "completed" else 1
    finally:
        try:
            if operator is not None:
                operator.stop()
            if daemon is not None:
                daemon.close()
            if sim is not None:
                sim.close()
        finally:
            robot.stop()  # terminate, then kill after 5 s; waits either way, so no zombie and no orphan


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


_FINISHED_BY = {"done": "the policy", "teleoperated": "the operator (take-over)", "approved": "operator approval"}


class _ProgressPrinter:
    def __init__(self, console: Console, judge, total: int) -> None:
        self.console = console
        self.judge = judge
        self.total = total

    def on_event(self, event: TaskEvent) -> None:
        step = event.step_index
        if event.kind == "step_started":
            self.console.print(f"step {step + 1:>2}/{self.total}  {event.detail['instruction']}")
        elif event.kind == "escalated":
            self.console.print(f"         [yellow]escalated[/] ({event.detail.get('escalation_kind')}): "
                               f"{event.detail.get('reason', '')}")
        elif event.kind == "decision":
            self.console.print(f"         operator: [magenta]{event.detail.get('action')}[/]")
        elif event.kind == "step_finished":
            outcome = self.judge.outcome(step)
            mark = "[green]✓ success[/]" if outcome and outcome[0] else f"[red]✗ failed[/] {outcome[1] if outcome else ''}"
            by = _FINISHED_BY.get(str(event.detail.get("resolution")), str(event.detail.get("resolution")))
            self.console.print(f"         finished by {by}: {mark}")
        elif event.kind == "checkpoint":
            waiting = " (waiting for the operator to verify)" if event.detail.get("pending_verification") else ""
            self.console.print(f"         [blue]checkpoint saved[/]{waiting}")


def _summary(console: Console, result, judge, counters, elapsed: float, operator, dataset_dir: Path | None,
             control_rate_hz: float) -> None:
    outcomes = [judge.outcome(i) for i in range(len(judge.outcomes))]
    succeeded = sum(1 for o in outcomes if o and o[0])
    autonomous = sum(1 for ok in judge.autonomous.values() if ok)
    latencies = np.asarray(counters.latencies_ms, dtype=np.float64)
    table = Table(title="demo result", show_header=False)
    table.add_row("task", f"{result.status} ({result.next_step} steps)")
    table.add_row("steps judged successful", f"{succeeded}/{len(outcomes)}")
    table.add_row("steps finished by the policy alone", f"{autonomous}/{len(judge.autonomous)}")
    table.add_row("operator touches", str(operator.touches if operator else result.counters.get("escalations", 0)))
    if latencies.size:
        table.add_row("chunk latency (plan: infer K samples + verdict)",
                      f"median {np.median(latencies):.1f} ms, p99 {np.percentile(latencies, 99):.1f} ms")
    policy_seconds = counters.ticks / control_rate_hz
    table.add_row("action rate under the policy",
                  f"{counters.actions_sent / max(policy_seconds, 1e-9):.1f} Hz of {control_rate_hz:g} Hz "
                  f"({counters.actions_sent} actions in {counters.ticks} control ticks; the rest held)")
    table.add_row("wall time", f"{elapsed:.1f} s")
    table.add_row("chunks accepted / rejected", f"{counters.chunks_accepted} / {counters.chunks_rejected}")
    table.add_row("late actions dropped", str(counters.late_dropped))
    if dataset_dir is not None:
        table.add_row("dataset (LeRobot layout)", str(dataset_dir / "dataset"))
    console.print(table)
