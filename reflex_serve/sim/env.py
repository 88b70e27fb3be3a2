"""A deterministic, rendering MetaWorld environment that speaks :class:`Observation`.

Episode randomisation. MetaWorld v3 draws the object / goal positions of an episode
from a per-environment "rand_vec" (``_random_reset_space``); ``MT1(name, seed=s)``
precomputes only 50 of them. :class:`SimEnv` instead uses MetaWorld's own seeded path
(``seeded_rand_vec = True``, ``_freeze_rand_vec = False``): at ``reset(seed)`` the
environment's ``np_random`` is seeded from ``(task, seed)`` and the environment samples
its rand_vec itself, including the rejection loops some tasks run (e.g. push / reach /
pick-place resample until goal and object are >= 15 cm apart). One MuJoCo model per
:class:`SimEnv` is reused across episodes, so a reset costs about 6 ms, and an episode is a
pure function of ``(task, seed)``: the same seed gives bit-identical states and images,
distinct seeds give distinct layouts, without any limit on the number of layouts.

Rendering. Images come from a ``mujoco.Renderer`` owned by the environment (all
cameras share it), with shadows and multisampling off (about 110 frames/s at 64 x 64 on
one core instead of about 7). MetaWorld's ``corner*`` cameras are mounted rolled by
180 degrees; their images are rotated back by 180 degrees (a vertical *and* horizontal
flip, which is what a real upside-down camera needs: a vertical flip alone would mirror
the scene) so that the table is at the bottom and the robot base on the left of
``corner2``. Call :meth:`SimEnv.close` (or use ``with``) to free the EGL context; any
environment still open at interpreter exit is closed by an ``atexit`` hook so that no
EGL errors are printed.
"""

from __future__ import annotations

import atexit
import os
import pickle
import warnings
import weakref
import zlib
from typing import Any, Self

os.environ.setdefault("MUJOCO_GL", "egl")

import mujoco
import numpy as np
from metaworld import _env_dict
from metaworld.types import Task

from reflex_serve.runtime.types import Observation
from reflex_serve.sim.tasks import TaskSpec, get_task

CAMERAS: tuple[str, ...] = (
    "topview",
    "corner",
    "corner2",
    "corner3",
    "corner4",
    "behindGripper",
    "gripperPOV",
)
"""Camera names defined by the MetaWorld Sawyer model."""

ROTATED_CAMERAS = frozenset({"corner", "corner2", "corner3", "corner4"})
"""Cameras whose raw render is upside down (rotated by 180 degrees)."""

STATE_DIMS: dict[str, int] = {"full": 39, "proprio": 4}
"""State size per ``state_mode``: the full MetaWorld observation, or hand xyz + gripper."""

ACTION_DIM = 4
"""Actions: hand xyz displacement (scaled by 1/100 m per unit) and gripper effort, in [-1, 1]."""

MAX_IMAGE_SIDE = 1024


class InvalidAction(ValueError):
    """An action is not a finite vector of :data:`ACTION_DIM` floats."""


def parse_image_size(size: int | tuple[int, int] | list[int] | str) -> tuple[int, int]:
    """Normalise an image size to ``(height, width)`` in pixels.

    Accepts an int (square), a ``(h, w)`` pair, or a string ``"64"`` / ``"64x48"`` (h x w).

    Raises:
        ValueError: if not parseable or a side is outside [8, 1024].
    """
    if isinstance(size, str):
        parts = size.lower().replace(",", "x").split("x")
        try:
            vals = [int(p) for p in parts]
        except ValueError:
            raise ValueError(f"image size {size!r} is not 'N' or 'HxW'") from None
        size = vals[0] if len(vals) == 1 else tuple(vals)  # type: ignore[assignment]
    if isinstance(size, (int, np.integer)):
        hw = (int(size), int(size))
    else:
        hw = tuple(int(v) for v in size)  # type: ignore[assignment]
        if len(hw) != 2:
            raise ValueError(f"image size {size!r} must be one int or (height, width)")
    if not all(8 <= v <= MAX_IMAGE_SIDE for v in hw):
        raise ValueError(
            f"image size {hw} out of range: each side must be in [8, {MAX_IMAGE_SIDE}]"
        )
    return hw  # type: ignore[return-value]


def validate_cameras(cameras: str | tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """Normalise a camera selection (comma string or sequence) to a tuple of names.

    Raises:
        ValueError: if empty, duplicated, or naming an unknown camera.
    """
    if isinstance(cameras, str):
        cameras = [c for c in cameras.split(",")]
    cams = tuple(c.strip() for c in cameras if c.strip())
    if not cams:
        raise ValueError("at least one camera is required")
    for c in cams:
        if c not in CAMERAS:
            raise ValueError(f"unknown camera {c!r}; MetaWorld cameras: {', '.join(CAMERAS)}")
    if len(set(cams)) != len(cams):
        raise ValueError(f"duplicate camera in {cams}")
    return cams


def episode_rng_seed(task: str, seed: int) -> int:
    """The 32-bit seed of the environment RNG for episode ``seed`` of ``task``.

    Mixing the task name in decorrelates layouts of the same seed across tasks.
    """
    ss = np.random.SeedSequence([int(seed), zlib.crc32(task.encode())])
    return int(ss.generate_state(1)[0])


def episode_instruction(spec: TaskSpec, seed: int) -> str:
    """The instruction paraphrase of episode ``seed``: a deterministic uniform draw."""
    rng = np.random.default_rng([int(seed), zlib.crc32(spec.name.encode()), 7])
    return spec.instructions[int(rng.integers(len(spec.instructions)))]


_OPEN_ENVS: weakref.WeakSet[SimEnv] = weakref.WeakSet()
_ATEXIT_REGISTERED = False


def _close_open_envs() -> None:
    for env in list(_OPEN_ENVS):
        env.close()


def _register_atexit() -> None:
    # mujoco.egl registers eglTerminate when the first GL context is created; atexit
    # runs hooks last-in first-out, so ours must be registered after that one, i.e.
    # after the first renderer exists, to close contexts while the display is alive.
    global _ATEXIT_REGISTERED
    if not _ATEXIT_REGISTERED:
        atexit.register(_close_open_envs)
        _ATEXIT_REGISTERED = True


class SimEnv:
    """One MetaWorld task with deterministic episodes, rendered cameras and a time limit.

    Args:
        task: registered task name (see :mod:`reflex_serve.sim.tasks`).
        cameras: MetaWorld camera names to render, in order.
        image_size: ``int`` (square) or ``(height, width)`` in pixels, same for all cameras.
        state_mode: ``"full"`` (39-d MetaWorld observation: hand xyz, gripper opening,
            object poses, previous frame, goal) or ``"proprio"`` (first 4 dims: hand
            xyz in m and gripper opening).
        max_steps: episode horizon; default the task's ``max_steps`` (at most 500).

    Raises:
        KeyError: unknown task. ValueError: bad cameras, image size, state mode or
        max_steps.

    Use as a context manager or call :meth:`close` to free the renderer.
    """

    def __init__(
        self,
        task: str,
        cameras: tuple[str, ...] | list[str] = ("corner2",),
        image_size: int | tuple[int, int] = 64,
        state_mode: str = "full",
        max_steps: int | None = None,
    ) -> None:
        self.spec: TaskSpec = get_task(task)
        self.cameras = validate_cameras(cameras)
        self.image_size = parse_image_size(image_size)
        if state_mode not in STATE_DIMS:
            raise ValueError(f"state_mode must be one of {sorted(STATE_DIMS)}, got {state_mode!r}")
        self.state_mode = state_mode
        self.max_steps = int(max_steps if max_steps is not None else self.spec.max_steps)
        if not 1 <= self.max_steps <= 500:
            raise ValueError(f"max_steps must be in [1, 500], got {self.max_steps}")
        h, w = self.image_size
        cls = _env_dict.ALL_V3_ENVIRONMENTS[self.spec.name]
        self._env: Any = cls(width=max(w, 64), height=max(h, 64))
        self._env.model.vis.quality.shadowsize = 0
        self._env.model.vis.quality.offsamples = 0
        self._env.max_path_length = self.max_steps
        kwargs = dict(_env_dict.ML1_ARGS_KWARGS[self.spec.name]["kwargs"])
        kwargs.pop("task_id", None)
        kwargs.update(
            rand_vec=np.zeros(self._env._random_reset_space.shape),
            env_cls=cls,
            partially_observable=False,  # the goal is part of the 39-d observation
        )
        self._env.set_task(Task(env_name=self.spec.name, data=pickle.dumps(kwargs)))
        # MetaWorld's seeded sampling of object / goal positions (see module docstring).
        self._env._freeze_rand_vec = False
        self._env.seeded_rand_vec = True
        self._renderer: mujoco.Renderer | None = mujoco.Renderer(self._env.model, h, w)
        self._expert: Any = None
        self._raw: np.ndarray | None = None
        self.episode_seed: int | None = None
        self.instruction: str = ""
        self.step_count = 0
        self.success = False
        self._done = True
        self._closed = False
        _OPEN_ENVS.add(self)
        _register_atexit()

    # ------------------------------------------------------------------ properties
    @property
    def task(self) -> str:
        """The task name."""
        return self.spec.name

    @property
    def state_dim(self) -> int:
        """Size S of ``Observation.state``."""
        return STATE_DIMS[self.state_mode]

    @property
    def action_dim(self) -> int:
        """Size of an action (4)."""
        return ACTION_DIM

    @property
    def raw_obs(self) -> np.ndarray:
        """The current 39-d MetaWorld observation, float64 copy (what experts consume).

        Raises:
            RuntimeError: before the first :meth:`reset`.
        """
        if self._raw is None:
            raise RuntimeError("call reset() first")
        return self._raw.copy()

    @property
    def object_positions(self) -> np.ndarray:
        """The sampled layout of the current episode (``_last_rand_vec``), float64."""
        return np.array(self._env._last_rand_vec, dtype=np.float64)

    # ------------------------------------------------------------------ episode API
    def reset(self, seed: int, instruction: str | None = None) -> Observation:
        """Start episode ``seed`` (int >= 0); returns its first observation.

        Args:
            seed: episode seed; the layout and the default instruction depend only on
                ``(task, seed)``.
            instruction: override the paraphrase drawn from the seed.

        Raises:
            ValueError: negative seed. RuntimeError: environment closed.
        """
        self._check_open()
        seed = int(seed)
        if seed < 0:
            raise ValueError(f"episode seed must be >= 0, got {seed}")
        self._env.seed(episode_rng_seed(self.spec.name, seed))
        self._env._did_see_sim_exception = False
        raw, _ = self._env.reset()
        self._raw = np.asarray(raw, dtype=np.float64)
        self.episode_seed = seed
        self.instruction = (
            instruction if instruction is not None else episode_instruction(self.spec, seed)
        )
        self.step_count = 0
        self.success = False
        self._done = False
        return self.observation()

    def step(self, action: np.ndarray) -> tuple[Observation, bool, bool]:
        """Apply one action (clipped to [-1, 1]).

        Args:
            action: array-like of shape (4,): hand dx, dy, dz and gripper effort.

        Returns:
            ``(obs, success, done)``: ``success`` is MetaWorld's success flag after this
            step (episodes are not ended by success: the caller decides); ``done`` is
            true once ``max_steps`` steps have been taken.

        Raises:
            InvalidAction: wrong shape or non-finite values. RuntimeError: no episode
            in progress (not reset, or time limit reached).
        """
        self._check_open()
        if self._done:
            raise RuntimeError("episode is over (time limit reached or not started); call reset()")
        a = np.asarray(action, dtype=np.float32).reshape(-1)
        if a.shape != (ACTION_DIM,):
            raise InvalidAction(f"action must have shape ({ACTION_DIM},), got {np.shape(action)}")
        if not np.all(np.isfinite(a)):
            raise InvalidAction(f"action has non-finite values: {a.tolist()}")
        a = np.clip(a, -1.0, 1.0)
        raw, _, _, _, info = self._env.step(a)
        self._raw = np.asarray(raw, dtype=np.float64)
        self.step_count += 1
        self.success = bool(info["success"])
        self._done = self.step_count >= self.max_steps
        return self.observation(), self.success, self._done

    def expert_action(self) -> np.ndarray:
        """The scripted expert's action for the current state: float32 (4,), in [-1, 1]."""
        if self._expert is None:
            self._expert = self.spec.make_expert()
        with warnings.catch_warnings():
            # MetaWorld's experts warn when an action exceeds [-1, 1]; it is clipped here.
            warnings.filterwarnings("ignore", message=r"Constant\(s\) may be too high")
            a = self._expert.get_action(self.raw_obs)
        return np.clip(np.asarray(a, dtype=np.float32), -1.0, 1.0)

    def state(self) -> np.ndarray:
        """The current state vector: float32 (state_dim,)."""
        return self.raw_obs[: self.state_dim].astype(np.float32)

    def render(self) -> dict[str, np.ndarray]:
        """Render every camera: name -> upright uint8 array (H, W, 3), C-contiguous."""
        self._check_open()
        assert self._renderer is not None
        out: dict[str, np.ndarray] = {}
        for cam in self.cameras:
            self._renderer.update_scene(self._env.data, camera=cam)
            img = self._renderer.render()
            if cam in ROTATED_CAMERAS:
                img = img[::-1, ::-1]
            out[cam] = np.ascontiguousarray(img)
        return out

    def render_raw(self, camera: str) -> np.ndarray:
        """Render one camera as MuJoCo returns it (no orientation fix); for tests."""
        self._check_open()
        assert self._renderer is not None
        self._renderer.update_scene(self._env.data, camera=camera)
        return self._renderer.render().copy()

    def observation(self) -> Observation:
        """The current :class:`Observation` (images rendered now, state, instruction)."""
        return Observation(images=self.render(), state=self.state(), instruction=self.instruction)

    # ------------------------------------------------------------------ lifecycle
    def close(self) -> None:
        """Free the renderer (EGL context) and the MetaWorld environment. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None
        self._env.close()
        _OPEN_ENVS.discard(self)

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("SimEnv is closed")

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"SimEnv({self.spec.name!r}, cameras={self.cameras}, image_size={self.image_size}, "
            f"state_mode={self.state_mode!r}, max_steps={self.max_steps})"
        )
