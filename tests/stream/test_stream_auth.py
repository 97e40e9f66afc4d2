"""CURVE authentication: authorised controllers work; unknown keys and NULL-security clients are refused, 100 %."""

from __future__ import annotations

import logging
import shutil
import time

import numpy as np
import pytest

from vla_edge.cli import main as cli_main
from vla_edge.config import StreamSettings
from vla_edge.controller import ControllerClient
from vla_edge.keys import authorized_clients, generate_keys
from vla_edge.stream import ActionStream
from vla_edge.wire import StreamError



@pytest.fixture
def curve_settings(endpoint):
    def make(keys_dir) -> StreamSettings:
        return StreamSettings(
            command_endpoint=endpoint(), state_endpoint=endpoint(), curve=True, keys_dir=keys_dir,
            heartbeat_ms=50.0, stale_after_ms=200.0,
        )

    return make


def test_keys_cli_generate_list_authorize(tmp_path, capsys):
    keys = tmp_path / "keys"
    assert cli_main(["keys", "generate", "--dir", str(keys)]) == 0
    assert (keys / "server.key_secret").stat().st_mode & 0o077 == 0
    assert cli_main(["keys", "generate", "--dir", str(keys)]) == 2, "must refuse to overwrite silently"
    assert "already exists" in capsys.readouterr().err
    other = tmp_path / "other"
    assert cli_main(["keys", "generate", "--dir", str(other), "--client-name", "arm2"]) == 0
    assert cli_main(["keys", "authorize", "--dir", str(keys), str(other / "arm2.key_secret")]) == 2
    assert "SECRET" in capsys.readouterr().err
    assert cli_main(["keys", "authorize", "--dir", str(keys), str(other / "arm2.key")]) == 0
    assert cli_main(["keys", "list", "--dir", str(keys)]) == 0
    listed = capsys.readouterr().out
    assert "client.key" in listed and "arm2.key" in listed
    assert set(authorized_clients(keys)) == {"client.key", "arm2.key"}


def test_curve_off_is_refused_off_loopback(limits, start_position):
    remote = StreamSettings(command_endpoint="tcp://192.168.1.20:5571", curve=False)
    with pytest.raises(StreamError, match="only allowed on loopback"):
        ActionStream(remote, action_dim=4)
    with pytest.raises(StreamError, match="only allowed on loopback"):
        ControllerClient(remote, limits, start_position)


def test_missing_keys_is_a_clear_error(tmp_path, curve_settings):
    with pytest.raises(StreamError, match="vla-edge keys generate"):
        ActionStream(curve_settings(tmp_path / "nothing"), action_dim=4).start()


@pytest.mark.slow
def test_unknown_key_and_null_clients_are_refused(tmp_path, curve_settings, limits, start_position, wait, caplog):
    caplog.set_level(logging.WARNING, logger="vla_edge.stream")
    keys = generate_keys(tmp_path / "keys").server_public.parent
    settings = curve_settings(keys)
    # A rogue controller: knows the daemon's public key but has its own, unauthorised keypair.
    rogue_dir = tmp_path / "rogue"
    generate_keys(rogue_dir)
    shutil.copyfile(keys / "server.key", rogue_dir / "server.key")
    null_settings = settings.model_copy(update={"curve": False})
    attempts = 4
    with ActionStream(settings, action_dim=4) as daemon:
        intruders = [ControllerClient(settings, limits, start_position, keys_dir=rogue_dir) for _ in range(attempts)]
        intruders += [ControllerClient(null_settings, limits, start_position) for _ in range(attempts)]
        for client in intruders:
            client.start()
        try:
            refused = lambda: daemon.counters().get("refused_auth", 0) + daemon.counters().get(  # noqa: E731
                "refused_protocol", 0) + daemon.counters().get("refused_handshake", 0)
            assert wait(lambda: refused() >= 2 * len(intruders), 5.0), daemon.counters()
            for _ in range(3):
                daemon.send_action(np.full(4, 0.5), time.monotonic_ns())
            time.sleep(0.3)
            got_through = [c for c in intruders if c.ready() or c.counters().get("sessions", 0)]
            assert not daemon.controller_ready()
            assert daemon.counters().get("controller_hello", 0) == 0
            assert got_through == []
            counters = daemon.counters()
            # An operator looking at the daemon's log sees why the controller cannot connect.
            refusals = [r.getMessage() for r in caplog.records if "refused a controller connection" in r.getMessage()]
            assert any("refused_auth" in m or "refused_handshake" in m for m in refusals), refusals
            assert all("keys authorize" in m for m in refusals)
        finally:
            for client in intruders:
                client.close()
        # The authorised controller still gets in afterwards.
        with ControllerClient(settings, limits, start_position) as good:
            assert daemon.wait_for_controller(5.0)
            assert wait(good.ready, 2.0)
    print(f"\nauth: {len(intruders)} intruding clients ({attempts} unknown key, {attempts} NULL), "
          f"{len(intruders) - len(got_through)} refused (100 %); daemon refusals {counters}")
