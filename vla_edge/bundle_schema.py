"""Bundle manifest schema 2: one format for the reference model and for ACT, Diffusion Policy, SmolVLA and π0.

A schema-2 manifest declares a small dataflow: named ONNX graphs with roles, the tensors they read (each bound to a
*source*) and write, how camera views and the robot state are prepared, how the action chunk is sampled, and how a
task step ends. ``vla_edge.policy`` executes it; ``upgrade_v1`` turns a schema-1 manifest into the same form, so
the runtime has one code path. Every field is documented in docs/bundle-format.md, with a worked example per
policy type.

Sources (what a graph input is fed):

* ``observation.image.<view>``  one camera view, prepared as the view declares ([1, H, W, 3] or [1, 3, H, W];
  with ``observation.history`` T > 1: [1, T, ...]);
* ``observation.image_mask.<view>``  bool [1] (or [1, T]), true where the view holds a real frame;
* ``observation.state``  the robot state, normalised and padded as declared, [1, S] (or [1, T, S]);
* ``language.tokens`` / ``language.attention_mask``  the instruction through the bundle's tokenizer, [1, L];
* ``sampler.x`` / ``sampler.t``  the sample being denoised [K, H, A] and the time or timestep [K] (step graphs);
* ``<graph>.<output>``  an output of an earlier graph (an instruction, encode or step graph).

Pure data + validation: no ONNX Runtime, no IO here.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from vla_edge.bundle_io import check_name
from vla_edge.errors import BundleError
from vla_edge.bundle import (
    UNLISTED_FILES,
    ActionSpace,
    BundleManifest,
    EmbeddingStats,
    FileDigest,
    TrainingInfo,
)

SCHEMA_VERSION_2 = 2
MAX_HORIZON = 1000  # actions a graph predicts per chunk (ACT: 100; the schema allows any horizon up to this)
MAX_STEPS = 1000  # sampler steps (DDPM at 100 train timesteps runs 100)
MAX_GRAPHS = 256  # a 3.5 B π0 exported per layer block stays far below this
MAX_VECTOR = 1024  # state / action dimensions
MAX_SIDE = 4096  # image height / width

Precision2 = Literal["fp32", "fp16", "int8", "int4"]
PRECISIONS_2: tuple[Precision2, ...] = ("fp32", "fp16", "int8", "int4")
DType = Literal["float32", "float16", "int64", "int32", "int8", "uint8", "bool"]
Role = Literal["instruction", "encode", "step", "auxiliary"]
PolicyType = Literal["reference", "act", "diffusion", "smolvla", "pi0", "pi05", "other"]

# ONNX Runtime's names for the dtypes above (what ``InferenceSession.get_inputs()[i].type`` says).
ORT_DTYPES: dict[str, str] = {
    "float32": "tensor(float)",
    "float16": "tensor(float16)",
    "int64": "tensor(int64)",
    "int32": "tensor(int32)",
    "int8": "tensor(int8)",
    "uint8": "tensor(uint8)",
    "bool": "tensor(bool)",
}

_NAME = r"^[A-Za-z_][A-Za-z0-9_.\-]{0,127}$"
_IDENT = r"^[A-Za-z_][A-Za-z0-9_\-]{0,63}$"  # graph and view names: no dots (a dot separates graph and output)
RUNTIME_SOURCES = ("observation.state", "language.tokens", "language.attention_mask", "sampler.x", "sampler.t")
_VIEW_SOURCES = re.compile(r"^observation\.(image|image_mask)\.([A-Za-z_][A-Za-z0-9_\-]{0,63})$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _finite(values: list[float], what: str) -> None:
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f"{what} must be finite numbers")


# ---- tensors and graphs ----------------------------------------------------------------------------------------
class Tensor(_Strict):
    """A graph output (and the base of a graph input): name, dtype, shape; a string dimension is dynamic."""

    name: str = Field(pattern=_NAME)
    dtype: DType
    shape: list[int | str] = Field(max_length=8)
    batch_axis: int | None = Field(
        0, description="The axis that holds the batch (observations in encode graphs, the K samples in step "
        "graphs); None: the tensor has no batch axis."
    )

    @field_validator("shape")
    @classmethod
    def _dims(cls, shape: list[int | str]) -> list[int | str]:
        for dim in shape:
            if isinstance(dim, int) and not 1 <= dim <= 1 << 31:
                raise ValueError(f"a fixed dimension must be between 1 and 2**31, got {dim}")
            if isinstance(dim, str) and not 1 <= len(dim) <= 64:
                raise ValueError("a dynamic dimension's name must have 1 to 64 characters")
        return shape

    @model_validator(mode="after")
    def _axis(self) -> Tensor:
        if self.batch_axis is not None and not 0 <= self.batch_axis < max(len(self.shape), 1):
            raise ValueError(f"tensor {self.name!r}: batch_axis {self.batch_axis} is outside its shape {self.shape}")
        return self


class GraphInput(Tensor):
    source: str = Field(
        min_length=1, max_length=256,
        description="What feeds this input: a runtime source (observation.*, language.*, sampler.*) or "
        "'<graph>.<output>' of an earlier graph.",
    )
    share: Literal["repeat", "broadcast"] = Field(
        "repeat", description="Step graphs only, for a value computed once per chunk (batch 1): 'repeat' copies it "
        "K times along batch_axis once per chunk; 'broadcast' feeds the batch-1 tensor to every step unchanged "
        "(the graph broadcasts it against the K samples: no copies).",
    )


class GraphDecl(_Strict):
    """One ONNX graph's contract (the same for every precision variant); the files are per variant."""

    role: Role
    purpose: str = Field(
        "", max_length=64, description="Auxiliary graphs: what for, e.g. 'success_detector'. Free text otherwise."
    )
    inputs: list[GraphInput] = Field(max_length=256)
    outputs: list[Tensor] = Field(min_length=1, max_length=256)

    @model_validator(mode="after")
    def _unique(self) -> GraphDecl:
        for kind, items in (("inputs", self.inputs), ("outputs", self.outputs)):
            names = [t.name for t in items]
            if len(set(names)) != len(names):
                raise ValueError(f"{kind} name a tensor twice")
        return self


# ---- observation -----------------------------------------------------------------------------------------------
class Normalisation(_Strict):
    """LeRobot's formulas (``NormalizerProcessorStep``): ``mean_std``: (x − mean) / (std + eps), inverse x·std + mean;
    ``min_max``: 2 (x − low) / d − 1 with d = high − low (eps where d = 0), inverse (x + 1) / 2 · d + low (LeRobot's
    MIN_MAX: low/high = min/max; QUANTILES: q01/q99; QUANTILE10: q10/q90); ``identity``: unchanged.

    ``in_graph``: the graph applies it itself and the runtime feeds raw values (the figures are recorded for tools).
    """

    mode: Literal["mean_std", "min_max", "identity"]
    mean: list[float] | None = None
    std: list[float] | None = None
    low: list[float] | None = None
    high: list[float] | None = None
    eps: float = Field(1e-8, ge=0)
    in_graph: bool = False

    @model_validator(mode="after")
    def _stats(self) -> Normalisation:
        if self.mode == "mean_std":
            if self.mean is None or self.std is None or len(self.mean) != len(self.std):
                raise ValueError("mean_std needs mean and std of the same length")
            _finite([*self.mean, *self.std], "normalisation mean/std")
            if any(s < 0 for s in self.std):
                raise ValueError("normalisation std must not be negative")
        elif self.mode == "min_max":
            if self.low is None or self.high is None or len(self.low) != len(self.high):
                raise ValueError("min_max needs low and high of the same length")
            _finite([*self.low, *self.high], "normalisation low/high")
            if any(lo > hi for lo, hi in zip(self.low, self.high, strict=True)):
                raise ValueError("normalisation low must not exceed high")
        return self

    def size(self) -> int | None:
        values = self.mean if self.mode == "mean_std" else self.low if self.mode == "min_max" else None
        return None if values is None else len(values)


class CameraView(_Strict):
    """One camera view the policy was trained on, and how a captured frame becomes the graph's image tensor.

    Preparation, in this order: uint8 RGB frame (any size) → float32 with pixel/255 mapped linearly onto
    ``value_range`` (``dtype`` float32 only) → per-channel (x − mean) / std when given → ``resize``
    (``resize``: to height×width; ``resize_with_pad``: scaled by one factor to fit, int() of each side as LeRobot
    does, then padded with ``pad_value`` — in the graph's units — on the side(s) ``pad_side`` names; ``none``:
    frames must already have this size) → ``layout``. Done once per frame; a camera is never pre-resized.
    """

    name: str = Field(pattern=_IDENT)
    height: int = Field(gt=0, le=MAX_SIDE)
    width: int = Field(gt=0, le=MAX_SIDE)
    resize: Literal["resize", "resize_with_pad", "none"] = "resize"
    interpolation: Literal["bilinear", "area", "nearest"] = "bilinear"
    pad_side: Literal["both", "left_top"] = Field(
        "both", description="resize_with_pad: 'both' centres the image (π0/openpi: the odd pixel goes right/bottom); "
        "'left_top' pads only left and top (SmolVLA)."
    )
    pad_value: float = 0.0
    dtype: Literal["uint8", "float32"] = "uint8"
    layout: Literal["hwc", "chw"] = "hwc"
    value_range: tuple[float, float] = (0.0, 1.0)
    mean: list[float] | None = Field(None, min_length=3, max_length=3)
    std: list[float] | None = Field(None, min_length=3, max_length=3)
    lerobot_key: str = Field("", max_length=256, description="The feature this view was in training, for tools.")

    @model_validator(mode="after")
    def _consistent(self) -> CameraView:
        if (self.mean is None) != (self.std is None):
            raise ValueError(f"camera {self.name!r}: give both mean and std, or neither")
        if self.dtype == "uint8" and (self.mean is not None or self.value_range != (0.0, 1.0)):
            raise ValueError(f"camera {self.name!r}: mean/std and value_range apply to float32 images only")
        if self.std is not None and any(s <= 0 for s in self.std):
            raise ValueError(f"camera {self.name!r}: std must be positive")
        _finite([self.pad_value, *self.value_range], f"camera {self.name!r} pad_value/value_range")
        return self


class StateSpec(_Strict):
    names: list[str] = Field(min_length=1, max_length=MAX_VECTOR)
    normalisation: Normalisation
    padded_dim: int | None = Field(
        None, ge=1, le=MAX_VECTOR, description="Zero-pad the (normalised) state to this size (SmolVLA, π0: 32)."
    )

    @property
    def dim(self) -> int:
        return len(self.names)

    @model_validator(mode="after")
    def _sizes(self) -> StateSpec:
        size = self.normalisation.size()
        if size is not None and size != self.dim:
            raise ValueError(f"state normalisation has {size} values for {self.dim} names")
        if self.padded_dim is not None and self.padded_dim < self.dim:
            raise ValueError("state padded_dim is smaller than the number of state names")
        return self


class ObservationSpec(_Strict):
    cameras: list[CameraView] = Field(min_length=1, max_length=16)
    state: StateSpec
    history: int = Field(
        1, ge=1, le=16, description="Observations per chunk (Diffusion Policy: n_obs_steps = 2), oldest first; "
        "until that many were seen, the oldest is repeated (LeRobot's populate_queues)."
    )
    history_interval_s: float | None = Field(
        None, gt=0, description="Time between history entries; default 1 / control_rate_hz (one control step)."
    )

    @model_validator(mode="after")
    def _unique(self) -> ObservationSpec:
        names = [c.name for c in self.cameras]
        if len(set(names)) != len(names):
            raise ValueError("camera view names must be unique")
        return self


# ---- language --------------------------------------------------------------------------------------------------
class WordListTokenizer(_Strict):
    """The reference's tokenizer: lower-case words looked up in ``vocabulary`` (id = position, 0 = <pad>)."""

    kind: Literal["words"]
    vocabulary: list[str] = Field(min_length=2, max_length=1_000_000)


class StateInPrompt(_Strict):
    """π0.5: the normalised state (padded to ``pad_to``) discretised into ``bins`` bins over [-1, 1]
    (np.digitize(s, linspace(-1, 1, bins + 1)[:-1]) − 1) and written into the prompt as space-separated ints."""

    bins: int = Field(256, ge=2, le=65536)
    pad_to: int | None = Field(None, ge=1, le=MAX_VECTOR)


class HfTokenizer(_Strict):
    """A Hugging Face ``tokenizers`` JSON shipped in the bundle (loaded with the small ``tokenizers`` wheel)."""

    kind: Literal["hf_tokenizers"]
    file: str = Field(min_length=1, description="tokenizer.json, listed in files.")
    prompt: str = Field(
        "{task}", max_length=1024, description="Template: {task} (the instruction) and, with state_in_prompt, "
        "{state}. SmolVLA, π0: '{task}\\n'; π0.5: 'Task: {task}, State: {state};\\nAction: '."
    )
    clean_task: bool = Field(False, description="strip(), '_' and newlines → spaces (π0.5's prompt)")
    max_length: int = Field(48, ge=1, le=8192)
    padding: Literal["max_length", "longest"] = "max_length"
    truncation: bool = True
    add_special_tokens: bool = True
    pad_id: int = Field(0, ge=0)
    state_in_prompt: StateInPrompt | None = None
    stand_in: bool = Field(
        False, description="True: not the checkpoint's tokenizer but a stand-in trained here (random-weight test "
        "builds, whose real tokenizer lives on a model hub this machine cannot reach). Labelled wherever shown."
    )
    origin: str = Field("", max_length=1024, description="Where the tokenizer came from.")

    @model_validator(mode="after")
    def _prompt(self) -> HfTokenizer:
        if "{task}" not in self.prompt:
            raise ValueError("tokenizer prompt must contain {task}")
        if ("{state}" in self.prompt) != (self.state_in_prompt is not None):
            raise ValueError("tokenizer prompt has {state} exactly when state_in_prompt is set")
        return self


class LanguageSpec(_Strict):
    tokenizer: Annotated[WordListTokenizer | HfTokenizer, Field(discriminator="kind")]


# ---- actions and samplers --------------------------------------------------------------------------------------
class ActionSpec(_Strict):
    """The action chunk: names and limits are ``action_space``; this is its normalisation and layout.

    The graphs predict ``model_horizon`` actions of ``padded_dim`` (or len(names)) values in normalised units; the
    daemon executes ``execute_length`` of them starting at ``execute_start`` (Diffusion Policy: n_obs_steps − 1 and
    n_action_steps), the first len(names) values of each, denormalised and clipped to the limits.
    """

    normalisation: Normalisation
    padded_dim: int | None = Field(None, ge=1, le=MAX_VECTOR)
    model_horizon: int = Field(ge=1, le=MAX_HORIZON)
    execute_start: int = Field(0, ge=0)
    execute_length: int = Field(ge=1, le=MAX_HORIZON)

    @model_validator(mode="after")
    def _window(self) -> ActionSpec:
        if self.normalisation.in_graph:
            raise ValueError("action normalisation is applied by the runtime (the sampler works in normalised units)")
        if self.execute_start + self.execute_length > self.model_horizon:
            raise ValueError(
                f"execute_start + execute_length = {self.execute_start + self.execute_length} exceeds "
                f"model_horizon {self.model_horizon}"
            )
        return self


class FlowMatchingEuler(_Strict):
    """Euler integration of a flow from noise to actions in ``steps`` equal steps.

    The time fed to the graph runs from ``time_start`` (x is pure noise) to ``time_end`` (x is the action chunk):
    t_i = time_start + (time_end − time_start)·i/steps, times ``time_scale``. ``velocity`` says what the graph
    predicts: ``noise_minus_action`` (SmolVLA, π0: v = ε − a, time 1 → 0) or ``action_minus_noise`` (the reference:
    time 0 → 1). The update moves x toward the action: x ← x − v/steps or x ← x + v/steps respectively.
    """

    kind: Literal["flow_matching_euler"]
    steps: int = Field(ge=1, le=MAX_STEPS)
    time_start: float
    time_end: float
    velocity: Literal["noise_minus_action", "action_minus_noise"]
    time_scale: float = Field(1.0, gt=0)
    output: str = Field(description="'<step graph>.<output>': the velocity.")

    @model_validator(mode="after")
    def _times(self) -> FlowMatchingEuler:
        _finite([self.time_start, self.time_end], "sampler time_start/time_end")
        if self.time_start == self.time_end:
            raise ValueError("sampler time_start and time_end must differ")
        return self


class Diffusion(_Strict):
    """DDPM / DDIM exactly as diffusers' schedulers (what LeRobot's Diffusion Policy calls).

    Betas: ``linear`` (linspace(beta_start, beta_end)), ``scaled_linear`` (linspace of square roots, squared) or
    ``squaredcos_cap_v2`` (the cosine schedule, each beta capped at 0.999). Timesteps: ``timestep_spacing``
    'leading' = arange(0, N)·(T // N) reversed, + steps_offset. ``prediction_type`` is what the graph outputs.
    ``clip_sample`` clips the predicted x0 to ±clip_sample_range. DDPM adds variance noise at every step with t > 0
    (``variance_type`` fixed_small); DDIM with ``eta`` > 0 too. All noise — the initial sample, then each step's, in
    step order — comes from the runner's seeded generator, or is passed in by the caller (parity checks).
    """

    kind: Literal["ddpm", "ddim"]
    num_train_timesteps: int = Field(ge=1, le=100_000)
    num_inference_steps: int = Field(ge=1, le=MAX_STEPS)
    beta_schedule: Literal["linear", "scaled_linear", "squaredcos_cap_v2"]
    beta_start: float = Field(1e-4, gt=0, lt=1)
    beta_end: float = Field(0.02, gt=0, lt=1)
    prediction_type: Literal["epsilon", "sample", "v_prediction"]
    clip_sample: bool = True
    clip_sample_range: float = Field(1.0, gt=0)
    timestep_spacing: Literal["leading", "trailing", "linspace"] = "leading"
    steps_offset: int = Field(0, ge=0)
    variance_type: Literal["fixed_small", "fixed_small_log", "fixed_large"] = "fixed_small"
    eta: float = Field(0.0, ge=0)
    set_alpha_to_one: bool = True
    output: str = Field(description="'<step graph>.<output>': ε, x0 or v, per prediction_type.")

    @model_validator(mode="after")
    def _steps(self) -> Diffusion:
        if self.num_inference_steps > self.num_train_timesteps:
            raise ValueError("num_inference_steps cannot exceed num_train_timesteps")
        return self


class SinglePass(_Strict):
    """One deterministic pass (ACT): the step graph runs once and ``output`` is the normalised chunk
    [1, model_horizon, A]. K = 1 (no noise to vary), so the ``spread`` confidence signal does not apply."""

    kind: Literal["single_pass"]
    output: str = Field(description="'<graph>.<output>': the normalised action chunk.")


Sampler = Annotated[FlowMatchingEuler | Diffusion | SinglePass, Field(discriminator="kind")]


# ---- step end, confidence, provenance --------------------------------------------------------------------------
class SuccessCheck(_Strict):
    graph: str = Field(pattern=_IDENT, description="An auxiliary graph (purpose 'success_detector').")
    output: str = Field(pattern=_NAME, description="Its output: P(step done), shape [1] or [1, 1].")
    threshold: float = Field(0.5, gt=0, lt=1)
    every_chunks: int = Field(1, ge=1)


class StepEnd(_Strict):
    """How a task step ends; whichever rule fires first. At least one must be set.

    ``done_action``: an action dimension (by name) whose executed value > ``done_threshold`` means 'done' (the
    reference's 'done'); ``max_chunks`` / ``max_seconds``: the policy's step lasts this many chunks / seconds, then
    the step is reported done and the checkpoint verification (or ``success``) judges it; ``success``: an auxiliary
    success-detector graph; ``external``: the task runner's own success check (a judge or the operator) decides.
    """

    done_action: str | None = None
    done_threshold: float = 0.5
    max_chunks: int | None = Field(None, ge=1)
    max_seconds: float | None = Field(None, gt=0)
    success: SuccessCheck | None = None
    external: bool = False

    @model_validator(mode="after")
    def _some_rule(self) -> StepEnd:
        if self.done_action is None and self.max_chunks is None and self.max_seconds is None \
                and self.success is None and not self.external:
            raise ValueError("step_end needs at least one rule (done_action, max_chunks, max_seconds, success, "
                             "external)")
        return self


class PolicyInfo(_Strict):
    type: PolicyType
    random_weights: bool = Field(
        description="True: random weights of a real architecture (tests, benchmarks). Shown wherever the bundle is."
    )
    parameters: int = Field(ge=0)
    source: str = Field("", max_length=4096, description="Where it came from: checkpoint folder, LeRobot version.")
    config: dict[str, str | int | float | bool | None] = Field(
        default_factory=dict, description="The training config values that matter at run time, for the record."
    )


class ClosedLoop(_Strict):
    steps: int = Field(ge=0)
    chains: int = Field(ge=0)
    per_step_success: float = Field(ge=0, le=1)
    success_margin: float = Field(ge=0, le=1)


class Parity(_Strict):
    """How a variant compares with a reference on the same observations and the same noise (every step's)."""

    reference: str = Field(max_length=512, description="e.g. 'lerobot 0.6.1 select_action, torch fp32' or 'fp32'.")
    observations: int = Field(ge=0)
    action_mae: float = Field(ge=0, description="Mean |a − a_ref|, physical units.")
    action_max_abs_error: float = Field(ge=0)
    cosine: float | None = Field(None, ge=-1, le=1, description="Of the flattened chunks, mean over observations.")
    reference_spread: float | None = Field(
        None, ge=0, description="Std of the reference's actions across the observations: a policy whose outputs "
        "barely vary would pass cosine trivially."
    )
    mae_bound: float | None = Field(None, ge=0)
    cosine_bound: float | None = Field(None, ge=-1, le=1)
    closed_loop: ClosedLoop | None = None
    passed: bool


class GraphFile(_Strict):
    file: str = Field(min_length=1)
    external_data: list[str] = Field(
        default_factory=list, max_length=4096,
        description="Files holding the graph's external initializers (large models), by their location in the graph, "
        "relative to the graph file's directory; each is also listed in files.",
    )


class Variant(_Strict):
    precision: Precision2
    quantization: str = Field(max_length=4096, description="How the graphs were produced; which ops stayed fp32.")
    graphs: dict[str, GraphFile]
    size_bytes: int = Field(ge=0)
    parity: Parity | None = None


class BundleManifestV2(_Strict):
    """A schema-2 manifest. See docs/bundle-format.md."""

    schema_version: Literal[2] = SCHEMA_VERSION_2
    name: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.-]+$")
    version: str = Field(min_length=1, max_length=64)
    description: str = Field("", max_length=10_000)
    created_utc: str = Field(max_length=64)
    policy: PolicyInfo
    control_rate_hz: float = Field(gt=0, le=1000)
    observation: ObservationSpec
    language: LanguageSpec
    action_space: ActionSpace
    action: ActionSpec
    graphs: dict[str, GraphDecl] = Field(min_length=1, max_length=MAX_GRAPHS)
    sampler: Sampler
    step_end: StepEnd
    embedding: str | None = Field(
        None, description="'<graph>.<output>' [1, E] for the ood confidence signal; None: ood does not apply."
    )
    embedding_stats: EmbeddingStats | None = None
    confidence_thresholds: dict[str, float] | None = None
    files: dict[str, FileDigest] = Field(max_length=100_000)
    variants: dict[Precision2, Variant]
    training: TrainingInfo | None = None

    # ---- derived ---------------------------------------------------------------------------------------------
    @property
    def horizon(self) -> int:
        """Actions per executed chunk."""
        return self.action.execute_length

    @property
    def action_dim(self) -> int:
        return len(self.action_space.names)

    @property
    def state_dim(self) -> int:
        return self.observation.state.dim

    @property
    def action_names(self) -> list[str]:
        return list(self.action_space.names)

    @property
    def state_names(self) -> list[str]:
        return list(self.observation.state.names)

    @property
    def model_action_dim(self) -> int:
        return self.action.padded_dim or self.action_dim

    def graphs_with_role(self, role: Role) -> list[str]:
        return [name for name, graph in self.graphs.items() if graph.role == role]

    # ---- validation ------------------------------------------------------------------------------------------
    @model_validator(mode="after")
    def _consistent(self) -> BundleManifestV2:
        for name in self.graphs:
            if not re.match(_IDENT, name):
                raise ValueError(f"graph name {name!r} must be letters, digits, '_' or '-' (no dots)")
        self._check_files()
        self._check_dataflow()
        self._check_actions()
        return self

    def _check_files(self) -> None:
        for path in self.files:
            try:
                check_name(path)
            except BundleError as exc:
                raise ValueError(f"file path {path!r} must be relative, inside the bundle, and UTF-8: {exc}") from None
            if path in UNLISTED_FILES:
                raise ValueError(f"file path {path!r} must be relative, inside the bundle, and not a reserved name")
        if not self.variants:
            raise ValueError("a bundle needs at least one variant")
        if "fp32" not in self.variants:
            raise ValueError("a bundle needs the fp32 variant (the reference for parity)")
        for precision, variant in self.variants.items():
            if variant.precision != precision:
                raise ValueError(f"variant {precision!r} says precision {variant.precision!r}")
            if set(variant.graphs) != set(self.graphs):
                raise ValueError(
                    f"variant {precision!r} has files for graphs {sorted(variant.graphs)}; the manifest declares "
                    f"{sorted(self.graphs)}"
                )
            for graph_name, gf in variant.graphs.items():
                folder = gf.file.rsplit("/", 1)[0] + "/" if "/" in gf.file else ""
                for rel in [gf.file, *(folder + e for e in gf.external_data)]:
                    if rel not in self.files:
                        raise ValueError(f"variant {precision!r} graph {graph_name!r}: {rel!r} is not listed in files")
        tokenizer = self.language.tokenizer
        if isinstance(tokenizer, HfTokenizer) and tokenizer.file not in self.files:
            raise ValueError(f"tokenizer file {tokenizer.file!r} is not listed in files")
        if self.confidence_thresholds is not None:
            _finite(list(self.confidence_thresholds.values()), "confidence_thresholds")

    def _check_dataflow(self) -> None:
        views = {c.name for c in self.observation.cameras}
        produced: dict[str, Tensor] = {}
        everything = {f"{g}.{o.name}" for g, graph in self.graphs.items() for o in graph.outputs}
        # Graphs run by role (instruction, encode, step), in declaration order within a role.
        for role in ("instruction", "encode", "step", "auxiliary"):
            for graph_name in self.graphs_with_role(role):  # type: ignore[arg-type]
                graph = self.graphs[graph_name]
                for spec in graph.inputs:
                    where = f"graph {graph_name!r} input {spec.name!r}"
                    src = spec.source
                    view = _VIEW_SOURCES.match(src)
                    if view:
                        if view.group(2) not in views:
                            raise ValueError(f"{where}: no camera view {view.group(2)!r} (views: {sorted(views)})")
                        if role == "instruction":
                            raise ValueError(f"{where}: an instruction graph may read language.* only")
                    elif src in RUNTIME_SOURCES:
                        if src.startswith("sampler.") and role != "step":
                            raise ValueError(f"{where}: {src} feeds step graphs only")
                        if src.startswith("sampler.") and self.sampler.kind == "single_pass":
                            raise ValueError(f"{where}: a single_pass sampler provides no {src}")
                        if role == "instruction" and not src.startswith("language."):
                            raise ValueError(f"{where}: an instruction graph may read language.* only")
                    elif src in produced:
                        upstream = produced[src]
                        if upstream.dtype != spec.dtype:
                            raise ValueError(f"{where}: {src} is {upstream.dtype}, the input is {spec.dtype}")
                    elif src in everything:
                        raise ValueError(f"{where}: {src} is computed after this graph (graphs run instruction, "
                                         "encode, step, auxiliary; in declaration order within a role)")
                    else:
                        raise ValueError(f"{where}: source {src!r} is neither a runtime source nor an output of an "
                                         "earlier graph")
                    if src in ("language.tokens", "language.attention_mask", "observation.state") \
                            or src.startswith("observation.image_mask."):
                        allowed = {"language.tokens": ("int64", "int32"), "observation.state": ("float32", "float16")}
                        if spec.dtype not in allowed.get(src, ("bool", "int64", "int32", "float32")):
                            raise ValueError(f"{where}: {src} cannot be fed as {spec.dtype}")
                for out in graph.outputs:
                    produced[f"{graph_name}.{out.name}"] = out
        sampler_graph = self.sampler.output.partition(".")[0]
        if self.sampler.output not in produced:
            raise ValueError(f"sampler output {self.sampler.output!r} is not an output of any graph")
        if self.sampler.kind != "single_pass" and self.graphs[sampler_graph].role != "step":
            raise ValueError(f"sampler output {self.sampler.output!r} must come from a step graph")
        if self.sampler.kind == "single_pass" and self.graphs[sampler_graph].role not in ("encode", "step"):
            raise ValueError(f"single_pass output {self.sampler.output!r} must come from an encode or step graph")
        if self.sampler.kind != "single_pass" and not self.graphs_with_role("step"):
            raise ValueError(f"a {self.sampler.kind} sampler needs a step graph")
        if self.embedding is not None:
            if self.embedding not in produced or self.graphs[self.embedding.split(".")[0]].role not in (
                "instruction", "encode"
            ):
                raise ValueError(f"embedding {self.embedding!r} must be an output of an instruction or encode graph")
            if self.embedding_stats is None:
                raise ValueError("embedding needs embedding_stats")
        if self.step_end.success is not None:
            check = self.step_end.success
            graph = self.graphs.get(check.graph)
            if graph is None or graph.role != "auxiliary":
                raise ValueError(f"step_end.success.graph {check.graph!r} must be an auxiliary graph")
            if check.output not in {o.name for o in graph.outputs}:
                raise ValueError(f"step_end.success.output {check.output!r} is not an output of {check.graph!r}")
            if any(i.source.startswith("sampler.") for i in graph.inputs):
                raise ValueError("a success detector cannot read sampler.* sources")

    def _check_actions(self) -> None:
        a = self.action_dim
        size = self.action.normalisation.size()
        if size is not None and size != a:
            raise ValueError(f"action normalisation has {size} values for {a} action names")
        if self.action.padded_dim is not None and self.action.padded_dim < a:
            raise ValueError("action padded_dim is smaller than the number of action names")
        names = self.action_space.names
        if len(set(names)) != len(names):
            raise ValueError("action names must be unique")
        if len(set(self.observation.state.names)) != self.state_dim:
            raise ValueError("state names must be unique")
        if self.step_end.done_action is not None and self.step_end.done_action not in names:
            raise ValueError(f"step_end.done_action {self.step_end.done_action!r} is not an action name ({names})")
        if self.embedding_stats is not None and self.embedding is None:
            raise ValueError("embedding_stats without an embedding output")
        prompt = self.language.tokenizer
        if isinstance(prompt, HfTokenizer) and prompt.state_in_prompt is not None:
            pad = prompt.state_in_prompt.pad_to
            if pad is not None and pad < self.state_dim:
                raise ValueError("state_in_prompt.pad_to is smaller than the state")


# ---- schema 1 → 2 ------------------------------------------------------------------------------------------------
V1_VIEW = "main"


def upgrade_v1(m: BundleManifest, state_names: list[str] | None = None) -> BundleManifestV2:
    """The schema-2 manifest of a schema-1 bundle (same files, same graphs; nothing is re-exported).

    Schema 1 had no state names; ``state_names`` gives them, otherwise state_0, state_1, ...
    """
    names = list(state_names) if state_names is not None else [f"state_{i}" for i in range(m.state_dim)]
    if len(names) != m.state_dim:
        raise ValueError(f"{len(names)} state names for state_dim {m.state_dim}")
    norm = m.normalisation
    h, a = m.horizon, m.action_dim
    graphs = {
        "instruction_encoder": GraphDecl(
            role="instruction",
            inputs=[GraphInput(name="tokens", dtype="int64", shape=[1, "words"], source="language.tokens")],
            outputs=[Tensor(name="instruction_features", dtype="float32", shape=[1, m.instruction_features_dim])],
        ),
        "observation_encoder": GraphDecl(
            role="encode",
            inputs=[
                GraphInput(name="image", dtype="uint8", shape=[1, m.image_height, m.image_width, 3],
                           source=f"observation.image.{V1_VIEW}"),
                GraphInput(name="state", dtype="float32", shape=[1, m.state_dim], source="observation.state"),
                GraphInput(name="instruction_features", dtype="float32", shape=[1, m.instruction_features_dim],
                           source="instruction_encoder.instruction_features"),
            ],
            outputs=[Tensor(name="context", dtype="float32", shape=[1, m.context_dim]),
                     Tensor(name="embedding", dtype="float32", shape=[1, m.embedding_dim])],
        ),
        "denoiser": GraphDecl(
            role="step",
            inputs=[
                GraphInput(name="noisy_actions", dtype="float32", shape=["samples", h, a], source="sampler.x"),
                GraphInput(name="timestep", dtype="float32", shape=["samples"], source="sampler.t"),
                GraphInput(name="context", dtype="float32", shape=["samples", m.context_dim],
                           source="observation_encoder.context", share="repeat"),
            ],
            outputs=[Tensor(name="velocity", dtype="float32", shape=["samples", h, a])],
        ),
    }
    variants = {}
    for precision, v in m.variants.items():
        parity = None
        if v.parity is not None:
            p = v.parity
            parity = Parity(
                reference="fp32 variant", observations=p.held_out_observations, action_mae=p.action_mae,
                action_max_abs_error=p.action_max_abs_error, mae_bound=p.action_error_bound,
                closed_loop=ClosedLoop(steps=p.closed_loop_steps, chains=p.closed_loop_chains,
                                       per_step_success=p.per_step_success, success_margin=p.success_margin),
                passed=p.passed,
            )
        variants[precision] = Variant(
            precision=precision, quantization=v.quantization, size_bytes=v.size_bytes, parity=parity,
            graphs={name: GraphFile(file=g.file) for name, g in v.graphs.items()},
        )
    return BundleManifestV2(
        name=m.name, version=m.version, description=m.description, created_utc=m.created_utc,
        policy=PolicyInfo(type="reference", random_weights=False,
                          parameters=m.training.parameters if m.training else 0,
                          source="schema-1 bundle, upgraded"),
        control_rate_hz=m.control_rate_hz,
        observation=ObservationSpec(
            cameras=[CameraView(name=V1_VIEW, height=m.image_height, width=m.image_width, resize="resize",
                                interpolation="area")],
            state=StateSpec(names=names, normalisation=Normalisation(
                mode="mean_std", mean=norm.state_mean, std=norm.state_std, eps=0.0, in_graph=True)),
        ),
        language=LanguageSpec(tokenizer=WordListTokenizer(kind="words", vocabulary=list(m.vocabulary))),
        action_space=m.action_space,
        action=ActionSpec(
            normalisation=Normalisation(mode="min_max", low=norm.action_low, high=norm.action_high, eps=0.0),
            model_horizon=h, execute_length=h,
        ),
        graphs=graphs,
        sampler=FlowMatchingEuler(kind="flow_matching_euler", steps=m.denoising_steps, time_start=0.0, time_end=1.0,
                                  velocity="action_minus_noise", output="denoiser.velocity"),
        step_end=StepEnd(done_action="done") if "done" in m.action_space.names else StepEnd(external=True),
        embedding="observation_encoder.embedding",
        embedding_stats=m.embedding_stats,
        confidence_thresholds=m.confidence_thresholds,
        files=m.files,
        variants=variants,
        training=m.training,
    )
