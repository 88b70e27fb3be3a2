"""The LeRobot boundary: the project never imports LeRobot; a missing venv is a clear error.

These run in the project's own interpreter and need no LeRobot venv.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import reflex_serve
from reflex_serve.lerobot_import import venv

PACKAGE = Path(reflex_serve.__file__).resolve().parent
VENV_ONLY = ("lerobot", "transformers")


def imported_roots(path: Path) -> set[str]:
    """Top-level module names a Python file imports (absolute imports only)."""
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


def test_only_in_venv_scripts_import_lerobot():
    offenders, venv_side = [], {}
    for path in sorted(PACKAGE.rglob("*.py")):
        roots = imported_roots(path) & set(VENV_ONLY)
        if path.parent == venv.IN_VENV_DIR:
            venv_side[path.name] = roots
        elif roots:
            offenders.append(f"{path.relative_to(PACKAGE)} imports {sorted(roots)}")
    assert offenders == []
    # the venv side really is where LeRobot is used, and it is not an importable package
    assert {"offline.py", "reference.py", "tiny.py"} <= set(venv_side)
    assert "lerobot" in venv_side["tiny.py"] and "lerobot" in venv_side["reference.py"]
    assert not (venv.IN_VENV_DIR / "__init__.py").exists()


def test_missing_venv_names_the_setup_script(monkeypatch, tmp_path):
    monkeypatch.setenv("LEROBOT_VENV", str(tmp_path / "nowhere"))
    assert venv.venv_dir() == tmp_path / "nowhere"
    with pytest.raises(venv.LeRobotVenvMissing) as info:
        venv.build_tiny("smolvla", tmp_path / "ckpt")
    message = str(info.value)
    assert "scripts/lerobot_venv.sh" in message and str(tmp_path / "nowhere") in message
    assert not (tmp_path / "ckpt").exists()


def test_unknown_script_is_refused_before_any_process():
    with pytest.raises(FileNotFoundError, match="no LeRobot-side script .*missing.py"):
        venv.run_script("missing.py")
