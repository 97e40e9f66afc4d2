"""The remote policy tier's client: one gRPC call to a Triton Inference Server, with a deadline, strict checks
on what comes back, and a health state with backoff.

The network is never trusted for timing or for content. Every call ends as either a `RemoteChunk` (the right
shape, dtype, finite, inside the action limits, back within the deadline measured here with the monotonic
clock) or a `RemoteFailure` that says why (``unavailable``, ``deadline``, ``malformed``, ``rejected``,
``backoff``). The caller (`vla_edge.routing.TieredPlanner`) then uses the local result or holds.

Health: ``ok`` after a good answer; ``degraded`` after a failure; ``down`` after ``down_after`` failures in a
row, when calls are not even attempted until a backoff (doubling up to a cap) has passed; the first call after
that is a probe, and one good answer makes the tier ``ok`` again.

The model contract (`REMOTE_INPUTS`, `REMOTE_OUTPUTS`) is shared with the server (`vla_edge.remote_server`):
one call runs the whole flow-matching sampler on the server, so a chunk costs one round trip, not one per
denoising step. ``embedding_whitened`` is the observation embedding whitened with the *server's* training
statistics (mean and inverse covariance), so its RMS is the same Mahalanobis score the local OOD signal computes,
and the client can score the remote model's inputs without holding the remote bundle.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from vla_edge.errors import VlaEdgeError

log = logging.getLogger(__name__)

CONTRACT_VERSION = 1

# name -> (Triton dtype, shape without a batch dimension; -1 is dynamic)
REMOTE_INPUTS: dict[str, tuple[str, tuple[int, ...]]] = {
    "image": ("UINT8", (-1, -1, 3)),  # H×W×3 RGB; the server resizes to its bundle's size
    "state": ("FP32", (-1,)),
    "instruction": ("BYTES", (1,)),  # UTF-8 text: the server tokenises with its own vocabulary
    "prefix": ("FP32", (-1, -1)),  # H×A, of which the first prefix_length rows are committed actions
    "prefix_length": ("INT32", (1,)),
    "num_samples": ("INT32", (1,)),
    "seed": ("INT64", (1,)),  # the server draws its noise from this seed: same request, same answer
}
REMOTE_OUTPUTS: dict[str, tuple[str, tuple[int, ...]]] = {
    "actions": ("FP32", (-1, -1, -1)),  # K×H×A, physical units, inside the action limits
    "embedding_whitened": ("FP32", (-1,)),  # Lᵀ (embedding - train mean), where L Lᵀ = train precision
}
MAX_REMOTE_SAMPLES = 64
# PyTriton wraps a refused request's message in a traceback; this finds the message.
_BAD_REQUEST = re.compile(r"(?:PyTritonBadParameterError|BadRemoteRequest): ([^\n]*)")

FailureKind = Literal["unavailable", "deadline", "malformed", "rejected", "backoff"]
HealthState = Literal["ok", "degraded", "down"]


class RemoteTierError(VlaEdgeError):
    """The remote tier cannot be set up (missing client library, bad URL)."""


@dataclass(frozen=True)
class RemoteRequest:
    """What the remote policy needs for one chunk; ``prefix`` (d×A, d < H) rows are already committed."""

    image: np.ndarray
    state: np.ndarray
    instruction: str
    num_samples: int
    prefix: np.ndarray | None = None
    seed: int = 0


@dataclass(frozen=True)
class RemoteChunk:
    actions: np.ndarray  # K×H×A float32
    embedding_whitened: np.ndarray  # (E,) float32
    latency_ms: float


@dataclass(frozen=True)
class RemoteFailure:
    kind: FailureKind
    detail: str
    latency_ms: float

    def describe(self) -> str:
        return f"{self.kind}: {self.detail}"


@dataclass(frozen=True)
class HealthSnapshot:
    state: HealthState
    consecutive_failures: int
    last_failure: str  # empty when the last call succeeded
    retry_in_s: float  # > 0 only while down (no call is attempted before then)

    def describe(self) -> str:
        """The line the operator console shows."""
        if self.state == "ok":
            return "ok"
        text = f"degraded ({self.state}): {self.last_failure}"
        if self.retry_in_s > 0:
            text += f"; next try in {self.retry_in_s:.1f} s"
        return text + "; the robot runs on the local tier"


@dataclass(frozen=True)
class OutputLimits:
    """What a valid answer looks like: chunk horizon, action dimension and the action limits."""

    horizon: int
    action_dim: int
    low: np.ndarray
    high: np.ndarray
    tolerance: float = 1e-4


def validate_outputs(
    actions: object, embedding_whitened: object, num_samples: int, limits: OutputLimits
) -> tuple[np.ndarray, np.ndarray] | str:
    """The arrays if they keep the contract, else why not (the caller turns that into a ``malformed`` failure)."""
    expected = (num_samples, limits.horizon, limits.action_dim)
    if not isinstance(actions, np.ndarray):
        return "no 'actions' output"
    if not isinstance(embedding_whitened, np.ndarray):
        return "no 'embedding_whitened' output"
    if actions.dtype != np.float32:
        return f"actions are {actions.dtype}, expected float32"
    if actions.shape != expected:
        return f"actions have shape {actions.shape}, expected {expected}"
    if not np.all(np.isfinite(actions)):
        return f"actions have {int(np.size(actions) - np.isfinite(actions).sum())} non-finite values"
    low, high = limits.low - limits.tolerance, limits.high + limits.tolerance
    if np.any(actions < low) or np.any(actions > high):
        return "actions leave the action limits"
    if embedding_whitened.dtype != np.float32 or embedding_whitened.ndim != 1 or embedding_whitened.size == 0:
        got = f"{embedding_whitened.dtype} {embedding_whitened.shape}"
        return f"embedding_whitened must be a non-empty float32 vector, got {got}"
    if not np.all(np.isfinite(embedding_whitened)):
        return "embedding_whitened has non-finite values"
    return actions, embedding_whitened


@dataclass
class _Health:
    down_after: int
    backoff_initial_s: float
    backoff_max_s: float
    state: HealthState = "ok"
    consecutive_failures: int = 0
    last_failure: str = ""
    backoff_s: float = 0.0
    next_try_ns: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def success(self) -> None:
        with self.lock:
            self.state, self.consecutive_failures, self.last_failure = "ok", 0, ""
            self.backoff_s, self.next_try_ns = 0.0, 0

    def failure(self, description: str, now_ns: int) -> None:
        with self.lock:
            self.consecutive_failures += 1
            self.last_failure = description
            if self.consecutive_failures >= self.down_after:
                self.state = "down"
                self.backoff_s = (
                    self.backoff_initial_s if self.backoff_s == 0 else min(2 * self.backoff_s, self.backoff_max_s)
                )
                self.next_try_ns = now_ns + int(self.backoff_s * 1e9)
            else:
                self.state = "degraded"

    def blocked_for_s(self, now_ns: int) -> float:
        with self.lock:
            return max(0.0, (self.next_try_ns - now_ns) / 1e9) if self.state == "down" else 0.0

    def snapshot(self, now_ns: int) -> HealthSnapshot:
        with self.lock:
            retry = max(0.0, (self.next_try_ns - now_ns) / 1e9) if self.state == "down" else 0.0
            return HealthSnapshot(self.state, self.consecutive_failures, self.last_failure, retry)


def _status_code(exc: Exception) -> str:
    status = getattr(exc, "status", None)
    code = status() if callable(status) else status
    return str(code or "")


class RemotePolicyClient:
    """Calls the remote policy model on a Triton server over gRPC. Thread-safe for one caller at a time."""

    def __init__(
        self,
        url: str,
        model_name: str,
        deadline_ms: float,
        limits: OutputLimits,
        *,
        down_after: int = 3,
        backoff_initial_s: float = 0.5,
        backoff_max_s: float = 10.0,
    ) -> None:
        try:
            import tritonclient.grpc as triton_grpc
            from tritonclient.utils import InferenceServerException
        except ImportError:
            raise RemoteTierError(
                "the remote tier needs tritonclient: pip install 'vla-edge[remote]' (or set remote.enabled = false)"
            ) from None
        if deadline_ms <= 0:
            raise RemoteTierError(f"remote deadline must be positive, got {deadline_ms} ms")
        self._grpc = triton_grpc
        self._server_error = InferenceServerException
        try:
            self._client = triton_grpc.InferenceServerClient(url=url)
        except Exception as exc:  # tritonclient raises plain exceptions for a malformed URL
            raise RemoteTierError(f"remote.url {url!r} is not a usable gRPC address: {exc}") from None
        self.url = url
        self.model_name = model_name
        self.deadline_ms = float(deadline_ms)
        self.limits = limits
        self._health = _Health(down_after, backoff_initial_s, backoff_max_s)

    # -- health ------------------------------------------------------------------------------------------------
    @property
    def health(self) -> HealthSnapshot:
        return self._health.snapshot(time.monotonic_ns())

    def wait_ready(self, timeout_s: float) -> bool:
        """True once the server says the model is ready; False when it does not within ``timeout_s``."""
        end = time.monotonic() + timeout_s
        while True:
            try:
                remaining = max(0.05, end - time.monotonic())
                if self._client.is_model_ready(self.model_name, client_timeout=min(1.0, remaining)):
                    return True
            except Exception:  # not up yet: connection refused, or a deadline; keep asking until timeout_s
                pass
            if time.monotonic() >= end:
                return False
            time.sleep(0.1)

    def report_unready(self, waited_s: float) -> None:
        """Start-up found no ready model: the tier starts degraded, and the first doubtful chunk tries again."""
        self._health.failure(f"unavailable: model {self.model_name!r} not ready at {self.url} after {waited_s:.1f} s",
                             time.monotonic_ns())

    # -- one call ----------------------------------------------------------------------------------------------
    def infer(self, request: RemoteRequest) -> RemoteChunk | RemoteFailure:
        started = time.monotonic_ns()
        blocked = self._health.blocked_for_s(started)
        if blocked > 0:
            return RemoteFailure("backoff", f"remote tier down, next try in {blocked:.1f} s", 0.0)
        try:
            inputs = self._inputs(request)
        except ValueError as exc:  # our own request does not fit the contract: not the server's fault
            return RemoteFailure("rejected", str(exc), 0.0)
        outcome = self._call(inputs, request.num_samples, started)
        if isinstance(outcome, RemoteFailure):
            if outcome.kind != "rejected":
                self._health.failure(outcome.describe(), time.monotonic_ns())
                log.warning("remote tier %s: %s", self.url, outcome.describe())
        else:
            self._health.success()
        return outcome

    def _call(self, inputs: list, num_samples: int, started_ns: int) -> RemoteChunk | RemoteFailure:
        def elapsed_ms() -> float:
            return (time.monotonic_ns() - started_ns) / 1e6

        outputs = [self._grpc.InferRequestedOutput(name) for name in REMOTE_OUTPUTS]
        try:
            result = self._client.infer(
                self.model_name, inputs, outputs=outputs, client_timeout=self.deadline_ms / 1e3
            )
        except self._server_error as exc:
            code = _status_code(exc)
            if "DEADLINE_EXCEEDED" in code:
                return RemoteFailure("deadline", f"no answer within {self.deadline_ms:g} ms", elapsed_ms())
            if "UNAVAILABLE" in code or "UNIMPLEMENTED" in code:
                return RemoteFailure("unavailable", _first_line(exc.message() or code), elapsed_ms())
            message = exc.message() or ""
            refused = _BAD_REQUEST.search(message)
            if refused:  # the server refused this request (e.g. a word its vocabulary lacks); it is not broken
                return RemoteFailure("rejected", refused.group(1).strip()[:300], elapsed_ms())
            return RemoteFailure("malformed", f"server error {code}: {_first_line(message)}", elapsed_ms())
        except Exception as exc:  # grpc can raise its own errors for a broken connection
            return RemoteFailure("unavailable", _first_line(str(exc)), elapsed_ms())
        latency = elapsed_ms()
        if latency > self.deadline_ms:
            # The answer came, but too late to be planned on: discard it, whatever it says.
            return RemoteFailure("deadline", f"answer came after {latency:.0f} ms > {self.deadline_ms:g} ms", latency)
        checked = validate_outputs(result.as_numpy("actions"), result.as_numpy("embedding_whitened"), num_samples,
                                   self.limits)
        if isinstance(checked, str):
            return RemoteFailure("malformed", checked, latency)
        actions, embedding_whitened = checked
        return RemoteChunk(actions, embedding_whitened, latency)

    def _inputs(self, request: RemoteRequest) -> list:
        h, a = self.limits.horizon, self.limits.action_dim
        if not 1 <= request.num_samples <= MAX_REMOTE_SAMPLES:
            raise ValueError(f"num_samples must be 1..{MAX_REMOTE_SAMPLES}, got {request.num_samples}")
        prefix = np.zeros((h, a), dtype=np.float32)
        d = 0
        if request.prefix is not None and request.prefix.shape[0] > 0:
            given = np.asarray(request.prefix, dtype=np.float32)
            if given.ndim != 2 or given.shape[1] != a or given.shape[0] >= h:
                raise ValueError(f"prefix must be d×{a} with d < {h}, got {given.shape}")
            d = given.shape[0]
            prefix[:d] = given
        arrays = {
            "image": np.ascontiguousarray(request.image, dtype=np.uint8),
            "state": np.asarray(request.state, dtype=np.float32).reshape(-1),
            "instruction": np.array([request.instruction.encode("utf-8")], dtype=np.object_),
            "prefix": prefix,
            "prefix_length": np.array([d], dtype=np.int32),
            "num_samples": np.array([request.num_samples], dtype=np.int32),
            "seed": np.array([request.seed], dtype=np.int64),
        }
        inputs = []
        for name, (dtype, _) in REMOTE_INPUTS.items():
            tensor = self._grpc.InferInput(name, list(arrays[name].shape), dtype)
            tensor.set_data_from_numpy(arrays[name])
            inputs.append(tensor)
        return inputs

    def close(self) -> None:
        try:
            self._client.close()
        except Exception:  # closing a channel that never connected may raise; nothing is left to release
            log.debug("closing the remote client failed", exc_info=True)


def _first_line(text: str) -> str:
    return (text or "").strip().splitlines()[0][:200] if (text or "").strip() else "no detail"
