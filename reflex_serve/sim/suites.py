"""Which closed-loop simulation suite evaluates a policy, and whether it can run here.

The project's own policies are MetaWorld policies (reflex_serve/sim). An imported LeRobot
checkpoint was trained for its own robot or benchmark: its suite is the environment its
training config names (``train_config.json``'s ``env``, recorded by the importer in the
manifest's provenance as ``env``), e.g. LIBERO. A suite that is not installed, or that
this project has no runner for, is reported as unavailable with the reason, so that
``reflex eval`` exits with a clear message and the gates mark P1 / P2 as not evaluated
instead of running the policy in a simulation it was never trained for.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Any

METAWORLD = "metaworld"
LIBERO = "libero"
RUNNERS = (METAWORLD,)


class SuiteUnavailable(ValueError):
    """No simulation suite can evaluate this policy here; the message says why."""


@dataclass(frozen=True)
class SuiteChoice:
    """The suite for a policy.

    Attributes:
        name: ``"metaworld"``, ``"libero"``, another environment type, or None when the
            checkpoint names none.
        available: whether it can run here.
        reason: one sentence for the user (why it is or is not available).
    """

    name: str | None
    available: bool
    reason: str


def _get(obj: Any, key: str, default: Any = None) -> Any:
    return obj.get(key, default) if isinstance(obj, dict) else getattr(obj, key, default)


def suite_for(manifest: Any) -> SuiteChoice:
    """The simulation suite matching a manifest (an object or a ``/health`` dict).

    Policies of the project's own kind are MetaWorld policies. Imported LeRobot policies
    use the environment type their training config named; LIBERO is looked up as the
    installed ``libero`` package.
    """
    kind = str(_get(manifest, "policy_kind", ""))
    if not kind.startswith("lerobot-"):
        return SuiteChoice(METAWORLD, True, "MetaWorld, the simulation this policy was trained in")
    provenance = _get(manifest, "provenance") or {}
    env = provenance.get("env") if isinstance(provenance, dict) else None
    env_type = env.get("type") if isinstance(env, dict) else None
    if env_type is None:
        return SuiteChoice(
            None,
            False,
            f"the imported {kind} checkpoint names no simulation environment (its "
            "train_config.json has no 'env' entry, or was not next to config.json at "
            "import); evaluate it on its robot, and let the gates replay logged "
            "observations (P1 and P2 are then not evaluated, and block a swap until an "
            "operator overrides them with an audited reason)",
        )
    if env_type == LIBERO:
        if importlib.util.find_spec("libero") is None:
            return SuiteChoice(
                LIBERO,
                False,
                "the checkpoint was trained for LIBERO (env.type 'libero'), which is not "
                "installed here (the hf-libero package, MuJoCo and the LIBERO assets)",
            )
        return SuiteChoice(
            LIBERO,
            False,
            "the checkpoint was trained for LIBERO and LIBERO is installed, but this "
            f"release has closed-loop runners for {', '.join(RUNNERS)} only",
        )
    return SuiteChoice(
        str(env_type),
        False,
        f"the checkpoint was trained for the environment {env_type!r}; this release has "
        f"closed-loop runners for {', '.join(RUNNERS)} only",
    )


def require_metaworld(manifest: Any) -> None:
    """Raise :class:`SuiteUnavailable` (with the reason) unless MetaWorld evaluates it."""
    choice = suite_for(manifest)
    if choice.name != METAWORLD:
        raise SuiteUnavailable(f"no simulation suite can evaluate this policy: {choice.reason}")
