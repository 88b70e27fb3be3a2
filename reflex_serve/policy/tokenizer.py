"""A stateless word tokenizer for instructions.

Words (lower-cased runs of ``[a-z0-9]``) are hashed with CRC-32 into ``vocab_size - 1``
buckets; id 0 is padding. No vocabulary file is needed, any instruction maps to ids, and
the export's manifest records everything needed to reproduce the mapping::

    {"kind": "hash-words", "vocab_size": 1024}
"""

from __future__ import annotations

import re
import zlib

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
