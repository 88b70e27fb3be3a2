"""A stateless word tokenizer for instructions.

Words (lower-cased runs of ``[a-z0-9]``) are hashed with CRC-32 into ``vocab_size - 1``
buckets; id 0 is padding. No vocabulary file is needed, any instruction maps to ids, and
the export's manifest records everything needed to reproduce the mapping::

    {"kind": "hash-words", "vocab_size": 1024}

Other kinds: ``hf-tokenizers`` (:mod:`reflex_serve.policy.hf_tokenizer`, LeRobot's text
processing on a tokenizer.json). :func:`make_text_encoder` picks the kind a manifest names.
"""

from __future__ import annotations

import re
import zlib
from pathlib import Path
from typing import Any

import numpy as np

KIND = "hash-words"
PAD_ID = 0
_WORD = re.compile(r"[a-z0-9]+")


def tokenize(text: str, max_tokens: int, vocab_size: int) -> np.ndarray:
    """Encode an instruction.

    Args:
        text: the instruction; may be empty.
        max_tokens: output length T; longer instructions are truncated.
        vocab_size: number of ids including the padding id 0.

    Returns:
        int64 array of shape (T,), zero-padded on the right.
    """
    ids = np.zeros(max_tokens, dtype=np.int64)
    words = _WORD.findall(text.lower())[:max_tokens]
    for i, word in enumerate(words):
        ids[i] = 1 + zlib.crc32(word.encode()) % (vocab_size - 1)
    return ids


def spec(vocab_size: int) -> dict:
    """The manifest's ``tokenizer`` entry for this tokenizer."""
    return {"kind": KIND, "vocab_size": vocab_size}


class HashWords:
    """The hash-words tokenizer behind the common encoder interface (state unused)."""

    uses_state = False

    def __init__(self, spec: dict[str, Any], max_tokens: int) -> None:
        self.max_tokens, self.vocab_size = max_tokens, int(spec["vocab_size"])

    def encode(self, instruction: str, state: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(tokens int64 (T,), mask int64 (T,): 1 where the token is not padding)."""
        tokens = tokenize(instruction, self.max_tokens, self.vocab_size)
        return tokens, (tokens != PAD_ID).astype(np.int64)


def make_text_encoder(spec: dict[str, Any], max_tokens: int, directory: Path | None = None):
    """The encoder a manifest's ``tokenizer`` entry describes.

    Returns an object with ``encode(instruction, normalised_state=None) -> (tokens int64
    (T,), token_mask int64 (T,))`` and ``uses_state`` (True when the state is written into
    the prompt). ``directory`` is the export directory (files such as tokenizer.json).

    Raises:
        ValueError: for an unknown kind or a missing tokenizer file.
    """
    kind = spec.get("kind")
    if kind == KIND:
        return HashWords(spec, max_tokens)
    if kind == "hf-tokenizers":
        from .hf_tokenizer import HFTokenizer

        if directory is None:
            raise ValueError("an hf-tokenizers tokenizer needs the export directory")
        return HFTokenizer(spec, max_tokens, directory)
    raise ValueError(f"unknown tokenizer kind {kind!r} (known: {KIND}, hf-tokenizers)")
