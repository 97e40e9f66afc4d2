"""The bundle's instruction graph gives, for every instruction, the vector the recorder wrote for it."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from hil.tasks import Step
from hil.world import BINS, COLOURS
from models.lerobot_train.instruction_words import instruction_graph, vocabulary
from vla_edge.recorder import RecordingFeatures
from vla_edge.tokenizer import UnknownWordError, WordTokenizer

WORDS = (*COLOURS, *BINS)


def test_instruction_graph_matches_the_recorded_environment_state():
    tasks = [Step(c, b).instruction for c in COLOURS for b in BINS]
    vocab = vocabulary(tasks, WORDS)
    session = ort.InferenceSession(instruction_graph(vocab, WORDS).SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    tokenizer = WordTokenizer(vocab)
    features = RecordingFeatures(instruction_words=WORDS)
    for text in [*tasks, "put the red block in the red bin", "Put the BLUE block in the top bin."]:
        (vector,) = session.run(None, {"tokens": tokenizer.encode(text)})
        assert vector.shape == (1, len(WORDS)) and vector.dtype == np.float32
        np.testing.assert_array_equal(vector[0], np.asarray(features.instruction_vector(text), np.float32))
    # Exactly one colour and one bin are set for each instruction of the grammar.
    (vector,) = session.run(None, {"tokens": tokenizer.encode(tasks[5])})
    assert vector.sum() == 2.0
    with pytest.raises(UnknownWordError, match="purple"):
        tokenizer.encode("put the purple block in the left bin")
    with pytest.raises(ValueError, match="not in the vocabulary"):
        instruction_graph(["<pad>", "red"], ["red", "left"])
