"""The slow-path benchmarks run end to end on tiny inputs (their figures are in docs/scheduler.md)."""

from __future__ import annotations

import json

import pytest

from bench import slow_daemon, slow_path
from hil.wander_bundle import build_wander_bundle


def test_slow_path_quick_writes_its_table_and_plot(tmp_path):
    assert slow_path.main(["--quick", "--chains", "1", "--modes", "async", "rtc", "--out", str(tmp_path)]) == 0
    summary = json.loads((tmp_path / "slow_path.json").read_text())
    assert summary["complete"] is True
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
    assert len(result["load_average_1m"]) == 2 and result["cpus"] >= 1


def _summary(seed: int, success: dict, bundle: str = "reference 0.1.0") -> dict:
    rows = [{"delay_s": d, "mode": m, "chains": 100, "step_success": v, "chain_success": v / 2,
             "hold_ticks_after_first_action_per_step": 10 * d, "hold_fraction_after_first_action": d / 4,
             "boundary_jerk_p50": 0.5, "boundary_jerk_p99": 1.0 + d + seed % 2, "boundary_jerk_max": 2.0 + seed % 2,
             "boundaries_over_max_delta": 0.1, "chunks_retimed": 3} for (d, m), v in success.items()]
    return {"bundle": bundle, "horizon": 8, "control_rate_hz": 10.0, "precision": "int8", "num_samples": 8,
            "seed": seed, "rows": rows}


def test_combine_pools_seed_roots_and_keeps_each_roots_figure(tmp_path):
    runs = []
    for seed, success in ((7201, {(1.0, "async"): 0.9, (1.0, "rtc"): 0.8}),
                          (7202, {(1.0, "async"): 0.7, (1.0, "rtc"): 1.0, (2.0, "rtc"): 0.5})):
        runs.append(tmp_path / str(seed))
        runs[-1].mkdir()
        (runs[-1] / "slow_path.json").write_text(json.dumps(_summary(seed, success)))
    plot = tmp_path / "images" / "slow_path.png"
    assert slow_path.main(["--combine", *map(str, runs), "--out", str(tmp_path / "both"), "--plot", str(plot)]) == 0
    rows = {(r["delay_s"], r["mode"]): r for r in json.loads((tmp_path / "both" / "combined.json").read_text())["rows"]}
    assert set(rows) == {(1.0, "async"), (1.0, "rtc")}  # the 2 s cell ran on one root only: not pooled
    assert rows[(1.0, "async")]["step_success"] == pytest.approx(0.8)
    assert rows[(1.0, "rtc")]["step_success_by_seed"] == [0.8, 1.0] and rows[(1.0, "rtc")]["chains"] == 200
    assert rows[(1.0, "rtc")]["boundary_jerk_max"] == 3.0  # the worst root's
    assert "| 1 s | rtc | 90.0% (80.0% / 100.0%) |" in (tmp_path / "both" / "combined.md").read_text()
    assert plot.stat().st_size > 0


def test_combine_refuses_runs_of_different_bundles_or_one_root_twice(tmp_path, capsys):
    cell = {(0.0, "rtc"): 0.9}
    for name, summary in (("a", _summary(7201, cell)), ("b", _summary(7202, cell, "h50 0.1")),
                          ("c", _summary(7201, cell))):
        (tmp_path / name).mkdir()
        (tmp_path / name / "slow_path.json").write_text(json.dumps(summary))
    with pytest.raises(SystemExit, match="differ in bundle"):
        slow_path.main(["--combine", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "o")])
    with pytest.raises(SystemExit, match="its own seed root"):
        slow_path.main(["--combine", str(tmp_path / "a"), str(tmp_path / "c"), "--out", str(tmp_path / "o")])
    with pytest.raises(SystemExit) as missing:
        slow_path.main(["--combine", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")])
    assert missing.value.code == 2 and "no slow_path.json in" in capsys.readouterr().err
