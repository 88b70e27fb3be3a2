"""What a tiny random-weight pi0 / pi0.5 needs offline: a fake PaliGemma tokenizer, small sizes.

RUN ONLY INSIDE THE LEROBOT VENV (see offline.py).

lerobot 0.6.1 hard-codes pi0's and pi0.5's sizes (LEROBOT.md): `paligemma_variant` accepts only
gemma_2b / gemma_300m, the PaliGemma config is built with a 257,152-token vocabulary and
a SigLIP-so400m vision tower projecting to 2048, and the pre-processor loads the
tokenizer `google/paligemma-3b-pt-224` by hub name. So a tiny pi0 / pi0.5

- gets a fake hub-cache entry for that name under HF_HOME (`write_fake_paligemma_cache`);
- is built and RELOADED with `patch_pi0_sizes()` applied, which swaps three names in
  `lerobot.policies.pi0.modeling_pi0` and `...pi05.modeling_pi05` for small versions (the saved config still says
  gemma_2b, so the patch must be active at `from_pretrained` too). A checkpoint built
  this way carries MARKER; reference.py applies the patch when it sees it.
"""

from __future__ import annotations

import json
from pathlib import Path

from offline import TINY_CHARSET

MARKER = "TINY_RANDOM_PI0.json"
TOKENIZER_REPO = "google/paligemma-3b-pt-224"
FAKE_REVISION = "0" * 40
VOCAB = 1024
# PaliGemma (prefix) and expert: shared attention needs equal heads / head_dim.
VLM = {"width": 64, "depth": 2, "mlp_dim": 128, "num_heads": 2, "num_kv_heads": 1, "head_dim": 16}
EXPERT = {"width": 32, "depth": 2, "mlp_dim": 64, "num_heads": 2, "num_kv_heads": 1, "head_dim": 16}
VISION = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
          "num_attention_heads": 2, "patch_size": 8}  # fmt: skip
IMAGE_SIZE = 64


def marker_contents() -> dict:
    """What MARKER holds: a note, and under "sizes" the two numbers no weight shape
    carries (Gemma kv_heads, SigLIP heads) for the native port (pi_checkpoint.py)."""
    assert VLM["num_kv_heads"] == EXPERT["num_kv_heads"]
    return {
        "note": "tiny: reload with pi0_tiny.patch_pi0_sizes",
        "sizes": {"kv_heads": VLM["num_kv_heads"], "vision_heads": VISION["num_attention_heads"]},
    }


def write_fake_paligemma_cache(hf_home: str | Path) -> Path:
    """Write HF_HOME/hub/models--google--paligemma-3b-pt-224 (char-level tokenizer).

    refs/main holds a 40-character revision; its snapshot has tokenizer.json,
    tokenizer_config.json and a config.json of model_type paligemma (transformers 5
    reads it to pick the tokenizer). Returns the snapshot directory.
    """
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    repo = Path(hf_home) / "hub" / ("models--" + TOKENIZER_REPO.replace("/", "--"))
    snapshot = repo / "snapshots" / FAKE_REVISION
    snapshot.mkdir(parents=True, exist_ok=True)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(FAKE_REVISION)
    specials = ["<pad>", "<eos>", "<bos>", "<unk>"]
    vocab = {tok: i for i, tok in enumerate(specials + list(TINY_CHARSET))}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token="<pad>", eos_token="<eos>", bos_token="<bos>",
        unk_token="<unk>",
    )  # fmt: skip
    tokenizer.save_pretrained(snapshot)
    (snapshot / "config.json").write_text(json.dumps({"model_type": "paligemma"}))
    return snapshot


def patch_pi0_sizes() -> None:
    """Make lerobot's pi0 and pi0.5 build the tiny sizes above (idempotent; this process).

    Both `lerobot.policies.pi0.modeling_pi0` and `...pi05.modeling_pi05` get the three
    replacements (each module holds its own copy of the names).
    """
    from lerobot.policies.pi0 import modeling_pi0
    from lerobot.policies.pi05 import modeling_pi05

    for m in (modeling_pi0, modeling_pi05):
        _patch(m)


def _patch(m) -> None:
    if getattr(m, "_reflex_tiny", False):
        return
    real_paligemma, real_expert = (
        m.PaliGemmaForConditionalGenerationWithPiGemma,
        m.PiGemmaForCausalLM,
    )

    def tiny_config(variant: str):
        if variant not in ("gemma_2b", "gemma_300m"):
            raise ValueError(f"Unknown variant: {variant}")
        return m.GemmaConfig(**(VLM if variant == "gemma_2b" else EXPERT))

    def tiny_paligemma(config):
        config._vocab_size = VOCAB  # what lerobot itself sets
        config.image_token_index = VOCAB - 1
        config.text_config.vocab_size = VOCAB
        for key, value in VISION.items():
            setattr(config.vision_config, key, value)
        config.vision_config.projection_dim = VLM["width"]
        return real_paligemma(config=config)

    def tiny_expert(config):
        config.vocab_size = VOCAB
        return real_expert(config=config)

    m.get_gemma_config = tiny_config
    m.PaliGemmaForConditionalGenerationWithPiGemma = tiny_paligemma
    m.PiGemmaForCausalLM = tiny_expert
    m._reflex_tiny = True


def prepare_reload(checkpoint: Path, hf_home: Path) -> bool:
    """Before loading `checkpoint`: if it is a tiny pi0 / pi0.5, patch, write the fake cache."""
    if not (checkpoint / MARKER).exists():
        return False
    write_fake_paligemma_cache(hf_home)
    patch_pi0_sizes()
    return True
