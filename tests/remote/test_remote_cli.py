"""`vla-edge remote repo` and `vla-edge remote serve` as a user runs them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import numpy as np
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from hil.harness import free_port
from vla_edge.bundle import load_bundle
from vla_edge.remote import REMOTE_INPUTS, REMOTE_OUTPUTS, RemoteChunk, RemotePolicyClient, RemoteRequest
from vla_edge.routing import output_limits


def _cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vla_edge.cli", *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})})


def test_repo_writes_a_model_repository_triton_can_parse(bundle, tmp_path):
    out = tmp_path / "models"
    done = _cli("remote", "repo", "--bundle", str(bundle.path), "--out", str(out), "--instances", "2")
    assert done.returncode == 0, done.stderr
    config = text_format.Parse((out / "vla_remote" / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    assert config.name == "vla_remote" and config.backend == "python" and config.max_batch_size == 0
    assert [i.name for i in config.input] == list(REMOTE_INPUTS)
    assert [o.name for o in config.output] == list(REMOTE_OUTPUTS)
    assert [list(i.dims) for i in config.input] == [list(shape) for _, shape in REMOTE_INPUTS.values()]
    assert config.instance_group[0].count == 2
    copied = load_bundle(out / "vla_remote" / "1" / "bundle")  # verifies every digest of the copy
    assert copied.manifest == bundle.manifest
    compile((out / "vla_remote" / "1" / "model.py").read_text(), "model.py", "exec")

    again = _cli("remote", "repo", "--bundle", str(bundle.path), "--out", str(out))
    assert again.returncode == 2 and "--force" in again.stderr and "Traceback" not in again.stderr


def test_serve_says_how_to_get_the_triton_environment(bundle, tmp_path):
    done = _cli("remote", "serve", "--bundle", str(bundle.path), "--python", str(tmp_path / "nope" / "python"))
    assert done.returncode == 2
    assert "scripts/setup-triton.sh" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.slow
def test_serve_from_the_main_environment_answers_over_grpc(bundle, tmp_path):
    triton_python = os.path.join(os.path.dirname(__file__), "..", "..", ".venv-triton", "bin", "python")
    if not os.path.exists(triton_python):
        pytest.skip(f"Triton venv missing: {triton_python} not found; run scripts/setup-triton.sh")
    port = free_port()
    log = (tmp_path / "serve.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "vla_edge.cli", "remote", "serve", "--bundle", str(bundle.path), "--port", str(port),
         "--http-port", str(free_port())],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        client = RemotePolicyClient(f"127.0.0.1:{port}", "vla_remote", 2000.0, output_limits(bundle.manifest))
        assert client.wait_ready(180.0), (tmp_path / "serve.log").read_text()[-2000:]
        from hil.world import TabletopWorld

        world = TabletopWorld(2)
        answer = client.infer(RemoteRequest(world.render(), world.state(), "put the blue block in the top bin", 2))
        assert isinstance(answer, RemoteChunk), answer
        assert answer.actions.shape == (2, bundle.manifest.horizon, bundle.manifest.action_dim)
        assert np.all(np.isfinite(answer.actions))
        client.close()
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
        log.close()
