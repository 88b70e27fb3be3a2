"""Offline LeRobot: the environment and the tiny SmolVLM directory a tiny SmolVLA needs.

RUN ONLY INSIDE THE LEROBOT VENV (scripts/lerobot_venv.sh, Python 3.12, lerobot 0.6.1):
the files in this folder import torch 2.11 / transformers 5 / lerobot and are executed
as scripts by that venv's python (see reflex_serve/lerobot_import/venv.py), never
imported by the project's own interpreter.

No weights can be downloaded on these machines, so everything here is built locally:
`offline_env` turns the Hugging Face hub off, and `write_tiny_smolvlm` writes a
SmolVLM-shaped model directory (config, processor, tokenizer; no weights) that a
`SmolVLAConfig(vlm_model_name=<dir>, load_vlm_weights=False)` builds from.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

#: Special tokens SmolVLA / SmolVLMProcessor look up by name (ids are read from the tokenizer).
SMOLVLM_SPECIAL_TOKENS = {
    "fake_image_token": "<fake_token_around_image>",
    "image_token": "<image>",
    "global_image_token": "<global-img>",
    "end_of_utterance_token": "<end_of_utterance>",
}
#: Characters of the tiny tokenizer: one token per character (BPE without merges).
TINY_CHARSET = "\n abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,;:!?'-_/()"

# Tiny SmolVLM geometry (LEROBOT.md): 64 px images, patch 8, pixel-shuffle scale 4
# -> (64 / 8)^2 / 4^2 = 4 image tokens per camera; Llama text model of width 64.
TINY_IMAGE_SIZE = 64
TINY_PATCH = 8
TINY_SCALE_FACTOR = 4
TINY_IMAGE_SEQ_LEN = (TINY_IMAGE_SIZE // TINY_PATCH) ** 2 // TINY_SCALE_FACTOR**2


def offline_env(hf_home: str | Path | None = None) -> Path:
    """Turn the Hugging Face hub off for this process and point its cache at `hf_home`.

    Must run before transformers / lerobot are imported (they read the variables at
    import). `hf_home` defaults to a fresh temporary directory. Returns the HF_HOME used.
    """
    home = Path(hf_home) if hf_home else Path(tempfile.mkdtemp(prefix="reflex-hf-"))
    home.mkdir(parents=True, exist_ok=True)
    os.environ["HF_HOME"] = str(home)
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    return home


def _tiny_tokenizer():
    """A character-level fast tokenizer holding SmolVLM's special tokens (ids 0-5)."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<pad>", *SMOLVLM_SPECIAL_TOKENS.values()]
    vocab = {tok: i for i, tok in enumerate(specials + list(TINY_CHARSET))}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        unk_token="<unk>",
        pad_token="<pad>",
        additional_special_tokens=list(SMOLVLM_SPECIAL_TOKENS.values()),
        extra_special_tokens=dict(SMOLVLM_SPECIAL_TOKENS),
    )


def write_tiny_smolvlm(directory: str | Path) -> Path:
    """Write a tiny SmolVLM model directory (config + processor + tokenizer, no weights).

    Text model: Llama, hidden 64, 4 layers, 4 heads / 2 KV heads (head_dim 16).
    Vision tower: hidden 32, 2 layers, image 64, patch 8; connector scale factor 4.
    The tokenizer is character-level over TINY_CHARSET (unknown characters -> <unk>).
    Returns the directory. Raises OSError if it cannot be written.
    """
    from transformers import (
        SmolVLMConfig,
        SmolVLMImageProcessor,
        SmolVLMProcessor,
        SmolVLMVideoProcessor,
    )

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = _tiny_tokenizer()
    vocab_size = len(tokenizer)
    text_config = {
        "model_type": "llama",
        "vocab_size": vocab_size,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "max_position_embeddings": 512,
        "pad_token_id": tokenizer.pad_token_id,
        "tie_word_embeddings": False,
    }
    vision_config = {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "image_size": TINY_IMAGE_SIZE,
        "patch_size": TINY_PATCH,
    }
    config = SmolVLMConfig(
        text_config=text_config,
        vision_config=vision_config,
        scale_factor=TINY_SCALE_FACTOR,
        image_token_id=tokenizer.convert_tokens_to_ids(SMOLVLM_SPECIAL_TOKENS["image_token"]),
        tie_word_embeddings=False,
    )
    config.save_pretrained(out)
    image_kwargs = {
        "size": {"longest_edge": TINY_IMAGE_SIZE},
        "max_image_size": {"longest_edge": TINY_IMAGE_SIZE},
        "do_image_splitting": False,
    }
    processor = SmolVLMProcessor(
        image_processor=SmolVLMImageProcessor(**image_kwargs),
        tokenizer=tokenizer,
        video_processor=SmolVLMVideoProcessor(**image_kwargs),
        image_seq_len=TINY_IMAGE_SEQ_LEN,
    )
    processor.save_pretrained(out)
    (out / "TINY_RANDOM_SMOLVLM.json").write_text(
        json.dumps({"note": "tiny offline SmolVLM for tests; no weights", "vocab": vocab_size})
    )
    return out
