"""Print the fault → outcome → figure table of the action stream, measured now on this machine.

    python -m hil.faults            # short soak (~50 s) plus the process, value, byte and key faults, and, as
                                    # root, the real network faults between two namespaces (~2 min more)
    python -m hil.faults --long     # 10-minute soak
    python -m hil.faults --no-netns # without the namespace cases

Every figure comes from real sockets and real processes in this run; nothing is hard-coded.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

from hil.soak import LIMITS, PHASES, START, ControlLoop, SoakReport, run_soak, spawn_peer
from vla_edge.config import StreamSettings
from vla_edge.controller import ControllerClient, check_action
from vla_edge.keys import generate_keys
from vla_edge.stream import ActionStream
from vla_edge.wire import Decoder, Heartbeat, encode

RATE_HZ = 50.0
Row = tuple[str, str, str]


def _endpoint() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{sock.getsockname()[1]}"


def _settings(**changes: object) -> StreamSettings:
    base = dict(command_endpoint=_endpoint(), state_endpoint=_endpoint(), curve=False, heartbeat_ms=50.0,
                stale_after_ms=200.0, command_ttl_ms=150.0)
    base.update(changes)
    return StreamSettings(**base)


def _until(predicate, timeout_s: float) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        if predicate():
            return time.monotonic() - start
        time.sleep(0.001)
    return float("inf")


def dead_daemon(fault: str) -> Row:
    settings = _settings()
    with ControllerClient(settings, LIMITS, START) as client:
        daemon = spawn_peer("daemon", settings, RATE_HZ)
        loop = ControlLoop(client, RATE_HZ)
        loop.start()
        try:
            _until(lambda: client.counters().get("executed", 0) >= 20, 20.0)
            t_fault = time.monotonic_ns()
            os.kill(daemon.pid, getattr(signal, fault))
            noticed = _until(lambda: not client.daemon_alive(), 2.0)
            _until(lambda: any(t >= t_fault and sp.reason == "stale" for _, t, sp in list(loop.ticks)), 2.0)
            held = next(t for _, t, sp in list(loop.ticks) if t >= t_fault and sp.reason == "stale")
        finally:
            loop.stop()
            os.kill(daemon.pid, signal.SIGCONT)
            daemon.kill()
            daemon.wait()
    bound = settings.stale_after_ms + 1000 / RATE_HZ
    return (f"daemon {fault}", "controller holds last position (stale)",
            f"hold after {(held - t_fault) / 1e6:.0f} ms (bound {bound:.0f}); dead noticed after "
            f"{noticed * 1e3:.0f} ms (3 heartbeats = {3 * settings.heartbeat_ms:.0f})")


def dead_controller(fault: str) -> Row:
    settings = _settings()
    with ActionStream(settings, action_dim=4) as stream:
        controller = spawn_peer("controller", settings, RATE_HZ)
        try:
            stream.wait_for_controller(20.0)
            _until(stream.controller_alive, 2.0)
            os.kill(controller.pid, getattr(signal, fault))
            noticed = _until(lambda: not stream.controller_alive(), 2.0)
        finally:
            os.kill(controller.pid, signal.SIGCONT)
            controller.kill()
            controller.wait()
    return (f"controller {fault}", "daemon sees controller dead",
            f"noticed after {noticed * 1e3:.0f} ms (3 heartbeats = {3 * settings.heartbeat_ms:.0f})")


def bad_values(n: int = 20_000) -> Row:
    rng = np.random.default_rng(0)
    passed = 0
    for _ in range(n):
        values = START + rng.normal(0, 0.02, 4)
        kind = rng.integers(4)
        if kind == 0:
            values[rng.integers(4)] = rng.choice([np.nan, np.inf, -np.inf])
        elif kind == 1:
            values[rng.integers(4)] = rng.choice([-0.5, 1.5, 1e300])
        elif kind == 2:
            values[0] = START[0] + rng.choice([-1, 1]) * rng.uniform(0.051, 0.2)
        else:
            values[1] = np.float64(rng.choice([np.nan, 2.0]))
        passed += check_action(values, START, LIMITS) is None
    return ("NaN / Inf / out-of-limit / over-velocity", "rejected, held, counted",
            f"{passed} of {n} bad actions passed the filter")


def bad_bytes(n: int = 20_000) -> Row:
    rng = np.random.default_rng(1)
    valid = encode(Heartbeat(session=1, instance=2, ready=True, t_sent_ns=3, echo_t_ns=4, echo_recv_ns=5))
    decoder = Decoder("controller")
    slowest = 0.0
    crashes = 0
    for i in range(n):
        if i % 2:
            frame = bytearray(valid)
            frame[rng.integers(len(frame))] = rng.integers(256)
            frame = bytes(frame)
        else:
            frame = bytes(rng.integers(0, 256, rng.integers(0, 4096), dtype=np.uint8))
        start = time.perf_counter()
        try:
            decoder(frame)
        except Exception:  # noqa: BLE001 - counting crashes is the point
            crashes += 1
        slowest = max(slowest, time.perf_counter() - start)
    rejected = sum(decoder.rejected.values())
    return ("random / mutated frames", "rejected and counted by reason",
            f"{n} frames: {crashes} crashes, {rejected} rejections counted, slowest decode {slowest * 1e3:.1f} ms")


def intruders(attempts: int = 4) -> Row:
    with tempfile.TemporaryDirectory() as tmp:
        keys = generate_keys(Path(tmp) / "keys").server_public.parent
        rogue = Path(tmp) / "rogue"
        generate_keys(rogue)
        shutil.copyfile(keys / "server.key", rogue / "server.key")
        settings = _settings(curve=True, keys_dir=keys)
        with ActionStream(settings, action_dim=4) as stream:
            clients = [ControllerClient(settings, LIMITS, START, keys_dir=rogue) for _ in range(attempts)]
            clients += [ControllerClient(settings.model_copy(update={"curve": False}), LIMITS, START)
                        for _ in range(attempts)]
            for client in clients:
                client.start()
            time.sleep(1.5)
            got_in = sum(1 for c in clients if c.ready() or c.counters().get("sessions", 0))
            got_in += int(stream.controller_ready())
            for client in clients:
                client.close()
            refusals = sum(v for k, v in stream.counters().items() if k.startswith("refused_"))
    refused = len(clients) - got_in
    return ("unknown CURVE key / NULL client", "refused at the handshake",
            f"{refused}/{len(clients)} refused ({100 * refused / len(clients):.0f} %), {refusals} handshakes failed")


def stalled_controller() -> Row:
    settings = _settings()
    with ActionStream(settings, action_dim=4) as stream:
        controller = spawn_peer("controller", settings, RATE_HZ)
        try:
            stream.wait_for_controller(20.0)
            _until(lambda: stream.latest_state() is not None, 2.0)
            time.sleep(0.2)
            before = stream.latest_state().counters.get("rx_action", 0)
            os.kill(controller.pid, signal.SIGSTOP)
            for _ in range(50):
                stream.send_action(START, time.monotonic_ns())
                time.sleep(0.002)
            os.kill(controller.pid, signal.SIGCONT)
            time.sleep(0.5)
            received = stream.latest_state().counters.get("rx_action", 0) - before
        finally:
            os.kill(controller.pid, signal.SIGCONT)
            controller.kill()
            controller.wait()
    return ("controller stalled (SIGSTOP), 50 commands queued", "only the newest survives in the socket (CONFLATE)",
            f"{received} received after SIGCONT (bound 2: the conflated slot + one still in the TCP buffer)")


def soak_rows(report: SoakReport) -> list[Row]:
    rows = []
    for name, _ in PHASES:
        counts = report.phases.get(name)
        if not counts:
            continue
        total = sum(counts.values())
        shown = ", ".join(f"{k} {v}" for k, v in counts.most_common())
        rows.append((f"soak: {name}", shown, f"{total - counts.get('unaccounted', 0)}/{total} accounted"))
    rows.append((
        "soak: all phases",
        f"{report.ticks} cycles observed (expected {report.expected_ticks})",
        f"late actuations {report.late_actuations}, out-of-order {report.out_of_order_actuations}, "
        f"unaccounted {len(report.unaccounted)}/{report.sent}, stale hold {report.max_stale_hold_delay_ms:.0f} ms "
        f"after freeze, garbage {report.garbage_rejected}/{report.garbage_injected} rejected",
    ))
    return rows


def netns_rows() -> list[Row]:
    """Issue 16 item 7: the daemon and the robot in two network namespaces, faults injected by the kernel."""
    from hil.netfaults import blackhole_during_steps, deadline_case, delayed_link, takeover_blackhole
    from hil.netns import LinkFault

    rows = [deadline_case(LinkFault(delay_ms=200.0)).row()]
    run, schedule = takeover_blackhole(seed=1, steps=2)
    rows.append(("netns: 5 s blackhole during a take-over", "motion resumes from the measured position",
                 f"{'finished' if run.finished else 'DID NOT FINISH'} in {run.elapsed_s:.1f} s, "
                 f"{run.over_velocity} over-velocity refusals"))
    run, schedule, done_during, chunks_during = blackhole_during_steps(seed=1, steps=3, both_ways=True)
    rows.append(("netns: 1.5 s blackhole as a step's done action is due", "no step done, nothing planned",
                 f"{done_during} steps done and {chunks_during} chunks accepted inside {len(schedule.windows)} "
                 f"blackholes; task {'finished' if run.finished else 'DID NOT FINISH'}"))
    for delay in (0.0, 50.0):
        run = delayed_link(seed=1, delay_ms=delay)
        feedback = Counter(w["feedback"] for w in run.plan_ahead_waits)
        rows.append((f"netns: {delay:g} ms delay daemon → controller, 10 steps", "the policy plans for the link",
                     f"{run.autonomous} of {run.steps} steps finished by the policy alone (throughput: not "
                     f"asserted); link round trip {run.link_rtt_ms or 0:.1f} ms; plan-ahead waits: "
                     f"{feedback['reported']} reported, {feedback['no_report']} no report and "
                     f"{feedback['no_frame']} no frame in time, {len(run.plan_ahead_violations())} planned early"))
    return rows


def print_table(rows: list[Row], out=sys.stdout) -> None:
    widths = [max(len(r[i]) for r in rows + [("fault", "outcome", "figure")]) for i in range(2)]
    header = ("fault", "outcome", "figure")
    for row in [header, tuple("-" * w for w in widths) + ("-" * 6,), *rows]:
        print(f"{row[0]:<{widths[0]}}  {row[1]:<{widths[1]}}  {row[2]}", file=out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hil.faults", description=__doc__.splitlines()[0])
    parser.add_argument("--long", action="store_true", help="soak for 10 minutes instead of ~50 s")
    parser.add_argument("--duration-s", type=float, help="soak duration (overrides --long)")
    parser.add_argument("--no-netns", action="store_true", help="skip the network-namespace cases (need root)")
    args = parser.parse_args(argv)
    duration = args.duration_s or (600.0 if args.long else 6.0 * len(PHASES))
    rows: list[Row] = []
    for fault in ("SIGKILL", "SIGSTOP"):
        rows.append(dead_daemon(fault))
    for fault in ("SIGKILL", "SIGSTOP"):
        rows.append(dead_controller(fault))
    rows += [bad_values(), bad_bytes(), intruders(), stalled_controller()]
    print(f"soaking for {duration:.0f} s ...", file=sys.stderr)
    report = run_soak(duration, RATE_HZ, segment_s=min(6.0, duration / len(PHASES)))
    rows += soak_rows(report)
    if not args.no_netns:
        from hil.netns import netns_unavailable

        why = netns_unavailable()
        if why is None:
            print("network faults between two namespaces ...", file=sys.stderr)
            rows += netns_rows()
        else:
            print(f"network-namespace cases skipped: {why}", file=sys.stderr)
    print_table(rows)
    problems = report.problems()
    for problem in problems:
        print(f"PROBLEM: {problem}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
