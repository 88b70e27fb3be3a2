"""LeRobot's text processing on a Hugging Face ``tokenizer.json``, with the `tokenizers` package.

The manifest's tokenizer entry of kind ``hf-tokenizers`` describes the prompt and its
padding; the file it names lies in the export directory (and is covered by the digest)::

    {"kind": "hf-tokenizers", "file": "tokenizer.json", "template": "{task}",
     "task_suffix": "\\n", "padding": "max_length", "max_length": 48, "pad_id": 2}

* ``task_clean``: strip the instruction and turn "_" and newlines into spaces (pi0.5).
* ``task_suffix``: appended unless the instruction already ends with it (SmolVLA's
  NewLineTaskProcessorStep appends "\\n").
* ``template``: the prompt, with ``{task}`` and optionally ``{state}``: the normalised
  state discretised into ``state_bins`` bins over [-1, 1] and joined by spaces (pi0.5's
  "Task: {task}, State: {state};\\nAction: "). A template with ``{state}`` makes the
  tokens depend on the state (:attr:`HFTokenizer.uses_state`).
* the tokenizer's own special tokens (its post-processor), truncation to ``max_length``
  and right padding with ``pad_id`` (mask 0), as transformers' fast tokenizer does with
  ``padding="max_length"``, ``truncation=True``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

KIND = "hf-tokenizers"


def discretize_state(state: np.ndarray, bins: int) -> str:
    """pi0.5's state text: ``digitize(state, linspace(-1, 1, bins + 1)[:-1]) - 1``, space-joined."""
    edges = np.linspace(-1, 1, bins + 1)[:-1]
    return " ".join(str(int(v)) for v in np.digitize(np.asarray(state, np.float64), bins=edges) - 1)


class HFTokenizer:
    """Prompt formatting + a ``tokenizers.Tokenizer`` loaded from the export.

    Args:
        spec: the manifest's tokenizer entry (module docstring).
        max_tokens: T, the prefix graph's token length.
        directory: the export directory holding ``spec["file"]``.

    Raises:
        ValueError: if the file is missing or the spec is malformed.
    """

    def __init__(self, spec: dict[str, Any], max_tokens: int, directory: Path) -> None:
        from tokenizers import Tokenizer  # a serving dependency, imported where it is needed

        path = Path(directory) / spec.get("file", "tokenizer.json")
        if not path.is_file():
            raise ValueError(f"tokenizer file {path} is missing")
        if spec.get("padding", "max_length") != "max_length":
            raise ValueError(f"tokenizer padding {spec.get('padding')!r}: only max_length is supported")
        self.max_tokens = int(spec.get("max_length", max_tokens))
        self.template = str(spec.get("template", "{task}"))
        self.task_suffix = str(spec.get("task_suffix", ""))
        self.task_clean = bool(spec.get("task_clean", False))
        self.state_bins = int(spec.get("state_bins", 256))
        self.pad_id = int(spec.get("pad_id", 0))
        self.uses_state = "{state}" in self.template
        self._tok = Tokenizer.from_file(str(path))
        self._tok.no_padding()
        self._tok.enable_truncation(max_length=self.max_tokens)

    def prompt(self, instruction: str, state: np.ndarray | None = None) -> str:
        """The text handed to the tokenizer. Raises ValueError if the template needs a state."""
        task = instruction
        if self.task_clean:
            task = task.strip().replace("_", " ").replace("\n", " ")
        if self.task_suffix and not task.endswith(self.task_suffix):
            task += self.task_suffix
        if not self.uses_state:
            return self.template.format(task=task)
        if state is None:
            raise ValueError("this tokenizer's prompt holds the state: pass the normalised state")
        return self.template.format(task=task, state=discretize_state(state, self.state_bins))

    def encode(self, instruction: str, state: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(tokens int64 (T,), mask int64 (T,)): right-padded with ``pad_id`` / 0."""
        ids = self._tok.encode(self.prompt(instruction, state)).ids[: self.max_tokens]
        tokens = np.full(self.max_tokens, self.pad_id, dtype=np.int64)
        mask = np.zeros(self.max_tokens, dtype=np.int64)
        tokens[: len(ids)] = ids
        mask[: len(ids)] = 1
        return tokens, mask
