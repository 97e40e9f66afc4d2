"""Runs a bundle's three ONNX graphs: instruction features once per instruction, the observation encoder once per
chunk, and the flow-matching denoiser once per Euler step, batched over K samples.

numpy + onnxruntime only (no torch). One ``PolicyRunner`` is used by one thread at a time (the inference worker).
"""

from __future__ import annotations

import logging
import posixpath
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

from vla_edge.bundle import GRAPH_NAMES, Bundle, TensorSpec, dims_agree
from vla_edge.errors import BundleError, VlaEdgeError
from vla_edge.types import ChunkSamples

log = logging.getLogger(__name__)

DEFAULT_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
_NUMPY_DTYPES = {"float32": np.float32, "uint8": np.uint8, "int64": np.int64}
_ORT_DTYPES = {"float32": "tensor(float)", "uint8": "tensor(uint8)", "int64": "tensor(int64)"}


class PolicyInputError(VlaEdgeError):
    """An image, state, prefix or call does not fit what the policy expects."""


@dataclass(frozen=True)
class EncodedObservation:
    """The observation encoder's output for one observation: reused by every sample and Euler step of a chunk."""

    context: np.ndarray  # (1, C)
    embedding: np.ndarray  # (E,)
    instruction: str
    t_obs_ns: int
    timings_ms: dict[str, float]


def choose_providers(preferred: list[str] | tuple[str, ...] | None) -> list[str]:
    """Preferred providers that this onnxruntime build has, in order; the CPU provider is always last."""
    available = set(ort.get_available_providers())
    wanted = list(preferred) if preferred else list(DEFAULT_PROVIDERS)
    chosen = [p for p in wanted if p in available and p != "CPUExecutionProvider"]
    return [*chosen, "CPUExecutionProvider"]


def check_io(session: ort.InferenceSession, inputs: list[TensorSpec], outputs: list[TensorSpec], where: str) -> None:
    """Refuse a graph whose tensors differ from the manifest's declaration: a missing or extra name, another
    dtype, or another shape (rank, or a fixed size where the manifest has another size or a dynamic one).

    A graph may be dynamic where the manifest is fixed (it accepts the fixed size); the warm-up runs it.
    """
    for kind, specs, nodes in (("input", inputs, session.get_inputs()), ("output", outputs, session.get_outputs())):
        actual = {node.name: node for node in nodes}
        declared = {spec.name for spec in specs}
        if kind == "input" and set(actual) - declared:
            extra = ", ".join(sorted(set(actual) - declared))
            raise BundleError(f"{where}: graph has input(s) the manifest does not declare: {extra}")
        for spec in specs:
            node = actual.get(spec.name)
            if node is None:
                raise BundleError(f"{where}: graph has no {kind} {spec.name!r} (it has {', '.join(actual)})")
            if node.type != _ORT_DTYPES[spec.dtype]:
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
) -> ort.InferenceSession:
    """An ONNX Runtime session of one graph of a bundle, made from bytes, never from a path.

    ``read_verified`` (``Bundle.read_verified``) reads the graph, and each external-data file it names
    (listed in the manifest), once from inside the bundle and checks the digest over the bytes it returns, so
    the bytes ORT gets are the bytes that were verified: a file swapped or changed after a check cannot run.
    External data goes to ORT from memory (``SessionOptions.add_external_initializers_from_files_in_memory``)
    under the name the graph uses, its path relative to the graph's directory, so ORT opens no file either.

    Measured (``python -m bench.bundle_memory``; a 256 MiB external initializer, CPU provider): resident
    memory once loaded is the same as loading from the path (1.02x the weights, both ways, inline or external);
    the peak while loading is 3.0x the weights instead of 2.0x (our copy, ORT's copy, the prepacked weights).
    Each buffer is released as soon as its session exists, so only one graph's peak is paid at a time.

    ``options`` makes fresh SessionOptions (external initializers are added to them). Raises BundleError.
    """
    model = read_verified(graph_file)
    session_options = options()
    if external_files:
        adder = getattr(session_options, "add_external_initializers_from_files_in_memory", None)
        if adder is None:
            raise BundleError(f"{graph_file} has external data, which needs onnxruntime >= 1.17 to load from "
                              f"memory (this is {ort.__version__})")
        base = posixpath.dirname(graph_file)
        names, buffers = [], []
        for rel in external_files:
            names.append(posixpath.relpath(rel, base) if base else rel)
            buffers.append(read_verified(rel))
        adder(names, buffers, [len(b) for b in buffers])
    try:
        session = ort.InferenceSession(model, sess_options=session_options, providers=providers)
    except Exception as exc:  # onnxruntime raises its own exception types for unreadable graphs
        raise BundleError(f"cannot load graph {graph_file}: {' '.join(str(exc).split())}") from None
    # ORT's Python wrapper keeps the model bytes for the session's lifetime, only to rebuild the session if a
    # provider fails at run time (its own source: "This is bad as we're holding the memory indefinitely"): 2.02x
    # the weights resident instead of 1.02x for a graph with inline weights. A provider that fails mid-run must
    # not be swapped for another silently under a running robot anyway: disable that fallback and let the bytes go.
    session.disable_fallback()
    session._model_bytes = None  # noqa: SLF001 - see above; used by nothing once fallback is off
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


class PolicyRunner:
    """ONNX Runtime sessions of one bundle variant, an instruction cache, and the K-sample flow sampler."""

    def __init__(
        self,
        bundle: Bundle,
        precision: str = "int8",
        providers: list[str] | None = None,
        intra_op_threads: int = 2,
        seed: int = 0,
        warm_up_samples: int = 8,
    ) -> None:
        self.bundle = bundle
        self.manifest = bundle.manifest
        if precision not in self.manifest.variants:
            raise BundleError(
                f"bundle {bundle.path} has no {precision!r} variant; it has: {', '.join(bundle.precisions)}"
            )
        self.precision = precision
        self.tokenizer = bundle.tokenizer()
        self._rng = np.random.default_rng(seed)
        wanted = choose_providers(providers)
        variant = self.manifest.variants[precision]  # type: ignore[index]
        self._sessions: dict[str, ort.InferenceSession] = {}
        for name in GRAPH_NAMES:
            spec = variant.graphs[name]
            session = open_session(bundle.read_verified, spec.file, lambda: session_options(intra_op_threads), wanted)
            check_io(session, spec.inputs, spec.outputs, spec.file)
            self._sessions[name] = session
        self._providers = list(self._sessions["denoiser"].get_providers())
        log.info("policy %s/%s runs on %s", self.manifest.name, precision, ", ".join(self._providers))
        norm = self.manifest.normalisation
        self._action_low = np.asarray(norm.action_low, dtype=np.float32)
        self._action_high = np.asarray(norm.action_high, dtype=np.float32)
        self._limit_low = np.asarray(self.manifest.action_space.low, dtype=np.float32)
        self._limit_high = np.asarray(self.manifest.action_space.high, dtype=np.float32)
        self._instruction_cache: dict[str, np.ndarray] = {}
        self._instruction: str | None = None
        self.cache_hits = 0
        self.cache_misses = 0
        try:
            self._warm_up(warm_up_samples)
        except MemoryError:
            raise BundleError(f"the {precision} variant of bundle {bundle.path} does not fit in memory "
                              f"(warm-up at K = {warm_up_samples})") from None
        except Exception as exc:  # onnxruntime's own exception types (Fail, InvalidArgument, ...) derive from it
            detail = " ".join(str(exc).split())
            raise BundleError(f"the {precision} variant of bundle {bundle.path} fails its warm-up inference "
                              f"(K = {warm_up_samples}): {detail}") from None

    # ---- properties -------------------------------------------------------------------------------------------
    @property
    def providers_in_use(self) -> list[str]:
        return list(self._providers)

    @property
    def horizon(self) -> int:
        return self.manifest.horizon

    @property
    def action_dim(self) -> int:
        return self.manifest.action_dim

    @property
    def instruction(self) -> str | None:
        return self._instruction

    # ---- instruction ------------------------------------------------------------------------------------------
    def set_instruction(self, text: str) -> float:
        """Make ``text`` the current instruction; runs the instruction encoder only the first time a text is seen.

        Returns the milliseconds spent (0.0 on a cache hit). Raises UnknownWordError naming an unknown word.
        """
        self._instruction = text
        if text in self._instruction_cache:
            self.cache_hits += 1
            self._last_instruction_ms = 0.0
            return 0.0
        start = time.perf_counter()
        tokens = self.tokenizer.encode(text)
        (features,) = self._sessions["instruction_encoder"].run(["instruction_features"], {"tokens": tokens})
        self._instruction_cache[text] = features.astype(np.float32)
        self.cache_misses += 1
        self._last_instruction_ms = (time.perf_counter() - start) * 1e3
        return self._last_instruction_ms

    # ---- observation ------------------------------------------------------------------------------------------
    def _prepare_image(self, image: np.ndarray) -> np.ndarray:
        """uint8 H×W×3 RGB → (1, h, w, 3) at the bundle's size; other sizes are resized with OpenCV (INTER_AREA)."""
        if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3:
            shape = getattr(image, "shape", None)
            raise PolicyInputError(f"image must be an H×W×3 RGB array, got shape {shape}")
        if image.dtype != np.uint8:
            raise PolicyInputError(f"image must be uint8 (0..255), got {image.dtype}")
        size = (self.manifest.image_width, self.manifest.image_height)
        if (image.shape[1], image.shape[0]) != size:
            import cv2  # only here: a camera already at the bundle's size never pays OpenCV's ~15 MiB

            image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        return np.ascontiguousarray(image)[None]

    def _prepare_state(self, state: np.ndarray) -> np.ndarray:
        state = np.asarray(state, dtype=np.float32).reshape(-1)
        if state.shape[0] != self.manifest.state_dim:
            raise PolicyInputError(f"state must have {self.manifest.state_dim} values, got {state.shape[0]}")
        if not np.all(np.isfinite(state)):
            raise PolicyInputError(f"state has non-finite values: {state.tolist()}")
        return state[None]

    def encode(self, image: np.ndarray, state: np.ndarray, t_obs_ns: int | None = None) -> EncodedObservation:
        """Run the observation encoder once for the current instruction (set_instruction first)."""
        if self._instruction is None:
            raise PolicyInputError("no instruction: call set_instruction(text) before encode()")
        t_obs = time.monotonic_ns() if t_obs_ns is None else t_obs_ns
        start = time.perf_counter()
        context, embedding = self._sessions["observation_encoder"].run(
            ["context", "embedding"],
            {
                "image": self._prepare_image(image),
                "state": self._prepare_state(state),
                "instruction_features": self._instruction_cache[self._instruction],
            },
        )
        encode_ms = (time.perf_counter() - start) * 1e3
        return EncodedObservation(
            context=context,
            embedding=embedding[0],
            instruction=self._instruction,
            t_obs_ns=t_obs,
            timings_ms={"instruction": self._last_instruction_ms, "encode": encode_ms},
        )

    # ---- actions ----------------------------------------------------------------------------------------------
    def normalise_actions(self, actions: np.ndarray) -> np.ndarray:
        scaled = 2.0 * (np.asarray(actions, dtype=np.float32) - self._action_low) / (self._action_high - self._action_low)
        return (scaled - 1.0).astype(np.float32)

    def denormalise_actions(self, actions_norm: np.ndarray) -> np.ndarray:
        return ((actions_norm + 1.0) * 0.5 * (self._action_high - self._action_low) + self._action_low).astype(
            np.float32
        )

    def sample(
        self,
        encoded: EncodedObservation,
        num_samples: int,
        prefix: np.ndarray | None = None,
        noise: np.ndarray | None = None,
    ) -> ChunkSamples:
        """K chunks (K×H×A, physical units, clipped to the action limits) by Euler integration of the flow.

        ``prefix`` (d×A, d < H, physical units) = actions already committed: at every step the first d actions of
        x_t are set to the prefix noised for that t (inpainting), so the chunk continues them. ``noise`` (K×H×A)
        replaces the runner's own random draw (parity checks compare variants on the same noise).
        """
        if num_samples < 1:
            raise PolicyInputError(f"num_samples must be at least 1, got {num_samples}")
        h, a, steps = self.manifest.horizon, self.manifest.action_dim, self.manifest.denoising_steps
        start = time.perf_counter()
        if noise is None:
            x0 = self._rng.standard_normal((num_samples, h, a), dtype=np.float32)
        else:
            x0 = np.asarray(noise, dtype=np.float32)
            if x0.shape != (num_samples, h, a):
                raise PolicyInputError(f"noise must have shape {(num_samples, h, a)}, got {x0.shape}")
        prefix_norm = self._prepare_prefix(prefix)
        d = 0 if prefix_norm is None else prefix_norm.shape[0]
        context = np.repeat(encoded.context, num_samples, axis=0)
        x = x0.copy()
        dt = 1.0 / steps
        denoiser = self._sessions["denoiser"]
        for step in range(steps):
            t = step * dt
            if d:
                x[:, :d] = (1.0 - t) * x0[:, :d] + t * prefix_norm
            timestep = np.full((num_samples,), t, dtype=np.float32)
            (velocity,) = denoiser.run(["velocity"], {"noisy_actions": x, "timestep": timestep, "context": context})
            x = x + dt * velocity
        if d:
            x[:, :d] = prefix_norm
        actions = np.clip(self.denormalise_actions(x), self._limit_low, self._limit_high)
        denoise_ms = (time.perf_counter() - start) * 1e3
        timings = dict(encoded.timings_ms)
        timings["denoise"] = denoise_ms
        timings["total"] = timings.get("instruction", 0.0) + timings.get("encode", 0.0) + denoise_ms
        return ChunkSamples(actions=actions, embedding=encoded.embedding, t_obs_ns=encoded.t_obs_ns, timings_ms=timings)

    def _prepare_prefix(self, prefix: np.ndarray | None) -> np.ndarray | None:
        if prefix is None:
            return None
        prefix = np.asarray(prefix, dtype=np.float32)
        if prefix.ndim != 2 or prefix.shape[1] != self.manifest.action_dim:
            raise PolicyInputError(f"prefix must be d×{self.manifest.action_dim}, got shape {prefix.shape}")
        if prefix.shape[0] >= self.manifest.horizon:
            raise PolicyInputError(
                f"prefix has {prefix.shape[0]} actions; it must be shorter than the horizon {self.manifest.horizon}"
            )
        if not np.all(np.isfinite(prefix)):
            raise PolicyInputError("prefix has non-finite values")
        if prefix.shape[0] == 0:
            return None
        return np.clip(self.normalise_actions(prefix), -1.0, 1.0)

    def infer(
        self,
        image: np.ndarray,
        state: np.ndarray,
        instruction: str,
        num_samples: int = 8,
        prefix: np.ndarray | None = None,
        t_obs_ns: int | None = None,
    ) -> ChunkSamples:
        """set_instruction + encode + sample, in one call."""
        if instruction != self._instruction:
            self.set_instruction(instruction)
        else:
            self._last_instruction_ms = 0.0
        return self.sample(self.encode(image, state, t_obs_ns), num_samples, prefix)

    def __call__(self, image: np.ndarray, state: np.ndarray, instruction: str) -> np.ndarray:
        """The hil rollout's policy interface: one chunk (H×A) from one sample."""
        return self.infer(image, state, instruction, num_samples=1).actions[0]

    # ---- start-up ---------------------------------------------------------------------------------------------
    def _warm_up(self, num_samples: int) -> None:
        """Run every graph once (the denoiser at K = 1 and K = ``num_samples``) so the first real chunk does not
        pay for lazy initialisation, and a graph that cannot run at the configured size fails now."""
        m = self.manifest
        features = np.zeros((1, m.instruction_features_dim), dtype=np.float32)
        context, _ = self._sessions["observation_encoder"].run(
            ["context", "embedding"],
            {
                "image": np.zeros((1, m.image_height, m.image_width, 3), dtype=np.uint8),
                "state": np.zeros((1, m.state_dim), dtype=np.float32),
                "instruction_features": features,
            },
        )
        self._sessions["instruction_encoder"].run(["instruction_features"], {"tokens": np.ones((1, 1), np.int64)})
        for k in sorted({1, num_samples}):
            self._sessions["denoiser"].run(
                ["velocity"],
                {
                    "noisy_actions": np.zeros((k, m.horizon, m.action_dim), dtype=np.float32),
                    "timestep": np.zeros((k,), dtype=np.float32),
                    "context": np.repeat(context, k, axis=0),
                },
            )
        self._last_instruction_ms = 0.0
