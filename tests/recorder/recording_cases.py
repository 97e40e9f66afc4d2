"""Episodes the recorder tests write: two camera views of the reference world, every vector feature, interventions.

Each frame carries its global number as a bar across the top of both views (``bar_width``), so a reader that
returns the wrong frame, or frames out of order, is caught, not only one whose pixels are off.
"""

from __future__ import annotations

import cv2
import numpy as np

from hil.world import TabletopWorld
from vla_edge.recorder import CameraView, RecordingFeatures

FPS = 10
FRONT, WRIST = "observation.images.front", "observation.images.wrist"
FEATURES = RecordingFeatures(
    views=(CameraView(FRONT, 96, 96), CameraView(WRIST, 48, 64)),
    state_names=("gripper_x", "gripper_y", "grip"),
    action_names=("target_x", "target_y", "grip", "done"),
    actual_names=("gripper_x", "gripper_y", "grip", "done"),
    instruction_words=("red", "blue", "left", "top"),
)
# (length, instruction, frames driven by the operator, success) per episode number.
EPISODES = [
    (12, "put the red block in the left bin", range(0), True),
    (9, "put the blue block in the top bin", range(3, 7), False),
    (7, "put the red block in the top bin", range(0), False),
    (5, "put the blue block in the left bin", range(5), True),
]
_BAR_ROWS = 4


def first_frame(number: int) -> int:
    return sum(length for length, *_ in EPISODES[:number])


def bar_width(global_frame: int) -> int:
    return 4 + 2 * (global_frame % 28)  # < 64 px, the narrowest view


def read_bar(image: np.ndarray) -> int:
    """The bar's width in a decoded frame (its pixels are pure magenta; the world has none)."""
    row = image[_BAR_ROWS // 2].astype(int)
    magenta = (row[:, 0] > 180) & (row[:, 1] < 90) & (row[:, 2] > 180)
    return int(magenta.sum())


def episode_frames(number: int) -> list[tuple]:
    """``add_frame`` arguments of every frame of episode ``number``: (images, state, action, intervention,
    instruction, actual)."""
    length, instruction, intervened, _ = EPISODES[number]
    world = TabletopWorld(100 + number)
    frames = []
    start = first_frame(number)
    for i in range(length):
        front = world.render()
        wrist = cv2.resize(front[24:72, 16:80], (64, 48), interpolation=cv2.INTER_AREA)
        g = start + i
        for image in (front, wrist):
            image[:_BAR_ROWS, : bar_width(g)] = (255, 0, 255)
        state = world.state().astype(np.float32)
        action = np.array([0.1 + 0.01 * g, 0.9 - 0.01 * g, float(i % 3 == 0), float(i == length - 1)], np.float32)
        world.step(action)
        actual = np.concatenate([world.state(), [action[3]]]).astype(np.float32)
        frames.append(({FRONT: front, WRIST: wrist}, state, action, i in intervened, instruction, actual))
    return frames
