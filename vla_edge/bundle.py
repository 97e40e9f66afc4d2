"""Model bundles: a directory of ONNX graphs plus ``manifest.json``, validated and checksummed before use.

Layout::

    manifest.json            BundleManifest (this module), lists every other file with its sha256
    fp32/  int8/  int4/      instruction_encoder.onnx, observation_encoder.onnx, denoiser.onnx
    signature.json           optional ed25519 signature (vla_edge.signing); not listed in the manifest

``load_bundle`` refuses a bundle with a missing, corrupted or unexpected file, a symbolic link or a manifest
that is not strict JSON, naming the file; nothing outside the bundle directory is ever opened
(``vla_edge.bundle_io``). ``Bundle.read_verified`` is how a file is read for use: once, digest checked over
the very bytes that are returned. See docs/bundle-format.md for every field.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from vla_edge.bundle_io import BundleDir, FileMissing, check_name, load_json_strict
from vla_edge.errors import BundleError
from vla_edge.tokenizer import WordTokenizer

SCHEMA_VERSION = 1
MANIFEST_FILE = "manifest.json"
SIGNATURE_FILE = "signature.json"
# Written by the signing step, not by the build; never counted as an unexpected file.
UNLISTED_FILES = frozenset({MANIFEST_FILE, SIGNATURE_FILE})
# A manifest is read whole and validated in memory: the reference's is 0.2 MB. A 249 MB vocabulary took 19 s and
# 2.8 GB to start; past this size a manifest is refused before it is read.
MAX_MANIFEST_BYTES = 32 << 20
# Upper bounds of the sizes a manifest declares, so a typo (or 1e6) fails validation instead of the first
# allocation on the robot. Generous for real VLAs (SmolVLA: 512×512 images, 32-wide padded state/action).
MAX_IMAGE_SIDE = 4096
MAX_VECTOR_DIM = 1024  # state_dim, action_dim
MAX_FEATURE_DIM = 1 << 16  # instruction_features_dim, context_dim, embedding_dim
MAX_DIM = 1 << 31  # any fixed dimension of a graph's input or output

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


Dim = int | str


class TensorSpec(_Strict):
    """One graph input or output. A string dimension is dynamic (e.g. "batch")."""

    name: str = Field(min_length=1, max_length=256)
    dtype: Literal["float32", "uint8", "int64"]
    shape: list[Dim] = Field(max_length=8)

    @field_validator("shape")
    @classmethod
    def _dims(cls, shape: list[Dim]) -> list[Dim]:
        for dim in shape:
            if isinstance(dim, int) and not 1 <= dim <= MAX_DIM:
                raise ValueError(f"a fixed dimension must be between 1 and {MAX_DIM}, got {dim}")
            if isinstance(dim, str) and not 1 <= len(dim) <= 64:
                raise ValueError("a dynamic dimension's name must have 1 to 64 characters")
        return shape


class GraphSpec(_Strict):
    file: str = Field(min_length=1, description="Path relative to the bundle directory, '/'-separated.")
    inputs: list[TensorSpec] = Field(max_length=64)
    outputs: list[TensorSpec] = Field(max_length=64)


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
    quantization: str = Field(max_length=4096, description="How the graphs were produced, and which ops stayed fp32.")
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

    names: list[str] = Field(min_length=1, max_length=MAX_VECTOR_DIM)
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
    torch_version: str = Field(max_length=128)  # the torch that exported the graphs
    threads: int = Field(ge=1)
    device: str = Field("cpu", max_length=128)  # where it was trained ("cuda": a GPU)
    batch_size: int | None = Field(None, ge=1)


class BundleManifest(_Strict):
    """Everything the runtime needs to know about a bundle, besides the graphs themselves."""

    schema_version: Literal[1] = SCHEMA_VERSION
    name: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.-]+$")
    version: str = Field(min_length=1, max_length=64)
    description: str = Field("", max_length=10_000)
    created_utc: str = Field(max_length=64)
    image_height: int = Field(gt=0, le=MAX_IMAGE_SIDE)
    image_width: int = Field(gt=0, le=MAX_IMAGE_SIDE)
    state_dim: int = Field(gt=0, le=MAX_VECTOR_DIM)
    action_dim: int = Field(gt=0, le=MAX_VECTOR_DIM)
    horizon: int = Field(ge=1, le=64, description="H: actions per chunk.")
    denoising_steps: int = Field(ge=1, le=100, description="Euler steps of the flow-matching sampler.")
    sampler: Literal["flow_matching_euler"] = "flow_matching_euler"
    control_rate_hz: float = Field(gt=0, le=1000)
    instruction_features_dim: int = Field(gt=0, le=MAX_FEATURE_DIM)
    context_dim: int = Field(gt=0, le=MAX_FEATURE_DIM)
    embedding_dim: int = Field(gt=0, le=MAX_FEATURE_DIM)
    vocabulary: list[str] = Field(min_length=2, max_length=1_000_000)
    action_space: ActionSpace
    normalisation: Normalisation
    embedding_stats: EmbeddingStats
    files: dict[str, FileDigest] = Field(max_length=10_000,
                                         description="Every file of the bundle except manifest and signature.")
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
            try:
                check_name(path)
            except BundleError as exc:
                raise ValueError(f"file path {path!r} must be relative, inside the bundle, and UTF-8: {exc}") from None
            if path in UNLISTED_FILES:
                raise ValueError(f"file path {path!r} must be relative, inside the bundle, and not a reserved name")
        if self.confidence_thresholds is not None:
            _finite(list(self.confidence_thresholds.values()), "confidence_thresholds")
        for precision, variant in self.variants.items():
            for graph_name, graph in variant.graphs.items():
                problem = _io_mismatch(graph, expected_io(self, graph_name))
                if problem:
                    raise ValueError(f"variant {precision!r} graph {graph_name!r}: {problem}")
        return self


_ANY = None  # a dimension the runtime varies (the number of samples K, of words): it must be dynamic


def dims_agree(declared: list[int | str] | tuple[int | str | None, ...], wanted: tuple[int | None, ...]) -> bool:
    """Does a shape (ints fixed; a string or None dynamic) accept what the runtime feeds (None: varies)?"""
    if len(declared) != len(wanted):
        return False
    for have, want in zip(declared, wanted):
        fixed = have if isinstance(have, int) else None
        if fixed is not None and fixed != want:  # fixed where the runtime varies it, or another size
            return False
    return True


def expected_io(manifest: BundleManifest, graph_name: str) -> dict[str, dict[str, tuple[str, tuple[int | None, ...]]]]:
    """What the runtime feeds each graph and reads from it, derived from the manifest's sizes.

    {"inputs"|"outputs": {tensor name: (dtype, shape)}}; ``None`` marks a dimension the runtime varies.
    A graph's declared tensors must agree with this, and the graph itself with its declaration (policy.py).
    """
    m = manifest
    if graph_name == "instruction_encoder":
        return {"inputs": {"tokens": ("int64", (1, _ANY))},
                "outputs": {"instruction_features": ("float32", (1, m.instruction_features_dim))}}
    if graph_name == "observation_encoder":
        return {"inputs": {"image": ("uint8", (1, m.image_height, m.image_width, 3)),
                           "state": ("float32", (1, m.state_dim)),
                           "instruction_features": ("float32", (1, m.instruction_features_dim))},
                "outputs": {"context": ("float32", (1, m.context_dim)),
                            "embedding": ("float32", (1, m.embedding_dim))}}
    if graph_name == "denoiser":
        return {"inputs": {"noisy_actions": ("float32", (_ANY, m.horizon, m.action_dim)),
                           "timestep": ("float32", (_ANY,)),
                           "context": ("float32", (_ANY, m.context_dim))},
                "outputs": {"velocity": ("float32", (_ANY, m.horizon, m.action_dim))}}
    raise ValueError(f"unknown graph {graph_name!r}")


def _io_mismatch(graph: GraphSpec, expected: dict[str, dict[str, tuple[str, tuple[int | None, ...]]]]) -> str:
    """The first way the declared tensors of ``graph`` differ from what the runtime uses, or ""."""
    for kind, specs in (("inputs", graph.inputs), ("outputs", graph.outputs)):
        declared = {spec.name: spec for spec in specs}
        if len(declared) != len(specs):
            return f"{kind} name a tensor twice"
        if set(declared) != set(expected[kind]):
            return f"{kind} are {sorted(declared)}, the runtime uses {sorted(expected[kind])}"
        for name, (dtype, shape) in expected[kind].items():
            spec = declared[name]
            if spec.dtype != dtype:
                return f"{kind[:-1]} {name!r} is {spec.dtype}, the runtime uses {dtype}"
            if not dims_agree(spec.shape, shape):
                want = ["dynamic" if e is None else e for e in shape]
                return f"{kind[:-1]} {name!r} has shape {spec.shape}, the manifest's sizes make it {want}"
    return ""


def digest_files(root: Path, relative_paths: list[str]) -> dict[str, FileDigest]:
    """sha256 and size of each listed file, for writing a manifest (never through a symbolic link)."""
    out: dict[str, FileDigest] = {}
    with BundleDir(root) as directory:
        for rel in sorted(relative_paths):
            digest, size = directory.sha256(rel)
            out[rel] = FileDigest(sha256=digest, size_bytes=size)
    return out


def _format_validation_error(error: ValidationError, origin: Path | str) -> str:
    lines = [f"bundle manifest {origin} is invalid:"]
    for item in error.errors()[:10]:
        where = ".".join(str(part) for part in item["loc"]) or "(top level)"
        lines.append(f"  {where}: {item['msg']}")
    return "\n".join(lines)


def parse_manifest(data: bytes, origin: Path | str) -> BundleManifest:
    """Validate manifest bytes (strict JSON: UTF-8, no duplicate keys, bounded nesting). Raises BundleError."""
    if len(data) > MAX_MANIFEST_BYTES:
        raise BundleError(f"bundle manifest {origin} is {len(data)} bytes; the limit is {MAX_MANIFEST_BYTES}")
    value = load_json_strict(data, f"bundle manifest {origin}")
    version = value.get("schema_version") if isinstance(value, dict) else None
    if version not in (1, 2, None):
        raise BundleError(f"bundle manifest {origin}: schema_version {version!r} is not supported "
                          "(this vla-edge reads schema_version 1 and 2)")
    try:
        if version == 2:
            from vla_edge.bundle_schema import BundleManifestV2  # schema 2 builds on this module's types

            return BundleManifestV2.model_validate(value)  # type: ignore[return-value]
        return BundleManifest.model_validate(value)
    except ValidationError as exc:
        raise BundleError(_format_validation_error(exc, origin)) from None
    except RecursionError:
        raise BundleError(f"bundle manifest {origin} is nested too deeply") from None


def _read_manifest_bytes(directory: BundleDir) -> bytes:
    try:
        return directory.read_bytes(MANIFEST_FILE, MAX_MANIFEST_BYTES)
    except FileMissing:
        raise BundleError(f"bundle manifest not found: {directory.path / MANIFEST_FILE} "
                          "(is this a bundle directory?)") from None


def read_manifest(path: Path) -> BundleManifest:
    """Parse and validate a manifest file (never through a symbolic link). Raises BundleError."""
    path = Path(path)
    if path.name != MANIFEST_FILE:
        raise BundleError(f"{path} is not a {MANIFEST_FILE}")
    if not path.parent.is_dir():
        raise BundleError(f"bundle manifest not found: {path} (is this a bundle directory?)")
    with BundleDir(path.parent) as directory:
        return parse_manifest(_read_manifest_bytes(directory), path)


def write_manifest(manifest: BundleManifest, directory: Path) -> Path:
    path = directory / MANIFEST_FILE
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(manifest.model_dump_json(indent=1) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path


@dataclass(frozen=True)
class Bundle:
    """A loaded, verified bundle: its directory (resolved) and manifest, and the sha256 of the manifest bytes
    that were parsed (what a signature must cover)."""

    path: Path
    manifest: BundleManifest
    manifest_sha256: str = ""

    @property
    def precisions(self) -> tuple[Precision, ...]:
        return tuple(p for p in PRECISIONS if p in self.manifest.variants)

    def graph(self, precision: str, graph_name: str) -> GraphSpec:
        variant = self.manifest.variants.get(precision)  # type: ignore[call-overload]
        if variant is None:
            raise BundleError(
                f"bundle {self.path} has no {precision!r} variant; it has: {', '.join(self.precisions)}"
            )
        graph = variant.graphs.get(graph_name)  # type: ignore[call-overload]
        if graph is None:
            raise BundleError(f"bundle {self.path} has no graph {graph_name!r}; graphs: {', '.join(GRAPH_NAMES)}")
        return graph

    def graph_path(self, precision: str, graph_name: str) -> Path:
        """Where a graph is (for tools: the runtime reads graphs with ``read_verified``, never by path)."""
        return self.path / self.graph(precision, graph_name).file

    def read_verified(self, rel: str) -> bytes:
        """The bytes of a listed file, read once from inside the bundle and checked against the manifest's
        size and sha256 before they are returned: what the caller uses is what was verified.

        Raises BundleError naming the file (not listed, missing, a link, corrupted).
        """
        entry = self.manifest.files.get(rel)
        if entry is None:
            raise BundleError(f"bundle {self.path}: {rel} is not listed in the manifest")
        with BundleDir(self.path) as directory:
            return directory.read_verified(rel, entry.sha256, entry.size_bytes)

    def tokenizer(self) -> WordTokenizer:
        """The word-list tokenizer (schema 1, or schema 2 with kind 'words'); PolicyRunner loads any tokenizer."""
        vocabulary = getattr(self.manifest, "vocabulary", None)
        if vocabulary is None:
            tokenizer = self.manifest.language.tokenizer  # type: ignore[attr-defined]
            vocabulary = getattr(tokenizer, "vocabulary", None)
            if vocabulary is None:
                raise BundleError(f"bundle {self.path} ships a {tokenizer.kind} tokenizer, not a word list")
        return WordTokenizer(vocabulary)

    def file_digests(self) -> dict[str, str]:
        """sha256 of every listed file plus the manifest itself: what a signature covers."""
        digests = {rel: entry.sha256 for rel, entry in self.manifest.files.items()}
        digests[MANIFEST_FILE] = self.manifest_sha256
        return digests


Verify = Literal["all", "structure", "none"]


def load_bundle(path: str | Path, verify: bool | Verify = True) -> Bundle:
    """Load a bundle directory and check it. Raises BundleError naming the offending file.

    ``verify``: "all" (or True) checks every listed file's size and sha256; "structure" checks that every
    listed file is a regular file of the listed size and that nothing else is there, reading no file content
    (the daemon: it digests the graphs it runs as it reads them, with ``Bundle.read_verified``); "none" (or
    False) reads the manifest only. Every mode reads the manifest once, never through a symbolic link; the
    others refuse links and unlisted files before any listed file is opened.
    """
    mode: Verify = "all" if verify is True else "none" if verify is False else verify
    with BundleDir(path) as directory:
        root = directory.path
        data = _read_manifest_bytes(directory)
        manifest = parse_manifest(data, root / MANIFEST_FILE)
        bundle = Bundle(path=root, manifest=manifest, manifest_sha256=hashlib.sha256(data).hexdigest())
        if mode == "none":
            return bundle
        present = set(directory.list_files())  # refuses links and special files from directory entries alone
        extra = sorted(present - set(manifest.files) - UNLISTED_FILES)
        if extra:
            raise BundleError(
                f"bundle {root}: unexpected file(s) not listed in the manifest: {', '.join(extra)} "
                "(remove them, or rebuild the bundle)"
            )
        for rel, expected in manifest.files.items():
            if rel not in present:
                raise BundleError(f"bundle {root}: file {rel} is listed in the manifest but missing")
            if mode == "structure":
                size = directory.size(rel)
                if size != expected.size_bytes:
                    raise BundleError(f"bundle {root}: file {rel} is corrupted "
                                      f"(size {size} bytes, manifest says {expected.size_bytes})")
                continue
            digest, size = directory.sha256(rel)
            if size != expected.size_bytes:
                raise BundleError(
                    f"bundle {root}: file {rel} is corrupted (size {size} bytes, manifest says {expected.size_bytes})"
                )
            if digest != expected.sha256:
                raise BundleError(f"bundle {root}: file {rel} is corrupted (sha256 does not match the manifest)")
    return bundle
