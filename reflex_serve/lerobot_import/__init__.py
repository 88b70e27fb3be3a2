"""Importing LeRobot pi0 / pi0.5 / SmolVLA checkpoints (docs/lerobot.md).

LeRobot 0.6.1 needs Python >= 3.12 and torch < 2.12, the project runs on 3.11 with
torch 2.13, and serving an imported export must not need LeRobot at all. So LeRobot
lives in its own virtual environment (scripts/lerobot_venv.sh -> .venv-lerobot), and
the code split is strict:

- `reflex_serve.lerobot_import.venv` (this interpreter, numpy + stdlib only): finds the
  venv and runs the scripts of `in_venv/` in it as subprocesses, exchanging .npz / JSON.
- `reflex_serve/lerobot_import/in_venv/*.py` (the venv's interpreter only): scripts that
  import torch 2.11 / transformers 5 / lerobot. They are never imported from here (the
  folder has no `__init__.py`; tests/test_lerobot_venv.py checks that nothing else in
  the package imports lerobot or transformers).
"""
