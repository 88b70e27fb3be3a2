"""Files shipped with the package: the small MetaWorld teacher export."""

from __future__ import annotations

from pathlib import Path

ASSETS = Path(__file__).parent
TEACHER = "teacher-metaworld"


def default_teacher() -> Path:
    """The shipped teacher's export directory.

    Raises:
        FileNotFoundError: if the package was installed without its assets.
    """
    path = ASSETS / TEACHER
    if not (path / "manifest.json").is_file():
        raise FileNotFoundError(f"the shipped teacher is missing at {path}")
    return path
