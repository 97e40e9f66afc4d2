"""`vla-edge import lerobot --dataset` on an ACT trained with vla-edge's instruction words as its environment state
(RANDOM WEIGHTS: a small ACT built from LeRobot's config class, saved as lerobot-train saves it).

The recorder writes ``observation.environment_state`` = one 0/1 value per word of ``recorder.instruction_words``;
the import must give the bundle an instruction graph that computes exactly that vector from the instruction, feed
it to the ACT graph, pass parity against LeRobot fed the recorder's vector, and end a step on the ``done`` action.
Without ``--dataset`` the import is refused with one line that says what to pass.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

from tests.importers.test_import_lerobot import IMPORT_TIMEOUT_S, LEROBOT_PYTHON, _cli, _env, needs_lerobot
from vla_edge.paths import REPO_ROOT

WORDS = ["red", "green", "blue", "left", "right"]
TASKS = ["put the red block in the left bin", "put the blue block in the right bin",
         "put the green block in the left bin"]

BUILD = """
import json, sys, torch
from pathlib import Path
from lerobot.configs.types import FeatureType, PolicyFeature
from lerobot.policies.act.configuration_act import ACTConfig
from lerobot.policies.act.modeling_act import ACTPolicy
from models.lerobot.fixtures import save_pretrained

out = Path(sys.argv[1])
inputs = {"observation.image": PolicyFeature(FeatureType.VISUAL, (3, 48, 48)),
          "observation.state": PolicyFeature(FeatureType.STATE, (3,)),
          "observation.environment_state": PolicyFeature(FeatureType.ENV, (%(d)d,))}
config = ACTConfig(input_features=inputs, output_features={"action": PolicyFeature(FeatureType.ACTION, (4,))},
                   device="cpu", pretrained_backbone_weights=None, chunk_size=10, n_action_steps=10, dim_model=64,
                   n_heads=4, dim_feedforward=128, n_encoder_layers=1, n_decoder_layers=1, n_vae_encoder_layers=1)
torch.manual_seed(3)
policy = ACTPolicy(config).eval()
def vec(mean, std):
    mean, std = torch.tensor(mean), torch.tensor(std)
    return {"mean": mean, "std": std, "min": mean - 2 * std, "max": mean + 2 * std}
stats = {"observation.image": {"mean": torch.full((3, 1, 1), 0.5), "std": torch.full((3, 1, 1), 0.25),
                               "min": torch.zeros(3, 1, 1), "max": torch.ones(3, 1, 1)},
         "observation.state": vec([0.0, 0.1, 0.5], [0.3, 0.2, 0.5]),
         "observation.environment_state": vec([0.3] * %(d)d, [0.45] * %(d)d),
         "action": vec([0.0, 0.1, 0.5, 0.05], [0.3, 0.2, 0.5, 0.2])}
save_pretrained(policy, stats, out, "0.4", out.parent / "support")
print(json.dumps({"checkpoint": str(out)}))
"""


def _dataset(root: Path, words: list[str]) -> Path:
    """The two metadata files the import reads (what vla-edge's recorder writes for these features)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    (root / "meta").mkdir(parents=True)
    features = {"observation.state": {"dtype": "float32", "shape": [3], "names": ["gripper_x", "gripper_y", "grip"]},
                "observation.environment_state": {"dtype": "float32", "shape": [len(words)], "names": words},
                "action": {"dtype": "float32", "shape": [4], "names": ["target_x", "target_y", "grip", "done"]}}
    (root / "meta" / "info.json").write_text(json.dumps({"codebase_version": "v3.0", "fps": 10, "features": features}))
    pq.write_table(pa.table({"task_index": list(range(len(TASKS))), "task": TASKS}), root / "meta" / "tasks.parquet")
    return root


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("act-words")
    done = subprocess.run([str(LEROBOT_PYTHON), "-c", BUILD % {"d": len(WORDS)}, str(root / "pretrained_model")],
                          capture_output=True, text=True, timeout=1200, env=_env(), cwd=REPO_ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    return Path(json.loads(done.stdout.strip().splitlines()[-1])["checkpoint"])


@needs_lerobot
@pytest.mark.slow
@pytest.mark.timeout(2 * IMPORT_TIMEOUT_S)
def test_instruction_words_become_an_instruction_graph(checkpoint: Path, tmp_path: Path) -> None:
    from vla_edge.bundle import load_bundle
    from vla_edge.policy import PolicyRunner
    from vla_edge.recorder import RecordingFeatures

    dataset = _dataset(tmp_path / "dataset", WORDS)
    out = tmp_path / "bundle"
    done = _cli("import", "lerobot", str(checkpoint), "--out", str(out), "--unsigned", "--fps", "10",
                "--precisions", "int8", "--observations", "4", "--dataset", str(dataset))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    manifest = json.loads((out / "manifest.json").read_text())
    graphs = manifest["graphs"]
    assert graphs["instruction_words"]["role"] == "instruction"
    assert graphs["instruction_words"]["inputs"][0]["source"] == "language.tokens"
    sources = [i["source"] for i in graphs["policy"]["inputs"]]
    assert "instruction_words.environment_state" in sources
    assert manifest["observation"]["state"]["names"] == ["gripper_x", "gripper_y", "grip"]  # from the dataset
    assert manifest["action_space"]["names"] == ["target_x", "target_y", "grip", "done"]
    assert manifest["step_end"]["done_action"] == "done"
    for precision in ("fp32", "int8"):
        assert manifest["variants"][precision]["parity"]["passed"]
    assert "RANDOM WEIGHTS" in manifest["description"]

    # the runtime's vector for an instruction is the one the recorder writes for it (ENV is not normalised by ACT)
    features = RecordingFeatures(instruction_words=tuple(WORDS))
    for precision in ("fp32", "int8"):
        runner = PolicyRunner(load_bundle(out, verify=False), precision=precision)
        for task in [*TASKS, "put the red block in the right bin"]:
            runner.set_instruction(task)
            encoded = runner.encode(np.zeros((48, 48, 3), np.uint8), np.zeros(3, np.float32))
            got = np.asarray(encoded.values["instruction_words.environment_state"]).reshape(-1)
            assert np.allclose(got, features.instruction_vector(task), atol=1e-6), (precision, task, got)


@needs_lerobot
@pytest.mark.slow
@pytest.mark.timeout(IMPORT_TIMEOUT_S)
def test_environment_state_without_its_dataset_is_one_clear_line(checkpoint: Path, tmp_path: Path) -> None:
    done = _cli("import", "lerobot", str(checkpoint), "--out", str(tmp_path / "b"), "--unsigned", "--fps", "10")
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert "environment-state input" in done.stderr and "--dataset" in done.stderr
    wrong = _dataset(tmp_path / "dataset", WORDS[:3])
    done = _cli("import", "lerobot", str(checkpoint), "--out", str(tmp_path / "b"), "--unsigned", "--fps", "10",
                "--dataset", str(wrong))
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "has 5 values; the dataset names 3" in done.stderr
