"""``vla-edge remote serve|repo``: serve a bundle as the remote policy tier on NVIDIA Triton Inference Server.

* ``serve`` starts Triton through PyTriton with the bundle bound as one model (``vla_edge.remote_server``). PyTriton
  runs from its own environment (``scripts/setup-triton.sh`` makes ``.venv-triton/``), so this command re-executes
  itself under that environment's Python.
* ``repo`` writes a Triton model repository (Python backend: ``config.pbtxt``, ``1/model.py``, ``1/bundle/``) for a
  stock ``tritonserver`` (e.g. NVIDIA's container) that has vla-edge installed in its Python.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

from vla_edge.bundle import load_bundle
from vla_edge.errors import VlaEdgeError
from vla_edge.paths import REPO_ROOT
from vla_edge.remote import REMOTE_INPUTS, REMOTE_OUTPUTS

TRITON_PYTHON_ENV = "VLA_EDGE_TRITON_PYTHON"
DEFAULT_TRITON_PYTHON = REPO_ROOT / ".venv-triton" / "bin" / "python"


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("remote", help="serve a bundle as the remote policy tier (Triton)")
    actions = parser.add_subparsers(dest="remote_command", metavar="ACTION", required=True)

    serve = actions.add_parser("serve", help="start Triton (PyTriton) serving the bundle over gRPC")
    serve.add_argument("--bundle", type=Path, required=True, help="bundle directory (its fp32 graphs are served)")
    serve.add_argument("--port", type=int, default=8001, help="gRPC port (remote.url on the robot)")
    serve.add_argument("--http-port", type=int, default=8000, help="HTTP port (health checks)")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind; 0.0.0.0 serves other machines")
    serve.add_argument("--model-name", default="vla_remote", help="remote.model_name on the robot")
    serve.add_argument("--instances", type=int, default=1, help="policy copies, one request each at a time")
    serve.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads per instance")
    serve.add_argument("--python", type=Path, default=None,
                       help=f"Python with PyTriton (default ${TRITON_PYTHON_ENV} or {DEFAULT_TRITON_PYTHON})")
    serve.set_defaults(func=run_serve)

    repo = actions.add_parser("repo", help="write a Triton model repository (Python backend) for the bundle")
    repo.add_argument("--bundle", type=Path, required=True)
    repo.add_argument("--out", type=Path, required=True, help="model repository directory to create")
    repo.add_argument("--model-name", default="vla_remote")
    repo.add_argument("--instances", type=int, default=1)
    repo.add_argument("--force", action="store_true", help="replace the model's directory if it exists")
    repo.set_defaults(func=run_repo)


def triton_python(explicit: Path | None) -> Path:
    candidate = explicit or Path(os.environ.get(TRITON_PYTHON_ENV, DEFAULT_TRITON_PYTHON))
    if not candidate.exists():
        raise VlaEdgeError(
            f"no Triton Python at {candidate}: run scripts/setup-triton.sh (it makes .venv-triton/), or pass --python"
        )
    return candidate


def serve_argv(args: argparse.Namespace, python: Path) -> list[str]:
    return [str(python), "-m", "vla_edge.remote_server", "--bundle", str(args.bundle.resolve()),
            "--port", str(args.port), "--http-port", str(args.http_port), "--host", args.host,
            "--model-name", args.model_name, "--instances", str(args.instances), "--threads", str(args.threads)]


def run_serve(args: argparse.Namespace) -> int:
    if args.instances < 1 or args.threads < 1:
        raise VlaEdgeError("--instances and --threads must be at least 1")
    load_bundle(args.bundle)  # a broken bundle is reported here, before Triton starts
    python = triton_python(args.python)
    sys.stdout.flush()
    sys.stderr.flush()
    # PyTriton's Python-backend stub needs the interpreter it was set up with (see scripts/setup-triton.sh).
    os.execv(str(python), serve_argv(args, python))
    return 0  # not reached


_TRITON_TYPES = {"UINT8": "TYPE_UINT8", "FP32": "TYPE_FP32", "INT32": "TYPE_INT32", "INT64": "TYPE_INT64",
                 "BYTES": "TYPE_STRING"}

MODEL_PY = '''"""Triton Python-backend model: the vla-edge remote tier (written by `vla-edge remote repo`)."""

from pathlib import Path

import triton_python_backend_utils as pb_utils

from vla_edge.bundle import load_bundle
from vla_edge.remote import REMOTE_INPUTS
from vla_edge.remote_server import BadRemoteRequest, RemoteSampler


class TritonPythonModel:
    def initialize(self, args):
        here = Path(args["model_repository"]) / args["model_version"]
        self.sampler = RemoteSampler(load_bundle(here / "bundle"))

    def execute(self, requests):
        responses = []
        for request in requests:
            arrays = {name: pb_utils.get_input_tensor_by_name(request, name).as_numpy() for name in REMOTE_INPUTS}
            try:
                answer = self.sampler.answer(arrays)
            except BadRemoteRequest as exc:
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(f"BadRemoteRequest: {exc}")))
                continue
            responses.append(pb_utils.InferenceResponse(output_tensors=[
                pb_utils.Tensor("actions", answer.actions),
                pb_utils.Tensor("embedding_whitened", answer.embedding_whitened),
            ]))
        return responses
'''


def model_config(model_name: str, instances: int) -> str:
    """config.pbtxt text: no batching (each request is one robot's chunk), CPU or GPU instances."""

    def tensors(kind: str, spec: dict[str, tuple[str, tuple[int, ...]]]) -> str:
        rows = [
            f'  {{ name: "{name}" data_type: {_TRITON_TYPES[dtype]} dims: [ {", ".join(str(d) for d in shape)} ] }}'
            for name, (dtype, shape) in spec.items()
        ]
        return f"{kind} [\n" + ",\n".join(rows) + "\n]\n"

    return (
        f'name: "{model_name}"\nbackend: "python"\nmax_batch_size: 0\n'
        + tensors("input", REMOTE_INPUTS)
        + tensors("output", REMOTE_OUTPUTS)
        + f"instance_group [ {{ count: {instances} kind: KIND_AUTO }} ]\n"
    )


def run_repo(args: argparse.Namespace) -> int:
    if args.instances < 1:
        raise VlaEdgeError("--instances must be at least 1")
    bundle = load_bundle(args.bundle)
    model_dir = args.out / args.model_name
    if model_dir.exists():
        if not args.force:
            raise VlaEdgeError(f"{model_dir} exists; pass --force to replace it")
        shutil.rmtree(model_dir)
    version_dir = model_dir / "1"
    version_dir.mkdir(parents=True)
    shutil.copytree(bundle.path, version_dir / "bundle")
    (version_dir / "model.py").write_text(MODEL_PY, encoding="utf-8")
    (model_dir / "config.pbtxt").write_text(model_config(args.model_name, args.instances), encoding="utf-8")
    load_bundle(version_dir / "bundle")  # the copy verifies like the original
    print(f"model repository written: {model_dir} (tritonserver --model-repository {args.out})")
    return 0
