"""Runs in LeRobot's own environment (.venv-lerobot): open datasets with LeRobot's `LeRobotDataset` and dump what
it reads, for tests/recorder/test_lerobot_roundtrip.py to compare with what the recorder was given.

    .venv-lerobot/bin/python tests/recorder/lerobot_read.py OUT_DIR DATASET_DIR [v21:DATASET_DIR ...]

A ``v21:`` dataset (LeRobot format v2.1) is first converted in place by LeRobot's own offline converter
(``lerobot.datasets.v30.convert_dataset_v21_to_v30``), as a user of LeRobot 0.4 would. For each dataset (numbered in argument order) it writes OUT_DIR/<n>.json (metadata, per-frame vectors, the
policy features LeRobot derives) and OUT_DIR/<n>.npz (every decoded frame of every view, uint8). A dataset
LeRobot refuses is reported as {"error": "..."}.
"""

from __future__ import annotations

import json
import sys
import traceback
from pathlib import Path

import numpy as np


def main() -> int:
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    import importlib.util

    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    try:  # LeRobot 0.4
        from lerobot.datasets.utils import dataset_to_policy_features
    except ImportError:  # 0.5 and later
        from lerobot.utils.feature_utils import dataset_to_policy_features

    backend = "pyav"
    if importlib.util.find_spec("torchcodec") is not None:
        try:
            import torchcodec.decoders  # noqa: F401 - loads FFmpeg's libraries, or fails without them

            backend = "torchcodec"
        except Exception:
            backend = "pyav"
    for number, root in enumerate(sys.argv[2:]):
        try:
            if root.startswith("v21:"):
                root = root[len("v21:"):]
                try:  # LeRobot 0.4: root is the parent of <repo_id>
                    from lerobot.datasets.v30.convert_dataset_v21_to_v30 import convert_dataset

                    convert_dataset(Path(root).name, root=Path(root).parent, push_to_hub=False, force_conversion=True)
                except ImportError:  # 0.5 and later: root is the dataset itself
                    from lerobot.scripts.convert_dataset_v21_to_v30 import convert_dataset

                    convert_dataset(Path(root).name, root=Path(root), push_to_hub=False, force_conversion=True)
            result, images = read(LeRobotDataset, dataset_to_policy_features, Path(root), backend)
        except Exception as exc:  # the test shows LeRobot's own complaint
            (out / f"{number}.json").write_text(json.dumps({"error": f"{type(exc).__name__}: {exc}",
                                                            "traceback": traceback.format_exc()}))
            continue
        (out / f"{number}.json").write_text(json.dumps(result))
        np.savez(out / f"{number}.npz", **images)
    return 0


def read(LeRobotDataset, dataset_to_policy_features, root: Path, backend: str):
    ds = LeRobotDataset("vla-edge/test", root=root, video_backend=backend)
    meta = ds.meta
    episodes = [
        {key: _plain(meta.episodes[i][key]) for key in ("episode_index", "length", "tasks", "success",
                                                          "intervention_frames", "dataset_from_index",
                                                          "dataset_to_index")}
        for i in range(meta.total_episodes)
    ]
    frames = []
    images: dict[str, list[np.ndarray]] = {key: [] for key in meta.video_keys}
    for i in range(len(ds)):
        item = ds[i]
        frame = {"task": item["task"]}
        for key, value in item.items():
            if key in meta.video_keys:
                images[key].append(np.round(value.permute(1, 2, 0).numpy() * 255.0).astype(np.uint8))
            elif key != "task":
                frame[key] = _plain(value)
        frames.append(frame)
    result = {
        "backend": backend,
        "lerobot": _version(),
        "codebase_version": meta.info["codebase_version"],
        "num_episodes": ds.num_episodes,
        "num_frames": ds.num_frames,
        "video_keys": meta.video_keys,
        "episodes": episodes,
        "frames": frames,
        "stats": {key: {stat: _plain(v) for stat, v in per.items()} for key, per in (meta.stats or {}).items()},
        "policy_features": {key: {"type": str(f.type.name), "shape": list(f.shape)}
                            for key, f in dataset_to_policy_features(meta.features).items()},
    }
    return result, {key.replace("/", "_"): np.stack(frames_) for key, frames_ in images.items() if frames_}


def _version() -> str:
    from importlib.metadata import version

    return version("lerobot")


def _plain(value):
    if hasattr(value, "tolist"):
        return value.tolist()
    return value


if __name__ == "__main__":
    raise SystemExit(main())
