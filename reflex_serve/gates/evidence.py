"""The observations the gates (and ``reflex validate export``) judge a policy on.

Replay observations are real data, in this order of preference:

1. the held-out split of a store (demo frames and served requests; the split that
   training and distillation never read), ``n`` rows spread evenly over it;
2. frames of a demonstration directory (``reflex sim collect --out``), spread evenly;
3. synthetic random observations, only when asked for explicitly (they are far out of
   distribution: a good student can disagree with its teacher there).

Edge probes (deterministic, from the reference's ``stats.json``): the first replay
observation (or a mid-grey image at the mean state) with black images, with white
images, with the state at the dataset minimum, at the dataset maximum, and with an
empty instruction.

:func:`draw` runs a policy on every observation with K noise draws; draw ``k`` of
observation ``i`` uses ``default_rng([seed, i, k])`` for every policy, so candidate and
reference see the same noise (:func:`reflex_serve.export.validate.draw_samples`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..export.manifest import Manifest
from ..policy.normalize import DatasetStats
from ..runtime.types import Observation

PROBES = ("black_image", "white_image", "state_min", "state_max", "empty_instruction")


class EvidenceError(ValueError):
    """No usable observations where they were asked for (the message says why)."""


@dataclass
class Replay:
    """Replay observations and where they came from (``kind``: store, demos, synthetic, none)."""

    observations: list[Observation]
    kind: str
    source: str
    notes: list[str] = field(default_factory=list)


def _spread(total: int, n: int) -> np.ndarray:
    return np.unique(np.linspace(0, total - 1, min(n, total)).round().astype(int))


def store_observations(
    store, manifest: Manifest, n: int, holdout_pct: float = 10.0
) -> list[Observation]:
    """``n`` observations spread evenly over a store's held-out split (both sources).

    Args:
        store: an open :class:`~reflex_serve.storage.store.Store` or a store URL.

    Raises:
        EvidenceError: no held-out row with every camera of ``manifest``, or rows of
            another state size.
        StoreError: a URL that cannot be opened.
    """
    from ..storage.reader import ReadQuery, iter_batches
    from ..storage.records import decode_png
    from ..storage.store import Store

    own = isinstance(store, str)
    st = Store.open(store) if own else store
    names = [c.name for c in manifest.cameras]
    try:
        light = ReadQuery(
            split="holdout",
            holdout_pct=holdout_pct,
            chunk_size=manifest.chunk_size,
            with_images=False,
        )
        ids = np.concatenate([b.ids for b in iter_batches(st, light, 4096)] or [np.array([])])
        picked = set(ids[_spread(len(ids), n)]) if len(ids) else set()
        out = []
        query = ReadQuery(split="holdout", holdout_pct=holdout_pct, chunk_size=manifest.chunk_size)
        for batch in iter_batches(st, query, 256, decode=False) if picked else ():
            if set(batch.cameras) != set(names):
                continue
            if batch.state.shape[1] != manifest.state_dim:
                raise EvidenceError(
                    f"store rows have state_dim {batch.state.shape[1]}, the "
                    f"export has {manifest.state_dim}"
                )
            for i in np.nonzero([rid in picked for rid in batch.ids])[0]:
                images = {c: decode_png(batch.images[i, batch.cameras.index(c)]) for c in names}
                out.append(
                    Observation(
                        images=images, state=batch.state[i], instruction=str(batch.instructions[i])
                    )
                )
    except ValueError as exc:
        if isinstance(exc, EvidenceError):
            raise
        raise EvidenceError(f"store: {exc}") from None
    finally:
        if own:
            st.close()
    if not out:
        raise EvidenceError(f"the store has no held-out observations with cameras {names}")
    return out


def demo_observations(
    directory: Path | str, manifest: Manifest, n: int, tasks: Sequence[str] | None = None
) -> list[Observation]:
    """``n`` frames spread evenly over a demonstration directory (over the frames of
    ``tasks`` only, when given).

    Raises:
        EvidenceError: not a demo directory, or cameras / state size that do not fit.
    """
    from ..sim.dataset import load_demos

    try:
        demos = load_demos(directory)
    except (FileNotFoundError, KeyError, ValueError) as exc:
        raise EvidenceError(f"--data {directory}: {exc}") from None
    cams = [(c["name"], c["height"], c["width"]) for c in demos.cameras]
    want = [(c.name, c.height, c.width) for c in manifest.cameras]
    if sorted(cams) != sorted(want):
        raise EvidenceError(f"--data {directory}: cameras {cams}, the export has {want}")
    if demos.state_dim != manifest.state_dim:
        raise EvidenceError(
            f"--data {directory}: state_dim {demos.state_dim}, the export has {manifest.state_dim}"
        )
    names = [c[0] for c in cams]
    frames = np.arange(len(demos))
    if tasks:
        frames = frames[np.isin(np.asarray(demos.tasks)[demos.task_index], list(tasks))]
    return [
        Observation(
            images={c.name: demos.images[i, names.index(c.name)] for c in manifest.cameras},
            state=demos.state[i].astype(np.float32),
            instruction=demos.instruction(i),
        )
        for i in frames[_spread(len(frames), n)]
    ]


def synthetic_observations(
    manifest: Manifest, stats: DatasetStats, n: int, seed: int
) -> list[Observation]:
    """``n`` deterministic random observations (uniform pixels, state ~ N(mean, std))."""
    rng = np.random.default_rng(seed)
    words = ("reach the goal", "push the puck to the target", "", "open the drawer please")
    return [
        Observation(
            images={
                c.name: rng.integers(0, 256, (c.height, c.width, 3), dtype=np.uint8)
                for c in manifest.cameras
            },
            state=(
                stats.state.mean + stats.state.std * rng.standard_normal(stats.state.mean.shape)
            ).astype(np.float32),
            instruction=words[i % len(words)],
        )
        for i in range(n)
    ]


def default_store_url(data_dir: Path | str | None = None) -> str | None:
    """``$REFLEX_STORE``, else the embedded SQLite store if its file exists (never created)."""
    from ..storage.engine import DEFAULT_DATA_DIR, SQLITE_FILE, STORE_ENV

    if os.environ.get(STORE_ENV):
        return os.environ[STORE_ENV]
    path = Path(data_dir if data_dir is not None else DEFAULT_DATA_DIR) / SQLITE_FILE
    return f"sqlite:///{path.resolve()}" if path.is_file() else None


def open_cli_store(store: str | None, data_dir: Path | str | None, *, existing: bool = False):
    """The :class:`~reflex_serve.storage.store.Store` of a command's ``--store`` /
    ``--data-dir`` (opened, schema created or upgraded).

    Args:
        existing: for commands that only read what was recorded: without ``--store``
            and ``$REFLEX_STORE`` the SQLite file in ``data_dir`` must exist (it is
            never created, as in :func:`default_store_url`).

    Raises:
        StoreError: the message starts with the flag at fault (``--store``,
            ``--data-dir``), or says there is no store at that path.
    """
    from ..storage.engine import DEFAULT_DATA_DIR, SQLITE_FILE, StoreError
    from ..storage.store import Store

    url = store
    if existing and store is None:
        url = default_store_url(data_dir)
        if url is None:
            directory = Path(data_dir) if data_dir is not None else DEFAULT_DATA_DIR
            raise StoreError(f"no store at {directory / SQLITE_FILE} (--data-dir {directory}): "
                             "nothing was recorded there; name one with --store or --data-dir")
    try:
        return Store.open(url, data_dir)
    except StoreError as exc:
        if str(exc).startswith("--"):
            raise
        raise StoreError(f"--store: {exc}") from None


def replay_observations(
    manifest: Manifest,
    stats: DatasetStats,
    n: int,
    *,
    store=None,
    data: Path | str | None = None,
    holdout_pct: float = 10.0,
    synthetic: bool = False,
    seed: int = 0,
    min_store: int = 1,
) -> Replay:
    """Replay observations from the best real source available (module docstring).

    The store's held-out split is used when it gives at least ``min_store``
    observations, or when there is no ``data`` to fall back on; otherwise the demo
    frames are, and the notes say how few the store had.

    Args:
        store: an open Store or a URL (held-out split), or None to skip.
        data: a demonstration directory, used when the store gives none.
        synthetic: fall back to synthetic observations (said so in ``source``).

    Returns:
        A :class:`Replay`; ``kind == "none"`` (no observations) when nothing is usable
        and ``synthetic`` is False, with ``notes`` saying what was tried.

    Raises:
        EvidenceError: ``data`` is given but is not a usable demo directory.
        StoreError: a store URL that cannot be opened.
    """
    notes = []
    if store is not None:
        try:
            obs = store_observations(store, manifest, n, holdout_pct)
            if len(obs) >= min_store or data is None:
                return Replay(obs, "store", f"store held-out split ({len(obs)} observations)")
            notes.append(f"the store's held-out split has {len(obs)} observations, fewer "
                         f"than {min_store}: the demo frames of {data} are used instead")
        except EvidenceError as exc:
            notes.append(str(exc))
    if data is not None:
        obs = demo_observations(data, manifest, n)
        return Replay(obs, "demos", f"demo frames of {data} ({len(obs)} observations)", notes)
    if synthetic:
        obs = synthetic_observations(manifest, stats, n, seed)
        return Replay(
            obs,
            "synthetic",
            f"SYNTHETIC random observations (seed {seed}; out of distribution)",
            notes,
        )
    return Replay([], "none", "no replay observations", notes)


def probe_observations(
    manifest: Manifest, stats: DatasetStats, base: Observation | None
) -> list[tuple[str, Observation]]:
    """The five edge probes (:data:`PROBES`), built on ``base`` (module docstring)."""
    if base is None:
        images = {c.name: np.full((c.height, c.width, 3), 128, np.uint8) for c in manifest.cameras}
        base = Observation(images=images, state=stats.state.mean.astype(np.float32), instruction="")

    def filled(value: int) -> dict[str, np.ndarray]:
        return {name: np.full_like(img, value) for name, img in base.images.items()}

    return [
        ("black_image", Observation(filled(0), base.state, base.instruction)),
        ("white_image", Observation(filled(255), base.state, base.instruction)),
        (
            "state_min",
            Observation(base.images, stats.state.min.astype(np.float32), base.instruction),
        ),
        (
            "state_max",
            Observation(base.images, stats.state.max.astype(np.float32), base.instruction),
        ),
        ("empty_instruction", Observation(base.images, base.state, "")),
    ]


@dataclass
class Draws:
    """K action chunks per observation from candidate and reference, same noise.

    Attributes:
        labels: one per observation (``replay:3``, ``probe:black_image``).
        replay: the first ``replay`` observations are replay ones, the rest probes.
        candidate, reference: float32 (N, K, H, A) in action units, or None when the
            policy failed (then ``*_error`` says how).
    """

    labels: list[str]
    replay: int
    samples: int
    candidate: np.ndarray | None
    reference: np.ndarray | None
    candidate_error: str | None = None
    reference_error: str | None = None

    @property
    def observations(self) -> int:
        return len(self.labels)


def draw(
    candidate,
    reference,
    replay: list[Observation],
    probes: list[tuple[str, Observation]],
    samples: int,
    seed: int,
) -> Draws:
    """Run both policies on every observation, ``samples`` draws each (same noise)."""
    from ..export.validate import draw_samples

    observations = [*replay, *(o for _, o in probes)]
    labels = [f"replay:{i}" for i in range(len(replay))] + [f"probe:{p}" for p, _ in probes]
    out = {}
    for name, policy in (("candidate", candidate), ("reference", reference)):
        try:
            out[name] = (
                draw_samples(policy, observations, samples, seed, reference.noise_shape),
                None,
            )
        except Exception as exc:  # noqa: BLE001 (a broken graph raises onnxruntime types)
            out[name] = (None, f"{type(exc).__name__}: {exc}")
    return Draws(
        labels,
        len(replay),
        samples,
        out["candidate"][0],
        out["reference"][0],
        out["candidate"][1],
        out["reference"][1],
    )
