"""Bimodal demonstrations: two mirrored scripted detours around MetaWorld's wall.

Why. One Euler step from t = 1 returns about the conditional mean action; on demos with
a single mode that mean is right. Here every episode goes around a wall either on the
left or on the right, so at the decision point the demonstrated action is bimodal
(hand dx = -1 or +1) and its mean (dx ~ 0) drives the hand straight into the wall.

The tasks. ``reach-wall-v3`` and ``pick-place-wall-v3`` share one layout: the hand starts
at (0, 0.60, 0.20) m, the object on the table at x in [-0.05, 0.05], y in [0.60, 0.65],
the goal behind the wall at x in [-0.05, 0.05], y in [0.85, 0.90], z in [0.05, 0.30].
The wall is a box x in [-0.02, 0.22], y in [0.74, 0.76], z in [0, 0.12]. The observed
hand position is the hand body; the colliding finger boxes reach +-0.018 m in x,
+-0.054 m in y and +-0.045 m in z around it (the tool centre is 0.045 m below it).

MetaWorld's experts go OVER the wall: ``SawyerReachWallV3Policy`` aims at the goal
lifted by 1 m while the hand is in front of the wall (x in [-0.1, 0.3], y in [0.6, 0.8],
z < 0.25), i.e. from the start it rises to about z = 0.27 while moving forward;
``SawyerPickPlaceWallV3Policy`` grasps the puck, lifts straight up to z >= 0.25, moves
above the goal at that height, then descends. Over has no mirror image (under is the
table), and the mean of "over" and "around" still clears the wall, so the suite uses
two side detours instead, which are exact mirrors in the action that decides:

* shared part (identical for both modes): reach-wall: move to (x, 0.65, 0.10) (lower the
  hand to the cruise height, below the wall top for the fingers); pick-place-wall:
  MetaWorld's own grasp (above the puck, descend, close), then lift to z = 0.12.
* the decision (first observation outside the shared part): move sideways at cruise
  height to x = -0.12 (``left``, mode 0) or x = +0.30 (``right``, mode 1); from any start
  x in [-0.055, 0.05] the first decision action is dx = -1 or +1 exactly (clipped), the
  other components are the same in both modes.
* pass the wall at that x to y = 0.85, then go to the goal (reach: tool centre on the
  goal; pick-place: the puck, held 0.04 m below the hand, on the goal).

Each strategy is a Markov function of the 39-d observation (like MetaWorld's experts),
so a policy can imitate it from observations; which one an episode uses is drawn from
the episode seed (:func:`episode_mode`).

Measured on 100 seeds per strategy (0-49 and 1,000,000-1,000,049; horizon 200; success
is MetaWorld's flag; no wall contact in any episode; steps to success median / max):
reach-wall left 100/100 (68 / 80), right 100/100 (107 / 112); pick-place-wall left
100/100 (94 / 114), right 100/100 (132 / 147). MetaWorld's over-the-wall experts take
44 / 62 and 82 / 114 steps (seeds 0-19). Driving with the mean of the two strategies'
actions succeeds 0/10 on both tasks: the hand stops at the decision point.
"""

from __future__ import annotations

import warnings
import zlib
from typing import Any

import numpy as np

from reflex_serve.sim.tasks import BIMODAL_TASKS

MODES: tuple[str, str] = ("left", "right")
"""Mode names; the index is the mode id stored in ``episode_mode`` (0 left, 1 right)."""

NO_MODE = -1
"""``episode_mode`` of an episode demonstrated by a single-strategy expert."""

MODE_CHOICES: tuple[str, ...] = ("mixed", *MODES)
"""Values of ``--mode``: a per-episode random mix, or one strategy forced."""

X_PASS: dict[str, float] = {"left": -0.12, "right": 0.30}
"""Hand x (m) at which a detour passes the wall (wall x in [-0.02, 0.22])."""

Y_PRE = 0.65
"""Hand y (m) of the shared approach of reach-wall (fingers stay clear of the wall)."""

Y_CLEAR = 0.83
"""Hand y (m) beyond which the fingers are past the wall (wall back face 0.76 + 0.054)."""

Z_CRUISE: dict[str, float] = {"reach-wall-v3": 0.10, "pick-place-wall-v3": 0.12}
"""Hand z (m) of the detour: low enough that fingers (and puck) would hit the wall."""

TOL = 0.015
"""Position tolerance (m) of the phase switches."""

GAIN = 20.0
"""Proportional gain: action = GAIN * (target - hand), then clipped to [-1, 1]."""

TCP_OFFSET = 0.045
"""The tool centre (success point of reach) is this far below the observed hand (m)."""

CARRY_OFFSET = 0.04
"""Hand height above the goal when placing a held puck (m)."""


def mode_id(mode: str | int) -> int:
    """Mode name or id -> id (0 left, 1 right).

    Raises:
        ValueError: unknown mode.
    """
    if isinstance(mode, (int, np.integer)) and int(mode) in (0, 1):
        return int(mode)
    if mode in MODES:
        return MODES.index(str(mode))
    raise ValueError(f"mode must be one of {MODES} or 0 / 1, got {mode!r}")


def episode_mode(task: str, seed: int) -> int:
    """The mode of episode ``seed`` of ``task`` in a mixed collection: 0 or 1.

    A deterministic fair coin on ``(task, seed)``, independent of the layout and of the
    instruction draw.
    """
    rng = np.random.default_rng([int(seed), zlib.crc32(task.encode()), 11])
    return int(rng.integers(2))


def resolve_mode(task: str, seed: int, mode: str = "mixed") -> int:
    """The mode id an episode uses: drawn from the seed (``"mixed"``) or forced.

    Raises:
        ValueError: unknown mode.
    """
    if mode == "mixed":
        return episode_mode(task, seed)
    return mode_id(mode)


def _move(hand: np.ndarray, target: np.ndarray) -> np.ndarray:
    return np.clip(GAIN * (np.asarray(target) - hand), -1.0, 1.0)


class WallDetourStrategy:
    """A scripted expert that goes around the wall on one side.

    Args:
        task: one of :data:`~reflex_serve.sim.tasks.BIMODAL_TASKS`.
        mode: ``"left"`` / ``"right"`` or 0 / 1.

    Attributes:
        task, mode (int), side (str), x_pass (m), z_cruise (m).

    Raises:
        ValueError: not a bimodal task, or unknown mode.
    """

    def __init__(self, task: str, mode: str | int) -> None:
        if task not in BIMODAL_TASKS:
            raise ValueError(f"{task!r} is not a bimodal task ({', '.join(BIMODAL_TASKS)})")
        self.task = task
        self.mode = mode_id(mode)
        self.side = MODES[self.mode]
        self.x_pass = X_PASS[self.side]
        self.z_cruise = Z_CRUISE[task]
        self._pick = task == "pick-place-wall-v3"

    # ------------------------------------------------------------------ phases
    def phase(self, obs: np.ndarray) -> str:
        """The controller phase at a 39-d observation.

        Shared phases (same action in both modes): ``"approach"`` (reach-wall),
        ``"grasp"`` / ``"lift"`` (pick-place-wall). Mode phases: ``"detour"`` (sideways:
        the decision), ``"pass"`` (beside the wall), ``"goal"`` (past the wall).
        """
        hand = obs[:3]
        if self._pick:
            puck = obs[4:7]
            on_table = puck[2] < 0.03
            near_xy = np.linalg.norm(hand[:2] - puck[:2] - [-0.005, 0.0]) <= TOL
            if on_table and (not near_xy or hand[2] - puck[2] > 0.04):
                return "grasp"
        if hand[1] >= Y_CLEAR:
            return "goal"
        beside = hand[0] <= self.x_pass + TOL if self.mode == 0 else hand[0] >= self.x_pass - TOL
        if beside:
            return "pass"
        if self._pick:
            if hand[2] < self.z_cruise - TOL:
                return "lift"
        elif abs(hand[2] - self.z_cruise) > TOL or hand[1] < Y_PRE - TOL:
            return "approach"
        return "detour"

    def decided(self, obs: np.ndarray) -> bool:
        """Whether the observation is past the shared part (the mode shows in the action)."""
        return self.phase(obs) in ("detour", "pass", "goal")

    # ------------------------------------------------------------------ actions
    def get_action(self, obs: np.ndarray) -> np.ndarray:
        """The action for a 39-d MetaWorld observation.

        Args:
            obs: float array (39,): hand xyz (m), gripper, object pose, ..., goal xyz.

        Returns:
            float32 (4,) in [-1, 1]: hand dx, dy, dz (1/100 m per unit) and grip effort.
        """
        obs = np.asarray(obs, dtype=np.float64)
        hand, puck, goal = obs[:3], obs[4:7], obs[-3:]
        phase = self.phase(obs)
        if phase == "grasp":
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=r"Constant\(s\) may be too high")
                action = self._expert().get_action(obs)
            return np.clip(np.asarray(action, dtype=np.float32), -1.0, 1.0)
        x, y, _ = hand
        z = self.z_cruise
        if phase == "approach":
            target = np.array([x, Y_PRE, z])
        elif phase == "lift":
            target = np.array([x, y, z])
        elif phase == "detour":
            target = np.array([self.x_pass, y, z])
        elif phase == "pass":
            target = np.array([self.x_pass, Y_CLEAR + 0.02, z])
        else:
            target = goal + [0.0, 0.0, CARRY_OFFSET if self._pick else TCP_OFFSET]
        grip = self._grip(hand, puck) if self._pick else 0.0
        return np.append(_move(hand, target), grip).astype(np.float32)

    @staticmethod
    def _grip(hand: np.ndarray, puck: np.ndarray) -> float:
        far = np.linalg.norm(hand[:2] - puck[:2]) > TOL or abs(hand[2] - puck[2]) > 0.1
        return 0.0 if far else 0.9

    def _expert(self) -> Any:
        if not hasattr(self, "_mw"):
            from metaworld.policies import SawyerPickPlaceWallV3Policy

            self._mw = SawyerPickPlaceWallV3Policy()
        return self._mw

    def __repr__(self) -> str:
        return f"WallDetourStrategy({self.task!r}, {self.side!r})"


def make_strategy(task: str, mode: str | int) -> WallDetourStrategy:
    """The detour strategy of ``task`` for ``mode`` (see :class:`WallDetourStrategy`)."""
    return WallDetourStrategy(task, mode)
