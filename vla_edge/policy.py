"""Runs any bundle (schema 2, or schema 1 upgraded in memory) with ONNX Runtime: instruction graphs once per
instruction, encode graphs once per chunk, step graphs once per sampler step batched over K samples, with the
sampler the manifest declares (flow-matching Euler, DDPM, DDIM or a single pass) and a committed prefix inpainted.

numpy + onnxruntime only (no torch). One ``PolicyRunner`` is used by one thread at a time (the inference worker).
The dataflow is docs/bundle-format.md's: every graph input names its source; outputs are ``<graph>.<output>``.
"""

from __future__ import annotations

import logging
import posixpath
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort

from vla_edge.bundle import Bundle, BundleManifest, dims_agree
from vla_edge.bundle_schema import (
    ORT_DTYPES,
    BundleManifestV2,
    Diffusion,
    FlowMatchingEuler,
    GraphDecl,
    HfTokenizer,
    Tensor,
    upgrade_v1,
)
from vla_edge.errors import BundleError, VlaEdgeError
from vla_edge.preprocess import (
    ObservationError,
    ObservationHistory,
    ObservedFrame,
    denormalise,
    discretise_state,
    normalise,
    pad_last,
    prepare_view,
)
from vla_edge.providers import ProviderOptions, select_providers
from vla_edge.samplers import (
    DiffusionSchedule,
    FlowSchedule,
    blend_towards,
    flow_inpaint,
    guidance_step,
    guidance_target,
    guidance_weights,
    predicted_chunk,
)
from vla_edge.tokenizer import PromptTokenizer, WordTokenizer
from vla_edge.types import ChunkSamples

log = logging.getLogger(__name__)

DEFAULT_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
_NUMPY = {"float32": np.float32, "float16": np.float16, "int64": np.int64, "int32": np.int32, "int8": np.int8,
          "uint8": np.uint8, "bool": np.bool_}


class PolicyInputError(ObservationError):
    """An image, state, prefix or call does not fit what the policy expects."""


@dataclass(frozen=True)
class EncodedObservation:
    """What one observation gives every sample and step of a chunk: the batch-1 values (runtime sources, the
    instruction and encode graphs' outputs) by source name."""

    values: Mapping[str, np.ndarray]
    embedding: np.ndarray | None  # (E,), or None when the bundle declares no embedding
    instruction: str
    t_obs_ns: int
    timings_ms: dict[str, float]

    @property
    def context(self) -> np.ndarray:
        """The schema-1 reference's context vector (1, C)."""
        return np.asarray(self.values["observation_encoder.context"])


@dataclass(frozen=True)
class SamplerNoise:
    """Explicit noise for a chunk (parity checks): the initial sample and, for DDPM / DDIM with eta > 0, one draw
    per noisy step, in step order. Shapes [K, model_horizon, padded action dim]."""

    initial: np.ndarray
    steps: np.ndarray | None = None


def manifest_v2(bundle: Bundle) -> BundleManifestV2:
    """The schema-2 view of a bundle's manifest (schema 1 is upgraded in memory; the files are the same)."""
    manifest = bundle.manifest
    if isinstance(manifest, BundleManifestV2):
        return manifest
    if isinstance(manifest, BundleManifest):
        return upgrade_v1(manifest)
    raise BundleError(f"bundle {bundle.path}: unknown manifest type {type(manifest).__name__}")


def choose_providers(preferred: list[str] | tuple[str, ...] | None) -> list[str]:
    """Preferred providers that this onnxruntime build has, in order; the CPU provider is always last."""
    available = set(ort.get_available_providers())
    wanted = list(preferred) if preferred else list(DEFAULT_PROVIDERS)
    chosen = [p for p in wanted if p in available and p != "CPUExecutionProvider"]
    return [*chosen, "CPUExecutionProvider"]


def check_io(session: ort.InferenceSession, decl: GraphDecl, where: str) -> None:
    """Refuse a graph whose tensors differ from the manifest's declaration: a missing or extra name, another
    dtype, or another shape (rank, or a fixed size where the manifest has another size or a dynamic one).

    A graph may be dynamic where the manifest is fixed (it accepts the fixed size); the warm-up runs it.
    """
    for kind, specs, nodes in (("input", decl.inputs, session.get_inputs()),
                               ("output", decl.outputs, session.get_outputs())):
        actual = {node.name: node for node in nodes}
        declared = {spec.name for spec in specs}
        if kind == "input" and set(actual) - declared:
            extra = ", ".join(sorted(set(actual) - declared))
            raise BundleError(f"{where}: graph has input(s) the manifest does not declare: {extra}")
        for spec in specs:
            node = actual.get(spec.name)
            if node is None:
                raise BundleError(f"{where}: graph has no {kind} {spec.name!r} (it has {', '.join(actual)})")
            if node.type != ORT_DTYPES[spec.dtype]:
                raise BundleError(f"{where}: {kind} {spec.name!r} is {node.type}, manifest says {spec.dtype}")
            wanted = tuple(d if isinstance(d, int) else None for d in spec.shape)
            if not dims_agree(list(node.shape), wanted):
                raise BundleError(f"{where}: {kind} {spec.name!r} has shape {_shown(node.shape)} in the graph, "
                                  f"the manifest says {_shown(spec.shape)}")


def _shown(shape: list) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def open_session(
    read_verified: Callable[[str], bytes],
    graph_file: str,
    options: Callable[[], ort.SessionOptions],
    providers: list[str],
    external_files: Sequence[str] = (),
    provider_options: list[dict[str, str]] | None = None,
) -> ort.InferenceSession:
    """An ONNX Runtime session of one graph of a bundle, made from bytes, never from a path.

    ``read_verified`` (``Bundle.read_verified``) reads the graph, and each external-data file it names
    (listed in the manifest), once from inside the bundle and checks the digest over the bytes it returns, so
    the bytes ORT gets are the bytes that were verified: a file swapped or changed after a check cannot run.
    External data goes to ORT from memory (``SessionOptions.add_external_initializers_from_files_in_memory``)
    under the name the graph uses, its path relative to the graph's directory, so ORT opens no file either
    (ONNX Runtime 1.24 and newer; older ones load a private copy of the verified bytes, ``_open_from_private_copy``).

    Measured (``python -m bench.bundle_memory``; a 256 MiB external initializer, CPU provider): resident
    memory once loaded is the same as loading from the path (1.02x the weights, both ways, inline or external);
    the peak while loading is 3.0x the weights instead of 2.0x (our copy, ORT's copy, the prepacked weights).
    Each buffer is released as soon as its session exists, so only one graph's peak is paid at a time.

    ``options`` makes fresh SessionOptions (external initializers are added to them). ``provider_options``: one
    dict per provider (``vla_edge.providers.select_providers``: TensorRT's engine cache and fp16). Raises
    BundleError.
    """
    model = read_verified(graph_file)
    session_options = options()
    if external_files:
        adder = getattr(session_options, "add_external_initializers_from_files_in_memory", None)
        if adder is None:
            return _open_from_private_copy(model, read_verified, graph_file, session_options, providers,
                                           external_files, provider_options)
        base = posixpath.dirname(graph_file)
        names, buffers = [], []
        for rel in external_files:
            names.append(posixpath.relpath(rel, base) if base else rel)
            buffers.append(read_verified(rel))
        adder(names, buffers, [len(b) for b in buffers])
    try:
        session = ort.InferenceSession(model, sess_options=session_options, providers=providers,
                                       provider_options=provider_options)
    except Exception as exc:  # onnxruntime raises its own exception types for unreadable graphs
        raise BundleError(f"cannot load graph {graph_file}: {' '.join(str(exc).split())}") from None
    # ORT's Python wrapper keeps the model bytes for the session's lifetime, only to rebuild the session if a
    # provider fails at run time (its own source: "This is bad as we're holding the memory indefinitely"): 2.02x
    # the weights resident instead of 1.02x for a graph with inline weights. A provider that fails mid-run must
    # not be swapped for another silently under a running robot anyway: disable that fallback and let the bytes go.
    session.disable_fallback()
    session._model_bytes = None  # noqa: SLF001 - see above; used by nothing once fallback is off
    return session


def _open_from_private_copy(
    model: bytes,
    read_verified: Callable[[str], bytes],
    graph_file: str,
    session_options: ort.SessionOptions,
    providers: list[str],
    external_files: Sequence[str],
    provider_options: list[dict[str, str]] | None,
) -> ort.InferenceSession:
    """ONNX Runtime before 1.24 (all that Python 3.10, i.e. JetPack 6, gets from PyPI) has no Python call for
    external data from memory. The verified bytes are written into a new private directory (mode 0700, the
    bundle's layout), the session is made from there and the directory removed: ORT still gets exactly the bytes
    that were verified, at the cost of the weights' size in temporary disk space while loading."""
    log.info("onnxruntime %s cannot take external data from memory: loading %s from a private copy of the "
             "verified bytes", ort.__version__, graph_file)
    with tempfile.TemporaryDirectory(prefix="vla-edge-graph-") as tmp:
        root = Path(tmp)
        for rel, data in [(graph_file, model), *((rel, read_verified(rel)) for rel in external_files)]:
            target = root / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        del model
        try:
            session = ort.InferenceSession(str(root / graph_file), sess_options=session_options,
                                           providers=providers, provider_options=provider_options)
        except Exception as exc:  # onnxruntime raises its own exception types for unreadable graphs
            raise BundleError(f"cannot load graph {graph_file}: {' '.join(str(exc).split())}") from None
    session.disable_fallback()
    return session


def session_options(intra_op_threads: int) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Idle ORT threads would otherwise spin and steal the cores the camera and stream threads need.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    return options


@dataclass
class _Feed:
    """How one graph input is fed: from which source, cast to what, repeated to K or not."""

    name: str
    source: str
    dtype: type
    runtime: bool  # a runtime source (cast to dtype) rather than another graph's output
    repeat_axis: int | None  # step graphs: repeat a batch-1 value to K along this axis (None: feed as is)
    static: bool = False  # step graphs: the same value for every step of a chunk (not sampler.*, not a step output)
    key: str = ""  # "<graph>:<input>": where the chunk's static value is kept


@dataclass
class _Graph:
    name: str
    decl: GraphDecl
    session: ort.InferenceSession
    feeds: list[_Feed] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    chained: bool = False  # a step graph that reads another step graph's output


class PolicyRunner:
    """ONNX Runtime sessions of one bundle variant, the instruction cache, the observation history, the sampler."""

    def __init__(
        self,
        bundle: Bundle,
        precision: str = "int8",
        providers: list[str] | None = None,
        intra_op_threads: int = 2,
        seed: int = 0,
        warm_up_samples: int = 8,
        io_binding: bool | None = None,
        provider_options: ProviderOptions | None = None,
    ) -> None:
        """``io_binding``: keep the tensors graphs hand to each other (a VLM prefix's K/V) in the provider's memory
        between graphs and steps instead of passing them through host arrays; None: on for a GPU provider."""
        self.bundle = bundle
        self.manifest = spec = manifest_v2(bundle)
        if precision not in spec.variants:
            have = ", ".join(p for p in spec.variants)
            raise BundleError(f"bundle {bundle.path} has no {precision!r} variant; it has: {have}")
        self.precision = precision
        self._rng = np.random.default_rng(seed)
        self._init_language()
        self._graphs = self._load_graphs(precision, providers, intra_op_threads, provider_options)
        self._by_role = {role: [g for g in self._graphs.values() if g.decl.role == role]
                         for role in ("instruction", "encode", "step", "auxiliary")}
        self._action_dim, self._state_dim, self._horizon = spec.action_dim, spec.state_dim, spec.horizon
        self._execute_start = spec.action.execute_start
        self._model_shape = (spec.action.model_horizon, spec.model_action_dim)
        self._providers = list(next(iter(self._graphs.values())).session.get_providers())
        gpu = self._providers[0] in ("CUDAExecutionProvider", "TensorrtExecutionProvider")
        self._binding = gpu if io_binding is None else io_binding
        self._device = "cuda" if gpu else "cpu"
        self._on_device = self._device_resident() if self._binding else set()
        self._views = list(spec.observation.cameras)
        obs = spec.observation
        interval_s = obs.history_interval_s or 1.0 / spec.control_rate_hz
        self._history = ObservationHistory(obs.history, int(interval_s * 1e9))
        sampler = spec.sampler
        self._flow = FlowSchedule.of(sampler) if isinstance(sampler, FlowMatchingEuler) else None
        self._diffusion = DiffusionSchedule(sampler) if isinstance(sampler, Diffusion) else None
        norm = spec.action.normalisation
        if norm.mode == "mean_std":
            scale, offset = np.asarray(norm.std, np.float32), np.asarray(norm.mean, np.float32)
        elif norm.mode == "min_max":
            low = np.asarray(norm.low, np.float32)
            d = np.asarray(norm.high, np.float32) - low
            d = np.where(d == 0, np.float32(norm.eps), d).astype(np.float32)
            scale, offset = (d / np.float32(2.0)).astype(np.float32), (low + d / np.float32(2.0)).astype(np.float32)
        else:
            scale, offset = np.ones(self._action_dim, np.float32), np.zeros(self._action_dim, np.float32)
        self._action_scale, self._action_offset = scale, offset  # a = x·scale + offset (LeRobot's inverse)
        self._limit_low = np.asarray(spec.action_space.low, dtype=np.float32)
        self._limit_high = np.asarray(spec.action_space.high, dtype=np.float32)
        self._instruction_cache: dict[str, dict[str, np.ndarray]] = {}
        self._sampler_output_only = [spec.sampler.output.partition(".")[2]]
        self._sources = {i.source for g in spec.graphs.values() for i in g.inputs}
        self._single_pass = spec.sampler.kind == "single_pass"
        self._times: dict[int, list[np.ndarray]] = {}  # K → the time input of each flow step
        self._instruction: str | None = None
        self._last_instruction_ms = 0.0
        self.cache_hits = 0
        self.cache_misses = 0
        try:
            self._warm_up(warm_up_samples)
        except MemoryError:
            raise BundleError(f"the {precision} variant of bundle {bundle.path} does not fit in memory "
                              f"(warm-up at K = {warm_up_samples})") from None
        except VlaEdgeError:
            raise
        except Exception as exc:  # onnxruntime's own exception types (Fail, InvalidArgument, ...) derive from it
            detail = " ".join(str(exc).split())
            raise BundleError(f"the {precision} variant of bundle {bundle.path} fails its warm-up inference "
                              f"(K = {warm_up_samples}): {detail}") from None
        log.info("policy %s/%s runs on %s", spec.name, precision, ", ".join(self._providers))

    # ---- loading ----------------------------------------------------------------------------------------------
    def _init_language(self) -> None:
        spec = self.manifest
        tok = spec.language.tokenizer
        self.uses_language = any(i.source.startswith("language.") for g in spec.graphs.values() for i in g.inputs)
        self.tokenizer: WordTokenizer | PromptTokenizer
        if isinstance(tok, HfTokenizer):
            self.tokenizer = PromptTokenizer(self._read(tok.file), tok)
            self._state_in_prompt = tok.state_in_prompt
        else:
            self.tokenizer = WordTokenizer(tok.vocabulary)
            self._state_in_prompt = None

    def _read(self, rel: str) -> bytes:
        """A listed file's bytes, verified against the manifest (the bytes used are the bytes checked)."""
        return self.bundle.read_verified(rel)

    def _load_graphs(self, precision: str, providers: list[str] | None, threads: int,
                     provider_options: ProviderOptions | None) -> dict[str, _Graph]:
        spec = self.manifest
        chosen = select_providers(providers or DEFAULT_PROVIDERS, options=provider_options)
        wanted, wanted_options = [name for name, _ in chosen], [opts for _, opts in chosen]
        variant = spec.variants[precision]  # type: ignore[index]
        needed = {i.source for g in spec.graphs.values() for i in g.inputs} | {spec.sampler.output}
        if spec.embedding:
            needed.add(spec.embedding)
        if spec.step_end.success is not None:
            needed.add(f"{spec.step_end.success.graph}.{spec.step_end.success.output}")
        graphs: dict[str, _Graph] = {}
        for role in ("instruction", "encode", "step", "auxiliary"):
            for name in spec.graphs_with_role(role):  # type: ignore[arg-type]
                decl = spec.graphs[name]
                gf = variant.graphs[name]
                where = gf.file
                folder = posixpath.dirname(gf.file)
                external = [posixpath.join(folder, e) if folder else e for e in gf.external_data]
                session = open_session(self._read, gf.file, lambda: session_options(threads), wanted, external,
                                       wanted_options)
                check_io(session, decl, where)
                graph = _Graph(name, decl, session)
                for spec_in in decl.inputs:
                    runtime = "." not in spec_in.source or spec_in.source.split(".")[0] in (
                        "observation", "language", "sampler")
                    repeat = None
                    if decl.role == "step" and spec_in.share == "repeat" and not spec_in.source.startswith("sampler."):
                        repeat = spec_in.batch_axis
                    from_step = spec_in.source.split(".")[0] in spec.graphs and \
                        spec.graphs[spec_in.source.split(".")[0]].role == "step"
                    static = decl.role == "step" and not spec_in.source.startswith("sampler.") and not from_step
                    graph.chained = graph.chained or from_step
                    graph.feeds.append(_Feed(spec_in.name, spec_in.source, _NUMPY[spec_in.dtype], runtime, repeat,
                                             static, f"{name}:{spec_in.name}"))
                graph.outputs = [o.name for o in decl.outputs if f"{name}.{o.name}" in needed] or [
                    o.name for o in decl.outputs
                ]
                graphs[name] = graph
        return graphs

    # ---- properties -------------------------------------------------------------------------------------------
    @property
    def providers_in_use(self) -> list[str]:
        return list(self._providers)

    @property
    def horizon(self) -> int:
        """Actions per executed chunk."""
        return self._horizon

    @property
    def action_dim(self) -> int:
        return self._action_dim

    @property
    def state_dim(self) -> int:
        return self._state_dim

    @property
    def view_names(self) -> list[str]:
        return [v.name for v in self._views]

    @property
    def instruction(self) -> str | None:
        return self._instruction

    @property
    def single_pass(self) -> bool:
        return self.manifest.sampler.kind == "single_pass"

    @property
    def history_length(self) -> int:
        return self.manifest.observation.history

    # ---- graphs -----------------------------------------------------------------------------------------------
    def _device_resident(self) -> set[str]:
        """Graph outputs only other graphs read, as they are (not repeated to K on the host): with IOBinding they
        stay where the provider computed them. The sampler's output, the embedding, auxiliary outputs and values
        repeated to K come to the host."""
        spec = self.manifest
        host = {spec.sampler.output}
        if spec.embedding:
            host.add(spec.embedding)
        for name, graph in self._graphs.items():
            if graph.decl.role == "auxiliary":
                host.update(f"{name}.{o}" for o in graph.outputs)
            for f in graph.feeds:
                if f.repeat_axis is not None:
                    host.add(f.source)
        produced = {f"{name}.{o}" for name, graph in self._graphs.items() for o in graph.outputs}
        return produced - host

    def _invoke(self, graph: _Graph, feed: dict[str, object], outputs: list[str]) -> list:
        """Run one graph. With IOBinding, inputs are host arrays or OrtValues already where the provider is, and
        outputs in ``self._on_device`` stay there (OrtValues); the rest come back as host arrays."""
        if not self._binding:
            return graph.session.run(outputs, feed)  # type: ignore[arg-type]
        binding = graph.session.io_binding()
        for name, value in feed.items():
            if isinstance(value, ort.OrtValue):
                binding.bind_ortvalue_input(name, value)
            else:
                binding.bind_cpu_input(name, np.ascontiguousarray(value))
        keep = [f"{graph.name}.{name}" in self._on_device for name in outputs]
        for name, stays in zip(outputs, keep, strict=True):
            binding.bind_output(name, self._device if stays else "cpu")
        graph.session.run_with_iobinding(binding)
        values = binding.get_outputs()
        return [v if stays else v.numpy() for v, stays in zip(values, keep, strict=True)]

    def _run(self, graph: _Graph, values: Mapping[str, np.ndarray], extra: Mapping[str, np.ndarray] | None = None,
             ) -> dict[str, np.ndarray]:
        feed = {}
        for f in graph.feeds:
            value = extra[f.name] if extra is not None and f.name in extra else values[f.source]
            feed[f.name] = value.astype(f.dtype, copy=False) if f.runtime else value
        outputs = self._invoke(graph, feed, graph.outputs)
        return {f"{graph.name}.{name}": out for name, out in zip(graph.outputs, outputs, strict=True)}

    def _role(self, role: str) -> list[_Graph]:
        return self._by_role[role]

    # ---- instruction ------------------------------------------------------------------------------------------
    def _language(self, text: str, state_norm: np.ndarray | None = None) -> dict[str, np.ndarray]:
        if isinstance(self.tokenizer, WordTokenizer):
            tokens = self.tokenizer.encode(text)
            return {"language.tokens": tokens, "language.attention_mask": np.ones(tokens.shape, dtype=bool)}
        state = None
        if self._state_in_prompt is not None:
            if state_norm is None:
                return {}
            state = discretise_state(state_norm, self._state_in_prompt.bins, self._state_in_prompt.pad_to)
        try:
            tokens, mask = self.tokenizer.encode(text, state)
        except ValueError as exc:
            raise PolicyInputError(str(exc)) from None
        return {"language.tokens": tokens, "language.attention_mask": mask}

    def set_instruction(self, text: str) -> float:
        """Make ``text`` the current instruction; tokenizes it and runs the instruction graphs the first time a text
        is seen (cached by text). Returns the milliseconds spent (0.0 on a cache hit).

        Raises UnknownWordError naming an unknown word (word-list tokenizers).
        """
        self._instruction = text
        if text in self._instruction_cache:
            self.cache_hits += 1
            self._last_instruction_ms = 0.0
            return 0.0
        start = time.perf_counter()
        values: dict[str, np.ndarray] = {}
        if self.uses_language and self._state_in_prompt is None:
            values.update(self._language(text))
            for graph in self._role("instruction"):
                values.update(self._run(graph, values))
        self._instruction_cache[text] = values
        self.cache_misses += 1
        self._last_instruction_ms = (time.perf_counter() - start) * 1e3
        return self._last_instruction_ms

    # ---- observation ------------------------------------------------------------------------------------------
    def _images(self, image: np.ndarray | Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if isinstance(image, Mapping):
            missing = [v.name for v in self._views if v.name not in image]
            if missing:
                raise PolicyInputError(f"no frame for camera view(s) {missing}; the bundle reads {self.view_names}")
            return {v.name: image[v.name] for v in self._views}
        if len(self._views) != 1:
            raise PolicyInputError(f"the bundle reads {len(self._views)} camera views {self.view_names}: pass a "
                                   "mapping of view name to frame")
        return {self._views[0].name: image}

    def _raw_state(self, state: np.ndarray) -> np.ndarray:
        values = np.asarray(state, dtype=np.float32).reshape(-1)
        if values.shape[0] != self._state_dim:
            raise PolicyInputError(f"state must have {self._state_dim} values, got {values.shape[0]}")
        if not np.isfinite(values).all():
            raise PolicyInputError(f"state has non-finite values: {values.tolist()}")
        return values

    def reset(self) -> None:
        """Forget the observation history (a new task step starts: LeRobot's policy.reset())."""
        self._history.clear()

    def observe(self, image: np.ndarray | Mapping[str, np.ndarray], state: np.ndarray, t_ns: int) -> None:
        """Record an observation for the history (policies with observation.history > 1; cheap: references only)."""
        if self.history_length > 1:
            self._history.record(ObservedFrame(t_ns, self._images(image), self._raw_state(state)))

    def _observation_values(self, entries: list[ObservedFrame]) -> dict[str, np.ndarray]:
        spec = self.manifest.observation
        many = spec.history > 1
        values: dict[str, np.ndarray] = {}
        for view in self._views:
            try:
                frames = [prepare_view(e.images[view.name], view) for e in entries]
            except ObservationError as exc:
                raise PolicyInputError(str(exc)) from None
            values[f"observation.image.{view.name}"] = (np.stack(frames) if many else frames[-1])[None]
            mask = f"observation.image_mask.{view.name}"
            if mask in self._sources:
                values[mask] = np.ones((1, len(entries)) if many else (1,), dtype=bool)
        state_spec = spec.state
        states = np.stack([e.state for e in entries]) if many else entries[-1].state[None]
        if not state_spec.normalisation.in_graph:
            states = normalise(states, state_spec.normalisation)
        states = pad_last(states, state_spec.padded_dim)
        values["observation.state"] = states[None] if many else states[-1:]
        return values

    def encode(
        self, image: np.ndarray | Mapping[str, np.ndarray], state: np.ndarray, t_obs_ns: int | None = None
    ) -> EncodedObservation:
        """Run the encode graphs once for the current instruction (set_instruction first).

        ``image``: one uint8 H×W×3 RGB frame (single-view bundles) or {view name: frame}; any size (each view is
        resized once, as the bundle declares). ``state``: the raw robot state.
        """
        if self._instruction is None:
            raise PolicyInputError("no instruction: call set_instruction(text) before encode()")
        t_obs = time.monotonic_ns() if t_obs_ns is None else t_obs_ns
        start = time.perf_counter()
        current = ObservedFrame(t_obs, self._images(image), self._raw_state(state))
        entries = self._history.select(current)
        values: dict[str, np.ndarray] = dict(self._instruction_cache[self._instruction])
        values.update(self._observation_values(entries))
        if self._state_in_prompt is not None:
            norm = normalise(current.state, self.manifest.observation.state.normalisation)
            values.update(self._language(self._instruction, norm))
        for graph in self._role("encode"):
            values.update(self._run(graph, values))
        embedding = None
        if self.manifest.embedding is not None:
            embedding = np.asarray(values[self.manifest.embedding]).reshape(-1)
        encode_ms = (time.perf_counter() - start) * 1e3
        return EncodedObservation(
            values=values, embedding=embedding, instruction=self._instruction, t_obs_ns=t_obs,
            timings_ms={"instruction": self._last_instruction_ms, "encode": encode_ms},
        )

    # ---- actions ----------------------------------------------------------------------------------------------
    def normalise_actions(self, actions: np.ndarray) -> np.ndarray:
        return normalise(actions, self.manifest.action.normalisation)

    def denormalise_actions(self, actions_norm: np.ndarray) -> np.ndarray:
        return denormalise(actions_norm, self.manifest.action.normalisation)

    def _prepare_prefix(self, prefix: np.ndarray | None) -> np.ndarray | None:
        if prefix is None:
            return None
        prefix = np.asarray(prefix, dtype=np.float32)
        if prefix.ndim != 2 or prefix.shape[1] != self.action_dim:
            raise PolicyInputError(f"prefix must be d×{self.action_dim}, got shape {prefix.shape}")
        if prefix.shape[0] >= self.horizon:
            raise PolicyInputError(
                f"prefix has {prefix.shape[0]} actions; it must be shorter than the horizon {self.horizon}"
            )
        if not np.all(np.isfinite(prefix)):
            raise PolicyInputError("prefix has non-finite values")
        if prefix.shape[0] == 0:
            return None
        norm = self.normalise_actions(prefix)
        if self.manifest.action.normalisation.mode == "min_max":
            norm = np.clip(norm, -1.0, 1.0)
        return norm

    def _prepare_guide(self, guide: np.ndarray | None, frozen: int) -> np.ndarray | None:
        """The previous chunk's actions after the frozen prefix (physical units), normalised, at most up to the end of
        the horizon; None when there are none."""
        if guide is None:
            return None
        guide = np.asarray(guide, dtype=np.float32)
        if guide.ndim != 2 or guide.shape[1] != self.action_dim:
            raise PolicyInputError(f"guide must be m×{self.action_dim}, got shape {guide.shape}")
        if not np.all(np.isfinite(guide)):
            raise PolicyInputError("guide has non-finite values")
        guide = guide[: max(0, self.horizon - frozen)]
        if guide.shape[0] == 0:
            return None
        norm = self.normalise_actions(guide)
        if self.manifest.action.normalisation.mode == "min_max":
            norm = np.clip(norm, -1.0, 1.0)
        return norm

    def _noise(self, k: int, noise: np.ndarray | SamplerNoise | None) -> tuple[np.ndarray, np.ndarray | None]:
        shape = (k, *self._model_shape)
        steps = None
        if isinstance(noise, SamplerNoise):
            initial, steps = noise.initial, noise.steps
        else:
            initial = noise
        if initial is None:
            x0 = self._rng.standard_normal(shape, dtype=np.float32)
        else:
            x0 = np.asarray(initial, dtype=np.float32)
            if x0.shape != shape:
                raise PolicyInputError(f"noise must have shape {shape}, got {x0.shape}")
        if steps is not None and self._diffusion is not None:
            steps = np.asarray(steps, dtype=np.float32)
            want = (self._diffusion.noisy_steps, *shape)
            if steps.shape != want:
                raise PolicyInputError(f"step noise must have shape {want}, got {steps.shape}")
        return x0, steps

    def _step_values(self, encoded: EncodedObservation, k: int) -> dict[str, np.ndarray]:
        """The step graphs' batch-1 inputs, repeated to K once for the chunk where they declare share='repeat'."""
        extra: dict[str, np.ndarray] = {}
        for graph in self._role("step"):
            for f in graph.feeds:
                if not f.static:
                    continue
                value = encoded.values[f.source]
                if f.runtime:
                    value = value.astype(f.dtype, copy=False)
                if f.repeat_axis is not None and k > 1:
                    value = np.repeat(value, k, axis=f.repeat_axis)
                extra[f.key] = value
        return extra

    def _fast_step(self, statics: dict[str, np.ndarray]) -> tuple[ort.InferenceSession, dict, str, str] | None:
        """One step graph reading float32 sampler.x and sampler.t: its session, the chunk's feed with the static
        inputs filled in, and the names to put x and t under (the reference's and most bundles' case)."""
        steps = self._by_role["step"]
        if len(steps) != 1 or steps[0].chained or self._binding:
            return None
        graph = steps[0]
        feed: dict[str, np.ndarray] = {}
        x_name = t_name = ""
        for f in graph.feeds:
            if f.static:
                feed[f.name] = statics[f.key]
            elif f.source == "sampler.x" and f.dtype is np.float32:
                x_name = f.name
            elif f.source == "sampler.t" and f.dtype is np.float32:
                t_name = f.name
            else:
                return None
        return (graph.session, feed, x_name, t_name) if x_name and t_name else None

    def _run_steps(self, statics: dict[str, np.ndarray], x: np.ndarray, t: np.ndarray) -> np.ndarray:
        """One sampler step through the step graphs (the hot loop: statics were prepared once per chunk)."""
        steps = self._by_role["step"]
        if len(steps) == 1 and not steps[0].chained:  # the common case: one graph, inputs x, t and statics
            graph = steps[0]
            feed = {f.name: statics[f.key] if f.static else (x if f.source == "sampler.x" else t).astype(
                f.dtype, copy=False) for f in graph.feeds}
            return self._invoke(graph, feed, self._sampler_output_only)[0]  # type: ignore[no-any-return]
        values: dict[str, np.ndarray] = {"sampler.x": x, "sampler.t": t}
        for graph in steps:
            feed = {}
            for f in graph.feeds:
                if f.static:
                    feed[f.name] = statics[f.key]
                elif f.runtime:
                    feed[f.name] = values[f.source].astype(f.dtype, copy=False)
                else:
                    feed[f.name] = values[f.source]
            outputs = self._invoke(graph, feed, graph.outputs)
            values.update({f"{graph.name}.{n}": o for n, o in zip(graph.outputs, outputs, strict=True)})
        return values[self.manifest.sampler.output]

    def sample(
        self,
        encoded: EncodedObservation,
        num_samples: int,
        prefix: np.ndarray | None = None,
        noise: np.ndarray | SamplerNoise | None = None,
        clip: bool = True,
        guide: np.ndarray | None = None,
    ) -> ChunkSamples:
        """K chunks (K×H×A, physical units, clipped to the action limits unless ``clip`` is False: parity checks
        compare the policy's own output) with the bundle's sampler.

        ``prefix`` (d×A, d < H, physical units) = actions already committed: flow and diffusion samplers inpaint
        them at every step so the chunk continues them; single_pass copies them over the chunk's start. ``guide``
        (m×A, m ≥ 0) turns on real-time chunking (`vla_edge.samplers`): its rows are the previous chunk's actions
        after the prefix, a soft target with decaying weights; flow samplers are guided towards prefix and guide
        (one extra probe per Euler step, batched with the samples), diffusion samplers replace the guide rows by
        weight, single_pass blends them in; rows past the horizon are ignored. ``noise`` (array [K, model_horizon, A_pad],
        or SamplerNoise with every step's noise) replaces the runner's own draws (parity checks). single_pass
        always returns K = 1.
        """
        if num_samples < 1:
            raise PolicyInputError(f"num_samples must be at least 1, got {num_samples}")
        spec = self.manifest
        k = 1 if self._single_pass else num_samples
        start = time.perf_counter()
        prefix_norm = self._prepare_prefix(prefix)
        d = 0 if prefix_norm is None else prefix_norm.shape[0]
        a, s0 = self._action_dim, self._execute_start
        window = (slice(None), slice(s0, s0 + d), slice(0, a))
        guide_norm = self._prepare_guide(guide, d)
        m = 0 if guide_norm is None else guide_norm.shape[0]
        guided = (slice(None), slice(s0 + d, s0 + d + m), slice(0, a))
        weights = guidance_weights(m)
        rtc = guide is not None and (d > 0 or m > 0)  # real-time chunking asked for, with something to continue
        statics = self._step_values(encoded, k)
        if self._single_pass:
            output = spec.sampler.output
            if output in encoded.values:
                x = np.asarray(encoded.values[output], dtype=np.float32)
            else:
                x = np.asarray(self._run_steps(statics, np.empty(0, np.float32), np.empty(0, np.float32)),
                               dtype=np.float32)
            x = x.copy()
            if m:
                x[guided] = blend_towards(x[guided], guide_norm, weights)
            if d:
                x[window] = prefix_norm
        else:
            x0, step_noise = self._noise(k, noise)
            x = x0.copy()
            if self._flow is not None:
                flow = self._flow
                times = self._times.get(k)
                if times is None:
                    times = self._times[k] = [np.full((k,), t, dtype=np.float32) for t in flow.times]
                coefficient = np.float32(flow.coefficient)
                fast = self._fast_step(statics)
                if rtc:
                    target, target_weights = guidance_target(self._model_shape, s0, a, prefix_norm, guide_norm)
                    statics2 = self._step_values(encoded, 2 * k)  # the samples and their probes in one batch
                direction: np.ndarray | None = None  # W ⊙ (Y − Â) of the previous step: the guidance probe
                for i, t in enumerate(times):
                    progress = float(flow.progress[i])
                    if d:
                        x[window] = flow_inpaint(progress, x0[window], prefix_norm)
                    if direction is not None:
                        both = np.concatenate([x, x + direction])
                        out = np.asarray(self._run_steps(statics2, both, np.full(2 * k, t[0], np.float32)), np.float32)
                        velocity, probe = out[:k], out[k:]
                    elif fast is not None:
                        session, feed, x_name, t_name = fast
                        feed[x_name], feed[t_name] = x, t
                        velocity = session.run(self._sampler_output_only, feed)[0]
                    else:
                        velocity = self._run_steps(statics, x, t)
                    step = coefficient * velocity
                    if rtc:
                        predicted = predicted_chunk(x, step, progress, len(times))
                        if direction is not None:
                            probed = predicted_chunk(x + direction, coefficient * probe, progress, len(times))
                            step = step + guidance_step(probed, predicted, progress, len(times))
                        direction = (target_weights * (target - predicted)).astype(np.float32)
                    x = x + step
            else:
                sched = self._diffusion
                assert sched is not None
                drawn = 0
                for i, step in enumerate(sched.steps):
                    if d:
                        x[window] = sched.inpaint(i, x0[window], prefix_norm)
                    if m:
                        x[guided] = sched.soft_inpaint(i, x[guided], x0[guided], guide_norm, weights)
                    t = np.full((k,), step.timestep, dtype=np.int64)
                    out = np.asarray(self._run_steps(statics, x, t), dtype=np.float32)
                    eps = None
                    if step.draws_noise:
                        if step_noise is not None:
                            eps = step_noise[drawn]
                        else:
                            eps = self._rng.standard_normal(x.shape, dtype=np.float32)
                        drawn += 1
                    x = sched.step(i, x, out, eps)
            if d:
                x[window] = prefix_norm
        chunk = x[:, s0 : s0 + self._horizon, :a]
        actions = chunk * self._action_scale + self._action_offset
        if clip:
            actions = np.clip(actions, self._limit_low, self._limit_high)
        denoise_ms = (time.perf_counter() - start) * 1e3
        timings = dict(encoded.timings_ms)
        timings["denoise"] = denoise_ms
        timings["total"] = timings.get("instruction", 0.0) + timings.get("encode", 0.0) + denoise_ms
        embedding = encoded.embedding if encoded.embedding is not None else np.zeros(0, np.float32)
        success = self.success_probability(encoded) if spec.step_end.success is not None else None
        return ChunkSamples(actions=actions, embedding=embedding, t_obs_ns=encoded.t_obs_ns, timings_ms=timings,
                            success=success)

    def infer(
        self,
        image: np.ndarray | Mapping[str, np.ndarray],
        state: np.ndarray,
        instruction: str,
        num_samples: int = 8,
        prefix: np.ndarray | None = None,
        t_obs_ns: int | None = None,
        guide: np.ndarray | None = None,
    ) -> ChunkSamples:
        """set_instruction + encode + sample, in one call."""
        if instruction != self._instruction:
            self.set_instruction(instruction)
        else:
            self._last_instruction_ms = 0.0
        return self.sample(self.encode(image, state, t_obs_ns), num_samples, prefix, guide=guide)

    def __call__(self, image: np.ndarray, state: np.ndarray, instruction: str) -> np.ndarray:
        """The hil rollout's policy interface: one chunk (H×A) from one sample."""
        return self.infer(image, state, instruction, num_samples=1).actions[0]

    # ---- auxiliary graphs -------------------------------------------------------------------------------------
    def run_auxiliary(self, graph_name: str, encoded: EncodedObservation) -> dict[str, np.ndarray]:
        """Run one auxiliary graph (e.g. the success detector) on an encoded observation; {output name: value}."""
        graph = self._graphs.get(graph_name)
        if graph is None or graph.decl.role != "auxiliary":
            raise PolicyInputError(f"the bundle has no auxiliary graph {graph_name!r}")
        out = self._run(graph, encoded.values)
        return {name.split(".", 1)[1]: value for name, value in out.items()}

    def success_probability(self, encoded: EncodedObservation) -> float | None:
        """P(step done) from the bundle's success detector (step_end.success), or None without one."""
        check = self.manifest.step_end.success
        if check is None:
            return None
        return float(np.asarray(self.run_auxiliary(check.graph, encoded)[check.output]).reshape(-1)[0])

    # ---- start-up ---------------------------------------------------------------------------------------------
    def _warm_up(self, num_samples: int) -> None:
        """Run every graph once (the step graphs at K = 1 and K = ``num_samples``) so the first real chunk does not
        pay for lazy initialisation, and a graph that cannot run at the configured size fails now."""
        frames = {v.name: np.zeros((v.height, v.width, 3), dtype=np.uint8) for v in self._views}
        state = np.zeros(self.state_dim, dtype=np.float32)
        if isinstance(self.tokenizer, WordTokenizer):
            text = self.tokenizer.vocabulary[1]
        else:
            text = "warm up"
        self.set_instruction(text)
        encoded = self.encode(frames, state, t_obs_ns=0)
        for k in (1,) if self.single_pass else sorted({1, num_samples}):
            statics = self._step_values(encoded, k)
            x = np.zeros((k, self.manifest.action.model_horizon, self.manifest.model_action_dim), np.float32)
            if not self.single_pass or self.manifest.sampler.output not in encoded.values:
                self._run_steps(statics, x, np.zeros((k,), np.float32))
        self._history.clear()
        self._instruction_cache.clear()
        self._instruction = None
        self.cache_misses = 0
        self._last_instruction_ms = 0.0
