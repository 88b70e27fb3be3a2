"""``reflex train distill --state-out``: a pi0.5 student whose prefix does not see the state.

The teacher (an imported ``lerobot-pi05`` export) writes the state into its prompt, so
its prefix KV differs at every control step. The student
(:mod:`reflex_serve.lerobot_import.pi05_state_out`) keeps the teacher's frozen prefix
weights (prefix.onnx is the teacher's file: the graph is the same, only its token input
changes), tokenizes a prompt without the state, and takes the normalised padded state
as an explicit expert input (``state_input: "expert"``).

Training differs from a plain distillation only in the prefix inputs:

* the STUDENT's prefix features come from the state-free tokens
  (:attr:`StateOutStudent.prefix_inputs`), its expert gets the state;
* the TEACHER (trajectory objective) keeps its own state-in-prompt tokens
  (:meth:`reflex_serve.distill.data.DistillData.prefix_inputs`).

The flow-matching term (labels: the served chunks) and SnapFlow's consistency term (the
student's own velocities) need nothing else; the trajectory objective is the default
with ``--state-out`` (``reflex_serve.distill.cli``) because its target, the teacher's
10-step result from the same noise, carries the state's effect on every sample, while
the consistency target comes from a student that starts blind to the state.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass

import torch

from ..export.manifest import Manifest
from ..lerobot_import.imported import CheckpointError, ImportedFlowModel, ImportedPolicy
from ..lerobot_import.paligemma import PiArch
from ..lerobot_import.pi05_state_out import (
    PROVENANCE_KEY,
    from_teacher,
    provenance_entry,
    student_tokenizer,
)
from .data import DistillData, text_tokens
from .teacher import Teacher

FLAG = "--state-out"
TEACHER_KIND = "lerobot-pi05"


class StateOutError(ValueError):
    """``--state-out`` does not apply to this teacher or run; the message names the flag."""


@dataclass
class StateOutStudent:
    """The student at step 0 and its prefix inputs.

    Attributes:
        model: :class:`ImportedFlowModel` (prefix: a frozen copy of the teacher's; expert:
            :class:`Pi05StateOutExpert` with the teacher's weights), ``state_input`` "expert".
        prefix_inputs: images uint8 (N, C, H, W, 3), state-free tokens and token mask
            int64 (N, T), state float32 (N, max_state_dim): ``encode_prefix``'s inputs.
        tokenizer: the student's manifest tokenizer entry.
    """

    model: ImportedFlowModel
    prefix_inputs: tuple[torch.Tensor, ...]
    tokenizer: dict


def check_teacher(manifest: Manifest, train_prefix: bool = False) -> None:
    """Raises StateOutError (naming ``--state-out``) unless the teacher is an imported
    pi0.5 with its state in the prompt and the prefix stays frozen."""
    if manifest.policy_kind != TEACHER_KIND or manifest.state_input != "prompt":
        raise StateOutError(
            f"{FLAG} applies to an imported pi0.5 teacher ({TEACHER_KIND}, state in the prompt); "
            f"this teacher is {manifest.policy_kind!r} with state_input {manifest.state_input!r}"
        )
    if train_prefix:
        raise StateOutError(f"{FLAG} keeps the teacher's prefix frozen: drop --train-prefix")


def make_state_out_student(
    teacher: Teacher, data: DistillData, train_prefix: bool = False
) -> StateOutStudent:
    """The ``--state-out`` student of ``teacher`` and its prefix inputs for ``data``.

    Only the expert (its state embedding and phi included) requires gradients.

    Raises:
        StateOutError: not a pi0.5 teacher, ``train_prefix``, or data without instructions.
    """
    check_teacher(teacher.manifest, train_prefix)
    if data.instructions is None or data.token_mask is None:
        raise StateOutError(f"{FLAG}: the data carry no instructions to tokenize without the state")
    arch = PiArch.from_dict(teacher.manifest.provenance["architecture"])
    try:
        spec = student_tokenizer(teacher.manifest.tokenizer)
        expert = from_teacher(copy.deepcopy(teacher.model.expert), arch)
    except CheckpointError as exc:
        raise StateOutError(str(exc)) from None
    model = ImportedFlowModel(copy.deepcopy(teacher.model.prefix), expert, "expert")
    for name, p in model.named_parameters():
        p.requires_grad_(not name.startswith("prefix."))
    m = teacher.manifest
    tokens, mask = text_tokens(
        data.instructions, data.state.numpy(), spec, m.max_text_tokens, teacher.path
    )
    inputs = (data.images, torch.from_numpy(tokens), torch.from_numpy(mask), data.state)
    return StateOutStudent(model, inputs, spec)


def student_policy(policy: ImportedPolicy) -> ImportedPolicy:
    """The export description of a state-out student from its teacher's (``policy``:
    :func:`~reflex_serve.lerobot_import.imported.policy_from_export` with the student's
    modules): ``state_input`` "expert", the state-free tokenizer, and
    ``provenance["state_out"]`` so that registry.load_modules rebuilds the expert."""
    arch = PiArch.from_dict(policy.provenance["architecture"])
    entry = provenance_entry(arch, str(policy.tokenizer["template"]))
    return dataclasses.replace(
        policy,
        state_input="expert",
        tokenizer=student_tokenizer(policy.tokenizer),
        provenance={**policy.provenance, PROVENANCE_KEY: entry},
    )
