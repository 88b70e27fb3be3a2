"""MetaWorld simulation: environments, scripted-expert demos, closed-loop evaluation.

Modules:
    tasks     the task registry (expert, instruction paraphrases, horizon)
    env       :class:`SimEnv`, a deterministic, rendering MetaWorld wrapper
    dataset   the ``reflex-demos`` directory format (``meta.json`` + one npz per task)
    collect   scripted-expert demonstration collection
    evaluate  closed-loop evaluation of any ``act`` client, :class:`EvalReport`
    cli       the ``reflex sim`` typer sub-app

Headless rendering uses EGL unless ``MUJOCO_GL`` is already set; this must happen
before mujoco is imported, hence here.
"""

import os

os.environ.setdefault("MUJOCO_GL", "egl")
