"""Shared fixtures: real export directories built once per session."""

from __future__ import annotations

import os

os.environ.setdefault("MUJOCO_GL", "egl")

import pytest

from reflex_serve.export.tiny import make_tiny_export


@pytest.fixture(scope="session")
def tiny_export(tmp_path_factory):
    """An untrained but real export (ONNX graphs, weights, stats, manifest), 39-d state."""
    return make_tiny_export(tmp_path_factory.mktemp("exports") / "tiny")
