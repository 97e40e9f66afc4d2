"""A simulated arm of any size, for running imported policies (ACT, Diffusion Policy, SmolVLA, π0) through the
daemon end to end: whatever action and state dimensions and camera views a bundle declares, this robot has them.

It is the hil tabletop robot's plumbing without the tabletop: the real motor-controller client
(`vla_edge.controller.ControllerClient`) fed by the daemon's ZeroMQ action stream, one camera stream per view the
bundle names (each at its own resolution, deliberately not the bundle's, so the daemon's resize is exercised), and
a world that is just the joints: each control tick every joint moves toward its commanded value by at most the
bundle's ``max_delta``. It reports the joints (the action-space position, as a controller does); the daemon takes
the policy's state from them by name, so the loop is closed: the policy sees where the arm went. Frames draw each joint as a bar, so they change as the
arm moves. No judge: tests check what was actuated, and the step ends by the bundle's own rule.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hil.camera_publisher import FramePublisher
from hil.harness import SimPorts, free_port
from vla_edge.bundle import load_bundle
from vla_edge.bundle_schema import BundleManifestV2
from vla_edge.config import StreamSettings, load_settings
from vla_edge.controller import ActionLimits, ControllerClient
from vla_edge.task import StepReport

POLL_HZ = 200.0


@dataclass(frozen=True)
class ViewStream:
    """One camera view this robot publishes: name, endpoint, capture size (height, width)."""

    name: str
    endpoint: str
    height: int
    width: int


def capture_size(view_height: int, view_width: int) -> tuple[int, int]:
    """A capture size unlike the bundle's view (4:3, about 1.5× larger): the daemon must resize once."""
    height = max(8, int(round(view_height * 1.5)))
    return height, max(8, int(round(height * 4 / 3)))


class GenericArm:
    """Joints that follow commands at a bounded speed; a state vector by name; bars for frames."""

    def __init__(self, manifest: BundleManifestV2, seed: int = 0) -> None:
        space = manifest.action_space
        self.low = np.asarray(space.low, np.float64)
        self.high = np.asarray(space.high, np.float64)
        self.max_delta = np.asarray(space.max_delta, np.float64)
        self.action_names = list(space.names)
        self.state_names = list(manifest.observation.state.names)
        rng = np.random.default_rng(seed)
        mid = (self.low + self.high) / 2
        self.q = np.clip(mid + rng.uniform(-0.1, 0.1, mid.shape) * (self.high - self.low), self.low, self.high)
        by_name = {n: i for i, n in enumerate(self.action_names)}
        self._state_source = [by_name.get(n, i if i < len(self.action_names) else -1)
                              for i, n in enumerate(self.state_names)]

    def step(self, values: np.ndarray) -> None:
        move = np.clip(np.asarray(values, np.float64) - self.q, -self.max_delta, self.max_delta)
        self.q = np.clip(self.q + move, self.low, self.high)

    def state(self) -> np.ndarray:
        return np.array([self.q[i] if i >= 0 else 0.0 for i in self._state_source], np.float64)

    def render(self, height: int, width: int, tint: int) -> np.ndarray:
        image = np.full((height, width, 3), (30 + 40 * tint) % 256, np.uint8)
        n = len(self.q)
        fraction = (self.q - self.low) / np.maximum(self.high - self.low, 1e-9)
        for i in range(n):
            x0, x1 = i * width // n, max(i * width // n + 1, (i + 1) * width // n - 1)
            top = int(round((1 - fraction[i]) * (height - 1)))
            image[top:, x0:x1, 0] = 220
            image[top:, x0:x1, 1] = (60 * i) % 256
        return image


class GenericSimRobot:
    """The arm behind the real controller client and one frame publisher per view, stepped from one thread."""

    def __init__(self, manifest: BundleManifestV2, stream: StreamSettings, views: list[ViewStream],
                 seed: int = 0) -> None:
        self.arm = GenericArm(manifest, seed)
        limits = ActionLimits(low=self.arm.low.tolist(), high=self.arm.high.tolist(),
                              # the controller's own bound leaves room over the policy's declared per-tick change
                              max_delta=(1.5 * self.arm.max_delta).tolist())
        self.client = ControllerClient(stream, limits, self.arm.q.copy())
        self.views = views
        self.cameras = [FramePublisher(v.endpoint) for v in views]
        self._period_ns = int(1e9 / manifest.control_rate_hz)
        self._last_tick_ns = 0
        # (monotonic ns, seq or -1, commanded values or None) per control tick
        self.actuations: deque[tuple[int, int, np.ndarray | None]] = deque(maxlen=10_000)

    def close(self) -> None:
        self.client.close()
        for camera in self.cameras:
            camera.close()

    def run(self, stop: threading.Event) -> None:
        self.client.start()
        self._publish()
        poll_ns = int(1e9 / POLL_HZ)
        next_ns = time.monotonic_ns()
        while not stop.is_set():
            now = time.monotonic_ns()
            setpoint = self.client.next_setpoint(now)
            if not setpoint.holding:
                self._tick(now, setpoint.seq, np.asarray(setpoint.values, np.float64))
            elif now - self._last_tick_ns >= self._period_ns:
                self._tick(now, -1, None)
            next_ns += poll_ns
            delay = next_ns - time.monotonic_ns()
            if delay > 0:
                time.sleep(delay / 1e9)
            else:
                next_ns = time.monotonic_ns()

    def _tick(self, now: int, seq: int, values: np.ndarray | None) -> None:
        self.actuations.append((now, seq, None if values is None else values.copy()))
        if values is not None:
            self.arm.step(values)
        self._last_tick_ns = now
        self.client.report(self.arm.q)  # the measured position, in the action's units and order (docs/wire.md §3)
        self._publish()

    def _publish(self) -> None:
        now = time.monotonic_ns()
        for tint, (view, camera) in enumerate(zip(self.views, self.cameras, strict=True)):
            camera.publish(self.arm.render(view.height, view.width, tint), now)

    def executed(self) -> list[np.ndarray]:
        return [v for _, seq, v in list(self.actuations) if seq >= 0 and v is not None]


@dataclass
class BundleRun:
    report: StepReport
    actuated: list[np.ndarray]  # every command the arm executed, in order
    chunks_accepted: int
    actions_sent: int
    chunk_shapes: list[tuple[int, ...]]
    latencies_ms: list[float]
    counters: object = None  # the scheduler's counters (vla_edge.scheduler.SchedulerCounters) at the step's end


def run_bundle_step(bundle_dir: Path, tmp_path: Path, instruction: str, precision: str = "fp32",
                    step_timeout_s: float = 60.0, teleop: list | None = None, observers: list | None = None,
                    **extra: dict) -> BundleRun:
    """One task step of ``bundle_dir`` on the generic arm, through the whole daemon (real sockets, real ONNX
    Runtime, the controller client, a camera stream per view). ``teleop``: instead of the policy, an operator's take-
    over sends these `TeleopCommand`s (0.2 s apart; the last should say done). ``extra``: config sections to
    override, e.g. ``confidence={"enabled": False}`` for a random-weight policy whose chunks jump (the gate would
    refuse them), or ``policy={"precision": "int8"}``. ``observers``: more `TickObserver`s on the daemon's executor.
    Returns what was actuated, the chunks' shapes and latencies, the scheduler's counters and the step's report."""
    from vla_edge.policy import manifest_v2
    from vla_edge.service import Daemon

    manifest = manifest_v2(load_bundle(bundle_dir))
    ports = SimPorts.pick()
    views = []
    for view in manifest.observation.cameras:
        height, width = capture_size(view.height, view.width)
        views.append(ViewStream(view.name, f"tcp://127.0.0.1:{free_port()}", height, width))
    stream = StreamSettings(command_endpoint=ports.endpoint(ports.commands),
                            state_endpoint=ports.endpoint(ports.state), curve=False)
    robot = GenericSimRobot(manifest, stream, views, seed=1)
    stop = threading.Event()
    thread = threading.Thread(target=robot.run, args=(stop,), daemon=True)
    first, *others = views
    overrides: dict[str, dict] = {
        "camera": {"source": "sim", "sim_endpoint": first.endpoint,
                   "views": {v.name: {"source": "sim", "sim_endpoint": v.endpoint} for v in others}},
        "stream": {"command_endpoint": stream.command_endpoint, "state_endpoint": stream.state_endpoint,
                   "curve": False},
        "task": {"state_dir": str(tmp_path / "state"), "step_timeout_s": step_timeout_s},
        "recorder": {"enabled": False},
        "operator": {"enabled": False},
        "telemetry": {"metrics_port": 0},
        "policy": {"bundle": str(bundle_dir), "precision": precision, "num_samples": 4},
    }
    for section, values in extra.items():
        overrides.setdefault(section, {}).update(values)
    settings = load_settings(None, **overrides)
    shapes: list[tuple[int, ...]] = []
    thread.start()
    try:
        with Daemon(settings) as daemon:
            assert daemon.wait_for_controller(20.0), "no controller handshake"
            assert daemon.wait_for_camera(20.0), "no camera frame"
            daemon.executor.observers.append(_ShapeObserver(shapes))
            daemon.executor.observers.extend(observers or [])
            if teleop is None:
                report = daemon.executor.run_step(0, instruction, threading.Event())
            else:
                report = _take_over(daemon, robot, instruction, teleop)
            counters = daemon.executor.scheduler.counters
            accepted, sent, latencies = counters.chunks_accepted, counters.actions_sent, list(counters.latencies_ms)
    finally:
        stop.set()
        thread.join(timeout=5)
        robot.close()
    return BundleRun(report, robot.executed(), accepted, sent, shapes, latencies, counters)


def _take_over(daemon, robot: GenericSimRobot, instruction: str, commands: list):  # noqa: ANN001, ANN202
    from vla_edge.operator.escalation import TeleopChannel

    channel = TeleopChannel()
    channel.begin(0)

    def operator() -> None:
        deadline = time.monotonic() + 20
        while not robot.executed() and time.monotonic() < deadline:  # the take-over holds the arm where it is
            time.sleep(0.02)
        for command in commands:
            channel.put(command)
            time.sleep(0.2)

    threading.Thread(target=operator, daemon=True).start()
    return daemon.executor.teleoperate(0, instruction, channel, threading.Event())


class _ShapeObserver:
    def __init__(self, shapes: list) -> None:
        self.shapes = shapes

    def on_tick(self, *args: object) -> None: ...

    def on_step_end(self, *args: object) -> None: ...

    def on_chunk(self, planned) -> None:  # noqa: ANN001
        self.shapes.append(tuple(planned.samples.actions.shape))
