"""The Rerun logger on its own: what the executor hands it, written to an .rrd and read back with the Rerun SDK."""

from __future__ import annotations

import importlib.util
import logging
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from bench.telemetry_cost import make_inputs, run_observer
from vla_edge.errors import VlaEdgeError
from vla_edge.plan_view import ImagePlane
from vla_edge.rerun_log import RerunLogger, is_rrd_target, web_viewer_url

pytestmark = pytest.mark.skipif(importlib.util.find_spec("rerun") is None, reason="needs the rerun extra")


def rows_of(path: Path) -> Counter[str]:
    from rerun.chunk import RrdReader

    rows: Counter[str] = Counter()
    for chunk in RrdReader(path).stream():
        if not chunk.is_static:
            rows[chunk.entity_path] += chunk.num_rows
    return rows


def test_ticks_frames_and_chunks_round_trip_through_an_rrd(tmp_path):
    path = tmp_path / "run.rrd"
    logger = RerunLogger.to_file(path, plane=ImagePlane(0, 1), action_names=("target_x", "target_y", "grip", "done"))
    inputs = make_inputs(ticks=40, chunk_every=8)
    run_observer(logger, inputs)
    logger.close()
    rows = rows_of(path)
    chunks = sum(1 for *_, planned in inputs if planned is not None)
    refused = sum(1 for *_, planned in inputs if planned is not None and not planned.verdict.passed)
    assert refused >= 1
    assert rows["/robot/intervention"] == 40 == logger.ticks_logged
    assert rows["/camera"] == logger.frames_logged == 40  # a new frame each tick in these inputs
    assert rows["/chunks/verdict"] == rows["/camera/plan/samples"] == rows["/camera/plan/chosen"] == chunks
    assert rows["/robot/action_sent"] == sum(1 for _, sent, *_ in inputs if sent is not None)
    for signal in ("spread", "consistency", "ood", "jerk", "limits"):
        assert rows[f"/confidence/{signal}"] == chunks


def test_a_failing_sink_turns_the_logger_off_instead_of_raising_into_the_tick(tmp_path, caplog):
    logger = RerunLogger.to_file(tmp_path / "run.rrd", plane=ImagePlane(0, 1))
    inputs = make_inputs(ticks=6, chunk_every=2)

    def disk_full(*args, **kwargs):
        raise OSError("No space left on device")

    logger.recording.log = disk_full  # the sink fails (as a full disk would) on the logging thread
    logger.controller = lambda: (_ for _ in ()).throw(RuntimeError("controller gone"))  # and so does this
    with caplog.at_level(logging.ERROR):
        run_observer(logger, inputs)  # must not raise into the tick
        logger.close()
    assert caplog.text.count("Rerun logging failed") == 1 and "No space left" in caplog.text
    assert logger.ticks_logged == 0


def test_the_tick_never_waits_for_a_full_queue(tmp_path):
    logger = RerunLogger.to_file(tmp_path / "run.rrd", plane=ImagePlane(0, 1), queue_size=4)
    inputs = make_inputs(ticks=200, chunk_every=8)
    run_observer(logger, inputs)  # far more than 4 items: some are dropped and counted, none blocks
    logger.close()
    rows = rows_of(tmp_path / "run.rrd")
    chunks = sum(1 for *_, planned in inputs if planned is not None)
    assert logger.ticks_logged + logger.chunks_logged + logger.dropped == 200 + chunks
    assert rows["/robot/intervention"] == logger.ticks_logged


def test_targets_and_errors():
    assert is_rrd_target("runs/a.rrd") and not is_rrd_target("127.0.0.1:9876")
    assert web_viewer_url("10.0.0.5:9876") == \
        "http://10.0.0.5:9090/?url=rerun%2Bhttp%3A%2F%2F10.0.0.5%3A9876%2Fproxy"
    with pytest.raises(VlaEdgeError, match="is not a directory"):
        RerunLogger.open_target("/nonexistent/dir/run.rrd")


def test_a_multi_view_frame_logs_its_other_views_beside_the_camera(tmp_path):
    from vla_edge.scheduler import TickDecision
    from vla_edge.types import Frame

    top = np.zeros((96, 96, 3), np.uint8)
    wrist = np.full((64, 80, 3), 200, np.uint8)
    logger = RerunLogger.to_file(tmp_path / "views.rrd")
    for seq in range(3):
        frame = Frame(top, 0, seq, views={"top": top, "wrist": wrist})
        logger.on_tick(TickDecision(seq, None, "no_chunk"), 0, None, frame, None, "go", False)
    logger.close()
    rows = rows_of(tmp_path / "views.rrd")
    assert rows["/camera"] == 3 and rows["/views/wrist"] == 3 and "/views/top" not in rows
