"""The slow-path benchmarks run end to end on tiny inputs (their figures are in docs/scheduler.md)."""

from __future__ import annotations

import json

from bench import slow_daemon, slow_path
from hil.wander_bundle import build_wander_bundle


def test_slow_path_quick_writes_its_table_and_plot(tmp_path):
    assert slow_path.main(["--quick", "--chains", "1", "--modes", "async", "rtc", "--out", str(tmp_path)]) == 0
    summary = json.loads((tmp_path / "slow_path.json").read_text())
    rows = {(r["delay_s"], r["mode"]): r for r in summary["rows"]}
    assert set(rows) == {(0.0, "async"), (0.0, "rtc"), (1.0, "async"), (1.0, "rtc")}
    # 1 s is more than the reference's 0.8 s chunk: every chunk arrives after the arm ran out, so it holds.
    assert rows[(1.0, "rtc")]["hold_ticks_after_first_action_per_step"] > 0
    assert rows[(0.0, "rtc")]["hold_ticks_after_first_action_per_step"] == 0
    assert rows[(1.0, "rtc")]["delay_ticks_max"] == 10
    assert (tmp_path / "slow_path.png").stat().st_size > 0 and "| 1 s | rtc |" in (tmp_path / "slow_path.md").read_text()


def test_slow_daemon_runs_the_real_daemon(tmp_path):
    bundle = build_wander_bundle(tmp_path / "wander")
    out = tmp_path / "out"
    assert slow_daemon.main(["--bundle", str(bundle), "--precision", "fp32", "--seconds", "4", "--instruction",
                             "wander", "--out", str(out)]) == 0
    result = json.loads((out / "slow_daemon.json").read_text())
    assert result["random_weights"] is True and result["actions_sent"] > 0
    assert result["chunks_accepted"] >= 1 and result["peak_rss_mib"] > 0
