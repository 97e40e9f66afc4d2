"""Word tokenizer for instructions: lower-case words looked up in the bundle's vocabulary.

The vocabulary lives in the bundle manifest, so the runtime and the training recipe always agree. Id 0 is the
padding token; it is never produced for a real word.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

import numpy as np

from vla_edge.errors import VlaEdgeError

PAD_TOKEN = "<pad>"
_WORD = re.compile(r"[a-z0-9]+")


class UnknownWordError(VlaEdgeError):
    """An instruction uses a word the policy was never trained on."""


def split_words(text: str) -> list[str]:
    """Lower-case words of an instruction; punctuation and extra spaces are ignored."""
    return _WORD.findall(text.lower())


def build_vocabulary(instructions: Iterable[str]) -> list[str]:
    """The sorted words of a training set, with the padding token first (id 0)."""
    words = sorted({word for text in instructions for word in split_words(text)})
    return [PAD_TOKEN, *words]


class WordTokenizer:
    """Maps an instruction to int64 token ids; refuses unknown words by name."""

    def __init__(self, vocabulary: Sequence[str]) -> None:
        if not vocabulary or vocabulary[0] != PAD_TOKEN:
            raise ValueError(f"vocabulary must start with {PAD_TOKEN!r}")
        if len(set(vocabulary)) != len(vocabulary):
            raise ValueError("vocabulary has duplicate words")
        self.vocabulary = tuple(vocabulary)
        self._ids = {word: index for index, word in enumerate(self.vocabulary)}

    def __len__(self) -> int:
        return len(self.vocabulary)

    def encode(self, text: str) -> np.ndarray:
        """Token ids, shape (1, L), int64."""
        words = split_words(text)
        if not words:
            raise UnknownWordError(f"instruction {text!r} has no words")
        unknown = [word for word in words if word not in self._ids or word == PAD_TOKEN]
        if unknown:
            known = ", ".join(self.vocabulary[1:])
            raise UnknownWordError(
                f"instruction {text!r} uses word(s) the policy does not know: {', '.join(map(repr, unknown))}; "
                f"known words: {known}"
            )
        return np.asarray([[self._ids[word] for word in words]], dtype=np.int64)

    def encode_padded(self, texts: Sequence[str], length: int | None = None) -> np.ndarray:
        """Token ids of several instructions, right-padded with 0 to a common length, shape (B, L)."""
        rows = [self.encode(text)[0] for text in texts]
        width = max(len(row) for row in rows) if length is None else length
        out = np.zeros((len(rows), width), dtype=np.int64)
        for index, row in enumerate(rows):
            if len(row) > width:
                raise ValueError(f"instruction {texts[index]!r} is longer than {width} words")
            out[index, : len(row)] = row
        return out


class PromptTokenizer:
    """A Hugging Face ``tokenizers`` JSON (the policy's own tokenizer, shipped in the bundle), with the prompt
    template, padding and truncation the bundle declares (docs/bundle-format.md, "Language").

    ``encode(text, state=None)`` → (ids int64 [1, L], attention mask bool [1, L]). ``state`` (π0.5) is the string of
    discretised state values put at ``{state}``.
    """

    def __init__(self, tokenizer_json: bytes, spec: object) -> None:
        from tokenizers import Tokenizer  # the small Rust wheel; only bundles that ship a tokenizer.json need it

        from vla_edge.bundle_schema import HfTokenizer

        if not isinstance(spec, HfTokenizer):
            raise TypeError("spec must be a bundle_schema.HfTokenizer")
        self.spec = spec
        try:
            self._tokenizer = Tokenizer.from_str(tokenizer_json.decode("utf-8"))
        except Exception as exc:  # the tokenizers library raises its own exception types
            raise ValueError(f"tokenizer {spec.file} cannot be loaded: {exc}") from None
        self._tokenizer.no_padding()
        self._tokenizer.no_truncation()

    def prompt(self, text: str, state: str | None = None) -> str:
        task = text.strip().replace("_", " ").replace("\n", " ") if self.spec.clean_task else text
        prompt = self.spec.prompt.replace("{task}", task)
        if self.spec.state_in_prompt is not None:
            if state is None:
                raise ValueError("this tokenizer writes the state into the prompt: give the state")
            prompt = prompt.replace("{state}", state)
        return prompt

    def encode(self, text: str, state: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        if not text.strip():
            raise UnknownWordError(f"instruction {text!r} has no words")
        ids = self._tokenizer.encode(self.prompt(text, state), add_special_tokens=self.spec.add_special_tokens).ids
        length = self.spec.max_length
        if self.spec.truncation:
            ids = ids[:length]
        mask = [True] * len(ids)
        if self.spec.padding == "max_length" and len(ids) < length:
            pad = length - len(ids)
            ids = ids + [self.spec.pad_id] * pad
            mask = mask + [False] * pad
        return np.asarray([ids], dtype=np.int64), np.asarray([mask], dtype=bool)
