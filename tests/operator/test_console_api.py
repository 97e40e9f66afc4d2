"""The console's JSON API over real HTTP: validation errors, the token rule, decisions and teleop."""

from __future__ import annotations

import http.client
import json

import numpy as np
import pytest

from vla_edge.config import OperatorSettings
from vla_edge.operator.console import (
    ConsoleConfigError,
    ConsoleModel,
    OperatorConsole,
    require_token,
    token_matches,
)
from vla_edge.operator.escalation import EscalationQueue, TeleopChannel
from vla_edge.task import TaskEvent
from vla_edge.types import SignalScore, Verdict

TOKEN = "s3cret-token-0123456789"


def request(console, method, path, body=None, headers=None, host="127.0.0.1"):
    conn = http.client.HTTPConnection(host, console.port, timeout=5)
    data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
    hdrs = {"Content-Type": "application/json"} if data is not None else {}
    hdrs.update(headers or {})
    conn.request(method, path, body=data, headers=hdrs)
    res = conn.getresponse()
    payload = res.read()
    conn.close()
    try:
        parsed = json.loads(payload) if res.getheader("Content-Type", "").startswith("application/json") else payload
    except json.JSONDecodeError:
        parsed = payload
    return res.status, parsed, res


@pytest.fixture
def console():
    model = ConsoleModel(EscalationQueue(), TeleopChannel(), frame_provider=lambda: np.zeros((8, 8, 3), np.uint8))
    server = OperatorConsole(model, OperatorSettings(port=0))
    server.start()
    yield server
    server.stop()


def test_token_rule():
    assert not require_token("127.0.0.1") and not require_token("127.0.0.2") and not require_token("::1")
    assert not require_token("localhost")
    assert require_token("0.0.0.0") and require_token("192.168.1.20") and require_token("robot.local")
    assert require_token("::")
    assert token_matches("abc", "abc") and not token_matches("abc", "abd") and not token_matches("abc", None)
    with pytest.raises(ConsoleConfigError, match="set operator.token"):
        OperatorConsole(ConsoleModel(EscalationQueue(), TeleopChannel()), OperatorSettings(host="0.0.0.0", port=0))
    with pytest.raises(ConsoleConfigError, match="too short"):
        OperatorConsole(ConsoleModel(EscalationQueue(), TeleopChannel()), OperatorSettings(port=0, token="short"))


def test_page_state_frame_and_history(console):
    console.model.set_task("demo", ["a", "b"])
    console.model.on_task_event(TaskEvent("step_started", 0, {"instruction": "a"}, 0))
    console.model.add_verdict(Verdict(False, (SignalScore("spread", 3.0, 2.0, False), SignalScore("ood", 1.0, float("inf"), True))))
    status, page, res = request(console, "GET", "/")
    assert status == 200 and b"vla-edge" in page and res.getheader("Content-Security-Policy")
    status, state, _ = request(console, "GET", "/api/state")
    assert status == 200 and state["v"] == 1 and state["task_id"] == "demo" and state["current_step"] == 0
    assert [s["status"] for s in state["steps"]] == ["running", "pending"]
    assert state["confidence"][0] == {"t_s": state["confidence"][0]["t_s"], "ratios": {"spread": 1.5}, "passed": False}
    status, jpeg, res = request(console, "GET", "/api/frame.jpg")
    assert status == 200 and res.getheader("Content-Type") == "image/jpeg" and jpeg[:2] == b"\xff\xd8"
    status, history, _ = request(console, "GET", "/api/history")
    assert status == 200 and history["events"][0]["text"] == "step 0: a"
    assert request(console, "GET", "/nope")[0] == 404


def test_bad_requests_get_clear_400s(console):
    esc = console.model.escalations.raise_escalation("stalled", 0, "x")
    status, body, _ = request(console, "POST", "/api/decisions", b"{not json")
    assert status == 400 and body["error"] == "the body is not valid JSON"
    status, body, _ = request(console, "POST", "/api/decisions", {"escalation_id": esc.id, "action": "explode"})
    assert status == 400 and body["details"][0]["field"] == "action"
    status, body, _ = request(console, "POST", "/api/teleop", {"dx": 5})
    assert status == 400 and body["details"][0]["field"] == "dx"
    status, body, _ = request(console, "POST", "/api/decisions", b"{}", headers={"Content-Type": "text/plain"})
    assert status == 415
    status, body, _ = request(console, "POST", "/api/decisions", b"x" * 20000)
    assert status == 413
    assert request(console, "POST", "/api/decisions", {"escalation_id": "nope", "action": "approve"})[0] == 404
    assert request(console, "POST", "/api/decisions", {"escalation_id": esc.id, "action": "retry", "step_index": 4})[0] == 400
    assert console.model.escalations.open() == [esc], "a rejected request must lose nothing"
    status, body, _ = request(console, "POST", "/api/decisions", {"escalation_id": esc.id, "action": "retry", "operator": "ana"})
    assert status == 200 and body == {"ok": True, "escalation_id": esc.id, "action": "retry"}
    assert console.model.escalations.wait_decision(esc.id, 0.1).operator == "ana"
    assert request(console, "POST", "/api/decisions", {"escalation_id": esc.id, "action": "approve"})[0] == 409
    status, body, _ = request(console, "POST", "/api/teleop", {"dx": 0.02})
    assert status == 409 and "Take over" in body["error"]
    console.model.teleop.begin(0)
    assert request(console, "POST", "/api/teleop", {"dx": 0.02})[0] == 200
    assert console.model.teleop.take().dx == pytest.approx(0.02)


def test_foreign_host_header_refused_without_token(console):
    status, body, _ = request(console, "GET", "/api/state", headers={"Host": "evil.example:80"})
    assert status == 403


def test_token_enforced_when_exposed():
    model = ConsoleModel(EscalationQueue(), TeleopChannel())
    # Bound to every interface: reachable from other machines, so the token is mandatory.
    server = OperatorConsole(model, OperatorSettings(host="0.0.0.0", port=0, token=TOKEN))
    server.start()
    try:
        assert request(server, "GET", "/api/state")[0] == 401
        assert request(server, "GET", "/")[0] == 401
        assert request(server, "GET", "/api/state", headers={"Authorization": "Bearer wrong-token-0123456789"})[0] == 401
        assert request(server, "POST", "/api/teleop", {"dx": 0.0})[0] == 401
        assert request(server, "GET", "/api/state", headers={"Authorization": f"Bearer {TOKEN}"})[0] == 200
        status, _, res = request(server, "GET", f"/?token={TOKEN}")
        assert status == 303 and res.getheader("Location") == "/"
        cookie = res.getheader("Set-Cookie").split(";")[0]
        assert "HttpOnly" in res.getheader("Set-Cookie")
        assert request(server, "GET", "/api/state", headers={"Cookie": cookie})[0] == 200
        assert request(server, "GET", "/api/state", headers={"Cookie": "vla_edge_token=nope"})[0] == 401
    finally:
        server.stop()
