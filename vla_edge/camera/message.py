"""The frame message the simulated robot publishes and ``SimSource`` reads: a pydantic model in msgpack, no pickle.

Both ends import this module, so the schema and the size cap are declared once.
"""

from __future__ import annotations

from typing import Literal

import msgpack
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from vla_edge.errors import VlaEdgeError

FRAME_MESSAGE_VERSION = 1
MAX_FRAME_SIDE = 4096
# Largest payload we accept: one full-size RGB frame plus room for the header fields. A larger message is
# refused before msgpack allocates anything for it.
MAX_FRAME_MESSAGE_BYTES = MAX_FRAME_SIDE * MAX_FRAME_SIDE * 3 + 1024


class FrameMessageError(VlaEdgeError):
    """A frame message could not be decoded or does not match its declared shape."""


class FrameMessage(BaseModel):
    """One RGB frame on the wire. ``t_capture_ns`` is the sender's ``time.monotonic_ns()`` at render/capture."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    v: Literal[1] = FRAME_MESSAGE_VERSION
    seq: int = Field(ge=0)
    t_capture_ns: int = Field(ge=0)
    height: int = Field(gt=0, le=MAX_FRAME_SIDE)
    width: int = Field(gt=0, le=MAX_FRAME_SIDE)
    encoding: Literal["rgb8"] = "rgb8"
    data: bytes = Field(strict=True)

    @model_validator(mode="after")
    def _data_matches_shape(self) -> FrameMessage:
        expected = self.height * self.width * 3
        if len(self.data) != expected:
            raise ValueError(f"data has {len(self.data)} bytes, {self.height}x{self.width} rgb8 needs {expected}")
        return self

    @classmethod
    def from_image(cls, image: np.ndarray, t_capture_ns: int, seq: int) -> FrameMessage:
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise FrameMessageError(f"expected an RGB uint8 HxWx3 image, got {image.dtype} {image.shape}")
        height, width = int(image.shape[0]), int(image.shape[1])
        return cls(
            seq=seq,
            t_capture_ns=t_capture_ns,
            height=height,
            width=width,
            data=np.ascontiguousarray(image).tobytes(),
        )

    def image(self) -> np.ndarray:
        """The pixels as a read-only H×W×3 uint8 view of the message bytes (no copy)."""
        return np.frombuffer(self.data, dtype=np.uint8).reshape(self.height, self.width, 3)


def encode_frame_message(message: FrameMessage) -> bytes:
    return msgpack.packb(message.model_dump(), use_bin_type=True)


def decode_frame_message(raw: bytes) -> FrameMessage:
    """Bytes from the socket → a validated message. Raises FrameMessageError naming what was wrong."""
    if len(raw) > MAX_FRAME_MESSAGE_BYTES:
        raise FrameMessageError(f"frame message of {len(raw)} bytes exceeds the {MAX_FRAME_MESSAGE_BYTES} byte cap")
    try:
        fields = msgpack.unpackb(
            raw,
            raw=False,
            max_bin_len=MAX_FRAME_MESSAGE_BYTES,
            max_str_len=64,
            max_array_len=0,
            max_map_len=16,
            max_ext_len=0,
        )
    except (ValueError, msgpack.UnpackException) as exc:
        raise FrameMessageError(f"frame message is not valid msgpack: {exc}") from None
    if not isinstance(fields, dict):
        raise FrameMessageError(f"frame message must be a msgpack map, got {type(fields).__name__}")
    try:
        return FrameMessage.model_validate(fields)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'message'}: {e['msg']}" for e in exc.errors())
        raise FrameMessageError(f"invalid frame message: {problems}") from None
