"""Wire v2 over real sockets (issue 16 item 5): what a controller written from docs/wire.md relies on.

The welcome carries the timing the controller must use, a state report of the wrong length is refused and
counted, and a daemon hold reason of the full 64 characters comes back whole behind the ``daemon:`` prefix.
Each fails on the main before wire v2 (the controller kept its own stale_after_ms, 3 and 4 measured values were
both accepted silently, and the reason was cut at 64 characters)."""

from __future__ import annotations

import time

import numpy as np

from vla_edge.controller import ControllerClient
from vla_edge.stream import ActionStream
from vla_edge.wire import MAX_REASON_CHARS

DAEMON_HOLD_PREFIX = "daemon:"  # docs/wire.md §3: a controller holding on the daemon's request reports this


def _ready(daemon: ActionStream, client: ControllerClient, wait) -> None:
    assert daemon.wait_for_controller(30.0), daemon.counters()
    assert wait(client.ready, 30.0)


def test_controller_uses_the_timing_the_welcome_carries(demo_settings, limits, start_position, wait):
    # The controller is configured with a stale limit 25 times the daemon's: the daemon's (200 ms) must rule.
    controller_settings = demo_settings.model_copy(update={"stale_after_ms": 5000.0})
    with ActionStream(demo_settings, action_dim=4) as daemon, ControllerClient(
        controller_settings, limits, start_position
    ) as client:
        _ready(daemon, client, wait)
        # One second after the newest daemon message it can have seen: past the daemon's 200 ms, far inside the
        # controller's own 5 s. Asked for that instant, not waited for, so a loaded machine changes nothing.
        later = client.next_setpoint(time.monotonic_ns() + 1_000_000_000)
    assert later.holding and later.reason == "stale", later


def test_state_report_of_the_wrong_length_is_refused_and_counted(demo_settings, limits, start_position, wait):
    with ActionStream(demo_settings, action_dim=4) as daemon, ControllerClient(
        demo_settings, limits, start_position
    ) as client:
        _ready(daemon, client, wait)
        client.next_setpoint()
        assert wait(lambda: client.report(np.zeros(3)) or daemon.counters().get("rejected_state_dim", 0) >= 1,
                    30.0), daemon.counters()
        assert daemon.latest_state() is None, "a 3-value report of a 4-dimension action was taken"
        assert wait(lambda: client.report(start_position) or daemon.latest_state() is not None, 30.0)
        assert len(daemon.latest_state().actual) == 4


def test_a_full_length_daemon_hold_reason_comes_back_whole(demo_settings, limits, start_position, wait):
    reason = "r" * MAX_REASON_CHARS
    expected = DAEMON_HOLD_PREFIX + reason
    with ActionStream(demo_settings, action_dim=4) as daemon, ControllerClient(
        demo_settings, limits, start_position
    ) as client:
        _ready(daemon, client, wait)
        # Sent again until taken: the command SUB may join a moment after the handshake.
        assert wait(lambda: daemon.send_hold(reason) or client.next_setpoint().reason == expected, 30.0), \
            client.next_setpoint()
        assert wait(lambda: client.report(client.position) or (
            daemon.latest_state() is not None and daemon.latest_state().hold_reason == expected), 30.0), \
            daemon.latest_state()
    assert len(expected) == 71
