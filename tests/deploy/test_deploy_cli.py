"""`vla-edge bundle ...` and `vla-edge status`: real files, a real HTTP server, the real console script."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from vla_edge.bundle_store import BundleStore
from vla_edge.cli import main
from vla_edge.paths import REFERENCE_BUNDLE_DIR
from vla_edge.signing import SIGNATURE_FILE
from vla_edge.telemetry import DaemonMetrics, HealthSampler, MetricsServer


def test_keygen_sign_verify_roundtrip(tmp_path: Path, make_bundle, capsys):
    assert main(["bundle", "keygen", "--dir", str(tmp_path / "k")]) == 0
    priv, pub = tmp_path / "k" / "bundle-signing.key", tmp_path / "k" / "bundle-signing.pub"
    bundle = make_bundle(tmp_path)
    assert main(["bundle", "sign", str(bundle), "--key", str(priv)]) == 0
    assert main(["bundle", "verify", str(bundle), "--key", str(pub)]) == 0
    out = capsys.readouterr().out
    assert "OK:" in out and "10 files" in out
    (bundle / "fp32" / "denoiser.onnx").write_bytes(b"x")
    assert main(["bundle", "verify", str(bundle), "--key", str(pub)]) == 2
    err = capsys.readouterr().err
    assert "fp32/denoiser.onnx does not match" in err and "Traceback" not in err


def test_verify_uses_config_trusted_keys(tmp_path: Path, make_bundle, keys, capsys):
    from vla_edge.signing import sign_bundle

    bundle = make_bundle(tmp_path)
    sign_bundle(bundle, keys[0])
    config = tmp_path / "vla-edge.toml"
    config.write_text(f'[policy]\nrequire_signature = true\ntrusted_keys = ["{keys[1]}"]\n')
    assert main(["bundle", "verify", str(bundle), "--config", str(config)]) == 0
    assert "signed by key" in capsys.readouterr().out


def test_install_refuses_unsigned_and_unloadable(tmp_path: Path, make_bundle, keys, capsys):
    from vla_edge.signing import sign_bundle

    bundle = make_bundle(tmp_path)
    store = tmp_path / "store"
    assert main(["bundle", "install", str(bundle), "--store", str(store), "--key", str(keys[1])]) == 2
    assert "not signed" in capsys.readouterr().err
    assert main(["bundle", "install", str(bundle), "--store", str(store)]) == 2
    assert "no trusted public key" in capsys.readouterr().err
    sign_bundle(bundle, keys[0])
    # Signed, but its manifest is not one the daemon could load: refused before it becomes a version.
    assert main(["bundle", "install", str(bundle), "--store", str(store), "--key", str(keys[1])]) == 2
    assert "manifest" in capsys.readouterr().err
    assert BundleStore(store, require_signature=False).list() == []


def test_activate_rollback_list(tmp_path: Path, make_bundle, keys, capsys):
    from vla_edge.signing import sign_bundle

    store_root = tmp_path / "store"
    store = BundleStore(store_root, trusted_keys=[keys[1]])
    names = []
    for version in ("1.0", "2.0"):
        b = make_bundle(tmp_path / version, name="demo", version=version)
        sign_bundle(b, keys[0])
        names.append(store.install(b).name)
    common = ["--store", str(store_root), "--key", str(keys[1])]
    assert main(["bundle", "list", "--store", str(store_root)]) == 0
    out = capsys.readouterr().out
    assert f"* {names[1]}" in out and f"- {names[0]}" in out
    assert main(["bundle", "rollback", *common]) == 0
    assert names[0] in capsys.readouterr().out
    assert store.current().name == names[0]
    assert main(["bundle", "activate", names[1], *common]) == 0
    assert store.current().name == names[1]
    assert main(["bundle", "activate", "nope", *common]) == 2
    assert "no installed version 'nope'" in capsys.readouterr().err
    assert main(["bundle", "list", "--store", str(tmp_path / "empty")]) == 1


@pytest.mark.skipif(not (REFERENCE_BUNDLE_DIR / "manifest.json").exists(), reason="reference bundle not built yet")
def test_install_reference_bundle(tmp_path: Path, keys, capsys):
    src = tmp_path / "reference"
    shutil.copytree(REFERENCE_BUNDLE_DIR, src, ignore=shutil.ignore_patterns(SIGNATURE_FILE))
    assert main(["bundle", "sign", str(src), "--key", str(keys[0])]) == 0
    store = tmp_path / "store"
    assert main(["bundle", "install", str(src), "--store", str(store), "--key", str(keys[1])]) == 0
    from vla_edge.bundle import load_bundle

    assert load_bundle(store / "current").manifest.name


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_status_without_daemon_is_a_clear_message(capsys):
    url = f"http://127.0.0.1:{_free_port()}"
    assert main(["status", "--url", url, "--timeout", "1"]) == 2
    err = capsys.readouterr().err
    assert f"no vla-edge daemon answers at {url}" in err and "Traceback" not in err


def test_status_prints_one_screen_summary_from_a_live_server():
    dm = DaemonMetrics()
    dm.record_timings_ms({"encode": 3.0, "denoise": 11.0})
    dm.record_chunk()
    dm.record_escalation("ood")
    dm.attach_health(HealthSampler(use_vcgencmd=False))
    with MetricsServer(dm, port=0, status_provider=lambda: {"task": "tabletop-10", "step": "4/10"}) as server:
        # The server answers from this (possibly starved) test process: a generous --timeout (the CLI's 2 s default
        # is for a daemon on its own board) and subprocess deadlines that only a hung command reaches.
        proc = subprocess.run([sys.executable, "-m", "vla_edge.cli", "status", "--url", server.url, "--timeout", "60"],
                              capture_output=True, text=True, timeout=300, env={"COLUMNS": "100", "PATH": ""})
        raw = subprocess.run([sys.executable, "-m", "vla_edge.cli", "status", "--url", server.url, "--json",
                              "--timeout", "60"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    for expected in ("vla-edge status", "tabletop-10", "4/10", "denoise", "11.0", "ood 1", "memory"):
        assert expected in out, (expected, out)
    assert len(out.splitlines()) <= 40  # one screen
    assert json.loads(raw.stdout)["state"]["step"] == "4/10"


def test_status_rejects_something_that_is_not_a_status(capsys):
    import http.server
    import threading

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = b'{"hello": "world"}'
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        assert main(["status", "--url", f"http://127.0.0.1:{server.server_address[1]}"]) == 2
    finally:
        server.shutdown()
        server.server_close()
    assert "did not return a vla-edge status" in capsys.readouterr().err
