"""The simulated robot's camera: publishes rendered frames for ``vla_edge.camera.SimSource`` over ZeroMQ PUB.

The publisher binds and the daemon's SimSource connects, so either may start first. Frames are ``FrameMessage``
in msgpack (no pickle); ``t_capture_ns`` is this process's ``time.monotonic_ns()`` at render time, comparable
with the daemon's clock because both run on one machine (CLOCK_MONOTONIC is system-wide on Linux).
"""

from __future__ import annotations

from types import TracebackType

import numpy as np
import zmq

from vla_edge.camera import FrameMessage, encode_frame_message


class FramePublisher:
    """Binds a PUB socket on ``endpoint`` (e.g. ``tcp://127.0.0.1:5570``) and publishes RGB frames."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self._context = zmq.Context()
        self._socket = self._context.socket(zmq.PUB)
        # Keep only the newest unsent frame per subscriber. (A small SNDHWM alone would be wrong: when the queue
        # is full, PUB drops the *new* message and keeps the old ones.)
        self._socket.setsockopt(zmq.CONFLATE, 1)
        self._socket.setsockopt(zmq.LINGER, 0)
        try:
            self._socket.bind(endpoint)
        except zmq.ZMQError as exc:
            self._socket.close(0)
            self._context.term()
            raise OSError(f"camera publisher cannot bind {endpoint!r}: {exc}") from None
        self._seq = 0
        self._closed = False

    @property
    def bound_endpoint(self) -> str:
        """The endpoint actually bound (resolves ``tcp://127.0.0.1:*`` to its port)."""
        return self._socket.getsockopt_string(zmq.LAST_ENDPOINT)

    def publish(self, image: np.ndarray, t_capture_ns: int) -> None:
        """Send one RGB uint8 H×W×3 frame captured/rendered at ``t_capture_ns`` (monotonic). Never blocks."""
        message = FrameMessage.from_image(image, t_capture_ns=t_capture_ns, seq=self._seq)
        self._socket.send(encode_frame_message(message), flags=zmq.NOBLOCK, copy=False)
        self._seq += 1

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._socket.close(0)
        self._context.term()

    def __enter__(self) -> FramePublisher:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
