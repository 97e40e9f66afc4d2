"""An environment-state input made of the instruction's words (ACT / Diffusion Policy trained on a vla-edge recording).

ACT and Diffusion Policy have no language model. vla-edge's recorder (``recorder.instruction_words``) therefore
writes ``observation.environment_state`` = one 0/1 value per word, 1 when the instruction contains it
(`vla_edge.recorder.RecordingFeatures.instruction_vector`), and LeRobot trains with it as the policy's
environment-state input. On the robot the same vector comes from the instruction: the bundle gets an
**instruction graph** ``instruction_words`` (``language.tokens`` of a word-list tokenizer → ``environment_state``,
normalised as LeRobot normalises the feature), run once per instruction, read by the encode graph.

The words are the feature's names in the dataset's ``meta/info.json`` and the tokenizer's vocabulary is every word
of the dataset's tasks (``meta/tasks.parquet``): ``--dataset DIR`` (the checkpoint does not record either). An
instruction with a word outside the vocabulary is refused by name on the robot, as for any word-list bundle.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from models.lerobot.sections import EPS, _MODE_STATS, norm_mode
from vla_edge.tokenizer import WordTokenizer, build_vocabulary, split_words

FEATURE = "observation.environment_state"
GRAPH = "instruction_words"
OUTPUT = "environment_state"


class EnvWordsError(Exception):
    """The dataset does not say what the environment-state input is; the message says why."""


@dataclass(frozen=True)
class DatasetWords:
    words: list[str]  # one per environment-state value, in order
    tasks: list[str]  # the dataset's instructions
    state_names: list[str] | None
    action_names: list[str] | None

    @property
    def vocabulary(self) -> list[str]:
        return build_vocabulary([*self.tasks, " ".join(self.words)])

    def vector(self, task: str) -> np.ndarray:
        """The raw 0/1 vector the recorder wrote for ``task`` (float32 [D])."""
        said = set(split_words(task))
        return np.array([1.0 if w in said else 0.0 for w in self.words], dtype=np.float32)


def read_dataset(root: Path) -> DatasetWords:
    """Words, tasks and state/action names of a LeRobot v3.0 (or v2.1) dataset folder."""
    info_file = root / "meta" / "info.json"
    if not info_file.is_file():
        raise EnvWordsError(f"--dataset {root}: not a LeRobot dataset (no meta/info.json)")
    features = json.loads(info_file.read_text()).get("features", {})
    env = features.get(FEATURE) or {}
    words = [str(w) for w in (env.get("names") or [])]
    tasks: list[str] = []
    parquet = root / "meta" / "tasks.parquet"
    jsonl = root / "meta" / "tasks.jsonl"
    if parquet.is_file():
        import pyarrow.parquet as pq

        table = pq.read_table(parquet)
        column = "task" if "task" in table.column_names else ("__index_level_0__" if "__index_level_0__" in
                                                              table.column_names else None)
        tasks = [str(t) for t in table.column(column).to_pylist()] if column else []
    elif jsonl.is_file():
        tasks = [json.loads(line)["task"] for line in jsonl.read_text().splitlines() if line.strip()]

    def names_of(key: str) -> list[str] | None:
        got = (features.get(key) or {}).get("names")
        return [str(n) for n in got] if isinstance(got, list) and all(isinstance(n, str) for n in got) else None

    return DatasetWords(words=words, tasks=tasks, state_names=names_of("observation.state"),
                        action_names=names_of("action"))


def check(dataset: DatasetWords | None, size: int) -> DatasetWords:
    """The dataset's words for an environment-state input of ``size`` values, or the one-line reason why not."""
    if dataset is None:
        raise EnvWordsError(f"the policy has an environment-state input ({FEATURE}, {size} values): pass --dataset "
                            "DIR, the LeRobot dataset it was trained on (vla-edge's recorder.instruction_words "
                            "names the instruction words there)")
    if len(dataset.words) != size:
        raise EnvWordsError(f"the policy's {FEATURE} has {size} values; the dataset names {len(dataset.words)} "
                            f"({dataset.words}): only an instruction-words input (recorder.instruction_words) can "
                            "be computed on the robot")
    if not dataset.tasks:
        raise EnvWordsError("the dataset has no tasks (meta/tasks.parquet): the tokenizer's vocabulary comes from them")
    return dataset


def graph_module(dataset: DatasetWords, config: Any, stats: dict[str, np.ndarray] | None) -> Any:
    """torch module: tokens int64 [1, L] → environment_state float32 [1, D], normalised as LeRobot's preprocessor
    normalises the feature (ACT, Diffusion Policy: identity unless the config maps ENV)."""
    import torch

    vocab = dataset.vocabulary
    table = np.zeros((len(vocab), len(dataset.words)), dtype=np.float32)  # row = token id; <pad> adds nothing
    for column, word in enumerate(dataset.words):
        table[vocab.index(word), column] = 1.0
    mode = norm_mode(config, "ENV")
    shift = np.zeros(len(dataset.words), np.float32)
    scale = np.ones(len(dataset.words), np.float32)
    if mode != "IDENTITY" and stats:
        if mode == "MEAN_STD":  # LeRobot: (x - mean) / (std + eps)
            shift, scale = np.asarray(stats["mean"], np.float32), 1.0 / (np.asarray(stats["std"], np.float32) + EPS)
        else:  # min_max family: 2 (x - lo) / (hi - lo + eps) - 1
            lo, hi = (np.asarray(stats[k], np.float32) for k in _MODE_STATS[mode])
            shift, scale = (lo + hi) / 2, 2.0 / (hi - lo + EPS)

    class InstructionWords(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("table", torch.from_numpy(table))
            self.register_buffer("shift", torch.from_numpy(shift.reshape(1, -1)))
            self.register_buffer("scale", torch.from_numpy(scale.reshape(1, -1)))

        def forward(self, tokens: torch.Tensor) -> torch.Tensor:
            counts = self.table[tokens].sum(dim=1)  # [1, D]; a word said twice is still 1
            return (torch.clamp(counts, max=1.0) - self.shift) * self.scale

    return InstructionWords().eval()


def example_tokens(dataset: DatasetWords, task: str) -> np.ndarray:
    return WordTokenizer(dataset.vocabulary).encode(task)
