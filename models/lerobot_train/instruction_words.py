"""The instruction as input to a policy without a language model (ACT, Diffusion Policy): words as 0/1 values.

The recorder writes ``observation.environment_state`` = one value per word of ``recorder.instruction_words``, 1.0
when the instruction contains the word (`vla_edge.recorder.RecordingFeatures.instruction_vector`); LeRobot
trains ACT / Diffusion Policy with it as their environment-state input. On the robot the same vector has to come
from the instruction: this module builds the bundle's **instruction graph** for it, a schema-2 graph of role
``instruction`` that reads ``language.tokens`` (the bundle's word-list tokenizer) and outputs
``environment_state`` [1, D], which the encode graph reads as its environment-state input. Computed once per
instruction (the runtime caches instruction graphs by text), and equal to what the recorder wrote for the same
text (tests/models/test_instruction_words.py).

An instruction with a word outside the vocabulary (every word of every recorded task) is refused by name by the
tokenizer, as for the reference model: the policy never saw it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from vla_edge.tokenizer import build_vocabulary

GRAPH_NAME = "instruction_words"
OUTPUT = "environment_state"


def vocabulary(tasks: Iterable[str], words: Sequence[str]) -> list[str]:
    """The word-list tokenizer's vocabulary: ``<pad>``, then every word of the dataset's tasks and ``words``."""
    return build_vocabulary([*tasks, " ".join(words)])


def instruction_graph(vocab: Sequence[str], words: Sequence[str]):
    """ONNX model: ``tokens`` int64 [1, L] (ids into ``vocab``) → ``environment_state`` float32 [1, len(words)]."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    missing = [w for w in words if w not in vocab]
    if missing:
        raise ValueError(f"instruction words not in the vocabulary: {missing}")
    table = np.zeros((len(vocab), len(words)), dtype=np.float32)  # row = token id; <pad> (id 0) adds nothing
    for column, word in enumerate(words):
        table[list(vocab).index(word), column] = 1.0
    nodes = [
        helper.make_node("Gather", ["table", "tokens"], ["per_token"], axis=0),  # [1, L, D]
        helper.make_node("ReduceSum", ["per_token", "axis"], ["counts"], keepdims=0),  # [1, D]
        helper.make_node("Min", ["counts", "one"], [OUTPUT]),  # a word said twice is still 1
    ]
    graph = helper.make_graph(
        nodes, GRAPH_NAME,
        [helper.make_tensor_value_info("tokens", TensorProto.INT64, [1, "words"])],
        [helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, [1, len(words)])],
        initializer=[numpy_helper.from_array(table, "table"),
                     numpy_helper.from_array(np.array([1], dtype=np.int64), "axis"),
                     numpy_helper.from_array(np.array(1.0, dtype=np.float32), "one")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="vla-edge")
    model.ir_version = 8  # as the bundles: onnx 1.23's default (14) is too new for ONNX Runtime 1.23 (Python 3.10)
    onnx.checker.check_model(model)
    return model
