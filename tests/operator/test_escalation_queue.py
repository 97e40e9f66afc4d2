"""Escalation messages validate their bounds; the queue hands decisions across threads; teleop slot semantics."""

from __future__ import annotations

import base64
import threading
import time

import cv2
import numpy as np
import pytest
from pydantic import ValidationError

from vla_edge.operator.escalation import (
    Decision,
    EscalationClosed,
    EscalationQueue,
    QueueFull,
    TeleopChannel,
    TeleopCommand,
    UnknownEscalation,
)


def test_messages_reject_out_of_bounds_and_unknown_fields():
    with pytest.raises(ValidationError):
        TeleopCommand(dx=0.5)
    with pytest.raises(ValidationError):
        TeleopCommand(grip=float("nan"))
    with pytest.raises(ValidationError):
        Decision(escalation_id="x", action="explode")
    with pytest.raises(ValidationError):
        Decision(escalation_id="x", action="approve", extra=1)
    with pytest.raises(ValidationError):
        Decision.model_validate({"v": 2, "escalation_id": "x", "action": "approve"})
    assert Decision(escalation_id="x", action="retry", step_index=3).v == 1


def test_frame_travels_as_jpeg_and_decodes():
    frame = np.zeros((48, 64, 3), dtype=np.uint8)
    frame[:, :32] = (255, 0, 0)
    esc = EscalationQueue().raise_escalation("low_confidence", 0, "do it", frame=frame, confidence={"a": 1.0, "b": float("nan")})
    decoded = cv2.imdecode(np.frombuffer(base64.b64decode(esc.frame_jpeg_b64), np.uint8), cv2.IMREAD_COLOR)
    assert decoded.shape == (48, 64, 3)
    assert decoded[10, 5, 2] > 200 and decoded[10, 5, 0] < 50, "RGB red must arrive as red (BGR on decode)"
    assert esc.confidence == {"a": 1.0}, "non-finite figures are dropped, never sent as NaN"


def test_wait_decision_across_threads_and_closed_errors():
    queue = EscalationQueue()
    esc = queue.raise_escalation("stalled", 2, "x")
    assert queue.revision == 1
    threading.Timer(0.05, lambda: queue.decide(Decision(escalation_id=esc.id, action="retry"))).start()
    got = queue.wait_decision(esc.id, timeout=2.0)
    assert got is not None and got.action == "retry"
    assert queue.open() == [] and queue.history()[0].action == "retry" and queue.history()[0].chosen_step == 2
    with pytest.raises(EscalationClosed):
        queue.decide(Decision(escalation_id=esc.id, action="approve"))
    with pytest.raises(UnknownEscalation):
        queue.decide(Decision(escalation_id="nope", action="approve"))


def test_wait_times_out_or_stops_without_answer():
    queue = EscalationQueue()
    esc = queue.raise_escalation("stalled", 0, "x")
    start = time.monotonic()
    assert queue.wait_decision(esc.id, timeout=0.1) is None
    assert time.monotonic() - start >= 0.09
    stop = threading.Event()
    threading.Timer(0.05, stop.set).start()
    start = time.monotonic()
    assert queue.wait_decision(esc.id, timeout=10.0, stop=stop) is None
    assert time.monotonic() - start < 1.0
    assert queue.note_answer_timeout(esc.id) == 1 and queue.open() == [esc]


def test_queue_is_bounded():
    queue = EscalationQueue(max_open=2)
    queue.raise_escalation("stalled", 0, "x")
    queue.raise_escalation("stalled", 1, "y")
    with pytest.raises(QueueFull, match="answer them"):
        queue.raise_escalation("stalled", 2, "z")


def test_teleop_channel_accumulates_moves_newest_grip_and_refuses_when_idle():
    channel = TeleopChannel()
    assert not channel.put(TeleopCommand(dx=0.05)), "no take-over active: refused"
    channel.begin(3)
    channel.put(TeleopCommand(dx=0.05, grip=1.0))
    channel.put(TeleopCommand(dx=0.07, dy=-0.02))
    got = channel.take()
    assert got.dx == pytest.approx(0.1) and got.dy == pytest.approx(-0.02) and got.grip == 1.0
    assert channel.take() is None
    channel.put(TeleopCommand(done=True))
    assert channel.done
    channel.end()
    channel.begin(4)
    assert not channel.done and channel.active_step == 4
