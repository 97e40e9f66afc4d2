"""Several camera views, one source each, over real ZeroMQ PUB/SUB: each view keeps its own resolution (no
pre-resize), the first view paces, a view without a fresh frame holds everything, and the config maps names."""

from __future__ import annotations

import time

import numpy as np
import pytest

from hil.camera_publisher import FramePublisher
from vla_edge.camera import CameraError, CameraStatus, MultiViewSource, open_cameras, view_settings
from vla_edge.config import CameraSettings, CameraViewSettings


def _image(value: int, height: int, width: int) -> np.ndarray:
    image = np.zeros((height, width, 3), np.uint8)
    image[..., 0] = value
    return image


@pytest.fixture
def publishers():
    pubs = [FramePublisher("tcp://127.0.0.1:*"), FramePublisher("tcp://127.0.0.1:*")]
    yield pubs
    for pub in pubs:
        pub.close()


def _settings(top: str, wrist: str, **extra) -> CameraSettings:
    return CameraSettings(source="sim", sim_endpoint=top,
                          views={"wrist": CameraViewSettings(source="sim", sim_endpoint=wrist)}, **extra)


def test_each_view_keeps_its_resolution_and_the_first_paces(publishers):
    top, wrist = publishers
    camera = open_cameras(_settings(top.bound_endpoint, wrist.bound_endpoint), ["top", "wrist"])
    assert isinstance(camera, MultiViewSource)
    with camera:
        deadline = time.monotonic() + 10
        frame = None
        while frame is None and time.monotonic() < deadline:
            wrist.publish(_image(20, 30, 40), time.monotonic_ns())
            top.publish(_image(10, 48, 64), time.monotonic_ns())
            frame = camera.wait_latest(0.05)
        assert frame is not None, "no combined frame"
        assert frame.views is not None and set(frame.views) == {"top", "wrist"}
        assert frame.views["top"].shape == (48, 64, 3) and frame.views["wrist"].shape == (30, 40, 3)  # no resize
        assert frame.image is frame.views["top"]
        assert frame.policy_input is frame.views
        assert camera.latest() is None  # never twice: the pacing view has nothing new
        assert camera.status is CameraStatus.OK


def test_a_view_without_a_fresh_frame_gives_nothing(publishers):
    top, wrist = publishers
    with open_cameras(_settings(top.bound_endpoint, wrist.bound_endpoint, max_frame_age_ms=200.0),
                      ["top", "wrist"]) as camera:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:  # only the first view publishes
            top.publish(_image(1, 8, 8), time.monotonic_ns())
            assert camera.wait_latest(0.05) is None
        assert camera.counters()["top.frames"] > 0 and camera.counters()["wrist.frames"] == 0


def test_view_config_names_the_missing_source():
    settings = CameraSettings(source="sim", views={"top": CameraViewSettings(source="/dev/video0")})
    per_view = view_settings(settings, ["top", "wrist"][:1])
    assert per_view["top"].source == "/dev/video0"
    with pytest.raises(CameraError, match=r"give it a source in \[camera.views.wrist\]"):
        view_settings(settings, ["top", "wrist"])
    with pytest.raises(CameraError, match=r"camera.views names \['side'\], which the bundle does not read"):
        view_settings(CameraSettings(views={"side": CameraViewSettings(source="0")}), ["top"])
    # a single-view bundle without its own [camera.views.NAME] uses camera.source itself
    assert view_settings(CameraSettings(source="1"), ["front"])["front"].source == "1"
