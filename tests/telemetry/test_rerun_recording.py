"""The daemon's Rerun recording of a demo run, read back with the Rerun SDK's own reader: it holds exactly as many
frames, chunks, refusals and escalations as the daemon counted."""

from __future__ import annotations

from collections import Counter

import pytest

pytestmark = [pytest.mark.slow]


@pytest.fixture(scope="module")
def recording(demo_run):
    if demo_run.rrd is None:
        pytest.skip("needs the rerun extra (pip install 'vla-edge[rerun]')")
    from rerun.chunk import RrdReader

    reader = RrdReader(demo_run.rrd)
    (entry,) = reader.recordings()
    assert entry.application_id == "vla-edge"
    rows: Counter[str] = Counter()
    warn: Counter[str] = Counter()
    for chunk in reader.stream():
        if chunk.is_static:
            continue
        rows[chunk.entity_path] += chunk.num_rows
        batch = chunk.to_record_batch()
        if "TextLog:level" in batch.schema.names:
            warn[chunk.entity_path] += sum(1 for levels in batch.column("TextLog:level").to_pylist()
                                           if levels and levels[0] == "WARN")
    return demo_run, rows, warn


def test_frames_chunks_and_escalations_equal_the_daemons_counters(recording):
    run, rows, warn = recording
    chunks = run.counters.chunks_accepted + run.counters.chunks_rejected
    assert chunks >= 5
    assert rows["/chunks/verdict"] == chunks == run.metrics.chunks_total()
    assert warn["/chunks/verdict"] == run.counters.chunks_rejected
    assert rows["/camera"] == run.metrics.registry.get_sample_value("vla_edge_frames_total") > 10
    assert rows["/task/escalations"] == run.result.counters.get("escalations", 0) >= 1
    # What the logger believed it wrote is what the file holds, and it dropped nothing.
    assert run.rerun_counts.pop("dropped") == 0
    assert run.rerun_counts == {"frames": rows["/camera"], "chunks": chunks,
                                "escalations": rows["/task/escalations"], "ticks": rows["/robot/intervention"]}


def test_every_tick_and_chunk_carries_what_it_should(recording):
    run, rows, _ = recording
    ticks = sum(run.metrics.by_label(run.metrics.ticks, "outcome").values())
    assert rows["/robot/intervention"] == ticks  # one row per control tick
    assert rows["/robot/action_sent"] == run.metrics.by_label(run.metrics.ticks, "outcome").get("action", 0) + \
        run.metrics.by_label(run.metrics.ticks, "outcome").get("teleop", 0)
    chunks = rows["/chunks/verdict"]
    # The K samples and the chosen trajectory of every chunk, on the camera image (reference action space).
    assert rows["/camera/plan/samples"] == rows["/camera/plan/chosen"] == chunks
    for signal in run.thresholds:
        assert rows[f"/confidence/{signal}"] == chunks, signal
    assert rows["/robot/action_reported"] > 0 and rows["/robot/measured"] > 0
    assert rows["/task/decisions"] >= 1 and rows["/task/checkpoints"] >= 1
