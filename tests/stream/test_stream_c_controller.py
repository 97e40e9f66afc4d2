"""The C controller example (examples/c-controller), built with the system compiler and run against the real
daemon stream: a controller written from docs/wire.md alone must handshake, actuate, report what it actuated,
and refuse an over-velocity command the way the docs say. Skipped without a C compiler or the libzmq/msgpack-c
headers, except where required (CI=true or VLA_EDGE_REQUIRE_NETNS=1, set by .ci/run): there it fails."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from vla_edge.keys import generate_keys
from vla_edge.stream import ActionStream

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "c-controller"


def _build(tmp_path: Path) -> Path:
    binary = tmp_path / "controller"
    why = None
    if shutil.which("make") is None or shutil.which(os.environ.get("CC", "cc")) is None:
        why = "no C compiler or make"
    elif not Path("/usr/include/zmq.h").exists() or not Path("/usr/include/msgpack.h").exists():
        why = "libzmq3-dev / libmsgpack-dev headers missing (scripts/dev-setup.sh installs them)"
    if why is None:
        built = subprocess.run(["make", "-s", "-C", str(EXAMPLE), f"OUT={binary}"], capture_output=True, text=True)
        if built.returncode != 0:
            pytest.fail(f"the C controller does not build:\n{built.stderr[-2000:]}")
        return binary
    if any(os.environ.get(v, "").lower() in ("1", "true", "yes") for v in ("CI", "VLA_EDGE_REQUIRE_NETNS")):
        pytest.fail(f"the C controller test is required here but cannot run: {why}")
    pytest.skip(why)


@pytest.mark.slow
@pytest.mark.parametrize("curve", [False, True], ids=["plain", "curve"])
def test_c_controller_from_the_docs_runs_against_the_daemon(tmp_path, demo_settings, wait, curve):
    binary = _build(tmp_path)
    settings, key_args = demo_settings, []
    if curve:  # the keys `vla-edge keys generate` writes; the C program reads the certificate files itself
        keys = generate_keys(tmp_path / "keys").server_public.parent
        settings, key_args = demo_settings.model_copy(update={"curve": True, "keys_dir": keys}), [str(keys)]
    with ActionStream(settings, action_dim=4) as daemon:
        proc = subprocess.Popen([str(binary), settings.command_endpoint, settings.state_endpoint, "8", "4",
                                 "0", "1", "0.1", "0.5", *key_args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
        try:
            assert daemon.wait_for_controller(10.0), f"the C controller never completed the handshake: {daemon.counters()}"
            values = np.full(4, 0.5)  # the controller starts at 0.5: the first command must be within max_delta of it
            last_seq = -1
            for i in range(30):  # 0.02 per command, inside its max_delta of 0.1 (the docs' guidance)
                values = values + np.array([0.02 if i < 20 else -0.02, 0.0, 0.0, 0.0])
                last_seq = daemon.send_action(values, time.monotonic_ns())
                time.sleep(0.02)
            assert last_seq >= 0
            assert wait(lambda: daemon.latest_state() is not None
                        and daemon.latest_state().seq_applied == last_seq, 5.0), daemon.latest_state()
            state = daemon.latest_state()
            assert state.v == 2 and len(state.actual) == 4
            np.testing.assert_allclose(state.applied, values)  # what the motors were given, reported back
            jump = values + np.array([0.25, 0.0, 0.0, 0.0])  # over its max_delta: refused, never clamped
            bad_seq = daemon.send_action(jump, time.monotonic_ns())
            assert wait(lambda: daemon.latest_state().seq_rejected == bad_seq, 5.0), daemon.latest_state()
            state = daemon.latest_state()
            assert state.rejected_reason == "over_velocity" and state.seq_applied == last_seq
            np.testing.assert_allclose(state.actual, values)  # held where it was
            assert daemon.counters().get("rejected_state_dim", 0) == 0
            out, err = proc.communicate(timeout=20)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert proc.returncode == 0, err
    counters = dict(kv.split("=") for kv in out.strip().removeprefix("counters ").split())
    print(f"\nC controller: {out.strip()}")
    assert int(counters["executed"]) >= 20 and int(counters["rejected_over_velocity"]) == 1
