"""The operator web console: one page plus a small JSON API, served from a thread of the daemon.

Binds 127.0.0.1 by default. Bound to any non-loopback address it refuses to start without a token; when a token
is configured it is checked on every request (``Authorization: Bearer <token>`` or the cookie that
``/?token=<token>`` sets), with a constant-time comparison. Request bodies are validated by the pydantic models of
``vla_edge.operator.escalation``; a bad request gets a 4xx with a JSON ``{"error": ...}``, never a traceback.

The console reads everything from a ``ConsoleModel`` that the service updates; it holds no global state.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from http.cookies import SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any, Literal
from urllib.parse import parse_qs, urlsplit

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError

from vla_edge.config import OperatorSettings
from vla_edge.errors import VlaEdgeError
from vla_edge.operator.escalation import (
    Decision,
    EscalationClosed,
    EscalationError,
    Escalation,
    EscalationQueue,
    HistoryEntry,
    TeleopChannel,
    TeleopCommand,
    UnknownEscalation,
)
from vla_edge.task import TaskEvent
from vla_edge.types import Verdict

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 16 * 1024
MIN_TOKEN_CHARS = 16
TOKEN_COOKIE = "vla_edge_token"
_STATIC = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/static/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/static/style.css": ("style.css", "text/css; charset=utf-8"),
}
_LOOPBACK_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost"}

StepStatus = Literal["pending", "running", "holding", "done", "teleoperated", "approved"]
RunStatus = Literal["idle", "running", "holding", "completed", "aborted", "stopped"]


class ConsoleConfigError(VlaEdgeError):
    """The console cannot start as configured (e.g. exposed without a token)."""


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or name the server binds) only accepts connections from this machine."""
    name = host.strip("[]").lower()
    if name in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False  # any other name may resolve to a reachable address


def require_token(host: str) -> bool:
    """The token rule: a console reachable from other machines must have a token."""
    return not is_loopback(host)


def token_matches(expected: str, presented: str | None) -> bool:
    if presented is None:
        return False
    return hmac.compare_digest(expected.encode("utf-8"), presented.encode("utf-8"))


# ------------------------------------------------------------------------------------------- what the page sees


class View(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StepView(View):
    index: int
    instruction: str
    status: StepStatus


class ConfidencePoint(View):
    """One chunk's verdict; ``ratios`` are value/threshold per signal (1.0 is the threshold, above fails)."""

    t_s: float
    ratios: dict[str, float]
    passed: bool


class PlanView(View):
    """One planned chunk in image coordinates (fractions of width and height, x right, y down).

    ``samples`` are the K sampled trajectories, ``chosen`` the one the scheduler executes (or would, once
    approved), ``passed`` the verdict. Only sent when the action space maps onto the image (`vla_edge.plan_view`).
    """

    t_s: float
    start_tick: int
    samples: list[list[tuple[float, float]]]
    chosen: list[tuple[float, float]]
    chosen_index: int | None
    passed: bool
    reason: str


class EventView(View):
    t_s: float
    kind: str
    step_index: int | None
    text: str


class ConsoleLinks(View):
    """Where the other views of this daemon are: its metrics, and its Rerun recording (a web viewer or a file)."""

    metrics: str | None = None
    rerun_viewer: str | None = None
    rerun_file: str | None = None


class ConsoleState(View):
    v: Literal[1] = 1
    task_id: str | None
    status: RunStatus
    current_step: int | None
    steps: list[StepView]
    confidence: list[ConfidencePoint]
    camera: str
    remote: str
    plan: PlanView | None = None
    links: ConsoleLinks = ConsoleLinks()
    open_escalations: int
    escalation_revision: int
    teleop_step: int | None
    events: list[EventView]


class EscalationsView(View):
    """The open escalations, with the plan each one was raised on (low-confidence ones) by escalation id."""

    v: Literal[1] = 1
    escalations: list[Escalation]
    plans: dict[str, PlanView]


class HistoryView(View):
    v: Literal[1] = 1
    escalations: list[HistoryEntry]
    events: list[EventView]


FrameProvider = Callable[[], "np.ndarray | None"]


class ConsoleModel:
    """What the console shows, updated by the service (task events, verdicts, camera state); thread-safe."""

    def __init__(
        self,
        escalations: EscalationQueue,
        teleop: TeleopChannel,
        *,
        frame_provider: FrameProvider | None = None,
        confidence_window: int = 120,
        event_window: int = 200,
    ) -> None:
        self.escalations = escalations
        self.teleop = teleop
        self._frame_provider = frame_provider
        self._lock = threading.Lock()
        self._t0_ns = time.monotonic_ns()
        self._task_id: str | None = None
        self._instructions: list[str] = []
        self._step_status: list[StepStatus] = []
        self._current: int | None = None
        self._status: RunStatus = "idle"
        self._confidence: deque[ConfidencePoint] = deque(maxlen=confidence_window)
        self._events: deque[EventView] = deque(maxlen=event_window)
        self._camera: str | Callable[[], str] = "unknown"
        self._remote = "not configured"
        self._plan: PlanView | None = None
        self._links = ConsoleLinks()
        self._escalation_plans: dict[str, PlanView] = {}

    # -- updates from the service ------------------------------------------------------------------------------

    def set_task(self, task_id: str, steps: tuple[str, ...] | list[str]) -> None:
        with self._lock:
            self._task_id = task_id
            self._instructions = list(steps)
            self._step_status = ["pending"] * len(steps)
            self._current = None
            self._status = "idle"

    def set_frame_provider(self, provider: FrameProvider | None) -> None:
        with self._lock:
            self._frame_provider = provider

    def set_camera_status(self, text: str | Callable[[], str]) -> None:
        """The camera's state as text, or a function that tells it when the page asks."""
        with self._lock:
            self._camera = text

    def set_remote_status(self, text: str) -> None:
        with self._lock:
            self._remote = text

    def add_verdict(self, verdict: Verdict, t_ns: int | None = None) -> None:
        ratios = {}
        for signal in verdict.signals:
            if np.isfinite(signal.threshold) and signal.threshold > 0 and np.isfinite(signal.value):
                ratios[signal.name] = round(float(signal.value / signal.threshold), 4)
        self.add_confidence(ratios, verdict.passed, t_ns)

    def add_confidence(self, ratios: dict[str, float], passed: bool, t_ns: int | None = None) -> None:
        t = ((t_ns if t_ns is not None else time.monotonic_ns()) - self._t0_ns) / 1e9
        point = ConfidencePoint(t_s=round(t, 3), ratios=ratios, passed=passed)
        with self._lock:
            self._confidence.append(point)

    def set_links(self, links: ConsoleLinks) -> None:
        with self._lock:
            self._links = links

    def set_plan(self, plan: PlanView | None) -> None:
        """The newest planned chunk (accepted or refused), drawn over the live camera view."""
        with self._lock:
            self._plan = plan

    def on_task_event(self, event: TaskEvent) -> None:
        """The ``events`` sink of ``TaskRunner``: keeps the step chain and the event log current."""
        with self._lock:
            step = event.step_index
            known = step is not None and 0 <= step < len(self._step_status)
            if event.kind in ("task_started", "resumed"):
                self._status = "running"
                if event.kind == "resumed" and step is not None:
                    for i in range(min(step, len(self._step_status))):
                        self._step_status[i] = "done"
            elif event.kind == "step_started" and known:
                self._current = step
                self._step_status[step] = "running"
                self._status = "running"
            elif event.kind == "escalated":
                self._status = "holding"
                escalation_id = event.detail.get("escalation_id")
                if (event.detail.get("escalation_kind") == "low_confidence" and self._plan is not None
                        and not self._plan.passed and escalation_id):
                    # The refused chunk: what the robot wanted to do when it stopped to ask.
                    self._escalation_plans[str(escalation_id)] = self._plan
                if known:
                    self._step_status[step] = "holding"
            elif event.kind == "decision":
                self._status = "running"
                if known and self._step_status[step] == "holding":
                    self._step_status[step] = "running"
            elif event.kind == "step_finished" and known:
                resolution = event.detail.get("resolution", "done")
                self._step_status[step] = resolution if resolution in ("teleoperated", "approved") else "done"
            elif event.kind == "checkpoint" and step is not None:
                # A redo request sends the chain back: steps from next_step on are to be done (again).
                for i in range(step, len(self._step_status)):
                    if self._step_status[i] != "running":
                        self._step_status[i] = "pending"
            elif event.kind == "task_finished":
                self._status = event.detail.get("status", "stopped")
            if event.kind == "step_report" and event.detail.get("outcome") == "done":
                return  # "step finished" says it, with how
            self._events.append(self._event_view(event))

    # -- reads for the HTTP handlers ---------------------------------------------------------------------------

    def state(self) -> ConsoleState:
        with self._lock:
            steps = [
                StepView(index=i, instruction=text, status=status)
                for i, (text, status) in enumerate(zip(self._instructions, self._step_status, strict=True))
            ]
            return ConsoleState(
                task_id=self._task_id,
                status=self._status,
                current_step=self._current,
                steps=steps,
                confidence=list(self._confidence),
                plan=self._plan,
                links=self._links,
                camera=self._camera() if callable(self._camera) else self._camera,
                remote=self._remote,
                open_escalations=len(self.escalations.open()),
                escalation_revision=self.escalations.revision,
                teleop_step=self.teleop.active_step,
                events=list(self._events)[-20:],
            )

    def open_escalations(self) -> EscalationsView:
        open_now = self.escalations.open()
        with self._lock:
            ids = {e.id for e in open_now}
            for stale in [k for k in self._escalation_plans if k not in ids]:
                del self._escalation_plans[stale]
            plans = {k: v for k, v in self._escalation_plans.items()}
        return EscalationsView(escalations=open_now, plans=plans)

    def history(self) -> HistoryView:
        with self._lock:
            events = list(self._events)
        return HistoryView(escalations=self.escalations.history(), events=events)

    def frame_jpeg(self) -> bytes | None:
        with self._lock:
            provider = self._frame_provider
        frame = provider() if provider is not None else None
        if frame is None:
            return None
        ok, buffer = cv2.imencode(".jpg", cv2.cvtColor(np.asarray(frame), cv2.COLOR_RGB2BGR))
        return buffer.tobytes() if ok else None

    def _event_view(self, event: TaskEvent) -> EventView:
        d = event.detail
        texts = {
            "task_started": lambda: f"task started ({d.get('steps')} steps)",
            "resumed": lambda: f"resumed from checkpoint at step {d.get('checkpoint_next_step')}",
            "step_started": lambda: f"step {event.step_index}: {d.get('instruction')}",
            "step_report": lambda: f"step {event.step_index} {d.get('outcome')}: {d.get('reason')}",
            "step_finished": lambda: f"step {event.step_index} {d.get('resolution')}",
            "escalated": lambda: f"{d.get('escalation_kind')} at step {event.step_index}: {d.get('reason')}",
            "answer_timeout": lambda: f"no answer yet ({d.get('times')}×); still holding",
            "decision": lambda: f"{d.get('operator')}: {d.get('action')}"
            + (f" step {d['chosen_step']}" if d.get("chosen_step") is not None else ""),
            "checkpoint": lambda: f"checkpoint: next step {event.step_index}",
            "task_finished": lambda: f"task {d.get('status')}" + (f": {d['reason']}" if d.get("reason") else ""),
        }
        text = texts.get(event.kind, lambda: event.kind)()
        return EventView(t_s=round((event.t_ns - self._t0_ns) / 1e9, 3), kind=event.kind, step_index=event.step_index, text=text)


# ---------------------------------------------------------------------------------------------------- server


@dataclass(frozen=True)
class _Reply:
    status: int
    body: bytes
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()


def _json(status: int, payload: Any) -> _Reply:
    if isinstance(payload, BaseModel):
        body = payload.model_dump_json().encode("utf-8")
    else:
        body = json.dumps(payload, default=_jsonable).encode("utf-8")
    return _Reply(status, body)


def _jsonable(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _error(status: int, message: str, details: Any = None) -> _Reply:
    payload: dict[str, Any] = {"error": message}
    if details is not None:
        payload["details"] = details
    return _json(status, payload)


def _validation_details(exc: ValidationError) -> list[dict[str, str]]:
    return [{"field": ".".join(map(str, e["loc"])) or "(body)", "problem": e["msg"]} for e in exc.errors()]


def check_settings(settings: OperatorSettings) -> str | None:
    """The console's rules on its settings (a token when reachable from other machines, long enough); returns the
    token. Raises ConsoleConfigError. ``vla-edge config check`` runs this too (``vla_edge.preflight``)."""
    token = settings.token.get_secret_value() if settings.token is not None else None
    if require_token(settings.host) and not token:
        raise ConsoleConfigError(
            f"the operator console is bound to {settings.host}, which other machines can reach: set "
            "operator.token (e.g. VLA_EDGE_OPERATOR__TOKEN=$(python3 -c 'import secrets; "
            "print(secrets.token_urlsafe(24))')) or bind it to 127.0.0.1"
        )
    if token is not None and len(token) < MIN_TOKEN_CHARS:
        raise ConsoleConfigError(f"operator.token is too short: use at least {MIN_TOKEN_CHARS} random characters")
    return token


class OperatorConsole:
    """The HTTP server around a ``ConsoleModel``. ``start()`` serves from a daemon thread; ``stop()`` ends it."""

    def __init__(self, model: ConsoleModel, settings: OperatorSettings) -> None:
        token = check_settings(settings)
        self.model = model
        self.settings = settings
        self._token = token
        self._static = {path: (resources.files("vla_edge.operator").joinpath("static", name).read_bytes(), kind)
                        for path, (name, kind) in _STATIC.items()}
        handler = type("ConsoleHandler", (_Handler,), {"console": self})
        self._server = ThreadingHTTPServer((settings.host, settings.port), handler)
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        host = self.settings.host
        shown = "127.0.0.1" if host in ("0.0.0.0", "") else (f"[{host}]" if ":" in host else host)
        return f"http://{shown}:{self.port}/"

    def start(self) -> None:
        self._thread = threading.Thread(target=self._server.serve_forever, name="operator-console", daemon=True)
        self._thread.start()
        log.info("operator console at %s (token %s)", self.url, "required" if self._token else "not required")

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    # -- request handling (called from server threads) ----------------------------------------------------------

    def authorised(self, headers: Any, query_token: str | None) -> bool:
        if self._token is None:
            return True
        auth = headers.get("Authorization", "")
        if auth.startswith("Bearer ") and token_matches(self._token, auth[len("Bearer "):].strip()):
            return True
        if query_token is not None and token_matches(self._token, query_token):
            return True
        cookie = SimpleCookie()
        try:
            cookie.load(headers.get("Cookie", ""))
        except Exception:
            return False
        morsel = cookie.get(TOKEN_COOKIE)
        return morsel is not None and token_matches(self._token, morsel.value)

    def host_allowed(self, host_header: str | None) -> bool:
        # Without a token the only protection is loopback; refusing foreign Host names stops DNS rebinding.
        if self._token is not None:
            return True
        if not host_header:
            return False
        name = host_header.rsplit(":", 1)[0] if not host_header.endswith("]") else host_header
        return is_loopback(name)

    def handle(self, method: str, raw_path: str, headers: Any, body: bytes | None) -> _Reply:
        parts = urlsplit(raw_path)
        path = parts.path
        query_token = parse_qs(parts.query).get("token", [None])[0]
        if not self.host_allowed(headers.get("Host")):
            return _error(HTTPStatus.FORBIDDEN, "unexpected Host header; open the console as http://127.0.0.1:<port>/")
        if not self.authorised(headers, query_token):
            return _error(HTTPStatus.UNAUTHORIZED, "a token is required: open /?token=<token> or send Authorization: Bearer <token>")
        if method == "GET":
            if path == "/" and query_token is not None:
                # Trade the token in the address for a cookie, and drop it from the address bar and history.
                cookie = f"{TOKEN_COOKIE}={query_token}; HttpOnly; SameSite=Strict; Path=/"
                return _Reply(HTTPStatus.SEE_OTHER, b"", "text/plain", (("Location", "/"), ("Set-Cookie", cookie)))
            if path in self._static:
                content, kind = self._static[path]
                return _Reply(HTTPStatus.OK, content, kind)
            if path == "/api/state":
                return _json(HTTPStatus.OK, self.model.state())
            if path == "/api/escalations":
                return _json(HTTPStatus.OK, self.model.open_escalations())
            if path == "/api/history":
                return _json(HTTPStatus.OK, self.model.history())
            if path == "/api/frame.jpg":
                jpeg = self.model.frame_jpeg()
                if jpeg is None:
                    return _error(HTTPStatus.SERVICE_UNAVAILABLE, "no camera frame yet")
                return _Reply(HTTPStatus.OK, jpeg, "image/jpeg")
            return _error(HTTPStatus.NOT_FOUND, f"no such page: {path}")
        if method == "POST":
            if path == "/api/decisions":
                return self._post_decision(headers, body)
            if path == "/api/teleop":
                return self._post_teleop(headers, body)
            return _error(HTTPStatus.NOT_FOUND, f"no such endpoint: {path}")
        return _error(HTTPStatus.METHOD_NOT_ALLOWED, f"{method} is not supported")

    def _parse(self, model: type[BaseModel], headers: Any, body: bytes | None) -> BaseModel | _Reply:
        kind = headers.get("Content-Type", "").split(";")[0].strip().lower()
        if kind != "application/json":
            # Requiring JSON also means a cross-site HTML form cannot post here without a CORS preflight.
            return _error(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, "send the body as application/json")
        if body is None:
            return _error(HTTPStatus.BAD_REQUEST, "the request has no body")
        try:
            return model.model_validate_json(body)
        except ValidationError as exc:
            if any(e["type"] == "json_invalid" for e in exc.errors()):
                return _error(HTTPStatus.BAD_REQUEST, "the body is not valid JSON")
            return _error(HTTPStatus.BAD_REQUEST, f"invalid {model.__name__}", _validation_details(exc))

    def _post_decision(self, headers: Any, body: bytes | None) -> _Reply:
        parsed = self._parse(Decision, headers, body)
        if isinstance(parsed, _Reply):
            return parsed
        try:
            escalation = self.model.escalations.decide(parsed)
        except UnknownEscalation as exc:
            return _error(HTTPStatus.NOT_FOUND, str(exc))
        except EscalationClosed as exc:
            return _error(HTTPStatus.CONFLICT, str(exc))
        except EscalationError as exc:
            return _error(HTTPStatus.BAD_REQUEST, str(exc))
        log.info("operator %s answered %s on escalation %s", parsed.operator, parsed.action, escalation.id)
        return _json(HTTPStatus.OK, {"ok": True, "escalation_id": escalation.id, "action": parsed.action})

    def _post_teleop(self, headers: Any, body: bytes | None) -> _Reply:
        parsed = self._parse(TeleopCommand, headers, body)
        if isinstance(parsed, _Reply):
            return parsed
        if not self.model.teleop.put(parsed):
            return _error(HTTPStatus.CONFLICT, "no take-over is active: answer an escalation with Take over first")
        return _json(HTTPStatus.OK, {"ok": True, "step": self.model.teleop.active_step})


class _Handler(BaseHTTPRequestHandler):
    console: OperatorConsole
    server_version = "vla-edge-console"
    sys_version = ""
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self._serve("GET", None)

    def do_POST(self) -> None:
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            self._send(_error(HTTPStatus.BAD_REQUEST, "bad Content-Length"))
            return
        if length > MAX_BODY_BYTES:
            self._send(_error(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"bodies are limited to {MAX_BODY_BYTES} bytes"))
            self.close_connection = True
            return
        self._serve("POST", self.rfile.read(length) if length > 0 else None)

    def _serve(self, method: str, body: bytes | None) -> None:
        try:
            reply = self.console.handle(method, self.path, self.headers, body)
        except Exception:
            log.exception("operator console failed on %s %s", method, self.path)
            reply = _error(HTTPStatus.INTERNAL_SERVER_ERROR, "internal error; see the daemon's log")
        self._send(reply)

    def _send(self, reply: _Reply) -> None:
        self.send_response(reply.status)
        self.send_header("Content-Type", reply.content_type)
        self.send_header("Content-Length", str(len(reply.body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("X-Frame-Options", "DENY")
        self.send_header("Content-Security-Policy", "default-src 'self'; img-src 'self' data: blob:; frame-ancestors 'none'")
        for name, value in reply.headers:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(reply.body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's signature
        log.debug("console %s " + format, self.address_string(), *args)
