"""Stream soak: a real daemon process → fault proxy → controller, with faults injected on a schedule.

Also the two peer processes the fault tests kill and freeze::

    python -m hil.soak daemon --settings JSON --rate-hz 50 --ledger out.json
    python -m hil.soak controller --settings JSON --rate-hz 50

The soak asserts it observed the expected number of control cycles and that every command the daemon sent
is accounted for: executed, rejected (late, out of order, duplicate, stale...), superseded by a newer one,
dropped by the proxy, or overtaken in the controller's one-slot receive buffer.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hil.fault_proxy import FaultProxy, Faults
from vla_edge.config import StreamSettings
from vla_edge.controller import ActionLimits, ControllerClient, Setpoint
from vla_edge.stream import ActionStream
from vla_edge.wire import DECODE_REASONS

ACTION_DIM = 4
LIMITS = ActionLimits(low=[0.0, 0.0, 0.0, 0.0], high=[1.0, 1.0, 1.0, 1.0], max_delta=[0.05, 0.05, 1.0, 1.0])
START = np.array([0.5, 0.5, 0.0, 0.0])


# ---- the daemon peer: a real process sending a smooth trajectory, planned from what was actually actuated ----


def target_at(t_s: float) -> np.ndarray:
    return np.array([0.5 + 0.3 * math.sin(2 * math.pi * t_s / 4.0), 0.5 + 0.3 * math.cos(2 * math.pi * t_s / 4.0),
                     0.0, 0.0])


def run_daemon(settings: StreamSettings, rate_hz: float, ledger: Path | None, keys_dir: Path | None) -> int:
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    period_ns = int(1e9 / rate_hz)
    step = 0.25 * np.asarray(LIMITS.max_delta)  # several lost commands in a row still stay within max_delta
    sent: list[tuple[int, int, int]] = []
    with ActionStream(settings, ACTION_DIM, keys_dir=keys_dir) as stream:
        while not stop.is_set() and not stream.wait_for_controller(0.1):
            pass
        print("daemon: controller ready", flush=True)
        t0 = time.monotonic_ns()
        next_tick = t0
        last = START.copy()
        while not stop.is_set():
            now = time.monotonic_ns()
            state = stream.latest_state()
            base = np.asarray(state.actual) if state is not None else last
            goal = target_at((now - t0) / 1e9)
            values = base + np.clip(goal - base, -step, step)
            seq = stream.send_action(values, now)
            if seq >= 0:
                sent.append((seq, now, now + int(settings.command_ttl_ms * 1e6)))
                last = values
            # After a freeze (SIGSTOP) resume from now instead of bursting to catch up.
            next_tick = max(next_tick + period_ns, time.monotonic_ns())
            stop.wait(max(0.0, (next_tick - time.monotonic_ns()) / 1e9))
        if ledger is not None:
            ledger.write_text(json.dumps({"sent": sent, "counters": stream.counters()}))
    return 0


def run_controller(settings: StreamSettings, rate_hz: float, keys_dir: Path | None,
                   ledger: Path | None = None) -> int:
    """The controller peer. With ``ledger``: at exit, writes when each command was actuated (this process's
    monotonic clock), its counters and its clock-offset estimate, so a test can check actuations against the
    deadlines in the daemon peer's ledger (both namespaces of `hil.netns` share one monotonic clock)."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    period_ns = int(1e9 / rate_hz)
    executed: list[tuple[int, int]] = []
    with ControllerClient(settings, LIMITS, START, keys_dir=keys_dir) as client:
        next_tick = time.monotonic_ns()
        while not stop.is_set():
            setpoint = client.next_setpoint()
            if not setpoint.holding:
                executed.append((setpoint.seq, time.monotonic_ns()))
            client.report(setpoint.values)  # a perfect motor: actual == setpoint
            next_tick += period_ns
            stop.wait(max(0.0, (next_tick - time.monotonic_ns()) / 1e9))
        if ledger is not None:
            ledger.write_text(json.dumps({
                "executed": executed, "counters": client.counters(), "offset_ns": client.clock.offset_ns,
                "round_trip_ns": client.clock.round_trip_ns,
            }))
    return 0


def spawn_peer(role: str, settings: StreamSettings, rate_hz: float, *, ledger: Path | None = None,
               keys_dir: Path | None = None) -> subprocess.Popen:
    """Start a daemon or controller peer as a separate Python process (so it can be SIGKILLed/SIGSTOPped)."""
    command = [sys.executable, "-m", "hil.soak", role, "--settings", settings.model_dump_json(),
               "--rate-hz", str(rate_hz)]
    if ledger is not None:
        command += ["--ledger", str(ledger)]
    if keys_dir is not None:
        command += ["--keys-dir", str(keys_dir)]
    root = Path(__file__).resolve().parent.parent
    return subprocess.Popen(command, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


# ---- the controller side of the soak: a tick loop recording every decision ----


class ControlLoop:
    """Ticks a ControllerClient at a fixed rate in a thread; records setpoints with their scheduled time."""

    def __init__(self, client: ControllerClient, rate_hz: float) -> None:
        self.client = client
        self.period_ns = int(1e9 / rate_hz)
        self.ticks: list[tuple[int, int, Setpoint]] = []  # (scheduled, actual decision time, setpoint)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="soak-control", daemon=True)

    def _run(self) -> None:
        scheduled = time.monotonic_ns()
        while not self._stop.is_set():
            now = time.monotonic_ns()
            setpoint = self.client.next_setpoint(now)
            self.client.report(setpoint.values)
            self.ticks.append((scheduled, now, setpoint))
            scheduled += self.period_ns
            self._stop.wait(max(0.0, (scheduled - time.monotonic_ns()) / 1e9))

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2.0)


# ---- the soak ----

PHASES: list[tuple[str, Faults]] = [
    ("clean", Faults()),
    ("delay 0-500 ms", Faults(delay=0.5, delay_max_ms=500.0)),
    ("drop 30 %", Faults(drop=0.3)),
    ("reorder 30 %", Faults(reorder=0.3)),
    ("duplicate 30 %", Faults(duplicate=0.3)),
    ("garbage frames", Faults()),
    ("daemon frozen (SIGSTOP)", Faults()),
    ("all at once", Faults(drop=0.1, delay=0.2, delay_max_ms=500.0, reorder=0.1, duplicate=0.1)),
]


@dataclass
class SoakReport:
    duration_s: float
    rate_hz: float
    ticks: int
    expected_ticks: int
    sent: int
    accounted: Counter[str]
    unaccounted: list[int]
    late_actuations: int
    out_of_order_actuations: int
    freezes: int
    stale_hold_episodes: int
    max_stale_hold_delay_ms: float
    stale_hold_tick_lateness_ms: float  # of that longest episode's holding tick: scheduling, not the protocol
    garbage_injected: int
    garbage_rejected: int
    phases: dict[str, Counter[str]] = field(default_factory=dict)

    def problems(self) -> list[str]:
        found = []
        if abs(self.ticks - self.expected_ticks) > max(3, 0.03 * self.expected_ticks):
            found.append(f"observed {self.ticks} control cycles, expected {self.expected_ticks} (±3 %)")
        if self.unaccounted:
            found.append(f"{len(self.unaccounted)} commands unaccounted for: {self.unaccounted[:10]}")
        if self.late_actuations or self.out_of_order_actuations:
            found.append(f"{self.late_actuations} late, {self.out_of_order_actuations} out-of-order actuations")
        if self.stale_hold_episodes < self.freezes:
            found.append(f"{self.freezes} daemon freezes but only {self.stale_hold_episodes} stale holds")
        if self.garbage_injected and not self.garbage_rejected:
            found.append("garbage was injected but nothing was rejected")
        if self.accounted["executed"] == 0:
            found.append("nothing was executed")
        return found


def _free_endpoint() -> str:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{sock.getsockname()[1]}"


GARBAGE = [b"", b"\xc1", b"\x93\x01\x02\x03", b"\x81\xa1v\x02", b"\xdd\xff\xff\xff\xff", b"\x91" * 5000,
           b'\x82\xa1v\x01\xa4kind\xa5hello', os.urandom(64)]


def run_soak(duration_s: float = 60.0, rate_hz: float = 50.0, *, segment_s: float = 4.0, seed: int = 0,
             freeze_s: float = 0.8, log=print) -> SoakReport:
    daemon_settings = StreamSettings(
        command_endpoint=_free_endpoint(), state_endpoint=_free_endpoint(), curve=False,
        heartbeat_ms=50.0, stale_after_ms=200.0, command_ttl_ms=100.0,
    )
    controller_settings = daemon_settings.model_copy(update={"command_endpoint": _free_endpoint()})
    outcomes: dict[int, list[str]] = {}
    outcome_lock = threading.Lock()

    def record(seq: int, outcome: str) -> None:
        with outcome_lock:
            outcomes.setdefault(seq, []).append(outcome)

    phase_of_seq: dict[int, str] = {}
    freezes = 0
    freeze_times: list[int] = []
    garbage_injected = 0
    with tempfile.TemporaryDirectory() as tmp:
        ledger = Path(tmp) / "ledger.json"
        proxy = FaultProxy(daemon_settings.command_endpoint, controller_settings.command_endpoint, Faults(),
                           seed=seed)
        proxy.start()
        client = ControllerClient(controller_settings, LIMITS, START, on_outcome=record)
        client.start()
        daemon = spawn_peer("daemon", daemon_settings, rate_hz, ledger=ledger)
        loop = ControlLoop(client, rate_hz)
        try:
            deadline = time.monotonic() + 20
            while not client.ready() and time.monotonic() < deadline:
                time.sleep(0.01)
            if not client.ready():
                raise RuntimeError("the daemon process never completed the handshake")
            loop.start()
            t_start = time.monotonic_ns()
            end = t_start + int(duration_s * 1e9)
            segment = 0
            while time.monotonic_ns() < end:
                name, faults = PHASES[segment % len(PHASES)]
                proxy.set_faults(faults)
                seg_end = min(end, time.monotonic_ns() + int(segment_s * 1e9))
                phase_start_seq = max(proxy.ledger, default=-1) + 1
                if name.startswith("daemon frozen"):
                    time.sleep(0.5)
                    os.kill(daemon.pid, signal.SIGSTOP)
                    freeze_times.append(time.monotonic_ns())
                    freezes += 1
                    time.sleep(freeze_s)
                    os.kill(daemon.pid, signal.SIGCONT)
                while time.monotonic_ns() < seg_end:
                    if name == "garbage frames":
                        proxy.inject(GARBAGE[garbage_injected % len(GARBAGE)])
                        garbage_injected += 1
                        time.sleep(0.1)
                    else:
                        time.sleep(0.02)
                for seq in range(phase_start_seq, max(proxy.ledger, default=-1) + 1):
                    phase_of_seq[seq] = name
                segment += 1
            proxy.set_faults(Faults())
            t_stop_daemon = time.monotonic_ns()
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(timeout=10)
            # Let the last commands land and be decided: a command the proxy is still delaying arrives up to the
            # largest injected delay later (the former fixed 0.5 s equalled that delay and lost one, rarely).
            max_delay_ms = max(f.delay_max_ms for _, f in PHASES)
            time.sleep(max_delay_ms / 1000.0 + 0.5)
            loop.stop()
            t_stop = time.monotonic_ns()
        finally:
            if daemon.poll() is None:
                daemon.kill()
                daemon.wait()
            loop.stop()
            client.close()
            proxy.close()
        sent_log = json.loads(ledger.read_text())["sent"]

    sent = {seq: (due, deadline) for seq, due, deadline in sent_log}
    counters = client.counters()
    executed = [(now, sp) for _, now, sp in loop.ticks if not sp.holding]
    late = sum(1 for now, sp in executed if not sent[sp.seq][0] <= now <= sent[sp.seq][1])
    seqs = [sp.seq for _, sp in executed]
    out_of_order = sum(1 for a, b in zip(seqs, seqs[1:]) if b <= a)
    accounted: Counter[str] = Counter()
    per_phase: dict[str, Counter[str]] = {}
    unaccounted = []
    highest_seen = max(outcomes, default=-1)
    shutdown_window_start = t_stop_daemon - int(max_delay_ms * 1e6) - 2 * int(1e9 / rate_hz)
    for seq in sent:
        seen = outcomes.get(seq, [])
        fate = proxy.ledger.get(seq, [])
        if "executed" in seen:
            category = "executed"
        elif seen:
            category = seen[0]
        elif "dropped" in fate:
            category = "dropped by proxy"
        elif fate and seq < highest_seen:
            # forwarded, never read, and a newer one was: replaced in the conflating one-slot socket buffer
            category = "overtaken in receive buffer"
        elif sent[seq][0] >= shutdown_window_start:
            # Sent just before the daemon stopped and never decided: either still in its socket when it closed
            # (LINGER 0 on purpose: a stopping daemon never flushes stale commands) or, held by the proxy's
            # delay, replaced in the controller's one-slot conflating buffer by the daemon's final Hold, which
            # carries no sequence number for the check above to see.
            category = "at daemon shutdown"
        else:
            category = "unaccounted"
            unaccounted.append(seq)
        accounted[category] += 1
        per_phase.setdefault(phase_of_seq.get(seq, "end"), Counter())[category] += 1

    # Stale holds: one episode per run of consecutive "stale" ticks; delay from freeze to the first one.
    stale_starts = [now for i, (_, now, sp) in enumerate(loop.ticks)
                    if sp.reason == "stale" and (i == 0 or loop.ticks[i - 1][2].reason != "stale")]
    delays = []
    latenesses = []  # how late the controller's own tick that held ran (a loaded machine), per episode
    scheduled_at = {now: scheduled for scheduled, now, _ in loop.ticks}
    for t_freeze in freeze_times:
        after = [t for t in stale_starts if t >= t_freeze]
        if after:
            delays.append((after[0] - t_freeze) / 1e6)
            latenesses.append((after[0] - scheduled_at[after[0]]) / 1e6)
    measured_s = (t_stop - t_start) / 1e9
    return SoakReport(
        duration_s=measured_s, rate_hz=rate_hz, ticks=len(loop.ticks), expected_ticks=round(measured_s * rate_hz),
        sent=len(sent), accounted=accounted, unaccounted=unaccounted, late_actuations=late,
        out_of_order_actuations=out_of_order, freezes=freezes,
        stale_hold_episodes=sum(1 for t in stale_starts if any(t >= f for f in freeze_times)),
        max_stale_hold_delay_ms=max(delays, default=float("nan")),
        stale_hold_tick_lateness_ms=latenesses[delays.index(max(delays))] if delays else float("nan"),
        garbage_injected=garbage_injected,
        garbage_rejected=sum(v for k, v in counters.items() if k.removeprefix("rejected_") in DECODE_REASONS),
        phases=per_phase,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hil.soak", description=__doc__.splitlines()[0])
    parser.add_argument("role", choices=["daemon", "controller", "soak"])
    parser.add_argument("--settings", help="StreamSettings as JSON (peers)")
    parser.add_argument("--rate-hz", type=float, default=50.0)
    parser.add_argument("--ledger", type=Path)
    parser.add_argument("--keys-dir", type=Path)
    parser.add_argument("--duration-s", type=float, default=60.0)
    args = parser.parse_args(argv)
    if args.role == "soak":
        report = run_soak(args.duration_s, args.rate_hz)
        print(report)
        return 1 if report.problems() else 0
    settings = StreamSettings.model_validate_json(args.settings)
    if args.role == "daemon":
        return run_daemon(settings, args.rate_hz, args.ledger, args.keys_dir)
    return run_controller(settings, args.rate_hz, args.keys_dir, args.ledger)


if __name__ == "__main__":
    sys.exit(main())
