"""``reflex models derive TEACHER --num-steps N --output DIR``: a teacher@N candidate by hand.

Writes the export that the loop's candidate step gates as ``teacher@N``
(:func:`reflex_serve.loop.candidates.teacher_at_steps`): the teacher's files with a
manifest that asks for N Euler steps. Nothing is registered and no server is called;
``reflex gates run DIR --reference TEACHER`` gates it, ``reflex models register DIR``
hands it to a running server. Exit status: 0 written (or already there), 2 bad input,
with a message naming the argument.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

FLAGS = {"teacher": "TEACHER", "num_steps": "--num-steps", "output": "--output"}


def derive_cmd(
    teacher: Annotated[Path, typer.Argument(help="The teacher's export directory.")],
    num_steps: Annotated[
        int, typer.Option("--num-steps", help="Euler steps, below the teacher's own.")
    ],
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Export directory to write (new or empty).")
    ],
) -> None:
    """Make the teacher at fewer Euler steps a candidate export of its own (local, no training).

    Same graphs and weights (prefix cache shared), a new version whose parent is the
    teacher. Exit status: 0 written, 2 bad input.
    """
    from ..export.manifest import read_manifest
    from .candidates import CandidateError, teacher_at_steps

    try:
        out = teacher_at_steps(teacher, num_steps, output)
    except CandidateError as exc:
        typer.secho(f"error: {FLAGS[exc.field]}: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None
    m = read_manifest(out)
    parent = read_manifest(teacher)
    typer.echo(
        f"teacher@{m.num_steps}: version {m.version} in {out} "
        f"(teacher {parent.version} at {m.num_steps} of its {parent.num_steps} steps; "
        "prefix.onnx shared byte for byte)"
    )
