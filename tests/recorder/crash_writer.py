"""A recorder process that dies in the middle of committing an episode (for the crash-safety tests).

    python tests/recorder/crash_writer.py ROOT DIE_AT

Records two episodes, then a third whose commit is cut short: the process ends with ``os._exit`` (no cleanup, no
finally blocks, like kill -9) right after the DIE_AT-th file of that commit was renamed into place. DIE_AT 0:
no crash; it prints how many files one commit installs (``installs N``).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from recording_cases import EPISODES, FEATURES, FPS, episode_frames  # noqa: E402

from vla_edge.recorder import EpisodeRecorder, files  # noqa: E402


def main() -> int:
    root, die_at = Path(sys.argv[1]), int(sys.argv[2])
    recorder = EpisodeRecorder(root, FPS, FEATURES)
    for number in (0, 1):
        for frame in episode_frames(number):
            recorder.add_frame(*frame)
        recorder.end_episode(success=EPISODES[number][3])
    installs = {"n": 0}
    real_install = files.install

    def install_then_maybe_die(staged: Path, target: Path, durable: bool = True) -> None:
        real_install(staged, target, durable)
        installs["n"] += 1
        if installs["n"] == die_at:
            os._exit(17)

    files.install = install_then_maybe_die
    for frame in episode_frames(2):
        recorder.add_frame(*frame)
    recorder.end_episode(success=EPISODES[2][3])
    print(f"installs {installs['n']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
