"""Real network faults between two network namespaces (kernel iptables/NFQUEUE, no netem): the stream's
deadline check under asymmetric delay, judged against the one monotonic clock both namespaces share.

Needs root, iproute2, iptables and NetfilterQueue: skipped cleanly without them, except where the namespace
cases are required (CI, VLA_EDGE_REQUIRE_NETNS=1), where a missing piece fails instead of hiding."""

from __future__ import annotations

from collections import Counter

import pytest

from hil.netfaults import deadline_case
from hil.netns import LinkFault

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("netns")]


def test_asymmetric_delay_never_actuates_after_the_deadline() -> None:
    # 200 ms on daemon → controller only: the NTP-style offset estimate is off by half of it (about -100 ms).
    # Before the fix the controller trusted the estimate and actuated every command up to 100 ms after its
    # deadline (166 of 166); the check must hold on the true clock.
    figures = deadline_case(LinkFault(delay_ms=200.0), duration_s=3.0, ttl_ms=150.0)
    assert figures.sent > 50, figures
    assert abs(figures.offset_error_ms) > 50, f"the link was not asymmetric as set up: {figures}"
    assert figures.late == 0, figures
    assert figures.rejected_late > 0, figures  # commands that arrive 200 ms after due with a 150 ms TTL


def test_asymmetric_delay_still_actuates_when_the_deadline_allows() -> None:
    # The same link with a TTL that covers the delay: commands run (the check is not simply refusing everything),
    # none late and none early.
    figures = deadline_case(LinkFault(delay_ms=200.0), duration_s=3.0, ttl_ms=450.0)
    assert figures.executed > figures.sent // 2, figures
    assert figures.late == 0 and figures.early == 0, figures


# ---- the whole daemon (policy, task runner, simulated operator) across the faulty link ----


def test_a_takeover_resumes_after_a_blackhole() -> None:
    # Every step is taken over; 1 s into the first take-over the link goes black for 5 s both ways. Before, the
    # operator's target kept accumulating moves while the arm held and was never re-based: every later command
    # was refused as over-velocity and the task never finished (did not finish within 90 s).
    from hil.netfaults import takeover_blackhole

    run, schedule = takeover_blackhole(seed=1, steps=2, time_limit_s=90.0)
    assert schedule.windows and schedule.windows[0][1] - schedule.windows[0][0] >= 4.5e9, schedule.windows
    assert run.finished, f"{run.status} after {run.elapsed_s:.0f} s; refused: {run.rejected}"
    assert run.over_velocity <= 3, run.rejected


def test_no_step_completes_and_nothing_is_planned_while_the_controller_is_cut_off() -> None:
    # The link goes black both ways for 1.5 s when the action that ends a step is 1-3 ticks away. Nothing may be
    # reported done from 20 ms into a blackhole (no actuation can be acknowledged), and no chunk accepted once the
    # daemon must know the controller is lost (stale_after_ms + 2 ticks).
    from hil.netfaults import blackhole_during_steps

    run, schedule, done_during, chunks_during = blackhole_during_steps(seed=1, steps=3, both_ways=True,
                                                                       time_limit_s=120.0)
    assert schedule.windows, "no blackhole was triggered"
    assert done_during == 0 and chunks_during == 0, (done_during, chunks_during, schedule.windows)
    assert run.finished, f"{run.status} after {run.elapsed_s:.0f} s"


def test_plan_ahead_waits_for_the_action_over_a_delayed_link() -> None:
    # 50 ms on daemon → controller for a whole 10-step task. Before, plan-ahead at half a tick planned from the
    # frame before the action had run (the policy then finished 0-2 of 10 steps alone, 8 on a clean link: a
    # throughput figure that `python -m hil.faults` prints, not asserted here: it depends on how much CPU the
    # daemon gets). Asserted: what the fix guarantees by construction. The link's round trip is measured from the
    # heartbeats and is the margin each wait uses; every plan-ahead either planned from a frame captured after
    # the controller's report of the action just sent arrived (by the stream's own record of the arrival), or
    # waited until the time to plan before the next tick ran out.
    from hil.netfaults import delayed_link

    run = delayed_link(seed=1, delay_ms=50.0, steps=10)
    assert run.finished, run.status
    assert run.link_rtt_ms is not None and run.link_rtt_ms >= 40.0, run.link_rtt_ms  # measured from heartbeats
    waits = run.plan_ahead_waits
    assert len(waits) >= 20, f"only {len(waits)} plan-ahead waits in a 10-step task"
    measured = [w for w in waits if w["round_trip_ns"] >= 40e6]
    assert len(measured) >= len(waits) // 2, "the waits did not use the link's measured round trip"
    bad = run.plan_ahead_violations()
    feedback = Counter(w["feedback"] for w in waits)
    assert not bad, f"{len(bad)} of {len(waits)} plan-aheads did not wait for the report ({dict(feedback)}): {bad[:3]}"
    # What the executor counted agrees with the stream's record: a wait it ended as "reported" had the report.
    assert all(w["report_received_ns"] is not None for w in waits if w["feedback"] == "reported"), dict(feedback)
