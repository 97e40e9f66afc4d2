"""The daemon: every stage built from one `Settings` object, started in order and stopped in reverse.

Read `Daemon.start` to see the whole pipeline come up: bundle (signature, digests) → policy sessions →
confidence monitor → camera → action stream → telemetry → operator console → step executor. `Daemon.run_task`
runs one task through the `TaskRunner` (checkpoints, escalation). Stopping leaves the arm holding: the executor
sends a hold, then the stream closes, and the controller's stale watchdog holds whatever happens next.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import numpy as np
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from vla_edge.bundle import Bundle, load_bundle
from vla_edge.camera import CameraStatus, open_cameras
from vla_edge.checkpoint import CheckpointStore
from vla_edge.confidence import DEFAULT_THRESHOLDS, ActionBounds, ConfidenceMonitor, EmbeddingStats
from vla_edge.config import Settings
from vla_edge import preflight
from vla_edge.errors import BundleError, ConfigError, VlaEdgeError
from vla_edge.executor import ExecutorSettings, PolicyStepExecutor, TickObserver
from vla_edge.operator.console import ConsoleLinks, ConsoleModel, OperatorConsole
from vla_edge.operator.observer import ConsoleObserver
from vla_edge.operator.escalation import EscalationQueue, TeleopChannel
from vla_edge.policy import PolicyRunner, manifest_v2
from vla_edge.plan_view import ImagePlane
from vla_edge.providers import options_from_settings
from vla_edge.routing import build_router
from vla_edge.sdnotify import Notifier, WatchdogGate, watchdog_interval_s
from vla_edge.signing import check_loaded_signature
from vla_edge.step_end import ActionLayout
from vla_edge.stream import ActionStream
from vla_edge.task import TaskEvent, TaskResult, TaskRunner, TaskSpec
from vla_edge.telemetry import DaemonMetrics, HealthSampler, MetricsServer
from vla_edge.telemetry.observer import MetricsObserver

log = logging.getLogger(__name__)


UNSIGNED_WARNING = (
    "bundle %s is not signature-checked (policy.require_signature = false, or no trusted key for it): its files "
    "are checked only against the digests in its own manifest, so anyone who can write the bundle directory can "
    "swap graphs or whole variants (digests included) and they will run; see docs/bundle-format.md"
)


def open_bundle(settings: Settings) -> Bundle:
    """The manifest (strict JSON, no links, no stray files, every listed file present at its size), then the
    signature over that manifest's bytes and digests when required or available. The graphs' digests are
    checked over the bytes that run, when the policy reads them (``open_policy``)."""
    policy = settings.policy
    bundle = load_bundle(policy.bundle, verify="structure")
    info = check_loaded_signature(bundle, policy.require_signature, list(policy.trusted_keys))
    if info is not None:
        log.info("bundle %s signed by key %s (%d files)", bundle.path, info.key_id, info.file_count)
    else:
        log.warning(UNSIGNED_WARNING, bundle.path)
    return bundle


def open_policy(bundle: Bundle, settings: Settings) -> tuple[PolicyRunner, ConfidenceMonitor | None]:
    """The policy's sessions (from verified bytes; graph shapes checked against the manifest; a warm-up at the
    configured K) and the confidence monitor: what daemon start and ``bundle install``'s check both run."""
    p = settings.policy
    policy = PolicyRunner(bundle, p.precision, p.providers, p.intra_op_threads, p.seed, warm_up_samples=p.num_samples,
                          provider_options=options_from_settings(settings))
    return policy, build_monitor(bundle, settings)


def open_verifier(settings: Settings):
    """The automatic checkpoint verifier (``verifier.bundle``), or None when none is configured."""
    v = settings.verifier
    if v.bundle is None:
        return None
    from vla_edge.verifier import CheckpointVerifier

    verifier = CheckpointVerifier(v.bundle, v.threads, accept_threshold=v.accept_threshold,
                                  reject_threshold=v.reject_threshold)
    log.info("checkpoint verifier %s: accept P > %.4g, reject P < %.4g", verifier.name, verifier.accept_threshold,
             verifier.reject_threshold)
    return verifier


def build_monitor(bundle: Bundle, settings: Settings) -> ConfidenceMonitor | None:
    if not settings.confidence.enabled:
        log.warning("confidence checks are disabled: every chunk will be actuated")
        return None
    manifest = manifest_v2(bundle)
    space = manifest.action_space
    bounds = ActionBounds(np.asarray(space.low), np.asarray(space.high), np.asarray(space.max_delta))
    stats = manifest.embedding_stats
    thresholds = dict(DEFAULT_THRESHOLDS)
    thresholds.update(manifest.confidence_thresholds or {})
    if settings.confidence.thresholds_file is not None:
        thresholds.update(load_thresholds(settings.confidence.thresholds_file))
    # spread over the position-like dimensions: not the done flag, not the gripper (nearly binary)
    done = manifest.step_end.done_action
    position_dims = np.array([i for i, name in enumerate(space.names) if name != done and "grip" not in name.lower()
                              and name != "done"])
    return ConfidenceMonitor(
        bounds=bounds,
        # No embedding declared (most imported policies): the ood signal does not apply.
        embedding_stats=None if stats is None else EmbeddingStats(
            np.asarray(stats.mean), np.asarray(stats.std), np.asarray(stats.precision)),
        thresholds=thresholds,
        spread_dims=position_dims if position_dims.size else None,
    )


def _layout(manifest, settings: Settings) -> ActionLayout:  # noqa: ANN001 - a BundleManifestV2
    try:
        return ActionLayout.of(manifest)
    except ValueError as exc:
        raise BundleError(f"bundle {settings.policy.bundle}: {exc}") from None


def load_thresholds(path: Path) -> dict[str, float]:
    import json

    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise VlaEdgeError(f"confidence thresholds file not found: {path}") from None
    except json.JSONDecodeError as exc:
        raise VlaEdgeError(f"confidence thresholds file {path} is not valid JSON: {exc}") from None
    thresholds = data.get("thresholds", data)
    if not isinstance(thresholds, dict) or not all(isinstance(v, (int, float)) for v in thresholds.values()):
        raise VlaEdgeError(f"confidence thresholds file {path} must map signal names to numbers")
    return {str(k): float(v) for k, v in thresholds.items()}


class CameraCollector(Collector):
    """``vla_edge_camera_events_total{event=...}``: the camera's counters (frames, stale_rejected, size_changes,
    burst_rejected, recoveries, ...; docs/camera.md) read when Prometheus scrapes."""

    def __init__(self, camera) -> None:
        self._camera = camera

    def describe(self) -> list:
        return []

    def collect(self):
        family = CounterMetricFamily("vla_edge_camera_events", "Camera events by kind (docs/camera.md).",
                                     labels=["event"])
        for event, count in sorted(self._camera.counters().items()):
            family.add_metric([event], float(count))
        yield family


@contextmanager
def _binding(what: str, host: str, port: int, setting: str) -> Iterator[None]:
    """Turn a failed bind into a message that names the address and the setting to change."""
    try:
        yield
    except OSError as exc:
        raise VlaEdgeError(f"cannot open the {what} on {host}:{port}: {exc.strerror or exc}; "
                           f"change {setting} (0 picks a free port)") from None


class Daemon:
    """Owns every stage of the pipeline. Use as a context manager, or call start() and close()."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._stack = ExitStack()
        self.escalations = EscalationQueue(while_waiting=self._alive)
        self.teleop = TeleopChannel()
        self.console_model = ConsoleModel(self.escalations, self.teleop)
        self.metrics = DaemonMetrics()
        self.notifier = Notifier()
        self.bundle: Bundle | None = None
        self.policy: PolicyRunner | None = None
        self.executor: PolicyStepExecutor | None = None
        self.stream: ActionStream | None = None
        self.console: OperatorConsole | None = None
        self.metrics_server: MetricsServer | None = None
        self.rerun = None  # a vla_edge.rerun_log.RerunLogger when telemetry.rerun is set
        self._watchdog: WatchdogGate | None = None
        self._remote_status = "enabled" if settings.remote.enabled else "not configured"
        self.scene_verifier = None

    # -- lifecycle -------------------------------------------------------------------------------------------
    def start(self) -> None:
        try:
            self._start()
        except BaseException:
            self.close()
            raise

    def _start(self) -> None:
        s = self.settings
        preflight.check(s)  # every configuration check, before anything is opened (also `vla-edge config check`)
        self.bundle = open_bundle(s)
        found = preflight.bundle_problems(s, self.bundle)
        if found:
            raise ConfigError("; ".join(found))
        self.policy, monitor = open_policy(self.bundle, s)
        manifest = self.policy.manifest  # schema 2 (a schema-1 bundle upgraded in memory)
        if manifest.policy.random_weights:
            log.warning("bundle %s has RANDOM WEIGHTS (a real architecture, not a trained policy)", manifest.name)
        router = build_router(s, manifest, monitor, self.metrics.registry, self._on_remote_status)
        if router is not None:
            self._stack.callback(router.close)

        camera = open_cameras(s.camera, self.policy.view_names)  # one source per view the bundle reads
        camera.start()
        self._stack.callback(camera.close)
        self.camera = camera
        self.metrics.registry.register(CameraCollector(camera))

        self.stream = ActionStream(s.stream, manifest.action_dim)
        self.stream.start()
        self._stack.callback(self.stream.close)

        with _binding("metrics endpoint", s.telemetry.metrics_host, s.telemetry.metrics_port, "telemetry.metrics_port"):
            self.metrics_server = MetricsServer(self.metrics, s.telemetry.metrics_host, s.telemetry.metrics_port,
                                                status_provider=self._status).start()
        self._stack.callback(self.metrics_server.stop)
        self.metrics.attach_health(HealthSampler(s.telemetry.health_interval_s))

        self.console_model.set_links(self._links())
        self.console_model.set_camera_status(lambda: str(camera.status.value))
        if s.operator.enabled:
            self.console_model.set_frame_provider(lambda: self.executor.latest_frame() if self.executor else None)
            with _binding("operator console", s.operator.host, s.operator.port, "operator.port"):
                self.console = OperatorConsole(self.console_model, s.operator)
            self.console.start()
            self._stack.callback(self.console.stop)

        space = manifest.action_space
        self.image_plane = ImagePlane.of(space.names, space.low, space.high)
        observers: list[TickObserver] = [MetricsObserver(self.metrics), ConsoleObserver(self.console_model,
                                                                                         self.image_plane)]
        if s.recorder.enabled:
            from vla_edge.recorder.observer import build_recording

            recording = build_recording(s, manifest, self.stream)
            self._stack.callback(recording.recorder.discard_episode)
            observers.append(recording)

        if s.telemetry.rerun:
            from vla_edge.rerun_log import RerunLogger

            self.rerun = RerunLogger.open_target(
                s.telemetry.rerun, plane=self.image_plane, action_names=manifest.action_space.names,
                controller=self.stream.latest_state)
            self._stack.callback(self.rerun.close)
            observers.append(self.rerun)
            log.info("logging the run to Rerun: %s", s.telemetry.rerun)

        interval = watchdog_interval_s()
        if interval is not None:
            self._watchdog = WatchdogGate(self.notifier, interval).start()
            self._stack.callback(self._watchdog.stop)
        self.executor = PolicyStepExecutor(
            self.policy, monitor, camera, self.stream,
            ExecutorSettings.from_settings(s, manifest, layout=_layout(manifest, s)),
            observers=observers,
            progress=self._watchdog.progress if self._watchdog else None,
            router=router,
        )
        self._stack.callback(self.executor.close)
        self.scene_verifier = open_verifier(s)
        log.info("vla-edge up: bundle %s %s (%s) on %s", manifest.name, manifest.version, s.policy.precision,
                 ", ".join(self.policy.providers_in_use))

    def _links(self) -> ConsoleLinks:
        rerun = self.settings.telemetry.rerun
        rerun_file = rerun_viewer = None
        if rerun:
            from vla_edge.rerun_log import is_rrd_target, web_viewer_url

            rerun_file, rerun_viewer = (rerun, None) if is_rrd_target(rerun) else (None, web_viewer_url(rerun))
        metrics = f"{self.metrics_server.url}/metrics" if self.metrics_server else None
        return ConsoleLinks(metrics=metrics, rerun_viewer=rerun_viewer, rerun_file=rerun_file)

    def _on_remote_status(self, text: str) -> None:
        self._remote_status = text
        self.console_model.set_remote_status(text)

    def _alive(self) -> None:
        """The control thread is responsive (e.g. holding while it waits for the operator)."""
        if self._watchdog is not None:
            self._watchdog.progress()

    def idle(self) -> None:
        """Between tasks: the arm holds; the control thread is alive."""
        if self.executor is not None:
            self.executor.hold("idle")
        self._alive()

    def wait_for_controller(self, timeout_s: float) -> bool:
        assert self.stream is not None
        return self.stream.wait_for_controller(timeout_s)

    def wait_for_camera(self, timeout_s: float) -> bool:
        return self.camera.wait_latest(timeout_s) is not None

    def ready(self) -> None:
        self.notifier.ready("controlling")

    def close(self) -> None:
        if self.executor is not None and self.stream is not None:
            try:
                self.executor.hold("shutdown")
            except Exception:  # closing must go on whatever state the stream is in
                log.exception("could not send the shutdown hold")
        self.notifier.stopping("stopping; the arm holds")
        self._stack.close()

    def __enter__(self) -> Daemon:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- tasks -------------------------------------------------------------------------------------------------
    def run_task(self, spec: TaskSpec, stop: threading.Event, *, verifier=None, events=None) -> TaskResult:
        if self.executor is None:
            raise VlaEdgeError("the daemon is not started")
        self.console_model.set_task(spec.task_id, spec.steps)

        def on_event(event: TaskEvent) -> None:
            self.console_model.on_task_event(event)
            if event.kind == "escalated":
                self.metrics.record_escalation(str(event.detail.get("escalation_kind", "unknown")))
            self.metrics.record_task_event(event.kind, event.detail)
            if self.rerun is not None:
                self.rerun.on_task_event(event)
            if events is not None:
                events(event)

        runner = TaskRunner(
            spec, self.executor, self.escalations,
            CheckpointStore(self.settings.task.state_dir, keep=self.settings.task.keep_checkpoints),
            self.settings.task, answer_timeout_s=self.settings.operator.answer_timeout_s, verifier=verifier,
            events=on_event, teleop=self.teleop, step_retries=self.settings.recovery.step_retries,
            scene_verifier=self.scene_verifier,
        )
        return runner.run(stop)

    def _status(self) -> dict:
        camera_status = getattr(self, "camera", None)
        state = {
            "bundle": self.bundle.manifest.name if self.bundle else None,
            # random weights of a real architecture (tests, benchmarks): said wherever the bundle is shown
            "bundle_random_weights": bool(self.policy.manifest.policy.random_weights) if self.policy else None,
            "precision": self.settings.policy.precision,
            "camera": str(camera_status.status.value) if camera_status else "unknown",
            "controller_alive": bool(self.stream and self.stream.controller_alive()),
            "escalations_open": len(self.escalations.open()),
            "remote_tier": self._remote_status,
        }
        if self.stream is not None:
            # The action stream's counters (docs/wire.md §8): what the daemon sent, refused (refused_auth,
            # rejected_state_dim, ...), and the controller's own counters from its latest state report.
            report = self.stream.latest_state()
            round_trip = self.stream.link_round_trip_ns()
            state["stream"] = {
                "daemon": self.stream.counters(),
                "controller": dict(report.counters) if report is not None else {},
                "link_round_trip_ms": None if round_trip is None else round_trip / 1e6,
            }
        return state
