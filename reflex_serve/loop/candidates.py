"""The candidate step of the self-distilling loop: which version may replace the teacher.

Besides the SnapFlow student, the teacher itself at fewer Euler steps is a candidate
that needs no training (``teacher@1``, ``teacher@2``, ``teacher@4``). Every candidate goes
through the nine gates against the teacher (:mod:`reflex_serve.gates`, each run stored);
the fastest one that passes all nine is chosen::

    specs = default_specs(teacher, student, steps=(1, 2, 4), work_dir=work / "candidates")
    chosen, outcomes = gate_candidates(teacher, specs, store_url, GateOptions(tasks=("reach-v3",)))
    for o in outcomes:
        print(o.spec.name, o.verdict, o.reason)

Choosing: among the candidates that passed all nine (overrides do not count), the
lowest p50 ratio of gate P4 (candidate /act p50 over the teacher's, measured side by
side). Ratios within ``tie_within`` (5%) of the lowest are a tie: each candidate is timed
in its own run, and two one-step policies cost the same, so noise must not decide; a
tie goes to fewer expert calls (NFE), then to the lower P3 relative energy distance
(closer to the teacher's action distribution), then to the order tried.

A ``teacher@N`` export (:func:`teacher_at_steps`) is the teacher's files (hard-linked
where the file system allows, else copied) with a manifest that asks for N steps and
names the teacher as its parent: ``prefix.onnx`` is byte-identical, so the prefix KV
cache is shared, and its version digest is its own (the manifest is part of it).
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..export.manifest import (
    ARTIFACTS,
    ExportError,
    Manifest,
    compute_digest,
    read_manifest,
    write_manifest,
)
from ..gates.config import ConfigError, GateConfig, load_config, with_sim
from .choice import CHOSEN, KEPT, REFUSED  # noqa: F401 (the verdicts, re-exported)

TEACHER_STEPS, STUDENT = "teacher-steps", "student"
DEFAULT_STEPS = (1, 2, 4)
TIE_WITHIN = 0.05


class CandidateError(ValueError):
    """A candidate cannot be made or gated as asked.

    Attributes:
        field: what was wrong: ``"teacher"``, ``"num_steps"`` or ``"output"``.
    """

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class CandidateSpec:
    """A candidate export to gate against the teacher.

    Attributes:
        name: ``"snapflow"``, ``"teacher@1"``, ...
        kind: ``"student"`` (distilled) or ``"teacher-steps"`` (the teacher at fewer steps).
        num_steps: the Euler steps it runs (expert calls per /act, NFE).
        export_dir: its export directory.
    """

    name: str
    kind: str
    num_steps: int
    export_dir: Path


@dataclass(frozen=True)
class CandidateOutcome:
    """What the gates said about one candidate, and whether it was chosen.

    Attributes:
        version: 12-hex version of the candidate export ("" when its manifest is unreadable).
        gate_run_id: the stored gate run, None when the gates could not run.
        passed: every one of the nine gates passed on its own (overrides do not count).
        p50_ratio: candidate /act p50 over the teacher's (gate P4), None if not measured.
        verdict: ``"chosen"``, ``"kept"`` (passed, not chosen) or ``"refused"``.
        reason: one line for an operator: the failed gates with their values, or why
            this candidate was (not) chosen over the others.
    """

    spec: CandidateSpec
    version: str
    gate_run_id: str | None
    passed: bool
    p50_ratio: float | None
    verdict: str
    reason: str

    def to_dict(self) -> dict[str, Any]:
        """A flat JSON-ready dict (for run records)."""
        s = self.spec
        return {
            "name": s.name,
            "kind": s.kind,
            "num_steps": s.num_steps,
            "export_dir": str(s.export_dir),
            "version": self.version,
            "gate_run_id": self.gate_run_id,
            "passed": self.passed,
            "p50_ratio": self.p50_ratio,
            "verdict": self.verdict,
            "reason": self.reason,
        }


@dataclass(frozen=True)
class GateOptions:
    """How to run the gates on each candidate (the options of ``reflex gates run``).

    Attributes:
        config_path: a TOML file of thresholds on top of ``gates/defaults.toml``.
        config: a ready :class:`GateConfig` instead of ``config_path`` (not both).
        suite, tasks, episodes: the closed-loop suite over ``[sim]``, as ``--suite``,
            ``--tasks`` and ``--episodes``.
        data: a demonstration directory for replay when the store has no held-out rows.
        actor: who runs the gates (recorded with each run).
        progress: called with one line per stage, prefixed with the candidate's name.
    """

    config_path: Path | None = None
    config: GateConfig | None = None
    suite: str | None = None
    tasks: tuple[str, ...] | None = None
    episodes: int | None = None
    data: Path | None = None
    actor: str = "reflex-loop"
    progress: Callable[[str], None] | None = None

    def gate_config(self) -> GateConfig:
        """The configuration every candidate is gated with.

        Raises:
            ConfigError: a bad file, both ``config`` and ``config_path``, both a suite
                and tasks, or an unknown task.
        """
        if self.config is not None and self.config_path is not None:
            raise ConfigError("give a config or a config path, not both")
        base = self.config if self.config is not None else load_config(self.config_path)
        tasks = list(self.tasks) if self.tasks is not None else None
        return with_sim(base, suite=self.suite, tasks=tasks, episodes=self.episodes)


def _teacher(teacher_dir: Path) -> Manifest:
    try:
        m = read_manifest(teacher_dir, verify=True)
    except (ExportError, OSError) as exc:
        raise CandidateError("teacher", str(exc)) from None
    if m.target_time != "instantaneous":
        raise CandidateError(
            "teacher",
            f"{teacher_dir} is not a flow-matching teacher: its target_time is "
            f"{m.target_time!r} (a distilled student, parent {m.parent_version}); only an "
            "export with target_time 'instantaneous' can run at fewer Euler steps",
        )
    return m


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:  # another file system, or links not allowed
        shutil.copy2(src, dst)


def teacher_at_steps(teacher_dir: Path | str, num_steps: int, out_dir: Path | str) -> Path:
    """Write the teacher at ``num_steps`` Euler steps as its own export directory.

    The artifacts are the teacher's (hard-linked, else copied; ``prefix.onnx`` byte for
    byte, so the prefix cache is shared); the manifest has ``num_steps``, the teacher's
    digest as ``parent_version`` and provenance ``{"kind": "teacher-steps", ...}``, so the
    version digest is new, and the same for every derivation of this teacher at N steps.
    An ``out_dir`` that already holds exactly that export is returned as it is.

    Returns:
        ``out_dir``.

    Raises:
        CandidateError: ``field`` ``"teacher"`` (missing, corrupt, or not a flow-matching
            teacher), ``"num_steps"`` (below 1, or not below the teacher's own steps),
            ``"output"`` (a non-empty directory holding something else, the teacher, a
            file, or a place where no directory can be created).
    """
    teacher_dir, out_dir = Path(teacher_dir), Path(out_dir)
    teacher = _teacher(teacher_dir)
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
        raise CandidateError("num_steps", f"must be an integer >= 1, got {num_steps!r}")
    if num_steps >= teacher.num_steps:
        raise CandidateError(
            "num_steps",
            f"must be below the teacher's own {teacher.num_steps} steps, got {num_steps}: "
            "the same or more steps is no cheaper candidate",
        )
    if out_dir.resolve() == teacher_dir.resolve():
        raise CandidateError("output", f"{out_dir} is the teacher's own directory")
    if out_dir.exists() and not out_dir.is_dir():
        raise CandidateError("output", f"{out_dir} is not a directory")
    derived = Manifest.from_dict(teacher.to_dict())
    derived.num_steps = num_steps
    derived.parent_version = teacher.digest
    derived.provenance = {
        "kind": TEACHER_STEPS,
        "teacher": teacher.digest,
        "teacher_num_steps": teacher.num_steps,
        "num_steps": num_steps,
        "teacher_provenance": teacher.provenance,
    }
    expected = compute_digest(teacher_dir, derived)  # same artifact bytes as the teacher
    if out_dir.exists() and any(out_dir.iterdir()):
        try:
            found = read_manifest(out_dir, verify=True).digest
        except (ExportError, OSError):
            found = None
        if found != expected:
            raise CandidateError(
                "output",
                f"{out_dir} is not empty and does not hold teacher@{num_steps} of "
                f"{teacher.version}; an export directory is immutable once written",
            )
        return out_dir
    tmp = out_dir.parent / f".{out_dir.name}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp.mkdir()
    except OSError as exc:
        raise CandidateError("output", f"cannot create {out_dir}: {exc.strerror or exc}") from None
    try:
        for name in (*ARTIFACTS, *teacher.extra_artifacts):  # tokenizer.json, *.onnx.data
            _link_or_copy(teacher_dir / name, tmp / name)
        write_manifest(tmp, derived)
        if derived.digest != expected:  # pragma: no cover (a file changed while linking)
            raise CandidateError("teacher", f"{teacher_dir} changed while it was read")
        if out_dir.exists():
            out_dir.rmdir()  # empty (checked above)
        tmp.rename(out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return out_dir


def default_specs(
    teacher_dir: Path | str,
    student_dir: Path | str | None,
    steps: Sequence[int] = DEFAULT_STEPS,
    *,
    work_dir: Path | str,
) -> list[CandidateSpec]:
    """The usual candidates, cheapest first: fewer Euler steps first, and at equal steps
    the teacher-steps export (no training) before the student.

    ``teacher@N`` exports are written to ``work_dir/teacher@N`` (reused when already
    there); a step count at or above the teacher's own is left out (no cheaper).

    Raises:
        CandidateError: a bad teacher, or a bad ``work_dir``.
        ExportError: a student directory that is not an export.
    """
    teacher_dir, work_dir = Path(teacher_dir), Path(work_dir)
    teacher = _teacher(teacher_dir)
    specs = [
        CandidateSpec(
            f"teacher@{n}",
            TEACHER_STEPS,
            n,
            teacher_at_steps(teacher_dir, n, work_dir / f"teacher@{n}"),
        )
        for n in sorted(set(steps))
        if 1 <= n < teacher.num_steps
    ]
    if student_dir is not None:
        student = read_manifest(Path(student_dir))
        specs.append(CandidateSpec("snapflow", STUDENT, student.num_steps, Path(student_dir)))
    order = {TEACHER_STEPS: 0, STUDENT: 1}
    return sorted(specs, key=lambda s: (s.num_steps, order.get(s.kind, 2)))


def _gate_one(spec: CandidateSpec, teacher_dir: Path, cfg: GateConfig, store, options):
    """One candidate through the nine gates, its run stored; a :class:`~.choice.Gated`."""
    from ..gates.audit import persist
    from ..gates.runner import GateInputError, run_gates
    from .choice import Gated

    say = None
    if options.progress is not None:
        say = lambda msg: options.progress(f"{spec.name}: {msg}")
    try:
        manifest = read_manifest(spec.export_dir)
    except (ExportError, OSError) as exc:
        return Gated(spec.name, spec.num_steps, "", error=str(exc))
    if manifest.num_steps != spec.num_steps:
        error = f"the spec says {spec.num_steps} step(s), its manifest {manifest.num_steps}"
        return Gated(spec.name, spec.num_steps, manifest.version, error=error)
    try:
        report = run_gates(
            spec.export_dir,
            teacher_dir,
            cfg,
            store=store,
            data=options.data,
            actor=options.actor,
            progress=say,
        )
    except GateInputError as exc:
        return Gated(spec.name, spec.num_steps, manifest.version, error=str(exc))
    run_id = persist(store, report, manifest.to_dict())
    return Gated.from_report(spec.name, spec.num_steps, report, run_id)


def gate_candidates(
    teacher_dir: Path | str,
    specs: Sequence[CandidateSpec],
    store_url: str | None,
    options: GateOptions,
    *,
    tie_within: float = TIE_WITHIN,
) -> tuple[CandidateOutcome | None, list[CandidateOutcome]]:
    """Gate every candidate against the teacher, store each run, choose the fastest
    that passed all nine (module docstring).

    A candidate whose gates cannot run (a missing or corrupt export, one of other
    dimensions than the teacher, a spec whose steps are not its manifest's) is refused
    with the reason and no gate run.

    Args:
        store_url: the store for replay observations (its held-out split) and gate runs.
        tie_within: relative p50 difference under which two candidates tie.

    Returns:
        (the chosen outcome or None, every outcome in the order of ``specs``).

    Raises:
        CandidateError: a bad teacher. ConfigError: bad gate options.
        StoreError: a store that cannot be opened.
    """
    from ..storage.store import Store
    from .choice import choose

    teacher_dir = Path(teacher_dir)
    _teacher(teacher_dir)
    cfg = options.gate_config()
    store = Store.open(store_url)
    try:
        gated = [_gate_one(spec, teacher_dir, cfg, store, options) for spec in specs]
    finally:
        store.close()
    verdicts = choose(gated, tie_within)
    outcomes = [
        CandidateOutcome(spec, g.version, g.run_id, g.passed, g.p50_ratio, verdict, reason)
        for spec, g, (verdict, reason) in zip(specs, gated, verdicts, strict=True)
    ]
    chosen = next((o for o in outcomes if o.verdict == CHOSEN), None)
    return chosen, outcomes
