"""bench.seed_spread refuses what it cannot compare, with one line and exit 2 (the happy path is checked on a real
chain benchmark run in test_chain_benchmark_smoke.py)."""

from __future__ import annotations

import json

import pytest

from bench.seed_spread import main, table


def test_a_directory_without_results_is_one_line_and_exit_2(tmp_path, capsys):
    assert main([str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "chain_benchmark.json" in err[0]


def test_runs_of_different_precisions_are_refused(tmp_path, capsys):
    for name, precision in (("a", "int8"), ("b", "int4")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "chain_benchmark.json").write_text(json.dumps({"precision": precision, "configs": {}}))
    assert main([str(tmp_path / "a"), str(tmp_path / "b")]) == 2
    assert "precision" in capsys.readouterr().err
    with pytest.raises(ValueError):
        table([])
