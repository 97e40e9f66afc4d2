"""Model bundles: a directory of ONNX graphs plus ``manifest.json``, validated and checksummed before use.

Layout::

    manifest.json            BundleManifest (this module), lists every other file with its sha256
    fp32/  int8/  int4/      instruction_encoder.onnx, observation_encoder.onnx, denoiser.onnx
    signature.json           optional ed25519 signature (vla_edge.signing); not listed in the manifest

``load_bundle`` refuses a bundle with a missing, corrupted or unexpected file, naming the file.
See docs/bundle-format.md for every field.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from vla_edge.errors import BundleError
from vla_edge.tokenizer import WordTokenizer

SCHEMA_VERSION = 1
MANIFEST_FILE = "manifest.json"
SIGNATURE_FILE = "signature.json"
# Written by the signing step, not by the build; never counted as an unexpected file.
UNLISTED_FILES = frozenset({MANIFEST_FILE, SIGNATURE_FILE})

Precision = Literal["fp32", "int8", "int4"]
GraphName = Literal["instruction_encoder", "observation_encoder", "denoiser"]
PRECISIONS: tuple[Precision, ...] = ("fp32", "int8", "int4")
GRAPH_NAMES: tuple[GraphName, ...] = ("instruction_encoder", "observation_encoder", "denoiser")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _finite(values: list[float], what: str) -> list[float]:
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f"{what} must be finite numbers")
    return values


class FileDigest(_Strict):
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size_bytes: int = Field(ge=0)


class TensorSpec(_Strict):
    """One graph input or output. A string dimension is dynamic (e.g. "batch")."""

    name: str = Field(min_length=1)
    dtype: Literal["float32", "uint8", "int64"]
    shape: list[int | str]


class GraphSpec(_Strict):
    file: str = Field(min_length=1, description="Path relative to the bundle directory, '/'-separated.")
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]


class ParityFigures(_Strict):
    """How a variant compares with fp32: same observations, same noise seeds (so the gap is quantization's)."""

    held_out_observations: int = Field(ge=0)
    action_mae: float = Field(ge=0, description="Mean |a - a_fp32| over held-out chunks, physical units.")
    action_max_abs_error: float = Field(ge=0)
    action_error_bound: float = Field(ge=0, description="The build fails when action_mae exceeds this.")
    closed_loop_steps: int = Field(ge=0, description="Task steps (instructions) judged in closed loop.")
    closed_loop_chains: int = Field(ge=0)
    per_step_success: float = Field(ge=0, le=1)
    success_margin: float = Field(ge=0, le=1, description="Allowed drop in per-step success below fp32.")
    passed: bool


class VariantSpec(_Strict):
    precision: Precision
    quantization: str = Field(description="How the graphs were produced, and which ops stayed fp32.")
    graphs: dict[GraphName, GraphSpec]
    size_bytes: int = Field(ge=0)
    parity: ParityFigures | None = None

    @field_validator("graphs")
    @classmethod
    def _all_graphs(cls, graphs: dict[str, GraphSpec]) -> dict[str, GraphSpec]:
        missing = [name for name in GRAPH_NAMES if name not in graphs]
        if missing:
            raise ValueError(f"graphs missing: {', '.join(missing)}")
        return graphs


class ActionSpace(_Strict):
    """Physical action limits. ``max_delta`` is the largest change per control tick, per dimension."""

    names: list[str] = Field(min_length=1)
    low: list[float]
    high: list[float]
    max_delta: list[float]

    @model_validator(mode="after")
    def _consistent(self) -> ActionSpace:
        n = len(self.names)
        for field_name in ("low", "high", "max_delta"):
            values = getattr(self, field_name)
            if len(values) != n:
                raise ValueError(f"action_space.{field_name} has {len(values)} values, expected {n} (one per name)")
            _finite(values, f"action_space.{field_name}")
        if any(lo >= hi for lo, hi in zip(self.low, self.high, strict=True)):
            raise ValueError("action_space.low must be below action_space.high in every dimension")
        if any(d <= 0 for d in self.max_delta):
            raise ValueError("action_space.max_delta must be positive")
        return self


class Normalisation(_Strict):
    """Statistics baked into the graphs (recorded here for tools that need them outside the graphs).

    Images: (pixel/255 - image_mean) / image_std per RGB channel. State: (s - state_mean) / state_std.
    Actions: a_norm = 2 (a - action_low) / (action_high - action_low) - 1, so the action space maps to [-1, 1].
    """

    image_mean: list[float] = Field(min_length=3, max_length=3)
    image_std: list[float] = Field(min_length=3, max_length=3)
    state_mean: list[float]
    state_std: list[float]
    action_low: list[float]
    action_high: list[float]

    @model_validator(mode="after")
    def _positive(self) -> Normalisation:
        for name in ("image_mean", "image_std", "state_mean", "state_std", "action_low", "action_high"):
            _finite(getattr(self, name), f"normalisation.{name}")
        if any(s <= 0 for s in [*self.image_std, *self.state_std]):
            raise ValueError("normalisation std values must be positive")
        if any(lo >= hi for lo, hi in zip(self.action_low, self.action_high, strict=True)):
            raise ValueError("normalisation.action_low must be below action_high")
        return self


class EmbeddingStats(_Strict):
    """Training-set statistics of the observation encoder's ``embedding`` output, for out-of-distribution scores.

    Mahalanobis distance d(e) = sqrt((e - mean)^T precision (e - mean)); ``precision`` is the inverse of the
    (shrunk) covariance. ``distance_quantiles`` are d's quantiles on the training set ("0.5", "0.95", ...).
    """

    dim: int = Field(gt=0)
    num_samples: int = Field(gt=0)
    mean: list[float]
    std: list[float]
    covariance: list[list[float]]
    precision: list[list[float]]
    shrinkage: float = Field(ge=0, le=1, description="Weight of the diagonal in the shrunk covariance.")
    distance_quantiles: dict[str, float]

    @model_validator(mode="after")
    def _shapes(self) -> EmbeddingStats:
        if len(self.mean) != self.dim or len(self.std) != self.dim:
            raise ValueError(f"embedding_stats mean/std must have {self.dim} values")
        for name in ("covariance", "precision"):
            matrix = getattr(self, name)
            if len(matrix) != self.dim or any(len(row) != self.dim for row in matrix):
                raise ValueError(f"embedding_stats.{name} must be {self.dim}x{self.dim}")
        _finite(self.mean, "embedding_stats.mean")
        _finite(self.std, "embedding_stats.std")
        return self


class TrainingInfo(_Strict):
    parameters: int = Field(ge=0)
    train_seconds: float = Field(ge=0)
    iterations: int = Field(ge=0)
    demo_chains: int = Field(ge=0)
    demo_frames: int = Field(ge=0)
    final_loss: float
    seed: int
    torch_version: str  # the torch that exported the graphs
    threads: int = Field(ge=1)
    device: str = "cpu"  # where it was trained ("cuda": a GPU)
    batch_size: int | None = Field(None, ge=1)


class BundleManifest(_Strict):
    """Everything the runtime needs to know about a bundle, besides the graphs themselves."""

    schema_version: Literal[1] = SCHEMA_VERSION
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    version: str = Field(min_length=1)
    description: str = ""
    created_utc: str
    image_height: int = Field(gt=0)
    image_width: int = Field(gt=0)
    state_dim: int = Field(gt=0)
    action_dim: int = Field(gt=0)
    horizon: int = Field(ge=1, le=64, description="H: actions per chunk.")
    denoising_steps: int = Field(ge=1, le=100, description="Euler steps of the flow-matching sampler.")
    sampler: Literal["flow_matching_euler"] = "flow_matching_euler"
    control_rate_hz: float = Field(gt=0)
    instruction_features_dim: int = Field(gt=0)
    context_dim: int = Field(gt=0)
    embedding_dim: int = Field(gt=0)
    vocabulary: list[str] = Field(min_length=2)
    action_space: ActionSpace
    normalisation: Normalisation
    embedding_stats: EmbeddingStats
    files: dict[str, FileDigest] = Field(description="Every file of the bundle except manifest and signature.")
    variants: dict[Precision, VariantSpec]
    confidence_thresholds: dict[str, float] | None = Field(
        None, description="Calibrated thresholds of the confidence signals; filled by calibration."
    )
    training: TrainingInfo | None = None

    @model_validator(mode="after")
    def _consistent(self) -> BundleManifest:
        if not self.variants:
            raise ValueError("a bundle needs at least one variant")
        if "fp32" not in self.variants:
            raise ValueError("a bundle needs the fp32 variant (the reference for parity)")
        for precision, variant in self.variants.items():
            if variant.precision != precision:
                raise ValueError(f"variant {precision!r} says precision {variant.precision!r}")
            for graph in variant.graphs.values():
                if graph.file not in self.files:
                    raise ValueError(f"graph file {graph.file!r} of variant {precision!r} is not listed in files")
        if len(self.action_space.names) != self.action_dim:
            raise ValueError(f"action_space has {len(self.action_space.names)} names but action_dim={self.action_dim}")
        if len(self.normalisation.action_low) != self.action_dim:
            raise ValueError("normalisation.action_low/high must have action_dim values")
        if len(self.normalisation.state_mean) != self.state_dim or len(self.normalisation.state_std) != self.state_dim:
            raise ValueError("normalisation.state_mean/std must have state_dim values")
        if self.embedding_stats.dim != self.embedding_dim:
            raise ValueError("embedding_stats.dim must equal embedding_dim")
        for path in self.files:
            parts = path.split("/")
            if path.startswith("/") or ".." in parts or "\\" in path or path in UNLISTED_FILES:
                raise ValueError(f"file path {path!r} must be relative, inside the bundle, and not a reserved name")
        if self.confidence_thresholds is not None:
            _finite(list(self.confidence_thresholds.values()), "confidence_thresholds")
        return self


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def digest_files(root: Path, relative_paths: list[str]) -> dict[str, FileDigest]:
    """sha256 and size of each listed file, for writing a manifest."""
    return {
        rel: FileDigest(sha256=sha256_file(root / rel), size_bytes=(root / rel).stat().st_size)
        for rel in sorted(relative_paths)
    }


def _format_validation_error(error: ValidationError, origin: Path) -> str:
    lines = [f"bundle manifest {origin} is invalid:"]
    for item in error.errors()[:10]:
        where = ".".join(str(part) for part in item["loc"]) or "(top level)"
        lines.append(f"  {where}: {item['msg']}")
    return "\n".join(lines)


def read_manifest(path: Path) -> BundleManifest:
    """Parse and validate a manifest file. Raises BundleError."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise BundleError(f"bundle manifest not found: {path} (is this a bundle directory?)") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BundleError(f"bundle manifest {path} is not valid JSON: {exc}") from None
    try:
        return BundleManifest.model_validate(data)
    except ValidationError as exc:
        raise BundleError(_format_validation_error(exc, path)) from None


def write_manifest(manifest: BundleManifest, directory: Path) -> Path:
    path = directory / MANIFEST_FILE
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(manifest.model_dump_json(indent=1) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path


@dataclass(frozen=True)
class Bundle:
    """A loaded, verified bundle: its directory and manifest."""

    path: Path
    manifest: BundleManifest

    @property
    def precisions(self) -> tuple[Precision, ...]:
        return tuple(p for p in PRECISIONS if p in self.manifest.variants)

    def graph_path(self, precision: str, graph_name: str) -> Path:
        variant = self.manifest.variants.get(precision)  # type: ignore[call-overload]
        if variant is None:
            raise BundleError(
                f"bundle {self.path} has no {precision!r} variant; it has: {', '.join(self.precisions)}"
            )
        graph = variant.graphs.get(graph_name)  # type: ignore[call-overload]
        if graph is None:
            raise BundleError(f"bundle {self.path} has no graph {graph_name!r}; graphs: {', '.join(GRAPH_NAMES)}")
        return self.path / graph.file

    def tokenizer(self) -> WordTokenizer:
        return WordTokenizer(self.manifest.vocabulary)

    def file_digests(self) -> dict[str, str]:
        """sha256 of every listed file plus the manifest itself: what a signature covers."""
        digests = {rel: entry.sha256 for rel, entry in self.manifest.files.items()}
        digests[MANIFEST_FILE] = sha256_file(self.path / MANIFEST_FILE)
        return digests


def _files_on_disk(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() or p.is_symlink()}


def load_bundle(path: str | Path, verify: bool = True) -> Bundle:
    """Load a bundle directory; with ``verify``, check every file's size and sha256 and refuse strays.

    Raises BundleError naming the offending file.
    """
    root = Path(path).expanduser()
    if not root.is_dir():
        raise BundleError(f"bundle directory not found: {root}")
    root = root.resolve()
    manifest = read_manifest(root / MANIFEST_FILE)
    bundle = Bundle(path=root, manifest=manifest)
    if not verify:
        return bundle
    for rel, expected in manifest.files.items():
        file_path = root / rel
        if not file_path.is_file():
            raise BundleError(f"bundle {root}: file {rel} is listed in the manifest but missing")
        size = file_path.stat().st_size
        if size != expected.size_bytes:
            raise BundleError(
                f"bundle {root}: file {rel} is corrupted (size {size} bytes, manifest says {expected.size_bytes})"
            )
        if sha256_file(file_path) != expected.sha256:
            raise BundleError(f"bundle {root}: file {rel} is corrupted (sha256 does not match the manifest)")
    extra = sorted(_files_on_disk(root) - set(manifest.files) - UNLISTED_FILES)
    if extra:
        raise BundleError(
            f"bundle {root}: unexpected file(s) not listed in the manifest: {', '.join(extra)} "
            "(remove them, or rebuild the bundle)"
        )
    return bundle
