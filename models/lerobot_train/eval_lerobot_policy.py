"""A LeRobot checkpoint, run by LeRobot itself (PyTorch, its processors) in closed loop on the reference world.

    .venv-lerobot/bin/python -m models.lerobot_train.eval_lerobot_policy CHECKPOINT/pretrained_model \\
        --chains 20 --seed 7201

Runs in LeRobot's environment (.venv-lerobot), not on the robot: it answers "how good is the trained policy
itself" (receding horizon, `hil.rollout.evaluate`: each chunk's first ``--execute`` actions run, a step ends on
done > 0.5), before and apart from the export, quantization and daemon of `vla-edge import lerobot`. Inputs as
the recorder wrote them (`models.lerobot_train.record_demos.FEATURES`): the 96×96 image, the state, and the
instruction words.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def load(checkpoint: Path):
    import torch
    from lerobot.policies.factory import get_policy_class, make_pre_post_processors
    from lerobot.configs.policies import PreTrainedConfig

    config = PreTrainedConfig.from_pretrained(checkpoint)
    config.device = "cpu"
    policy = get_policy_class(config.type).from_pretrained(checkpoint, config=config).eval()
    pre, post = make_pre_post_processors(config, pretrained_path=str(checkpoint),
                                         preprocessor_overrides={"device_processor": {"device": "cpu"}})
    torch.set_num_threads(1)
    return policy, pre, post


def chunk_policy(policy, pre, post, words: tuple[str, ...]):
    import torch

    from vla_edge.recorder import RecordingFeatures

    features = RecordingFeatures(instruction_words=words)

    def act(image: np.ndarray, state: np.ndarray, instruction: str) -> np.ndarray:
        batch = {
            "observation.image": torch.from_numpy(image).permute(2, 0, 1).float().div(255.0).unsqueeze(0),
            "observation.state": torch.from_numpy(np.asarray(state, np.float32)).unsqueeze(0),
            "observation.environment_state": torch.tensor([features.instruction_vector(instruction)]),
            "task": [instruction],
        }
        with torch.inference_mode():
            chunk = policy.predict_action_chunk(pre(batch))
            actions = post(chunk)
        return actions[0].numpy()

    return act


def main(argv: list[str] | None = None) -> int:
    from hil.rollout import evaluate, summarise
    from models.lerobot_train.record_demos import FEATURES

    parser = argparse.ArgumentParser(prog="python -m models.lerobot_train.eval_lerobot_policy")
    parser.add_argument("checkpoint", type=Path, help="…/checkpoints/NNNNNN/pretrained_model")
    parser.add_argument("--chains", type=int, default=20)
    parser.add_argument("--seed", type=int, default=7201)
    parser.add_argument("--execute", type=int, default=10, help="actions of each chunk executed before re-planning")
    parser.add_argument("--out", type=Path, help="write the summary here (JSON)")
    args = parser.parse_args(argv)
    started = time.monotonic()
    policy, pre, post = load(args.checkpoint)
    results = evaluate(chunk_policy(policy, pre, post, FEATURES.instruction_words), args.chains, args.seed,
                       execute=args.execute)
    summary = {**summarise(results), "chains": args.chains, "seed": args.seed, "execute": args.execute,
               "checkpoint": str(args.checkpoint), "seconds": round(time.monotonic() - started, 1)}
    print(json.dumps(summary, indent=1))
    if args.out:
        args.out.write_text(json.dumps(summary, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
