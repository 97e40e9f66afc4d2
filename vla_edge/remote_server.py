"""The remote policy tier's server side: a bundle served by NVIDIA Triton Inference Server through PyTriton.

Runs only under the Triton environment (``scripts/setup-triton.sh`` makes ``.venv-triton/``); start it with
``vla-edge remote serve --bundle DIR``. One Triton model runs the whole chunk (instruction encoder, observation
encoder, the K-sample flow loop) with vla_edge's own `PolicyRunner` on the bundle's fp32 graphs, so the daemon
pays one gRPC round trip per chunk. ``--instances N`` gives Triton N runners, so N robots are served at once.

The server binds 127.0.0.1 unless told otherwise, and answers a bad request with a one-line error, never a
traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vla_edge.bundle import Bundle, load_bundle
from vla_edge.errors import BundleError, VlaEdgeError
from vla_edge.policy import PolicyRunner
from vla_edge.remote import MAX_REMOTE_SAMPLES, REMOTE_INPUTS, REMOTE_OUTPUTS

log = logging.getLogger(__name__)

_NUMPY = {"UINT8": np.uint8, "FP32": np.float32, "INT32": np.int32, "INT64": np.int64, "BYTES": np.bytes_}


class BadRemoteRequest(VlaEdgeError):
    """A request that does not keep the contract; its message goes back to the client."""


@dataclass(frozen=True)
class RemoteAnswer:
    actions: np.ndarray
    embedding_whitened: np.ndarray


class RemoteSampler:
    """One PolicyRunner on a bundle, answering contract-shaped requests (arrays in, arrays out)."""

    def __init__(self, bundle: Bundle, precision: str = "fp32", threads: int = 1) -> None:
        self.runner = PolicyRunner(bundle, precision, ["CUDAExecutionProvider", "CPUExecutionProvider"], threads)
        spec = self.runner.manifest
        if spec.embedding_stats is None or len(spec.observation.cameras) != 1:
            # The remote contract (docs/remote-tier.md) carries one image and an embedding for the local ood check.
            raise BundleError(f"bundle {bundle.path}: the remote tier serves bundles with one camera view and an "
                              "embedding (the remote contract's inputs)")
        stats = spec.embedding_stats
        self._mean = np.asarray(stats.mean, dtype=np.float64)
        # precision = L Lᵀ, so |Lᵀ (e - mean)|² is the Mahalanobis distance² that the local OOD signal uses.
        self._whiten = np.linalg.cholesky(np.asarray(stats.precision, dtype=np.float64)).T
        self._horizon = spec.horizon

    def answer(self, request: dict[str, np.ndarray]) -> RemoteAnswer:
        missing = [name for name in REMOTE_INPUTS if name not in request]
        if missing:
            raise BadRemoteRequest(f"missing inputs: {', '.join(missing)}")
        k = int(np.asarray(request["num_samples"]).reshape(-1)[0])
        if not 1 <= k <= MAX_REMOTE_SAMPLES:
            raise BadRemoteRequest(f"num_samples must be 1..{MAX_REMOTE_SAMPLES}, got {k}")
        d = int(np.asarray(request["prefix_length"]).reshape(-1)[0])
        prefix = np.asarray(request["prefix"], dtype=np.float32)
        if not 0 <= d < self._horizon or prefix.ndim != 2 or prefix.shape[0] < d:
            raise BadRemoteRequest(f"prefix_length {d} does not fit a prefix of shape {prefix.shape}")
        instruction = _text(request["instruction"])
        seed = int(np.asarray(request["seed"]).reshape(-1)[0])
        h, a = self._horizon, self.runner.action_dim
        noise = np.random.default_rng(seed).standard_normal((k, h, a), dtype=np.float32)
        try:
            if instruction != self.runner.instruction:
                self.runner.set_instruction(instruction)
            encoded = self.runner.encode(request["image"], request["state"])
            chunk = self.runner.sample(encoded, k, prefix[:d] if d else None, noise)
        except VlaEdgeError as exc:  # unknown word, wrong image or state: the client's mistake, said plainly
            raise BadRemoteRequest(str(exc)) from None
        whitened = (self._whiten @ (chunk.embedding.astype(np.float64) - self._mean)).astype(np.float32)
        return RemoteAnswer(chunk.actions.astype(np.float32), whitened)


def _text(value: np.ndarray) -> str:
    item = np.asarray(value).reshape(-1)
    if item.size != 1:
        raise BadRemoteRequest("instruction must be one UTF-8 string")
    raw = item[0]
    try:
        return raw.decode("utf-8") if isinstance(raw, bytes) else str(raw)
    except UnicodeDecodeError:
        raise BadRemoteRequest("instruction is not valid UTF-8") from None


def triton_infer_function(sampler: RemoteSampler):
    """A PyTriton inference callable (list of requests → list of answers) around one sampler."""
    from pytriton.exceptions import PyTritonBadParameterError

    lock = threading.Lock()  # one PolicyRunner serves one request at a time

    def infer(requests: list) -> list[dict[str, np.ndarray]]:
        answers = []
        for request in requests:
            try:
                with lock:
                    answer = sampler.answer({name: request[name] for name in request})
            except BadRemoteRequest as exc:
                raise PyTritonBadParameterError(str(exc)) from None
            answers.append({"actions": answer.actions, "embedding_whitened": answer.embedding_whitened})
        return answers

    return infer


def tensors(spec: dict[str, tuple[str, tuple[int, ...]]]) -> list:
    from pytriton.model_config import Tensor

    return [Tensor(name=name, dtype=_NUMPY[dtype], shape=shape) for name, (dtype, shape) in spec.items()]


def bind_policy(triton, model_name: str, bundle: Bundle, instances: int = 1, threads: int = 1) -> None:
    """Bind the bundle's policy to a PyTriton ``Triton`` object under ``model_name``."""
    from pytriton.model_config import ModelConfig

    functions = [triton_infer_function(RemoteSampler(bundle, "fp32", threads)) for _ in range(instances)]
    triton.bind(
        model_name=model_name,
        infer_func=functions if instances > 1 else functions[0],
        inputs=tensors(REMOTE_INPUTS),
        outputs=tensors(REMOTE_OUTPUTS),
        config=ModelConfig(batching=False),
        strict=True,
    )


def triton_config(host: str, grpc_port: int, http_port: int):
    from pytriton.triton import TritonConfig

    # HTTP stays on (PyTriton waits for readiness over it); metrics are the daemon's business, not the server's.
    return TritonConfig(grpc_address=host, grpc_port=grpc_port, http_address=host, http_port=http_port,
                        allow_metrics=False, log_verbose=0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vla_edge.remote_server", description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--model-name", default="vla_remote")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001, help="gRPC port")
    parser.add_argument("--http-port", type=int, default=8000)
    parser.add_argument("--instances", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads per instance")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        from pytriton.triton import Triton
    except ImportError:
        print("vla-edge: error: PyTriton is not installed in this Python; run scripts/setup-triton.sh",
              file=sys.stderr)
        return 2
    try:
        bundle = load_bundle(args.bundle)
    except VlaEdgeError as exc:
        print(f"vla-edge: error: {exc}", file=sys.stderr)
        return 2
    with Triton(config=triton_config(args.host, args.port, args.http_port)) as triton:
        bind_policy(triton, args.model_name, bundle, args.instances, args.threads)
        log.info("serving %s (%s %s) as %r on grpc %s:%d", bundle.path, bundle.manifest.name,
                 bundle.manifest.version, args.model_name, args.host, args.port)
        triton.serve()
    return 0


if __name__ == "__main__":
    sys.exit(main())
