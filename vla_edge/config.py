"""The one configuration object: a TOML file plus ``VLA_EDGE_*`` environment overrides.

Each stage owns one section. Environment variables use ``__`` between section and field, e.g.
``VLA_EDGE_POLICY__PRECISION=int4`` or ``VLA_EDGE_OPERATOR__PORT=9000``; they win over the file. List settings take
a comma list (``VLA_EDGE_POLICY__PROVIDERS=CUDAExecutionProvider,CPUExecutionProvider``) or a JSON list; switches
take ``true`` or ``false`` only (in the file: TOML booleans, never ``"off"`` or ``0``). A ``VLA_EDGE_X__Y`` whose
section or setting does not exist is an error, never silently ignored. Names without ``__`` are not settings
(tools use them, e.g. ``VLA_EDGE_TRITON_PYTHON``).

Settings that make no sense together (a controller that would go stale between two commands, a stale limit
under two heartbeats) are refused here, before anything starts. The checks that need the file system or the
bundle live in ``vla_edge.preflight`` and run both at daemon start and in ``vla-edge config check``.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, SecretStr, StrictBool, ValidationError, model_validator

from vla_edge.errors import ConfigError
from vla_edge.paths import REFERENCE_BUNDLE_DIR

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10 (JetPack 6): the same parser, published as tomli
    import tomli as tomllib

ENV_PREFIX = "VLA_EDGE_"
ENV_DELIMITER = "__"
MAX_CONFIG_BYTES = 1 << 20
MAX_CONTROL_RATE_HZ = 1000.0  # the tick is a Python thread: above this it cannot keep its period
MIN_CONTROL_RATE_HZ = 1.0  # below this one action lasts longer than any stale limit makes sense for


class Section(BaseModel):
    """A config section: unknown keys are errors, so a typo never silently falls back to a default."""

    model_config = ConfigDict(extra="forbid")


class CameraViewSettings(Section):
    """The source of one camera view a bundle names (``[camera.views.<name>]``); the rest of ``[camera]`` applies."""

    source: str = Field(description='"sim", a V4L2 index or path, a video file, or a URL (as camera.source).')
    sim_endpoint: str | None = Field(None, description="For source 'sim': where this view is published.")
    fourcc: str | None = Field(None, min_length=4, max_length=4)
    capture_width: int | None = Field(None, gt=0)
    capture_height: int | None = Field(None, gt=0)
    capture_fps: float | None = Field(None, gt=0)


class CameraSettings(Section):
    source: str = Field(
        "sim",
        description='"sim" (the hil world), a V4L2 index ("0") or path ("/dev/video0"), a video file, or a URL.',
    )
    sim_endpoint: str = Field("tcp://127.0.0.1:5570", description="Where the simulated world publishes frames.")
    width: int | None = Field(
        None, gt=0, description="Resize frames to this width at capture (for a camera whose full frames are too big "
        "to pass around). Unset: frames keep the camera's resolution and the policy resizes each view once, as the "
        "bundle declares."
    )
    height: int | None = Field(None, gt=0)
    max_frame_age_ms: float = Field(250.0, gt=0, description="A frame older than this is never used.")
    stall_timeout_ms: float = Field(1000.0, gt=0, description="No new frame for this long: camera stalled, hold.")
    loop_file: StrictBool = Field(False, description="Restart a video file at its end instead of reporting end of stream.")
    reopen_backoff_max_ms: float = Field(
        2000.0, gt=0, description="A lost device or URL is reopened with doubling waits up to this long."
    )
    fourcc: str | None = Field(
        None, min_length=4, max_length=4, description='V4L2 pixel format to ask for, e.g. "MJPG" or "YUYV".'
    )
    capture_width: int | None = Field(None, gt=0, description="V4L2 capture width to ask for (before the resize).")
    capture_height: int | None = Field(None, gt=0, description="V4L2 capture height to ask for.")
    capture_fps: float | None = Field(
        None, gt=0, description="V4L2 frame rate to ask for; also the frame period bursts are judged against "
        "(else measured from the stream).",
    )
    clock: Literal["auto", "source", "arrival"] = Field(
        "auto",
        description="What dates a frame: auto (a V4L2 device's buffer timestamps, an RTSP stream's RTP times, "
        "arrival for anything else), source (also a URL's own frame times, e.g. MPEG-TS with real PTS) or arrival.",
    )
    on_size_change: Literal["fail", "accept"] = Field(
        "fail",
        description="The source's native frame size changes mid-stream: fail (a camera fault: frames refused, the "
        "arm holds, until the size is back) or accept (one warning, counted in size_changes).",
    )
    views: dict[str, CameraViewSettings] = Field(
        default_factory=dict, description="One source per camera view the bundle names ([camera.views.<name>]); a "
        "single-view bundle may use camera.source instead, and so may a multi-view bundle's first view."
    )


class PolicySettings(Section):
    bundle: Path = Field(REFERENCE_BUNDLE_DIR, description="Bundle directory (or a link to the active version).")
    precision: Literal["fp32", "int8", "int4"] = "int8"
    providers: list[str] = Field(
        default_factory=lambda: ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
        description="Execution providers in order of preference; those not available are skipped (with a "
        "warning); a name ONNX Runtime does not know is a config error.",
    )
    trt_cache_dir: Path | None = Field(
        None, description="TensorRT engine and timing cache: building engines takes minutes, a start with them "
        "cached seconds. Default: <task.state_dir>/trt-cache (deploy/jetson/setup.sh makes it).",
    )
    trt_fp16: bool = Field(
        True, description="Let TensorRT run layers in fp16 (the Orin's tensor cores); check the bundle's actions "
        "against fp32 on the board before relying on it (docs/deployment.md).",
    )
    intra_op_threads: int = Field(
        1, ge=1,
        description="ONNX Runtime threads per session. 1 is fastest for the reference policy (1.35 vs 1.89 ms per "
        "chunk on 2 cores) and leaves the other cores to the control tick and the camera; raise it for large models.",
    )
    num_samples: int = Field(8, ge=1, le=64, description="K: chunks sampled at once for the confidence spread.")
    seed: int = 0
    require_signature: StrictBool = Field(False, description="Refuse a bundle without a valid signature.")
    trusted_keys: list[Path] = Field(default_factory=list, description="ed25519 public keys allowed to sign bundles.")


class SchedulerSettings(Section):
    control_rate_hz: float | None = Field(
        None, ge=MIN_CONTROL_RATE_HZ, le=MAX_CONTROL_RATE_HZ,
        description="Defaults to the bundle's control rate (which must then lie in the same bounds).",
    )
    replan_when_remaining: int = Field(4, ge=1, description="Request the next chunk when this few actions remain.")
    boundary: Literal["auto", "none", "freeze", "rtc", "blend"] = Field(
        "auto",
        description="Chunk boundary: none (the new chunk takes over; the jerk check guards the junction), freeze "
        "(the new chunk starts with the actions that run during the measured inference delay), rtc (real-time "
        "chunking: that frozen prefix, and the sampler guided towards the rest of the executing chunk), blend "
        "(cross-fade), or auto: none while chunks arrive in time, rtc once the measured delay is a tick or more. "
        "docs/scheduler.md has the measurements.",
    )
    blend_steps: int = Field(3, ge=1)
    request_by_delay: StrictBool = Field(
        True,
        description="Request the next chunk when the actions left fall to the measured inference delay + 1 (at "
        "least replan_when_remaining), so the arm keeps moving while a slow policy computes. false: at "
        "replan_when_remaining only (a policy slower than that holds the arm at every chunk).",
    )
    delay_quantile: float = Field(
        0.9, gt=0, le=1, description="The inference delay estimate: this quantile of the recent delays, in ticks."
    )
    delay_window: int = Field(20, ge=1, description="How many recent chunks the delay estimate looks at.")
    plan_ahead: StrictBool = Field(
        True,
        description="Request the next chunk half a tick after an action is sent, from the frame that shows it, for "
        "a chunk starting at the next tick, so the chunk's first action runs (as in the loop the policy was "
        "evaluated in). false: request at the tick from the frame before that tick's action (its first row is "
        "then usually late and dropped).",
    )
    realtime_priority: int | None = Field(
        None, ge=1, le=99,
        description="SCHED_FIFO priority of the control tick thread (lower jitter while inference runs); needs "
        "LimitRTPRIO= and RestrictRealtime=no in the unit (a drop-in, see docs/benchmarks.md). Unset: normal "
        "scheduling. Not a safety feature.",
    )
    gil_switch_interval_ms: float = Field(
        0.5, gt=0, le=5.0,
        description="While the tick runs at realtime_priority: how long it may wait for the GIL (Python's default "
        "is 5 ms).",
    )


class ConfidenceSettings(Section):
    enabled: StrictBool = Field(True, description="Confidence checks on every chunk; false actuates every chunk.")
    thresholds_file: Path | None = Field(None, description="Calibrated thresholds; defaults to the bundle's.")


class RecoverySettings(Section):
    """What the robot tries by itself before it asks the operator (docs/confidence.md, "Recover before asking")."""

    resample_tries: int = Field(
        2, ge=0, le=10,
        description="A chunk the confidence gate refuses is re-sampled from a fresh frame with new noise up to this "
        "many times (the previous chunk's already-judged actions run meanwhile, then the arm holds); only a chunk "
        "that passes runs. 0: escalate at once.",
    )
    resample_deadline_s: float = Field(
        1.0, gt=0, description="Re-samples stop this long after the first refusal; then the step escalates."
    )
    resample_num_samples: int | None = Field(
        None, ge=2, le=64, description="K for a re-sample (more samples, a steadier verdict); unset: policy.num_samples."
    )
    step_retries: int = Field(
        1, ge=0, le=5,
        description="A step that ends without the expected result (stalled, or the checkpoint verifier is sure it "
        "failed) is run again by the policy this many times before the operator is asked.",
    )


class VerifierSettings(Section):
    """The automatic checkpoint verifier (docs/confidence.md): a success detector bundle of its own."""

    bundle: Path | None = Field(
        None,
        description="Verifier bundle directory (e.g. models/bundles/reference-verifier for the reference world). "
        "Set: each step and each checkpoint are judged from camera frames; a sure pass needs no operator, a sure "
        "failure is retried (recovery.step_retries), an unsure one is verified by the operator as before.",
    )
    accept_threshold: float | None = Field(None, ge=0, le=1, description="Override the bundle's calibrated one.")
    reject_threshold: float | None = Field(None, ge=0, le=1, description="Override the bundle's calibrated one.")
    threads: int = Field(1, ge=1, description="ONNX Runtime threads of the verifier's session.")


class StreamSettings(Section):
    command_endpoint: str = Field("tcp://127.0.0.1:5571", description="Daemon binds; controllers connect.")
    state_endpoint: str = Field("tcp://127.0.0.1:5572", description="Controller state and heartbeats back.")
    heartbeat_ms: float = Field(100.0, gt=0)
    stale_after_ms: float = Field(300.0, gt=0, description="Controller holds when no valid command for this long.")
    command_ttl_ms: float = Field(150.0, gt=0, description="A command's deadline is its due time plus this.")
    curve: StrictBool = Field(True, description="CURVE encryption and authentication; off only in the demo.")
    keys_dir: Path = Field(Path("/etc/vla-edge/keys"), description="Made by `vla-edge keys generate`.")


class TaskSettings(Section):
    checkpoint_every: int = Field(4, ge=3, le=5, description="Steps between checkpoints.")
    verify_at_checkpoint: StrictBool = False
    state_dir: Path = Field(Path("/var/lib/vla-edge/state"))
    step_timeout_s: float = Field(12.0, gt=0, description="A step that has not finished by then is stalled.")
    keep_checkpoints: int = Field(5, ge=2, description="Checkpoint files kept per task (older ones are removed).")
    inbox_dir: Path = Field(
        Path("/var/lib/vla-edge/tasks"),
        description="`vla-edge run` without --task runs task files dropped here, oldest first (then moves them "
        "to done/ or failed/).",
    )
    idle_poll_s: float = Field(1.0, gt=0, description="How often an idle daemon looks for a new task file.")


class OperatorSettings(Section):
    enabled: StrictBool = True
    host: str = "127.0.0.1"
    port: int = Field(8780, ge=0, le=65535)
    token: SecretStr | None = Field(None, description="Required when host is not a loopback address.")
    answer_timeout_s: float = Field(120.0, gt=0, description="No answer by then: the arm keeps holding.")


class RecorderSettings(Section):
    enabled: StrictBool = True
    dataset_dir: Path = Field(Path("/var/lib/vla-edge/dataset"))
    dataset_format: Literal["v3.0", "v2.1"] = Field(
        "v3.0", description="LeRobot dataset format: v3.0 (LeRobot 0.4 and later), v2.1 for older readers."
    )
    fps: int = Field(10, gt=0)
    video_codec: Literal["libx264", "libsvtav1"] = Field("libx264", description="Encoder of the episode videos.")
    data_file_mb: float = Field(
        16.0, gt=0, description="v3.0: episodes share a data file until it reaches this size (each append rewrites it)."
    )
    video_file_mb: float = Field(
        32.0, gt=0, description="v3.0: episodes share a video file per view until it reaches this size."
    )
    state_names: list[str] | None = Field(
        None, description="Names of observation.state's dimensions (default: the bundle's; schema-1 bundles say "
        "state_0, state_1, ...)."
    )
    actual_names: list[str] | None = Field(
        None, description="Names of the controller's reported `actual` values (default: the action names)."
    )
    instruction_words: list[str] | None = Field(
        None,
        description="Record observation.environment_state: one 0/1 value per word, 1 when the instruction has it "
        "(for ACT / Diffusion Policy, which have no language model).",
    )


class TelemetrySettings(Section):
    metrics_host: str = "127.0.0.1"
    metrics_port: int = Field(9780, ge=0, le=65535)
    log_format: Literal["json", "text"] = "json"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    health_interval_s: float = Field(
        1.0, gt=0, description="CPU, memory, temperature and throttling are read again at a scrape or status "
        "request when the last reading is older than this.")
    rerun: str | None = Field(
        None, description="Log the run to Rerun: a viewer's address (host:port or rerun+http://…/proxy) or a path "
        "ending in .rrd; off when unset (`vla-edge run --rerun`). Needs the rerun extra.")


class RemoteSettings(Section):
    """The remote policy tier: a larger policy on a Triton server, asked only when the local verdict fails."""

    enabled: StrictBool = False
    url: str = Field("127.0.0.1:8001", description="Triton gRPC address (host:port) of `vla-edge remote serve`.")
    model_name: str = "vla_remote"
    deadline_ms: float = Field(
        200.0, gt=0, description="An answer later than this (measured here) is discarded; the local result stands."
    )
    down_after_failures: int = Field(3, ge=1, description="Failures in a row before calls pause (backoff).")
    backoff_initial_ms: float = Field(500.0, gt=0, description="First pause while down; doubles on each failure.")
    backoff_max_ms: float = Field(10000.0, gt=0)
    startup_wait_s: float = Field(
        2.0, ge=0, description="How long start-up waits for the server; the daemon starts without it."
    )


class Settings(BaseModel):
    """Everything the daemon needs, in one validated object."""

    model_config = ConfigDict(extra="forbid")

    camera: CameraSettings = Field(default_factory=CameraSettings)
    policy: PolicySettings = Field(default_factory=PolicySettings)
    scheduler: SchedulerSettings = Field(default_factory=SchedulerSettings)
    confidence: ConfidenceSettings = Field(default_factory=ConfidenceSettings)
    recovery: RecoverySettings = Field(default_factory=RecoverySettings)
    verifier: VerifierSettings = Field(default_factory=VerifierSettings)
    stream: StreamSettings = Field(default_factory=StreamSettings)
    task: TaskSettings = Field(default_factory=TaskSettings)
    operator: OperatorSettings = Field(default_factory=OperatorSettings)
    recorder: RecorderSettings = Field(default_factory=RecorderSettings)
    telemetry: TelemetrySettings = Field(default_factory=TelemetrySettings)
    remote: RemoteSettings = Field(default_factory=RemoteSettings)

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        problems = cross_field_problems(self)
        if problems:
            raise ValueError("; ".join(problems))
        return self


def cross_field_problems(settings: Settings, control_rate_hz: float | None = None) -> list[str]:
    """Settings that are each valid but make no sense together. ``control_rate_hz``: the rate that will run
    (the bundle's when ``scheduler.control_rate_hz`` is unset; ``preflight`` passes it once the bundle is read)."""
    s = settings
    problems = []
    if s.stream.stale_after_ms < 2 * s.stream.heartbeat_ms:
        problems.append(f"stream.stale_after_ms ({s.stream.stale_after_ms:g}) must be at least twice "
                        f"stream.heartbeat_ms ({s.stream.heartbeat_ms:g}): one late heartbeat must not make the "
                        "controller hold")
    rate = control_rate_hz if control_rate_hz is not None else s.scheduler.control_rate_hz
    if rate is not None:
        if not MIN_CONTROL_RATE_HZ <= rate <= MAX_CONTROL_RATE_HZ:
            problems.append(f"the control rate {rate:g} Hz is outside {MIN_CONTROL_RATE_HZ:g}..{MAX_CONTROL_RATE_HZ:g} Hz")
        elif 1000.0 / rate >= s.stream.stale_after_ms:
            problems.append(f"a control period of {1000.0 / rate:g} ms (control rate {rate:g} Hz) is not shorter than "
                            f"stream.stale_after_ms ({s.stream.stale_after_ms:g}): the controller would hold between "
                            "two commands")
    if s.recorder.enabled and ((s.camera.width or 0) % 2 or (s.camera.height or 0) % 2):
        problems.append(f"recorder.enabled needs an even camera.width and camera.height (yuv420p video), got "
                        f"{s.camera.width}x{s.camera.height}")
    if s.remote.backoff_initial_ms > s.remote.backoff_max_ms:
        problems.append(f"remote.backoff_initial_ms ({s.remote.backoff_initial_ms:g}) is above remote.backoff_max_ms "
                        f"({s.remote.backoff_max_ms:g})")
    if s.camera.stall_timeout_ms < s.camera.max_frame_age_ms:
        problems.append(f"camera.stall_timeout_ms ({s.camera.stall_timeout_ms:g}) is below camera.max_frame_age_ms "
                        f"({s.camera.max_frame_age_ms:g}): a camera would count as stalled while its frame is usable")
    return problems


SECTIONS: dict[str, type[Section]] = {
    name: field.annotation for name, field in Settings.model_fields.items()  # type: ignore[misc]
}


def _is_list(annotation: Any) -> bool:
    if get_origin(annotation) is list:
        return True
    return any(get_origin(arg) is list for arg in get_args(annotation))


def _is_bool(annotation: Any) -> bool:
    return annotation is bool or (bool in get_args(annotation) and all(a in (bool, type(None)) for a in get_args(annotation)))


def _env_value(annotation: Any, raw: str) -> Any:
    """An environment string as the value the setting's type takes: switches only true/false, lists from a comma
    list or a JSON list; everything else as the string (pydantic converts it, or names the field it cannot)."""
    text = raw.strip()
    if _is_bool(annotation):
        if text.lower() in ("true", "false"):
            return text.lower() == "true"
        raise ValueError(f"{raw!r} is not a switch value: use true or false")
    if _is_list(annotation):
        if text.startswith("["):
            try:
                value = json.loads(text)
            except ValueError as exc:
                raise ValueError(f"{raw!r} starts like a JSON list but is not one ({exc}); or give a comma list: a,b") from None
            if not isinstance(value, list):
                raise ValueError(f"{raw!r} is not a list")
            return value
        return [item.strip() for item in text.split(",") if item.strip()]
    return raw


def _env_target(model: type[BaseModel], path: list[str], where: str) -> tuple[Any, str]:
    """The annotation a ``VLA_EDGE_SECTION__A__B`` path ends at: fields of models, keys of dicts of models
    (``VLA_EDGE_CAMERA__VIEWS__TOP__SOURCE``). Raises ValueError naming the first part that does not exist."""
    annotation: Any = model
    for i, part in enumerate(path):
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            info = annotation.model_fields.get(part)
            if info is None:
                raise ValueError(f"{where} has no setting {part!r} (settings: {', '.join(annotation.model_fields)})")
            annotation = info.annotation
        elif get_origin(annotation) is dict and i < len(path):
            annotation = get_args(annotation)[1]  # a key of a dict: any name, its value's type
        else:
            raise ValueError(f"{where} is a single value; {'__'.join(path[i:]).upper()} goes too deep")
        where = f"{where}.{part}"
    if not path:
        raise ValueError("name a setting: VLA_EDGE_<SECTION>__<SETTING>")
    return annotation, where


def environment_overrides(environ: Mapping[str, str] | None = None) -> dict[str, dict[str, Any]]:
    """``VLA_EDGE_<SECTION>__<FIELD>=value`` → ``{section: {field: value}}``. Raises ConfigError naming every
    variable whose section or setting does not exist, or whose value a switch or list cannot take.

    Hand-written rather than pydantic-settings' environment source: that source ignores an unknown section under
    a nested delimiter, JSON-decodes list settings (a plain ``CPUExecutionProvider`` was a traceback) and takes
    ``"off"`` and ``0`` for booleans; these lines do what the docs promise instead.
    """
    environ = os.environ if environ is None else environ
    out: dict[str, dict[str, Any]] = {}
    problems: list[str] = []
    for name in sorted(environ):
        if not name.startswith(ENV_PREFIX) or ENV_DELIMITER not in name[len(ENV_PREFIX):]:
            continue
        section, *path = [part.lower() for part in name[len(ENV_PREFIX):].split(ENV_DELIMITER)]
        model = SECTIONS.get(section)
        if model is None:
            problems.append(f"{name}: there is no section {section!r} (sections: {', '.join(SECTIONS)})")
            continue
        try:
            annotation, where = _env_target(model, path, section)
            value = _env_value(annotation, environ[name])
        except ValueError as exc:
            problems.append(f"{name}: {exc}")
            continue
        node = out.setdefault(section, {})
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = value
    if problems:
        raise ConfigError("invalid environment overrides:\n  " + "\n  ".join(problems))
    return out


def _format_validation_error(error: ValidationError, origin: str) -> str:
    lines = [f"invalid configuration ({origin}):"]
    for item in error.errors():
        where = ".".join(str(part) for part in item["loc"]) or "(top level)"
        got = item.get("input")
        shown = "" if isinstance(got, (dict, Settings)) or where == "(top level)" else f" (got {got!r})"
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "bool_type":
            message += " (true or false)"
        lines.append(f"  {where}: {message}{shown}")
    return "\n".join(lines)


def read_config_file(path: Path) -> dict[str, Any]:
    """The TOML file as a dict. Raises ConfigError (one line) for anything that keeps it from being read."""
    path = Path(path)
    try:
        with path.open("rb") as handle:
            raw = handle.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except IsADirectoryError:
        raise ConfigError(f"config file {path} is a directory; give the path of a TOML file") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"config file {path} is larger than {MAX_CONFIG_BYTES} bytes; is it the right file?")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {path} is not UTF-8 text (byte {exc.start})") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    except RecursionError:
        raise ConfigError(f"config file {path} is nested too deeply to be a config") from None


def load_settings(path: Path | None = None, **overrides: Any) -> Settings:
    """Read the TOML file (if any), apply overrides, then the environment. Raises ConfigError."""
    data: dict[str, Any] = {}
    origin = "defaults + environment"
    if path is not None:
        origin = f"{path} + environment"
        data = read_config_file(path)
    layers = [overrides, environment_overrides()]
    for layer in layers:
        for section, values in layer.items():
            current = data.get(section, {})
            if not isinstance(current, dict) or not isinstance(values, dict):
                data[section] = values
                continue
            data[section] = {**current, **values}
    try:
        return Settings(**data)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc, origin)) from None
