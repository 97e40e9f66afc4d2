import numpy as np
import pytest

from vla_edge.tokenizer import PAD_TOKEN, UnknownWordError, WordTokenizer, build_vocabulary, split_words


def test_vocabulary_and_encoding_round_trip():
    vocab = build_vocabulary(["put the red block in the left bin", "put the blue block in the top bin"])
    assert vocab[0] == PAD_TOKEN and len(vocab) == len(set(vocab))
    tokenizer = WordTokenizer(vocab)
    tokens = tokenizer.encode("Put the  RED block in the left bin.")
    assert tokens.dtype == np.int64 and tokens.shape == (1, 8)
    assert [vocab[i] for i in tokens[0]] == split_words("put the red block in the left bin")
    assert 0 not in tokens


def test_unknown_words_are_named():
    tokenizer = WordTokenizer(build_vocabulary(["put the red block in the left bin"]))
    with pytest.raises(UnknownWordError, match="'gently'.*'purple'|'purple'.*'gently'"):
        tokenizer.encode("gently put the purple block in the left bin")
    with pytest.raises(UnknownWordError, match="no words"):
        tokenizer.encode("  ...  ")
    with pytest.raises(UnknownWordError, match="pad"):
        tokenizer.encode("<pad>")


def test_padded_batches():
    tokenizer = WordTokenizer(build_vocabulary(["a b c", "a b"]))
    batch = tokenizer.encode_padded(["a b c", "a b"])
    assert batch.shape == (2, 3) and batch[1, 2] == 0


def test_vocabulary_must_start_with_pad():
    with pytest.raises(ValueError, match="must start"):
        WordTokenizer(["a", "b"])
