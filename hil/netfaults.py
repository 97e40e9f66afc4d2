"""Network-fault cases between two network namespaces (`hil.netns`), measured with real processes.

Each case starts the daemon side in one namespace and the robot side in the other, joined by a veth pair whose
faults the kernel injects, and returns its figures. `python -m hil.faults` prints them; `tests/stream/
test_stream_netns.py` asserts them. Both namespaces share the host's monotonic clock, so a command's actuation
time on the robot side is compared with its deadline on the daemon side directly: ground truth that neither
side's clock estimate enters.
"""

from __future__ import annotations

import dataclasses
import json
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from hil.netns import DATA_IP, LinkFault, NetLink, wait_for_line
from vla_edge.config import StreamSettings
from vla_edge.keys import generate_keys

RATE_HZ = 50.0


def stream_settings(keys_dir: Path, **changes: object) -> StreamSettings:
    """The daemon's defaults (heartbeat 100 ms, stale after 300 ms, TTL 150 ms), CURVE on, on the data link."""
    base: dict[str, object] = dict(
        command_endpoint=f"tcp://{DATA_IP['daemon']}:5571", state_endpoint=f"tcp://{DATA_IP['daemon']}:5572",
        curve=True, keys_dir=keys_dir,
    )
    base.update(changes)
    return StreamSettings(**base)


@dataclass(frozen=True)
class DeadlineFigures:
    """What the robot side actuated under a fault, against the daemon side's deadlines (one shared clock)."""

    fault: str
    sent: int
    executed: int
    late: int  # actuated after the command's deadline
    early: int  # actuated before the command's due time
    worst_late_ms: float
    rejected_late: int
    offset_error_ms: float  # the controller's clock-offset estimate minus the truth (0: one clock)
    round_trip_ms: float

    def row(self) -> tuple[str, str, str]:
        return (f"netns: {self.fault}, daemon → controller",
                "no command actuated after its deadline" if not self.late else "ACTUATED LATE",
                f"{self.late} of {self.executed} executed late (worst {self.worst_late_ms:.0f} ms), "
                f"{self.rejected_late} rejected late, of {self.sent} sent; offset estimate off by "
                f"{self.offset_error_ms:+.0f} ms, round trip {self.round_trip_ms:.0f} ms")


def deadline_case(fault: LinkFault, *, duration_s: float = 4.0, ttl_ms: float = 150.0,
                  back: LinkFault | None = None) -> DeadlineFigures:
    """The soak's daemon peer (a smooth trajectory at 50 Hz) in one namespace, its controller peer in the other,
    ``fault`` on the daemon → controller direction (and ``back`` on the other). Counts actuations after their
    deadline or before their due time, judged on the one clock both namespaces share."""
    with tempfile.TemporaryDirectory() as tmp, NetLink() as link:
        keys = Path(tmp) / "keys"
        generate_keys(keys)
        settings = stream_settings(keys, command_ttl_ms=ttl_ms)
        link.set_fault("to_robot", fault)
        if back is not None:
            link.set_fault("to_daemon", back)
        daemon_ledger, controller_ledger = Path(tmp) / "daemon.json", Path(tmp) / "controller.json"
        peer = [sys.executable, "-m", "hil.soak"]
        common = ["--settings", settings.model_dump_json(), "--rate-hz", str(RATE_HZ), "--keys-dir", str(keys)]
        daemon = link.popen("daemon", [*peer, "daemon", *common, "--ledger", str(daemon_ledger)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        controller = link.popen("robot", [*peer, "controller", *common, "--ledger", str(controller_ledger)],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            wait_for_line(daemon, "daemon: controller ready", 60.0)
            time.sleep(duration_s)  # the measurement window: the peers run on their own clocks meanwhile
        finally:
            for proc in (daemon, controller):
                _terminate(proc)
        sent = {seq: (due, deadline) for seq, due, deadline in json.loads(daemon_ledger.read_text())["sent"]}
        ctl = json.loads(controller_ledger.read_text())
    executed = [(seq, t) for seq, t in ctl["executed"] if seq in sent]
    lateness = [(t - sent[seq][1]) / 1e6 for seq, t in executed]
    return DeadlineFigures(
        fault=fault.describe() + (f" (back: {back.describe()})" if back else ""),
        sent=len(sent), executed=len(executed), late=sum(1 for x in lateness if x > 0),
        early=sum(1 for seq, t in executed if t < sent[seq][0]),
        worst_late_ms=max(lateness, default=0.0), rejected_late=int(ctl["counters"].get("rejected_late", 0)),
        offset_error_ms=ctl["offset_ns"] / 1e6, round_trip_ms=ctl["round_trip_ns"] / 1e6,
    )


def _terminate(proc: subprocess.Popen, timeout_s: float = 10.0) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=timeout_s)
    if proc.stdout is not None:
        proc.stdout.close()


# ---- the whole daemon across the link: the policy, the task runner and a simulated operator ----

SIM_FRAMES_PORT, SIM_CHANNEL_PORT = 5570, 5573


@dataclass
class TaskRun:
    """What one daemon run across the faulty link did, from its event lines (times on the shared clock)."""

    finished: bool  # the task ended (completed) within the time limit
    status: str
    elapsed_s: float
    steps: int
    autonomous: int  # steps the policy finished alone, judged successful
    successful: int
    takeovers: int
    stalled_takeovers: int
    over_velocity: int  # commands the controller refused as over-velocity (its own counter)
    rejected: dict[str, int]
    events: list[dict]
    chunk_times: list[int]
    done_times: list[int]  # when a step was reported done by the policy or the operator
    link_rtt_ms: float | None
    # Every plan-ahead wait (vla_edge.executor.PlanAheadWait as a dict) with ``report_received_ns``: when the
    # stream received the controller's report of that command, if before the plan-ahead went on (else None).
    plan_ahead_waits: list[dict]

    def plan_ahead_violations(self) -> list[dict]:
        """Plan-ahead waits that let the scheduler plan from a frame that cannot show the action just sent while
        there was still time to wait for it: before the budget's end, either no report had arrived (by the stream's
        own record) or the frame was captured before the report's arrival minus half the round trip and 5 ms."""
        bad = []
        for w in self.plan_ahead_waits:
            if w["planned_ns"] >= w["budget_end_ns"]:
                continue  # waited as long as the next tick allowed
            received, frame = w["report_received_ns"], w["frame_capture_ns"]
            if (received is None or frame is None
                    or frame < received - w["round_trip_ns"] // 2 - 5_000_000):
                bad.append(w)
        return bad


def run_daemon_side(keys: Path, seed: int, steps: int, state_dir: Path, force_takeover: bool,
                    overrides_json: str) -> int:
    """Inside the daemon's namespace: the daemon on the reference bundle, its task, a simulated operator, the judge.
    Prints ``event {json}`` lines as things happen and one ``result {json}`` line at the end."""
    import threading

    from hil.harness import SimulatedOperator, StepJudge
    from hil.netns import CONTROL_IP
    from hil.sim_robot import SimChannel
    from vla_edge.config import load_settings
    from vla_edge.executor import PlanAheadWait
    from vla_edge.paths import REFERENCE_BUNDLE_DIR
    from vla_edge.service import Daemon
    from vla_edge.task import TaskSpec

    overrides: dict[str, dict] = {
        "camera": {"source": "sim", "sim_endpoint": f"tcp://{DATA_IP['robot']}:{SIM_FRAMES_PORT}"},
        "stream": {"command_endpoint": f"tcp://{DATA_IP['daemon']}:5571",
                   "state_endpoint": f"tcp://{DATA_IP['daemon']}:5572", "curve": True, "keys_dir": str(keys)},
        "task": {"state_dir": str(state_dir), "verify_at_checkpoint": False},
        "recorder": {"enabled": False}, "operator": {"enabled": False}, "telemetry": {"metrics_port": 0},
        "policy": {"bundle": str(REFERENCE_BUNDLE_DIR), "precision": "int8"},
    }
    if force_takeover:
        # Every chunk fails the verdict: each step escalates at once and the operator takes it over.
        thresholds = state_dir.parent / "refuse-all.json"
        thresholds.write_text(json.dumps({"thresholds": {"ood": -1.0}}))
        overrides["confidence"] = {"thresholds_file": str(thresholds)}
    for section, values in json.loads(overrides_json).items():
        overrides.setdefault(section, {}).update(values)
    settings = load_settings(None, **overrides)
    t0 = time.monotonic_ns()

    def emit(kind: str, **detail: object) -> None:
        print("event " + json.dumps({"t": time.monotonic_ns(), "kind": kind, **detail}, default=str), flush=True)

    daemon = Daemon(settings)
    sim = None
    try:
        daemon.start()
        if not daemon.wait_for_controller(60.0) or not daemon.wait_for_camera(30.0):
            print("result " + json.dumps({"error": "no controller or camera across the link"}), flush=True)
            return 1
        sim = SimChannel(f"tcp://{CONTROL_IP['robot']}:{SIM_CHANNEL_PORT}", timeout_s=30.0)
        instructions = sim.chain(steps, seed)
        daemon.ready()

        class _Chunks:
            """Emits accepted chunks, and ``done_soon`` when the timeline's action with the done flag is 1-3 ticks
            away (what `BlackholeAtDone` waits for)."""

            done_ticks: list[int] = []
            told = False

            def on_tick(self, decision: object, *args: object) -> None:
                tick = decision.tick  # type: ignore[attr-defined]
                if not self.told and any(tick < t <= tick + 3 for t in self.done_ticks):
                    self.told = True
                    emit("done_soon", tick=tick)

            def on_chunk(self, planned: object) -> None:
                chunk = planned.chunk  # type: ignore[attr-defined]
                passed = bool(planned.verdict.passed)  # type: ignore[attr-defined]
                start = planned.request.start_tick  # type: ignore[attr-defined]
                if passed:
                    self.done_ticks = [start + i for i in range(chunk.shape[0]) if chunk[i, 3] > 0.5]
                emit("chunk", passed=passed)

            def on_step_end(self, report: object, instruction: str) -> None:
                self.done_ticks, self.told = [], False

            def on_plan_ahead(self, wait: PlanAheadWait) -> None:
                # The executor's account of the wait, next to the stream's own record of when the controller's
                # report of that command arrived (None: not arrived when the plan-ahead went on).
                received = next((a.t_received_ns for a in stream.applied_since(wait.seq) if a.seq == wait.seq), None)
                if received is not None and received > wait.planned_ns:
                    received = None
                waits.append({**dataclasses.asdict(wait), "report_received_ns": received})

        assert daemon.executor is not None and daemon.stream is not None
        stream = daemon.stream
        waits: list[dict] = []
        daemon.executor.observers.append(_Chunks())
        judge = StepJudge(sim)
        operator = SimulatedOperator(daemon.escalations, daemon.teleop, sim, judge, instructions, 0.1).start()

        def on_event(event: object) -> None:
            judge.on_event(event)
            detail = {k: v for k, v in event.detail.items() if isinstance(v, (str, int, float, bool))}
            emit(event.kind, step=event.step_index, **detail)

        try:
            emit("task_begin")
            result = daemon.run_task(TaskSpec(f"netns-{seed}", tuple(instructions)), threading.Event(),
                                     events=on_event)
        finally:
            operator.stop()
        state = daemon.stream.latest_state()
        rtt = daemon.stream.link_round_trip_ns() if hasattr(daemon.stream, "link_round_trip_ns") else None
        print("result " + json.dumps({
            "status": result.status, "elapsed_s": (time.monotonic_ns() - t0) / 1e9, "steps": len(instructions),
            "autonomous": sum(1 for s, ok in judge.autonomous.items() if ok and judge.outcomes.get(s, (False,))[0]),
            "successful": sum(1 for ok, _ in judge.outcomes.values() if ok),
            "controller_counters": dict(state.counters) if state is not None else {},
            "link_rtt_ms": None if rtt is None else rtt / 1e6,
            "plan_ahead_waits": waits,
        }), flush=True)
        return 0
    finally:
        if sim is not None:
            sim.close()
        daemon.close()


def task_case(seed: int, steps: int, *, faults: object = None, force_takeover: bool = False,
              time_limit_s: float = 120.0, overrides: dict | None = None) -> TaskRun:
    """The simulated robot (world, controller client, camera) in the robot namespace, the daemon with a task and a
    simulated operator in the daemon namespace. ``faults(link, event)`` is called with every event line (and
    ``None`` every 50 ms) and may change the link's faults. A run still going at ``time_limit_s`` is stopped and
    counts as not finished."""
    import selectors

    with tempfile.TemporaryDirectory() as tmp, NetLink() as link:
        from hil.netns import CONTROL_IP

        keys = Path(tmp) / "keys"
        generate_keys(keys)
        robot = link.popen("robot", [
            sys.executable, "-m", "hil.sim_robot", "--seed", str(seed), "--keys-dir", str(keys),
            "--frames", f"tcp://{DATA_IP['robot']}:{SIM_FRAMES_PORT}",
            "--sim", f"tcp://{CONTROL_IP['robot']}:{SIM_CHANNEL_PORT}",
            "--commands", f"tcp://{DATA_IP['daemon']}:5571", "--state", f"tcp://{DATA_IP['daemon']}:5572",
        ], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        daemon = link.popen("daemon", [
            sys.executable, "-m", "hil.netfaults", "daemon-side", "--keys", str(keys), "--seed", str(seed),
            "--steps", str(steps), "--state-dir", str(Path(tmp) / "state"),
            "--overrides", json.dumps(overrides or {}), *(["--force-takeover"] if force_takeover else []),
        ], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        events: list[dict] = []
        result: dict = {}
        started = time.monotonic()
        try:
            assert daemon.stdout is not None
            with selectors.DefaultSelector() as sel:
                sel.register(daemon.stdout, selectors.EVENT_READ)
                while time.monotonic() - started < time_limit_s:
                    if sel.select(timeout=0.05):
                        line = daemon.stdout.readline()
                        if not line:
                            break
                        if line.startswith("event "):
                            event = json.loads(line[6:])
                            events.append(event)
                            if faults is not None:
                                faults(link, event)
                        elif line.startswith("result "):
                            result = json.loads(line[7:])
                            break
                    elif faults is not None:
                        faults(link, None)
        finally:
            link.clear()
            _terminate(daemon, 20.0)
            _terminate(robot)
    counters = result.get("controller_counters", {})
    return TaskRun(
        finished=result.get("status") == "completed", status=str(result.get("status", "did not finish")),
        elapsed_s=float(result.get("elapsed_s", time.monotonic() - started)), steps=steps,
        autonomous=int(result.get("autonomous", 0)), successful=int(result.get("successful", 0)),
        takeovers=sum(1 for e in events if e["kind"] == "decision" and e.get("action") == "takeover"),
        stalled_takeovers=sum(1 for e in events if e["kind"] == "step_report" and e.get("outcome") == "stalled"
                              and "take-over" in str(e.get("reason", ""))),
        over_velocity=int(counters.get("rejected_over_velocity", 0)),
        rejected={k: v for k, v in counters.items() if k.startswith("rejected_")},
        events=events, chunk_times=[e["t"] for e in events if e["kind"] == "chunk"],
        done_times=[e["t"] for e in events if e["kind"] == "step_finished"],
        link_rtt_ms=result.get("link_rtt_ms"), plan_ahead_waits=list(result.get("plan_ahead_waits", [])),
    )


class Schedule:
    """Fault schedules for `task_case`, on the shared monotonic clock; ``windows`` records when each fault held."""

    def __init__(self) -> None:
        self.windows: list[tuple[int, int]] = []
        self._start: int | None = None

    def _begin(self, link: NetLink, faults: dict[str, LinkFault]) -> None:
        for direction, fault in faults.items():
            link.set_fault(direction, fault)  # type: ignore[arg-type]
        self._start = time.monotonic_ns()

    def _end(self, link: NetLink) -> None:
        link.clear()
        assert self._start is not None
        self.windows.append((self._start, time.monotonic_ns()))
        self._start = None

    def during(self, windows: list[tuple[int, int]], times: list[int], after_start_ns: int = 0) -> int:
        """How many of ``times`` fall inside a fault window, ignoring its first ``after_start_ns``."""
        return sum(1 for t in times for a, b in windows if a + after_start_ns <= t <= b)


class TakeoverBlackhole(Schedule):
    """``blackhole_s`` of total loss (both directions) ``after_s`` into the first take-over."""

    def __init__(self, after_s: float = 1.0, blackhole_s: float = 5.0) -> None:
        super().__init__()
        self.after_ns, self.length_ns = int(after_s * 1e9), int(blackhole_s * 1e9)
        self._takeover: int | None = None

    def __call__(self, link: NetLink, event: dict | None) -> None:
        now = time.monotonic_ns()
        if self._takeover is None:
            if event is not None and event["kind"] == "decision" and event.get("action") == "takeover":
                self._takeover = now
            return
        if not self.windows and self._start is None and now >= self._takeover + self.after_ns:
            self._begin(link, {"to_robot": LinkFault(blackhole=True), "to_daemon": LinkFault(blackhole=True)})
        elif self._start is not None and now >= self._start + self.length_ns:
            self._end(link)


class Periodic(Schedule):
    """From the task's start on: ``fault`` on for ``on_s``, off for ``off_s``, repeated."""

    def __init__(self, faults: dict[str, LinkFault], on_s: float, off_s: float, first_after_s: float = 1.0,
                 always: bool = False) -> None:
        super().__init__()
        self.faults, self.on_ns, self.off_ns = faults, int(on_s * 1e9), int(off_s * 1e9)
        self.first_ns = int(first_after_s * 1e9)
        self.always = always
        self._t0: int | None = None
        self._next: int | None = None

    def __call__(self, link: NetLink, event: dict | None) -> None:
        now = time.monotonic_ns()
        if self._t0 is None:
            if event is not None and event["kind"] == "task_begin":
                self._t0 = now
                self._next = now + (0 if self.always else self.first_ns)
            return
        assert self._next is not None
        if self._start is None and now >= self._next:
            self._begin(link, self.faults)
            self._next = None if self.always else now + self.on_ns + self.off_ns
        elif self._start is not None and not self.always and now >= self._start + self.on_ns:
            self._end(link)
        if self._next is None and self.always:
            self._next = 2**62


class BlackholeAtDone(Schedule):
    """Once per step: when the action that ends the step (the done flag) is 1-3 ticks away in the timeline, the link
    goes black (``faults``) for ``blackhole_s``, so the step's final actions are sent into the gap."""

    def __init__(self, faults: dict[str, LinkFault], blackhole_s: float = 1.5) -> None:
        super().__init__()
        self.faults, self.length_ns = faults, int(blackhole_s * 1e9)
        self._step: int | None = None
        self._hit: set[int] = set()

    def __call__(self, link: NetLink, event: dict | None) -> None:
        now = time.monotonic_ns()
        if event is not None and event["kind"] == "step_started":
            self._step = event.get("step")
        if (self._start is None and event is not None and event["kind"] == "done_soon"
                and self._step is not None and self._step not in self._hit):
            self._hit.add(self._step)
            self._begin(link, self.faults)
        elif self._start is not None and now >= self._start + self.length_ns:
            self._end(link)


def takeover_blackhole(seed: int = 1, steps: int = 2, time_limit_s: float = 90.0) -> tuple[TaskRun, Schedule]:
    """Item 7b: every step is taken over by the (simulated) operator; 1 s into the first take-over the link goes
    black for 5 s. The take-over must resume from the measured position and the task finish."""
    schedule = TakeoverBlackhole()
    run = task_case(seed, steps, faults=schedule, force_takeover=True, time_limit_s=time_limit_s)
    return run, schedule


def blackhole_during_steps(seed: int = 1, steps: int = 4, time_limit_s: float = 120.0,
                           both_ways: bool = False) -> tuple[TaskRun, Schedule, int, int]:
    """Item 7c: the daemon → controller direction (or both) goes black for 1.5 s when the policy's action that
    ends a step is 1-3 ticks away (once per step), so the step's final actions go into the gap. Returns the run, the schedule, and the violations: steps reported done while the controller could not be
    actuating anything (from 20 ms into a blackhole), and chunks accepted after the daemon must know the
    controller is lost (from ``stale_after_ms`` + 2 ticks into a blackhole)."""
    faults = {"to_robot": LinkFault(blackhole=True)}
    if both_ways:
        faults["to_daemon"] = LinkFault(blackhole=True)
    schedule = BlackholeAtDone(faults)
    run = task_case(seed, steps, faults=schedule, time_limit_s=time_limit_s)
    done_during = schedule.during(schedule.windows, run.done_times, after_start_ns=20_000_000)
    chunks_during = schedule.during(schedule.windows, run.chunk_times, after_start_ns=int((300 + 200) * 1e6))
    return run, schedule, done_during, chunks_during


def delayed_link(seed: int, delay_ms: float, steps: int = 10, time_limit_s: float = 150.0) -> TaskRun:
    """Item 7d: ``delay_ms`` on the daemon → controller direction for the whole task; the policy's own steps."""
    faults = {"to_robot": LinkFault(delay_ms=delay_ms)} if delay_ms else {}
    schedule = Periodic(faults, on_s=0, off_s=0, always=True) if faults else None
    return task_case(seed, steps, faults=schedule, time_limit_s=time_limit_s)


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m hil.netfaults", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="role", required=True)
    side = sub.add_parser("daemon-side", help="(internal) the daemon side of task_case, inside its namespace")
    side.add_argument("--keys", type=Path, required=True)
    side.add_argument("--seed", type=int, default=0)
    side.add_argument("--steps", type=int, default=10)
    side.add_argument("--state-dir", type=Path, required=True)
    side.add_argument("--force-takeover", action="store_true")
    side.add_argument("--overrides", default="{}")
    args = parser.parse_args(argv)
    return run_daemon_side(args.keys, args.seed, args.steps, args.state_dir, args.force_takeover, args.overrides)


if __name__ == "__main__":
    sys.exit(main())
