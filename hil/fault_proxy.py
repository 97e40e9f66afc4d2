"""A fault-injecting ZeroMQ proxy for the command channel (daemon PUB → proxy → controller SUB).

It subscribes to the daemon's command endpoint and republishes on its own endpoint, which the controller
connects to instead. Per message, with seeded probabilities: drop, delay (uniform 0..delay_max_ms), reorder
(hold this message back until the next one has gone out), duplicate. Everything it does is recorded per
sequence number, so a soak can account for every command. Garbage frames can be injected on demand.

The session channel (handshake, heartbeats, state) is not proxied: faults there are covered by killing and
freezing the daemon process (tests/stream/test_stream_dead_daemon.py).
"""

from __future__ import annotations

import heapq
import random
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path

import zmq
from pydantic import BaseModel, ConfigDict, Field
from zmq.auth.thread import ThreadAuthenticator

from vla_edge.keys import authorized_dir, make_curve_client, make_curve_server
from vla_edge.wire import MAX_MESSAGE_BYTES, WireError, decode


class Faults(BaseModel):
    """Probabilities per message (0..1) and the delay range; ``seed`` makes a run reproducible."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    drop: float = Field(0.0, ge=0, le=1)
    delay: float = Field(0.0, ge=0, le=1)
    delay_max_ms: float = Field(500.0, ge=0, le=5000)
    reorder: float = Field(0.0, ge=0, le=1)
    duplicate: float = Field(0.0, ge=0, le=1)


class FaultProxy:
    """Forwards command-channel frames with injected faults; thread-based, one instance per link."""

    def __init__(
        self, upstream: str, downstream: str, faults: Faults, *, seed: int = 0, keys_dir: Path | None = None
    ) -> None:
        self.upstream = upstream
        self.downstream = downstream
        self._faults = faults
        self._rng = random.Random(seed)
        self._keys_dir = keys_dir
        self._lock = threading.Lock()
        self.counts: Counter[str] = Counter()
        # seq → what happened to it: "dropped", or "forwarded" plus any of "delayed", "reordered", "duplicated"
        self.ledger: dict[int, list[str]] = defaultdict(list)
        # (time it went out, seq) for every frame actually sent downstream, in order
        self.releases: list[tuple[int, int]] = []
        self._queue: list[tuple[int, int, bytes, int]] = []  # (release_ns, order, frame, seq)
        self._order = 0
        self._held: tuple[bytes, int] | None = None  # a frame waiting for the next one (reorder)
        self._inject: list[bytes] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._ctx: zmq.Context | None = None
        self._auth: ThreadAuthenticator | None = None

    def set_faults(self, faults: Faults) -> None:
        with self._lock:
            self._faults = faults

    def inject(self, frame: bytes) -> None:
        """Send ``frame`` downstream as-is at the next loop turn (garbage, oversized, foreign messages)."""
        with self._lock:
            self._inject.append(frame)

    def start(self) -> None:
        self._ctx = zmq.Context()
        if self._keys_dir is not None:
            self._auth = ThreadAuthenticator(self._ctx)
            self._auth.start()
            self._auth.configure_curve(domain="*", location=str(authorized_dir(self._keys_dir)))
        sub = self._ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.LINGER, 0)
        sub.setsockopt(zmq.RCVHWM, 10_000)  # the proxy must see everything the daemon sent, to account for it
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        pub = self._ctx.socket(zmq.PUB)
        pub.setsockopt(zmq.LINGER, 0)
        pub.setsockopt(zmq.SNDHWM, 10_000)
        if self._keys_dir is not None:
            make_curve_client(sub, self._keys_dir)
            make_curve_server(pub, self._keys_dir)
        sub.connect(self.upstream)
        pub.bind(self.downstream)
        self._thread = threading.Thread(target=self._run, args=(sub, pub), name="fault-proxy", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
        if self._auth is not None:
            self._auth.stop()
        if self._ctx is not None:
            self._ctx.term()
            self._ctx = None

    def __enter__(self) -> FaultProxy:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self, sub: zmq.Socket, pub: zmq.Socket) -> None:
        poller = zmq.Poller()
        poller.register(sub, zmq.POLLIN)
        try:
            while not self._stop.is_set():
                now = time.monotonic_ns()
                wait_ms = 2.0  # also the latency of inject(); keeps injected frames apart
                if self._queue:
                    wait_ms = max(0.0, min(wait_ms, (self._queue[0][0] - now) / 1e6))
                if poller.poll(wait_ms):
                    while True:
                        try:
                            frame = sub.recv(zmq.NOBLOCK)
                        except zmq.Again:
                            break
                        self._admit(frame, time.monotonic_ns())
                self._release(pub)
        finally:
            sub.close(linger=0)
            pub.close(linger=0)

    def _admit(self, frame: bytes, now: int) -> None:
        try:
            seq = decode(frame, "command").seq  # type: ignore[attr-defined]
        except WireError:
            seq = -1
        with self._lock:
            faults = self._faults
            self.counts["received"] += 1
            rng = self._rng
            if rng.random() < faults.drop:
                self._note(seq, "dropped")
                return
            release = now
            if rng.random() < faults.delay:
                release += int(rng.uniform(0.0, faults.delay_max_ms) * 1e6)
                self._note(seq, "delayed")
            if self._held is None and rng.random() < faults.reorder:
                self._held = (frame, seq)
                self._note(seq, "reordered")
                return
            self._schedule(release, frame, seq)
            self._note(seq, "forwarded")
            if rng.random() < faults.duplicate:
                self._note(seq, "duplicated")
                self._schedule(release + int(rng.uniform(0.0, 20.0) * 1e6), frame, seq)
            if self._held is not None:
                # The held frame goes out right after this one: the pair arrives swapped.
                held_frame, held_seq = self._held
                self._held = None
                self._schedule(release, held_frame, held_seq)
                self._note(held_seq, "forwarded")

    def _schedule(self, release_ns: int, frame: bytes, seq: int) -> None:
        self._order += 1
        heapq.heappush(self._queue, (release_ns, self._order, frame, seq))

    def _note(self, seq: int, what: str) -> None:
        self.counts[what] += 1
        if seq >= 0:
            self.ledger[seq].append(what)

    def _release(self, pub: zmq.Socket) -> None:
        now = time.monotonic_ns()
        with self._lock:
            injected, self._inject = self._inject, []
        for frame in injected:
            pub.send(frame[: 4 * MAX_MESSAGE_BYTES], zmq.NOBLOCK)
            self.counts["injected"] += 1
        while self._queue and self._queue[0][0] <= now:
            _, _, frame, seq = heapq.heappop(self._queue)
            pub.send(frame, zmq.NOBLOCK)
            with self._lock:
                self.releases.append((time.monotonic_ns(), seq))
                self.counts["sent"] += 1
