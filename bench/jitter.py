"""Part 3: control-loop timing: 50 Hz action output while the policy runs flat out beside it.

The daemon side (this process) paces a ``RateLoop`` at 50 Hz and publishes one action per tick over a real
``ActionStream``; a real ``ControllerClient`` in another process (as on the motor controller) receives them and
runs its own 50 Hz tick. Meanwhile an inference thread runs the int8 reference policy (K=8) back to back, the
worst case (the scheduler normally lets it rest between chunks). Measured per tick: how late the tick started
(``RateLoop.wait``), p50 / p99 / p99.9, and the share of ticks that started within 10 % of the period (a tick
skipped by the rate loop counts as late). The same loop without inference runs first, as the baseline.
Loopback TCP without CURVE (the demo configuration).

    python -m bench.jitter [--quick] [--out bench/results]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import (
    BenchConfig,
    BenchError,
    bench_config,
    console,
    instruction_for,
    machine_info,
    met,
    part_parser,
    print_table,
    pyplot,
    reference_bundle,
    write_json,
)

NAME = "jitter"
RATE_HZ = 50.0
ON_TIME_FRACTION = 0.10  # a tick is on time when it starts within 10 % of the period
P999_TARGET = 0.10  # p99.9 lateness at most 10 % of the period
ON_TIME_TARGET = 0.999
ACTION_DIM = 4
REALTIME_PRIORITY = 10
REALTIME_SWITCH_INTERVAL_S = 0.0005
PHASES = ("idle", "with_inference", "with_inference_realtime_tick")


def _free_endpoint() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{sock.getsockname()[1]}"


def _stream_settings(command: str, state: str) -> Any:
    from vla_edge.config import StreamSettings

    return StreamSettings(command_endpoint=command, state_endpoint=state, curve=False)


def controller_main(spec: dict[str, Any]) -> int:
    """The controller process: 50 Hz next_setpoint → report until stdin closes, then print its counters."""
    from vla_edge.controller import ActionLimits, ControllerClient
    from vla_edge.scheduler import RateLoop

    limits = ActionLimits(low=[0.0] * ACTION_DIM, high=[1.0] * ACTION_DIM, max_delta=[1.0] * ACTION_DIM)
    settings = _stream_settings(spec["command"], spec["state"])
    stop = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
    with ControllerClient(settings, limits, np.full(ACTION_DIM, 0.5)) as client:
        loop = RateLoop(RATE_HZ)
        while not stop.is_set():
            loop.wait()
            setpoint = client.next_setpoint()
            client.report(setpoint.values)
        counters = client.counters()
    print(json.dumps(counters), flush=True)
    return 0


class _BusyPolicy:
    """Runs the policy back to back in a thread; the newest chunk wins a size-1 slot."""

    def __init__(self, bundle: Path, instruction: str, threads: int) -> None:
        from hil.world import TabletopWorld
        from vla_edge.bundle import load_bundle
        from vla_edge.policy import PolicyRunner

        self._runner = PolicyRunner(
            load_bundle(bundle), precision="int8", providers=["CPUExecutionProvider"], intra_op_threads=threads
        )
        world = TabletopWorld(0)
        self._image, self._state, self._instruction = world.render(), world.state(), instruction
        self._lock = threading.Lock()
        self._chunk = self._runner.infer(self._image, self._state, instruction, num_samples=8).actions[0]
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.chunks = 0
        self.latencies_ms: list[float] = []

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="bench-inference", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def chunk(self) -> np.ndarray:
        with self._lock:
            return self._chunk

    def _run(self) -> None:
        _set_realtime(False)  # never inherit the tick thread's real-time priority
        while not self._stop.is_set():
            samples = self._runner.infer(self._image, self._state, self._instruction, num_samples=8)
            with self._lock:
                self._chunk = samples.actions[0]
            self.chunks += 1
            self.latencies_ms.append(samples.timings_ms["total"])


def _set_realtime(on: bool) -> bool:
    """SCHED_FIFO for the calling thread only (Linux: pid 0 = this thread); False when not permitted."""
    try:
        if on:
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(REALTIME_PRIORITY))
        else:
            os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
    except (PermissionError, OSError, AttributeError):
        return False
    return True


def _tick_phase(stream: Any, policy: _BusyPolicy, seconds: float, realtime: bool = False) -> dict[str, Any]:
    """Ticks for ``seconds``; ``realtime``: inside ``scheduler.realtime_tick``, exactly as the executor runs a step
    with ``scheduler.realtime_priority`` set (SCHED_FIFO tick thread, shorter GIL switch interval)."""
    from vla_edge.scheduler import realtime_tick

    with realtime_tick(REALTIME_PRIORITY if realtime else None, REALTIME_SWITCH_INTERVAL_S * 1e3) as granted:
        if realtime and not granted:
            return {"skipped": "SCHED_FIFO not permitted here (needs CAP_SYS_NICE or a LimitRTPRIO)"}
        return _ticks(stream, policy, seconds)


def _ticks(stream: Any, policy: _BusyPolicy, seconds: float) -> dict[str, Any]:
    from vla_edge.scheduler import RateLoop

    loop = RateLoop(RATE_HZ)
    period_ns = loop.period_ns
    lateness: list[int] = []
    end = time.monotonic_ns() + int(seconds * 1e9)
    first_tick = loop.tick
    while time.monotonic_ns() < end:
        late = loop.wait()
        lateness.append(late)
        chunk = policy.chunk()
        stream.send_action(chunk[len(lateness) % chunk.shape[0]], time.monotonic_ns())
    due_ticks = loop.tick - first_tick  # includes ticks the loop skipped because it was over a period late
    array = np.asarray(lateness, dtype=np.float64) / 1e6
    on_time = int(np.sum(array <= ON_TIME_FRACTION * period_ns / 1e6))
    return {
        "seconds": seconds,
        "ticks_run": len(lateness),
        "ticks_due": int(due_ticks),
        "ticks_skipped": int(due_ticks - len(lateness)),
        "lateness_p50_ms": round(float(np.percentile(array, 50)), 3),
        "lateness_p99_ms": round(float(np.percentile(array, 99)), 3),
        "lateness_p999_ms": round(float(np.percentile(array, 99.9)), 3),
        "lateness_max_ms": round(float(array.max()), 3),
        "on_time_share": round(on_time / due_ticks, 5),
        "p999_fraction_of_period": round(float(np.percentile(array, 99.9)) / (period_ns / 1e6), 4),
        "lateness_ms": [round(v, 4) for v in array.tolist()],
    }


def run(cfg: BenchConfig) -> dict[str, Any]:
    bundle = reference_bundle(cfg.bundle, cfg.work)
    idle_s, loaded_s = (3.0, 10.0) if cfg.quick else (15.0, 60.0)
    console.print(f"[bold]{NAME}[/bold]: {RATE_HZ:.0f} Hz for {idle_s:.0f} s idle + {loaded_s:.0f} s with inference")
    from vla_edge.stream import ActionStream

    command, state = _free_endpoint(), _free_endpoint()
    load_before = [round(v, 2) for v in os.getloadavg()]  # other jobs on the machine delay ticks too: say how busy
    policy = _BusyPolicy(bundle, instruction_for(bundle), cfg.threads)
    controller = subprocess.Popen(
        [sys.executable, "-m", "bench.jitter", "--controller", json.dumps({"command": command, "state": state})],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        with ActionStream(_stream_settings(command, state), action_dim=ACTION_DIM) as stream:
            if not stream.wait_for_controller(20.0):
                raise BenchError("the controller process did not complete the handshake within 20 s")
            idle = _tick_phase(stream, policy, idle_s)
            policy.start()
            try:
                loaded = _tick_phase(stream, policy, loaded_s)
                realtime = _tick_phase(stream, policy, loaded_s, realtime=True)
            finally:
                policy.stop()
            daemon_counters = stream.counters()
    finally:
        out, err = controller.communicate(input="", timeout=30)
    if controller.returncode != 0:
        raise BenchError(f"controller process failed: {err[-2000:]}")
    controller_counters = json.loads(out.strip().splitlines()[-1])
    period_ms = 1e3 / RATE_HZ
    result = {
        "part": NAME,
        "quick": cfg.quick,
        "rate_hz": RATE_HZ,
        "period_ms": period_ms,
        "on_time_means": f"tick started within {ON_TIME_FRACTION:.0%} of the period ({ON_TIME_FRACTION * period_ms:.1f} ms)",
        "inference": {
            "variant": "int8, K=8, back to back",
            "intra_op_threads": cfg.threads,
            "chunks": policy.chunks,
            "median_chunk_ms": round(float(np.median(policy.latencies_ms)), 3) if policy.latencies_ms else None,
        },
        "machine": machine_info(),
        "load_average_before_1_5_15m": load_before,
        "load_average_after_1_5_15m": [round(v, 2) for v in os.getloadavg()],
        "idle": idle,
        "with_inference": loaded,
        "with_inference_realtime_tick": realtime,
        "realtime_tick_means": (
            f"the tick thread alone at SCHED_FIFO {REALTIME_PRIORITY} and a {REALTIME_SWITCH_INTERVAL_S * 1e3} ms "
            "GIL switch interval; inference stays SCHED_OTHER"
        ),
        "daemon_counters": daemon_counters,
        "controller_counters": controller_counters,
        "targets_met": {
            f"{phase}: {what}": ok
            for phase in PHASES[1:]
            if "skipped" not in (figures := {"with_inference": loaded, "with_inference_realtime_tick": realtime}[phase])
            for what, ok in (
                (f"p99.9 lateness <= {P999_TARGET:.0%} of the period",
                 met(figures["p999_fraction_of_period"], P999_TARGET, higher_is_better=False)),
                (f">= {ON_TIME_TARGET:.1%} of ticks on time", met(figures["on_time_share"], ON_TIME_TARGET)),
            )
        },
    }
    _report(result, cfg.out)
    return result


def _report(result: dict[str, Any], out: Path) -> None:
    rows = []
    for phase in PHASES:
        p = result[phase]
        if "skipped" in p:
            rows.append([phase, p["skipped"], "", "", "", "", "", ""])
            continue
        rows.append(
            [
                phase,
                p["ticks_due"],
                f"{p['lateness_p50_ms']:.3f}",
                f"{p['lateness_p99_ms']:.3f}",
                f"{p['lateness_p999_ms']:.3f}",
                f"{p['lateness_max_ms']:.3f}",
                f"{p['p999_fraction_of_period']:.1%}",
                f"{p['on_time_share']:.2%}",
            ]
        )
    caption = "\n".join(f"{k}: {'MET' if ok else 'MISSED'}" for k, ok in result["targets_met"].items())
    c = result["controller_counters"]
    print_table(
        f"{result['rate_hz']:.0f} Hz tick lateness (period {result['period_ms']:.0f} ms); inference "
        f"{result['inference']['chunks']} chunks, median {result['inference']['median_chunk_ms']} ms; controller "
        f"executed {c.get('executed', 0)} of {c.get('ticks', 0)} ticks",
        ["phase", "ticks", "p50 ms", "p99 ms", "p99.9 ms", "max ms", "p99.9/period", "on time"],
        rows,
        caption,
    )
    write_json(out / f"{NAME}.json", result)
    plt = pyplot()
    if plt is None:
        return
    fig, axis = plt.subplots(figsize=(8, 4))
    for phase, colour in zip(PHASES, ("tab:green", "tab:red", "tab:blue"), strict=True):
        if "skipped" in result[phase]:
            continue
        values = np.sort(np.asarray(result[phase]["lateness_ms"]))
        share = np.arange(1, values.size + 1) / values.size
        axis.plot(values, share, color=colour, label=phase.replace("_", " "))
    axis.axvline(ON_TIME_FRACTION * result["period_ms"], color="black", linestyle="--", label="10 % of period")
    axis.set_xscale("symlog", linthresh=0.1)
    axis.set_xlabel("tick start lateness, ms")
    axis.set_ylabel("share of ticks")
    axis.set_title(f"{result['rate_hz']:.0f} Hz action output while the policy runs")
    axis.legend()
    fig.tight_layout()
    fig.savefig(out / f"{NAME}.png", dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = part_parser("bench.jitter", __doc__)
    parser.add_argument("--controller", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.controller:
        return controller_main(json.loads(args.controller))
    run(bench_config(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
