"""Registry of the MetaWorld tasks the simulator knows: expert, instructions, horizon.

Each :class:`TaskSpec` names a MetaWorld v3 environment, its scripted expert
(``metaworld.policies.Sawyer<Task>V3Policy``), several natural-language paraphrases
of the instruction (one is drawn per episode) and the episode horizon.

Horizons were measured with the scripted experts over 400 seeded episodes per task
(first step at which ``info["success"]`` is true; median / max):

    reach-v3 48 / 89, push-v3 62 / 210 (99th percentile 74), pick-place-v3 53 / 63,
    button-press-v3 60 / 64, drawer-open-v3 88 / 93, door-open-v3 79 / 121
    (door-open: 11 of 400 expert episodes never succeed within 500 steps).

The bimodal wall tasks are demonstrated by the two detours of :mod:`.bimodal` (left /
right around the wall; 100 seeds per strategy, max steps to success): reach-wall-v3
80 / 112, pick-place-wall-v3 114 / 147.

``max_steps`` leaves headroom above the expert maxima for slower learned policies while
keeping evaluation short. To add a task, add one entry to :data:`TASKS`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

DEFAULT_TASKS: tuple[str, ...] = (
    "reach-v3",
    "push-v3",
    "pick-place-v3",
    "button-press-v3",
    "drawer-open-v3",
    "door-open-v3",
)
"""The six tasks collected and evaluated by default."""

BIMODAL_TASKS: tuple[str, ...] = ("reach-wall-v3", "pick-place-wall-v3")
"""Tasks with a wall between start and goal, demonstrated by two mirrored detours
(left / right of the wall, chosen per episode); see :mod:`reflex_serve.sim.bimodal`."""

SUITES: dict[str, tuple[str, ...]] = {"default": DEFAULT_TASKS, "bimodal": BIMODAL_TASKS}
"""Named task selections (``reflex sim collect --suite``)."""


@dataclass(frozen=True)
class TaskSpec:
    """One simulator task.

    Attributes:
        name: MetaWorld v3 environment name, e.g. ``"push-v3"``.
        expert: class name in ``metaworld.policies`` of the scripted expert.
        instructions: natural-language paraphrases (>= 4); one is drawn per episode.
        max_steps: episode horizon in environment steps (one action per step).
    """

    name: str
    expert: str
    instructions: tuple[str, ...]
    max_steps: int

    def make_expert(self) -> Any:
        """Instantiate the scripted expert.

        Returns:
            An object with ``get_action(obs39: np.ndarray (39,)) -> np.ndarray (4,)``.
        """
        from metaworld import policies

        return getattr(policies, self.expert)()


TASKS: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in (
        TaskSpec(
            "reach-v3",
            "SawyerReachV3Policy",
            (
                "reach the red goal",
                "move the gripper to the target",
                "put the end effector at the goal position",
                "reach toward the target point",
                "bring the hand to the goal",
            ),
            150,
        ),
        TaskSpec(
            "push-v3",
            "SawyerPushV3Policy",
            (
                "push the puck to the goal",
                "slide the puck onto the target",
                "push the object to the target",
                "move the puck to the target by pushing it",
                "shove the puck over to the goal position",
            ),
            150,
        ),
        TaskSpec(
            "pick-place-v3",
            "SawyerPickPlaceV3Policy",
            (
                "pick up the puck and place it at the goal",
                "grasp the object and put it on the target",
                "lift the puck and move it to the goal",
                "pick the puck up and drop it at the target position",
                "grab the puck and carry it to the goal",
            ),
            150,
        ),
        TaskSpec(
            "button-press-v3",
            "SawyerButtonPressV3Policy",
            (
                "press the button",
                "push the button in",
                "press the red button forward",
                "push the button all the way in",
                "hit the button",
            ),
            150,
        ),
        TaskSpec(
            "drawer-open-v3",
            "SawyerDrawerOpenV3Policy",
            (
                "open the drawer",
                "pull the drawer open",
                "grab the drawer handle and pull it out",
                "slide the drawer open",
                "pull out the drawer",
            ),
            150,
        ),
        TaskSpec(
            "door-open-v3",
            "SawyerDoorOpenV3Policy",
            (
                "open the door",
                "pull the door open",
                "swing the door open by its handle",
                "grab the handle and open the door",
                "open the safe door",
            ),
            200,
        ),
        TaskSpec(
            "reach-wall-v3",
            "SawyerReachWallV3Policy",
            (
                "reach the goal behind the wall",
                "move the gripper around the wall to the target",
                "get the hand to the red goal past the wall",
                "reach the target on the other side of the wall",
                "go around the wall and touch the goal",
            ),
            200,
        ),
        TaskSpec(
            "pick-place-wall-v3",
            "SawyerPickPlaceWallV3Policy",
            (
                "pick up the puck and place it at the goal behind the wall",
                "carry the puck around the wall to the target",
                "grasp the puck and bring it past the wall to the goal",
                "move the puck to the goal on the other side of the wall",
                "pick the puck up and take it around the wall to the target",
            ),
            200,
        ),
    )
}


def get_task(name: str) -> TaskSpec:
    """Look up a task by name.

    Raises:
        KeyError: if the task is not registered; the message lists the known tasks.
    """
    try:
        return TASKS[name]
    except KeyError:
        raise KeyError(f"unknown task {name!r}; known tasks: {', '.join(sorted(TASKS))}") from None


def parse_task_list(names: str | list[str] | tuple[str, ...] | None) -> list[str]:
    """Normalise a task selection: comma-separated string(s) or a list, ``None`` = defaults.

    Duplicates are dropped (first occurrence kept).

    Raises:
        KeyError: for an unknown task name.
        ValueError: if the selection is empty.
    """
    if names is None:
        return list(DEFAULT_TASKS)
    if isinstance(names, str):
        names = [names]
    out: list[str] = []
    for item in names:
        for name in str(item).split(","):
            name = name.strip()
            if not name:
                continue
            get_task(name)
            if name not in out:
                out.append(name)
    if not out:
        raise ValueError("no task selected")
    return out
