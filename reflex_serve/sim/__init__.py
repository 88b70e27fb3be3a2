"""MetaWorld simulation: environments, scripted-expert demos, closed-loop evaluation.

Modules:
    tasks     the task registry (expert, instruction paraphrases, horizon)
    env       :class:`SimEnv`, a deterministic, rendering MetaWorld wrapper
    dataset   the ``reflex-demos`` directory format (``meta.json`` + one npz per task)
    collect   scripted-expert demonstration collection
    bimodal   mirrored left / right wall detours (the bimodal suite) and the mode draw
    evaluate  closed-loop evaluation of any ``act`` client, :class:`EvalReport`
    probe     decision-point probe: share of samples committing to a detour
    cli       the ``reflex sim`` typer sub-app

Headless rendering uses EGL unless ``MUJOCO_GL`` is already set; this must happen
before mujoco is imported, hence here.
"""

import os

os.environ.setdefault("MUJOCO_GL", "egl")
