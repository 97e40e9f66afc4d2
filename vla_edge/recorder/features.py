"""What each recorded frame holds, and how LeRobot's ``meta/info.json`` describes it (pure, no IO).

The names come from whoever records: the daemon passes the bundle's action and state names and its camera views;
a demo recorder passes the reference world's. Nothing here is specific to the reference world.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from vla_edge.errors import VlaEdgeError

# The features every LeRobot dataset has besides the recorded ones (LeRobot's ``DEFAULT_FEATURES``).
INDEX_FEATURES: dict[str, dict[str, Any]] = {
    "timestamp": {"dtype": "float32", "shape": [1], "names": None},
    "frame_index": {"dtype": "int64", "shape": [1], "names": None},
    "episode_index": {"dtype": "int64", "shape": [1], "names": None},
    "index": {"dtype": "int64", "shape": [1], "names": None},
    "task_index": {"dtype": "int64", "shape": [1], "names": None},
}
STATE_KEY = "observation.state"
ACTION_KEY = "action"
ACTUAL_KEY = "actual"  # not "observation.*" nor "action*": LeRobot policies do not take it as an input or target
INSTRUCTION_KEY = "observation.environment_state"
INTERVENTION_KEY = "intervention"
DEFAULT_VIEW = "observation.image"
_CODEC_NAMES = {"libx264": "h264", "libsvtav1": "av1"}
_WORD = re.compile(r"[a-z0-9]+")


class RecorderError(VlaEdgeError):
    """The dataset cannot be written or appended to (incompatible existing dataset, bad frame)."""


@dataclass(frozen=True)
class CameraView:
    """One camera view: its dataset key (``observation.image`` or ``observation.images.<name>``) and frame size."""

    key: str
    height: int
    width: int

    def __post_init__(self) -> None:
        if not self.key.startswith("observation.image") or "/" in self.key:
            raise RecorderError(f"camera view key {self.key!r} must start with 'observation.image' and have no '/'")
        if self.height <= 0 or self.width <= 0 or self.height % 2 or self.width % 2:
            raise RecorderError(f"view {self.key}: height and width must be positive and even (yuv420p video)")


@dataclass(frozen=True)
class RecordingFeatures:
    """The camera views and the names of the state, action and reported-actual dimensions.

    ``action``: the command the motors were given (the controller's actuated setpoint), the training target.
    ``observation.state``: the measured state when the frame was taken, an input. ``actual``: the controller's
    full report right after it acted on the frame's command (``None``: not recorded). ``instruction_words``: when
    set, ``observation.environment_state`` holds one 0/1 value per word, 1 when the instruction contains it, so a
    policy without a language model (ACT, Diffusion Policy) can be conditioned on the instruction.
    """

    views: tuple[CameraView, ...] = (CameraView(DEFAULT_VIEW, 96, 96),)
    state_names: tuple[str, ...] = ("gripper_x", "gripper_y", "grip")
    action_names: tuple[str, ...] = ("target_x", "target_y", "grip", "done")
    actual_names: tuple[str, ...] | None = None
    instruction_words: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        keys = [v.key for v in self.views]
        if not keys or len(set(keys)) != len(keys):
            raise RecorderError(f"need at least one camera view, each with its own key; got {keys}")
        for what, names in (("state", self.state_names), ("action", self.action_names),
                            ("actual", self.actual_names or ("-",)), ("instruction word", self.instruction_words or ("-",))):
            if not names or any(not isinstance(n, str) or not n for n in names):
                raise RecorderError(f"{what} names must be non-empty strings, got {names!r}")
        if self.instruction_words is not None:
            bad = [w for w in self.instruction_words if not _WORD.fullmatch(w)]
            if bad or len(set(self.instruction_words)) != len(self.instruction_words):
                raise RecorderError(f"instruction words must be distinct lower-case words, got {self.instruction_words!r}")

    def instruction_vector(self, instruction: str) -> list[float]:
        """``observation.environment_state`` for an instruction: 1.0 for each word of ``instruction_words`` in it."""
        words = set(_WORD.findall(instruction.lower()))
        return [1.0 if w in words else 0.0 for w in self.instruction_words or ()]

    def info_features(self, fps: int, codec: str) -> dict[str, Any]:
        """The ``features`` map of ``meta/info.json``: videos, vectors, then the index columns."""
        features: dict[str, Any] = {}
        for view in self.views:
            features[view.key] = {
                "dtype": "video",
                "shape": [view.height, view.width, 3],
                "names": ["height", "width", "channels"],
                "info": {
                    "video.height": view.height,
                    "video.width": view.width,
                    "video.codec": _CODEC_NAMES.get(codec, codec),
                    "video.pix_fmt": "yuv420p",
                    "video.is_depth_map": False,
                    "video.fps": fps,
                    "video.channels": 3,
                    "has_audio": False,
                },
            }
        for key, names in self.vectors().items():
            features[key] = {"dtype": "float32", "shape": [len(names)], "names": list(names)}
        features[INTERVENTION_KEY] = {"dtype": "bool", "shape": [1], "names": None}
        features.update({k: dict(v) for k, v in INDEX_FEATURES.items()})
        return features

    def vectors(self) -> dict[str, tuple[str, ...]]:
        """The float32 vector features and their dimension names, in column order."""
        vectors = {STATE_KEY: self.state_names}
        if self.instruction_words is not None:
            vectors[INSTRUCTION_KEY] = self.instruction_words
        vectors[ACTION_KEY] = self.action_names
        if self.actual_names is not None:
            vectors[ACTUAL_KEY] = self.actual_names
        return vectors
