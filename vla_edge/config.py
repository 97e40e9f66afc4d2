"""The one configuration object: a TOML file plus ``VLA_EDGE_*`` environment overrides.

Each stage owns one section. Environment variables use ``__`` between section and field, e.g.
``VLA_EDGE_POLICY__PRECISION=int4`` or ``VLA_EDGE_OPERATOR__PORT=9000``; they win over the file.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from vla_edge.errors import ConfigError
from vla_edge.paths import REFERENCE_BUNDLE_DIR


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
    loop_file: bool = Field(False, description="Restart a video file at its end instead of reporting end of stream.")
    reopen_backoff_max_ms: float = Field(
        2000.0, gt=0, description="A lost device or URL is reopened with doubling waits up to this long."
    )
    fourcc: str | None = Field(
        None, min_length=4, max_length=4, description='V4L2 pixel format to ask for, e.g. "MJPG" or "YUYV".'
    )
    capture_width: int | None = Field(None, gt=0, description="V4L2 capture width to ask for (before the resize).")
    capture_height: int | None = Field(None, gt=0, description="V4L2 capture height to ask for.")
    capture_fps: float | None = Field(None, gt=0, description="V4L2 frame rate to ask for.")
    views: dict[str, CameraViewSettings] = Field(
        default_factory=dict, description="One source per camera view the bundle names ([camera.views.<name>]); a "
        "single-view bundle may use camera.source instead, and so may a multi-view bundle's first view."
    )


class PolicySettings(Section):
    bundle: Path = Field(REFERENCE_BUNDLE_DIR, description="Bundle directory (or a link to the active version).")
    precision: Literal["fp32", "int8", "int4"] = "int8"
    providers: list[str] = Field(
        default_factory=lambda: ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
        description="Execution providers in order of preference; those not available are skipped.",
    )
    intra_op_threads: int = Field(
        1, ge=1,
        description="ONNX Runtime threads per session. 1 is fastest for the reference policy (1.35 vs 1.89 ms per "
        "chunk on 2 cores) and leaves the other cores to the control tick and the camera; raise it for large models.",
    )
    num_samples: int = Field(8, ge=1, le=64, description="K: chunks sampled at once for the confidence spread.")
    seed: int = 0
    require_signature: bool = Field(False, description="Refuse a bundle without a valid signature.")
    trusted_keys: list[Path] = Field(default_factory=list, description="ed25519 public keys allowed to sign bundles.")


class SchedulerSettings(Section):
    control_rate_hz: float | None = Field(None, gt=0, description="Defaults to the bundle's control rate.")
    replan_when_remaining: int = Field(4, ge=1, description="Request the next chunk when this few actions remain.")
    boundary: Literal["none", "freeze", "blend"] = Field(
        "none",
        description="Chunk boundary: none (the new chunk takes over; the jerk check guards the junction), freeze "
        "(condition the new chunk on the actions committed during inference) or blend (cross-fade).",
    )
    blend_steps: int = Field(3, ge=1)
    plan_ahead: bool = Field(
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
    enabled: bool = True
    thresholds_file: Path | None = Field(None, description="Calibrated thresholds; defaults to the bundle's.")


class RecoverySettings(Section):
    """What the robot tries by itself before it asks the operator (docs/confidence.md, "Recover before asking")."""

    resample_tries: int = Field(
        0, ge=0, le=10,
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


class StreamSettings(Section):
    command_endpoint: str = Field("tcp://127.0.0.1:5571", description="Daemon binds; controllers connect.")
    state_endpoint: str = Field("tcp://127.0.0.1:5572", description="Controller state and heartbeats back.")
    heartbeat_ms: float = Field(100.0, gt=0)
    stale_after_ms: float = Field(300.0, gt=0, description="Controller holds when no valid command for this long.")
    command_ttl_ms: float = Field(150.0, gt=0, description="A command's deadline is its due time plus this.")
    curve: bool = Field(True, description="CURVE encryption and authentication; off only in the demo.")
    keys_dir: Path = Field(Path("/etc/vla-edge/keys"), description="Made by `vla-edge keys generate`.")


class TaskSettings(Section):
    checkpoint_every: int = Field(4, ge=3, le=5, description="Steps between checkpoints.")
    verify_at_checkpoint: bool = False
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
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(8780, ge=0, le=65535)
    token: SecretStr | None = Field(None, description="Required when host is not a loopback address.")
    answer_timeout_s: float = Field(120.0, gt=0, description="No answer by then: the arm keeps holding.")


class RecorderSettings(Section):
    enabled: bool = True
    dataset_dir: Path = Field(Path("/var/lib/vla-edge/dataset"))
    fps: int = Field(10, gt=0)
    video_codec: Literal["libx264", "libsvtav1"] = Field("libx264", description="Encoder of the episode videos.")


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

    enabled: bool = False
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


class Settings(BaseSettings):
    """Everything the daemon needs, in one validated object."""

    model_config = SettingsConfigDict(
        env_prefix="VLA_EDGE_", env_nested_delimiter="__", extra="forbid", nested_model_default_partial_update=True
    )

    camera: CameraSettings = Field(default_factory=CameraSettings)
    policy: PolicySettings = Field(default_factory=PolicySettings)
    scheduler: SchedulerSettings = Field(default_factory=SchedulerSettings)
    confidence: ConfidenceSettings = Field(default_factory=ConfidenceSettings)
    recovery: RecoverySettings = Field(default_factory=RecoverySettings)
    stream: StreamSettings = Field(default_factory=StreamSettings)
    task: TaskSettings = Field(default_factory=TaskSettings)
    operator: OperatorSettings = Field(default_factory=OperatorSettings)
    recorder: RecorderSettings = Field(default_factory=RecorderSettings)
    telemetry: TelemetrySettings = Field(default_factory=TelemetrySettings)
    remote: RemoteSettings = Field(default_factory=RemoteSettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The file arrives as init values; the environment overrides it.
        return (env_settings, init_settings)


def _format_validation_error(error: ValidationError, origin: str) -> str:
    lines = [f"invalid configuration ({origin}):"]
    for item in error.errors():
        where = ".".join(str(part) for part in item["loc"]) or "(top level)"
        got = item.get("input")
        shown = "" if isinstance(got, dict) else f" (got {got!r})"
        lines.append(f"  {where}: {item['msg']}{shown}")
    return "\n".join(lines)


def load_settings(path: Path | None = None, **overrides: Any) -> Settings:
    """Read the TOML file (if any), apply overrides, then the environment. Raises ConfigError."""
    data: dict[str, Any] = {}
    origin = "defaults + environment"
    if path is not None:
        origin = f"{path} + environment"
        try:
            data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    for section, values in overrides.items():
        merged = dict(data.get(section, {}))
        merged.update(values)
        data[section] = merged
    try:
        return Settings(**data)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc, origin)) from None
