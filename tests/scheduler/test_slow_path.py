"""The slow path on simulated time: a policy that needs 1.5 s per 50-action chunk at 10 Hz keeps the arm moving.

The robot's own executor and scheduler (`PolicyStepExecutor` on a `SimClock`, synchronous inference whose chunk
arrives 1.5 simulated seconds after it is asked for), the real `PolicyRunner` with its flow-matching sampler, and
the simulated arm. The policy is `hil.wander_bundle`: a real schema-2 flow bundle whose samples are smooth random
gripper paths from the measured position (a known Gaussian, exact velocity field), so two chunks planned without
regard for each other disagree where they meet, as a real flow policy's samples do. The same run with real-time
chunking off fails the very checks the run with it on passes (the last tests), so the checks can fail.
"""

from __future__ import annotations

import pytest

from bench.slow_path import run_wander
from hil.wander_bundle import WanderSpec, build_wander_bundle
from vla_edge.bundle import load_bundle
from vla_edge.scheduler import InferenceRequest

SPEC = WanderSpec(horizon=50, control_rate_hz=10.0, scale=0.08)
DELAY_TICKS = 15  # 1.5 s at 10 Hz


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return load_bundle(build_wander_bundle(tmp_path_factory.mktemp("wander"), SPEC))


def run_slow(bundle, **kwargs):
    return run_wander(bundle, delay_s=1.5, seconds=30.0, **kwargs)


def test_rtc_keeps_moving_through_a_1_5_s_inference_delay(bundle):
    run = run_slow(bundle)
    assert run.outcome == "stalled"  # the step has no end of its own: it ran its 30 s
    # The first chunk is waited for (the arm has nothing to do before it): 15 ticks, then row 0 at arrival.
    assert run.first_action == DELAY_TICKS
    assert run.counters.retimed == 1 and run.counters.delays_ticks[0] == DELAY_TICKS - 1
    # Measured, not configured: the first chunk, asked for at a tick while holding, came 14 ticks after its first
    # row's tick; the next (asked for half a tick ahead) 15. Each request froze as many actions as were estimated
    # to run before it arrives, and asked while more than that were left.
    assert run.delay_estimate == DELAY_TICKS and set(run.counters.delays_ticks[1:]) == {DELAY_TICKS}
    later: list[InferenceRequest] = run.trace.requests[1:]
    assert len(later) >= 5
    assert [r.prefix.shape[0] for r in later] == [DELAY_TICKS - 1] + [DELAY_TICKS] * (len(later) - 1)
    assert all(r.committed > r.prefix.shape[0] and r.guide is not None for r in later)
    # Continuous motion: not one hold tick after the first chunk, nothing executed late.
    assert run.holds_after_first_chunk() == 0
    assert run.counters.late_dropped == 0 and run.counters.holds == DELAY_TICKS
    # Every junction between chunks within the action space's max_delta, and every chunk judged before it ran.
    jerk = run.boundary_jerk()
    assert len(jerk) >= 5 and jerk.max() <= 1.0, f"boundary jerk {jerk.round(2)} × max_delta"
    assert run.counters.chunks_rejected == 0 and run.low_confidence_actuations == 0
    assert run.within_jerk().max() <= 1.0


def test_without_rtc_the_same_run_jumps_where_chunks_meet(bundle):
    """The same policy and delay, the next chunk asked for in time but taking over without continuing the one
    that runs (boundary none): the checks above fail on the jerk."""
    run = run_slow(bundle, boundary="none")
    assert run.holds_after_first_chunk() == 0
    jerk = run.boundary_jerk()
    assert jerk.max() > 1.0, f"expected a jump over max_delta without real-time chunking, got {jerk.round(2)}"
    # The gate passes these chunks: each is smooth in itself; the jump is where it meets the chunk before.
    assert run.counters.chunks_rejected == 0


def test_without_requesting_by_the_delay_the_arm_holds_at_every_chunk(bundle):
    """Asking for the next chunk at replan_when_remaining (4 actions) whatever the delay: 11 hold ticks a chunk."""
    run = run_slow(bundle, request_by_delay=False)
    chunks_after_first = len(run.trace.requests) - 1
    assert chunks_after_first >= 3
    assert run.holds_after_first_chunk() >= chunks_after_first * (DELAY_TICKS - 4)
