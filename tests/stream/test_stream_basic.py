"""Daemon ActionStream ⇄ ControllerClient over real ZeroMQ sockets: handshake, execution, state back."""

from __future__ import annotations

import time

import numpy as np

from vla_edge.controller import ControllerClient
from vla_edge.stream import ActionStream


def test_commands_reach_the_motors_in_order_and_state_comes_back(demo_settings, limits, start_position, tick_loop, wait):
    period = 0.02
    with ActionStream(demo_settings, action_dim=4) as daemon, ControllerClient(
        demo_settings, limits, start_position
    ) as client:
        assert daemon.wait_for_controller(5.0), "handshake did not complete"
        with tick_loop(client, period) as loop:
            sent = {}
            for i in range(30):
                values = np.array([0.5 + 0.005 * i, 0.5, 0.0, 0.0])
                seq = daemon.send_action(values, time.monotonic_ns())
                assert seq >= 0
                sent[seq] = values
                time.sleep(period)
            assert wait(lambda: (daemon.latest_state() or None) is not None
                        and daemon.latest_state().seq_applied == max(sent), 2.0)
        executed = [sp for _, sp in loop.setpoints if not sp.holding]
        print(f"\nsent {len(sent)}, executed {len(executed)}, counters {client.counters()}")
        seqs = [sp.seq for sp in executed]
        assert seqs == sorted(set(seqs)), "executed out of order or twice"
        assert len(executed) >= 0.8 * len(sent)
        for sp in executed:
            np.testing.assert_allclose(sp.values, sent[sp.seq])
        state = daemon.latest_state()
        np.testing.assert_allclose(state.actual, sent[max(sent)])
        assert daemon.controller_alive() and client.daemon_alive()
        assert client.clock.round_trip_ns < 50_000_000


def test_no_motion_before_handshake_and_stale_hold(demo_settings, limits, start_position, wait):
    client = ControllerClient(demo_settings, limits, start_position)
    client.start()
    try:
        setpoint = client.next_setpoint()
        assert setpoint.holding and setpoint.reason == "handshake"
        with ActionStream(demo_settings, action_dim=4) as daemon:
            assert daemon.wait_for_controller(5.0)
            assert wait(client.ready, 2.0)
            seq = daemon.send_action(np.array([0.55, 0.5, 0.0, 0.0]), time.monotonic_ns())
            assert wait(lambda: not client.next_setpoint().holding, 1.0)
            assert client.position[0] == 0.55 and seq >= 0
        # daemon gone: the controller must hold with reason "stale" after stale_after_ms
        assert wait(lambda: client.next_setpoint().reason == "stale", 1.0)
        assert not client.daemon_alive()
    finally:
        client.close()
