"""Short soak (CI form, ~50 s): real daemon process → fault proxy → controller, every fault phase once."""

from __future__ import annotations

import pytest

from hil.faults import print_table, soak_rows
from hil.soak import PHASES, run_soak


@pytest.mark.slow
def test_soak_short():
    report = run_soak(duration_s=6.0 * len(PHASES), rate_hz=50.0, segment_s=6.0, seed=3)
    print()
    print_table(soak_rows(report))
    assert report.problems() == []
    # each fault actually happened and produced its expected outcome
    assert report.phases["drop 30 %"]["dropped by proxy"] > 0
    assert report.phases["delay 0-500 ms"]["rejected_out_of_order"] + report.phases["delay 0-500 ms"][
        "rejected_late"] > 0
    assert report.freezes == 1 and report.stale_hold_episodes >= 1
    # stale limit + period + slack, + how late the holding tick itself ran (as test_stream_dead_peer allows)
    assert report.max_stale_hold_delay_ms <= 200.0 + 20.0 + 20.0 + report.stale_hold_tick_lateness_ms
    assert report.garbage_rejected > 0
