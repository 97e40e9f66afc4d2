"""Frames from the simulated robot process (hil/), over ZeroMQ PUB/SUB.

Clock assumption: the simulator and the daemon run on the same machine, and ``time.monotonic_ns()`` reads
CLOCK_MONOTONIC, which is system-wide on Linux; so the publisher's ``t_capture_ns`` can be compared with this
process's clock to get a frame's age. Across machines that is not true and this source must not be used.
"""

from __future__ import annotations

import zmq

from vla_edge.camera.core import CameraError, GrabberSource
from vla_edge.camera.message import MAX_FRAME_MESSAGE_BYTES, FrameMessageError, decode_frame_message
from vla_edge.config import CameraSettings

_POLL_MS = 50  # how often the grabber looks at the stop flag while no frame arrives


class SimSource(GrabberSource):
    """Subscribes to ``settings.sim_endpoint`` (the publisher binds, we connect)."""

    def __init__(self, settings: CameraSettings) -> None:
        super().__init__(settings, name=f"sim {settings.sim_endpoint}")
        self._context: zmq.Context | None = None
        self._socket: zmq.Socket | None = None

    def _open(self) -> None:
        self._context = zmq.Context()
        socket = self._context.socket(zmq.SUB)
        # CONFLATE keeps only the last message in the receive queue, so a slow reader never sees a backlog of
        # old frames (newest wins, at the socket). It only works with single-part messages, which ours are.
        socket.setsockopt(zmq.CONFLATE, 1)
        # Refuse oversized messages in libzmq, before they reach Python; the decoder checks again.
        socket.setsockopt(zmq.MAXMSGSIZE, MAX_FRAME_MESSAGE_BYTES)
        socket.setsockopt(zmq.LINGER, 0)
        socket.setsockopt(zmq.SUBSCRIBE, b"")
        try:
            socket.connect(self.settings.sim_endpoint)
        except zmq.ZMQError as exc:
            socket.close(0)
            self._context.term()
            self._context = None
            raise CameraError(f"camera sim: cannot connect to {self.settings.sim_endpoint!r}: {exc}") from None
        self._socket = socket

    def _grab_loop(self) -> None:
        socket = self._socket
        assert socket is not None
        poller = zmq.Poller()
        poller.register(socket, zmq.POLLIN)
        while not self._stop.is_set():
            if not poller.poll(_POLL_MS):
                self._check_stall()
                continue
            raw = socket.recv(copy=True)
            try:
                message = decode_frame_message(raw)
            except FrameMessageError as exc:
                self._count("bad_messages")
                self._note_error(f"dropped a frame message: {exc}")
                continue
            self._publish(message.image(), message.t_capture_ns)

    def _release(self) -> None:
        if self._socket is not None:
            self._socket.close(0)
            self._socket = None
        if self._context is not None:
            self._context.term()
            self._context = None

