"""bench.tier_benchmark end to end on one chain: a real Triton server (started by the benchmark through
`vla-edge remote serve`), every configuration, one JSON with the figures the closing table needs."""

from __future__ import annotations

import json

import pytest

from bench import tier_benchmark
from vla_edge.paths import REPO_ROOT

pytestmark = pytest.mark.slow


def test_tier_benchmark_reports_every_configuration(bundle, tmp_path):
    if not (REPO_ROOT / ".venv-triton" / "bin" / "python").exists():
        pytest.skip("Triton venv missing: run scripts/setup-triton.sh")
    out = tmp_path / "tiers"
    assert tier_benchmark.main(["--chains", "1", "--bundle", str(bundle.path), "--precision", "fp32",
                                "--remote-bundle", str(bundle.path), "--out", str(out)]) == 0
    summary = json.loads((out / "tier_benchmark.json").read_text())
    rows = {row["config"]: row for row in summary["rows"]}
    assert list(rows)[:4] == ["local only", "local + remote", "local + operator", "local + remote + operator"]
    for row in rows.values():
        assert 0.0 <= row["chain_success"] <= 1.0 and row["chunks"] > 0
        assert row["p99_step_latency_ms"] >= row["p50_step_latency_ms"] > 0
    # No operator, no touches; the remote tier is only asked about chunks the local verdict failed.
    assert rows["local only"]["operator_touches_per_chain"] == 0
    assert "remote" not in rows["local only"]["settled_by"]
    for name in ("local + remote", "local + remote + operator"):
        asked = sum(rows[name]["remote_outcomes"].values())
        settled = rows[name]["settled_by"]
        assert asked == settled.get("remote", 0) + settled.get("operator", 0), (asked, settled)
        # The router settles every chunk planned, also one planned just before its step ended that the executor
        # never collects: counted from the executor's chunk records instead (as before 23284ac), such a chunk
        # whose local verdict failed had its remote outcome counted but not its settlement (19 vs 18 in three
        # starved runs, where the remote tier missed its deadline and the chains took other paths).
        assert sum(settled.values()) >= rows[name]["chunks"], (settled, rows[name]["chunks"])
