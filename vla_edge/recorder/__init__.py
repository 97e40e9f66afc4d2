"""Episodes (policy- and operator-driven frames alike) recorded as a LeRobot dataset, to feed fine-tuning.

LeRobot's current format v3.0 by default (`layout_v30`), v2.1 for older readers (`layout_v21`); written with
pyarrow and PyAV (the ``record`` extra), never with LeRobot itself. Modules: `features` (what a frame holds),
`episodes` (the recorder), `layout_v30` / `layout_v21` (the files and their crash-safe append), `video`
(encode, decode, append, truncate), `stats` (statistics), `files` (staged atomic writes), `observer` (the
daemon's tick → frame: which command the controller actually executed).
"""

from vla_edge.recorder.episodes import FORMATS, EpisodeRecorder, EpisodeSummary
from vla_edge.recorder.features import CameraView, RecorderError, RecordingFeatures

__all__ = ["FORMATS", "CameraView", "EpisodeRecorder", "EpisodeSummary", "RecorderError", "RecordingFeatures"]
