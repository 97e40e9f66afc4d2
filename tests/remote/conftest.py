"""A real Triton Inference Server (PyTriton, from the Triton venv) shared by the remote-tier tests."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from vla_edge.bundle import Bundle, load_bundle
from vla_edge.paths import MODELS_DIR, REFERENCE_BUNDLE_DIR, REPO_ROOT

TRITON_PYTHON = REPO_ROOT / ".venv-triton" / "bin" / "python"
SERVER_SCRIPT = Path(__file__).with_name("triton_test_server.py")
MODELS = ("vla_remote", "vla_slow", "vla_wrong_shape", "vla_nan")
INSTRUCTION = "put the red block in the left bin"


def pick_bundle_dir() -> Path:
    """The remote bundle when it is built, else the reference bundle (the contract is the same)."""
    override = os.environ.get("VLA_EDGE_REMOTE_TEST_BUNDLE")
    if override:
        return Path(override)
    remote = MODELS_DIR / "bundles" / "remote"
    return remote if (remote / "manifest.json").is_file() else REFERENCE_BUNDLE_DIR


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class TritonServer:
    url: str
    bundle: Bundle
    log: Path


@pytest.fixture(scope="session")
def bundle() -> Bundle:
    path = pick_bundle_dir()
    if not (path / "manifest.json").is_file():
        pytest.skip(f"no bundle at {path} (build one with python -m models.build)")
    return load_bundle(path)


@pytest.fixture(scope="session")
def triton_server(bundle: Bundle, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    if not TRITON_PYTHON.exists():
        pytest.skip(f"Triton venv missing: {TRITON_PYTHON} not found; run scripts/setup-triton.sh")
    import tritonclient.grpc as triton_grpc

    port, http_port = free_port(), free_port()
    log = tmp_path_factory.mktemp("triton") / "server.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [str(TRITON_PYTHON), str(SERVER_SCRIPT), "--bundle", str(bundle.path), "--port", str(port),
             "--http-port", str(http_port)],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
    url = f"127.0.0.1:{port}"
    client = triton_grpc.InferenceServerClient(url)
    try:
        import time

        deadline = time.monotonic() + 180
        while True:
            if process.poll() is not None:
                pytest.fail(f"the Triton test server exited with {process.returncode}:\n{log.read_text()[-3000:]}")
            try:
                if all(client.is_model_ready(name, client_timeout=1.0) for name in MODELS):
                    break
            except Exception:  # not listening yet
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"the Triton test server was not ready within 180 s:\n{log.read_text()[-3000:]}")
            time.sleep(0.25)
        yield TritonServer(url, bundle, log)
    finally:
        client.close()
        # The server's own process group: PyTriton starts tritonserver and Python-backend stubs as children.
        try:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
        except ProcessLookupError:
            pass


@pytest.fixture(scope="session")
def observation() -> tuple[np.ndarray, np.ndarray]:
    from hil.world import TabletopWorld

    world = TabletopWorld(11)
    return world.render(), world.state()
