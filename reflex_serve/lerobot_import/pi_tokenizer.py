"""pi0 / pi0.5 text processing: the manifest's tokenizer entry, and tokenize() on it.

What LeRobot 0.6.1's pre-processors do (``pi0/processor_pi0.py``,
``pi05/processor_pi05.py``, ``processor/tokenizer_processor.py``), and the spec field
that reproduces it in the runtime's ``hf-tokenizers`` encoder
(:class:`reflex_serve.policy.hf_tokenizer.HFTokenizer`):

* pi0: ``Pi0NewLineProcessor`` appends "\\n" to the task unless it already ends with
  one (``task_suffix: "\\n"``, template ``"{task}"``).
* pi0.5: after the normaliser (QUANTILES, so the state is in about [-1, 1]),
  ``Pi05PrepareStateTokenizerProcessorStep`` cleans the task (``task.strip()``, "_" and
  "\\n" -> " ": ``task_clean: true``), discretises each state dimension with
  ``np.digitize(state, np.linspace(-1, 1, 257)[:-1]) - 1`` (``state_bins: 256``; values
  outside [-1, 1] give -1 or 255) and writes ``"Task: {task}, State: {state};\\nAction: "``
  (the bins joined by spaces). No newline step.
* both: the PaliGemma tokenizer (``google/paligemma-3b-pt-224``'s tokenizer.json, its own
  special tokens), truncation to ``tokenizer_max_length`` and right padding to that
  length with the pad token, attention mask 0 (``padding: "max_length"``, ``pad_id``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..policy.hf_tokenizer import KIND, HFTokenizer
from .imported import CheckpointError

PAD_TOKEN = "<pad>"
_PROMPTS = {  # kind -> fields of the spec that differ
    "pi0": {"template": "{task}", "task_suffix": "\n", "task_clean": False},
    "pi05": {
        "template": "Task: {task}, State: {state};\nAction: ",
        "task_suffix": "",
        "task_clean": True,
        "state_bins": 256,
    },
}


def tokenizer_spec(kind: str, tokenizer_file: Path, max_length: int) -> dict:
    """The manifest tokenizer entry of ``kind`` ("pi0" / "pi05") for ``tokenizer_file``.

    Raises CheckpointError if the file cannot be read or has no "<pad>" token.
    """
    from tokenizers import Tokenizer

    try:
        pad_id = Tokenizer.from_file(str(tokenizer_file)).token_to_id(PAD_TOKEN)
    except Exception as exc:  # tokenizers raises its own Exception type
        raise CheckpointError(f"tokenizer {tokenizer_file} unreadable: {exc}") from exc
    if pad_id is None:
        raise CheckpointError(f"tokenizer {tokenizer_file} has no {PAD_TOKEN} token")
    return {
        "kind": KIND,
        "file": "tokenizer.json",
        **_PROMPTS[kind],
        "padding": "max_length",
        "max_length": int(max_length),
        "pad_id": int(pad_id),
    }


def tokenize(spec: dict, tokenizer_file, instruction: str, normalised_state=None):
    """(tokens int64 (T,), mask int64 (T,)) as LeRobot's pi0 / pi0.5 pre-processor.

    spec: a :func:`tokenizer_spec` entry; tokenizer_file: the tokenizer.json it stands
    for (any path); normalised_state: float32 (state_dim,) after the policy's
    normalisation, needed when the template holds ``{state}`` (pi0.5). Raises
    ValueError (missing file, or a state-dependent prompt without a state).
    """
    path = Path(tokenizer_file)
    encoder = HFTokenizer({**spec, "file": path.name}, int(spec["max_length"]), path.parent)
    state = None if normalised_state is None else np.asarray(normalised_state, np.float32)
    return encoder.encode(instruction, state)
