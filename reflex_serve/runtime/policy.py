"""ONNX Runtime policy: prefix.onnx once per observation, expert.onnx for N Euler steps.

``Policy.act`` is the one entry point that HTTP /act, the openpi websocket, closed-loop
evaluation, shadow runs and gate replays all call.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from ..export.manifest import (
    EXPERT_ONNX,
    PREFIX_ONNX,
    STATS,
    ExportError,
    Manifest,
    _file_sha256,
    read_manifest,
)
from ..policy import tokenizer
from ..policy.flow import euler_schedule
from ..policy.normalize import DatasetStats
from .cache import PrefixCache, content_key
from .types import ActResult, InvalidObservation, Observation

MAX_NUM_STEPS = 100


def session_options(intra_op_threads: int, inter_op_threads: int) -> ort.SessionOptions:
    """CPU-friendly ONNX Runtime options with explicit thread counts (no spinning)."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = intra_op_threads
    opts.inter_op_num_threads = inter_op_threads
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return opts


class Policy:
    """A served policy version: two ONNX Runtime sessions, normalization, a prefix cache.

    Args:
        export_dir: an export directory (ARCHITECTURE.md).
        num_steps: default Euler steps; the manifest's ``num_steps`` if None.
        intra_op_threads, inter_op_threads: ONNX Runtime thread pools per session.
        providers: ONNX Runtime execution providers (CPU if None).
        cache: a shared :class:`PrefixCache`; None disables caching.
        verify: first check that the files match the manifest's digest (what serving
            does: a tampered or mixed export must not be served under the manifest's
            version); hashes every artifact once (a few MB for the shipped models).

    Raises:
        ExportError: if the directory is not a valid export, a file is missing, or
            ``verify`` finds files that do not match the digest (both digests named).
    """

    def __init__(
        self,
        export_dir: Path | str,
        *,
        num_steps: int | None = None,
        intra_op_threads: int = 1,
        inter_op_threads: int = 1,
        providers: list[str] | None = None,
        cache: PrefixCache | None = None,
        verify: bool = False,
    ) -> None:
        self.export_dir = Path(export_dir)
        hashes: dict[str, str] = {}  # filled by a verifying read: each file is hashed once
        self.manifest: Manifest = read_manifest(self.export_dir, verify=verify, file_hashes=hashes)
        self.version = self.manifest.version
        for name in (STATS, PREFIX_ONNX, EXPERT_ONNX):
            if not (self.export_dir / name).is_file():
                raise ExportError(f"{self.export_dir / name} is missing")
        self.stats = DatasetStats.load(self.export_dir / STATS)
        self.num_steps = self._check_steps(num_steps or self.manifest.num_steps)
        opts = session_options(intra_op_threads, inter_op_threads)
        providers = providers or ["CPUExecutionProvider"]
        try:
            self._prefix = ort.InferenceSession(str(self.export_dir / PREFIX_ONNX), opts, providers=providers)
            self._expert = ort.InferenceSession(str(self.export_dir / EXPERT_ONNX), opts, providers=providers)
        except Exception as exc:  # onnxruntime raises its own exception types
            raise ExportError(f"{self.export_dir}: cannot load ONNX graphs: {exc}") from exc
        # the prefix cache is shared by exports with the same prefix graph AND weights
        # (a graph over 2 GB keeps its weights in prefix.onnx.data beside it)
        self.prefix_digest = ":".join(
            hashes.get(name) or _file_sha256(self.export_dir / name)
            for name in (PREFIX_ONNX, PREFIX_ONNX + ".data")
            if (self.export_dir / name).is_file()
        )
        self.cache = cache
        self._rng = np.random.default_rng()
        self._rng_lock = threading.Lock()
        m = self.manifest
        self.noise_shape = (m.chunk_size, m.model_action_dim)
        self._camera_names = [c.name for c in m.cameras]
        try:
            self._text = tokenizer.make_text_encoder(m.tokenizer, m.max_text_tokens, self.export_dir)
        except ValueError as exc:
            raise ExportError(f"{self.export_dir}: {exc}") from exc
        # Feeds are built by the graphs' input names: an export without a token mask or
        # with the state in the prefix graph is served by the same code.
        self._prefix_names = [i.name for i in self._prefix.get_inputs()]
        self._expert_names = {i.name for i in self._expert.get_inputs()}

    @staticmethod
    def _check_steps(num_steps: int) -> int:
        if not 1 <= num_steps <= MAX_NUM_STEPS:
            raise InvalidObservation("num_steps", f"must be in [1, {MAX_NUM_STEPS}], got {num_steps}")
        return int(num_steps)

    def validate(self, obs: Observation) -> None:
        """Check an observation against the manifest.

        Raises:
            InvalidObservation: naming the field: unknown or missing camera, wrong image
                shape or dtype, wrong state length, non-finite state, non-string instruction.
        """
        m = self.manifest
        unknown = sorted(set(obs.images) - set(self._camera_names))
        if unknown:
            raise InvalidObservation(f"images.{unknown[0]}", f"unknown camera; expected {self._camera_names}")
        for cam in m.cameras:
            img = obs.images.get(cam.name)
            field = f"images.{cam.name}"
            if img is None:
                raise InvalidObservation(field, f"missing camera image; expected cameras {self._camera_names}")
            if not isinstance(img, np.ndarray) or img.dtype != np.uint8:
                raise InvalidObservation(field, f"must be uint8, got {getattr(img, 'dtype', type(img).__name__)}")
            if img.shape != (cam.height, cam.width, 3):
                raise InvalidObservation(field, f"expected shape ({cam.height}, {cam.width}, 3), got {tuple(img.shape)}")
        state = obs.state
        if not isinstance(state, np.ndarray) or state.ndim != 1 or state.shape[0] != m.state_dim:
            shape = getattr(state, "shape", None)
            raise InvalidObservation("state", f"expected {m.state_dim} values, got shape {shape}")
        if not np.issubdtype(state.dtype, np.number):
            raise InvalidObservation("state", f"must be numeric, got {state.dtype}")
        if not np.all(np.isfinite(state)):
            raise InvalidObservation("state", "contains NaN or Inf")
        if not isinstance(obs.instruction, str):
            raise InvalidObservation("instruction", "must be a string")

    def model_state(self, obs: Observation) -> np.ndarray:
        """The normalised state, zero-padded to the model's width: float32 (1, max_state_dim).

        Raises:
            InvalidObservation: a finite state whose normalised value is not (a value so
                far outside the statistics that float32 overflows, e.g. 3e38).
        """
        m = self.manifest
        state = np.zeros((1, m.model_state_dim), dtype=np.float32)
        with np.errstate(over="ignore", invalid="ignore"):
            state[0, : m.state_dim] = self.stats.state.normalize(obs.state.astype(np.float32))
        if not np.isfinite(state).all():
            bad = int(np.flatnonzero(~np.isfinite(state[0]))[0])
            raise InvalidObservation(
                "state",
                f"value {float(obs.state[bad]):.6g} at index {bad} is too far outside the "
                "model's state statistics to normalise in float32",
            )
        return state

    def prefix_inputs(self, obs: Observation, state: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """The prefix.onnx feeds, by the graph's input names: images uint8 (1, cams, H, W,
        3), tokens int64 (1, T) and, when the graph takes them, token_mask int64 (1, T) and
        state float32 (1, max_state_dim). A state-aware prompt receives the normalised state."""
        if state is None:
            state = self.model_state(obs)
        tokens, mask = self._text.encode(obs.instruction, state[0, : self.manifest.state_dim])
        available = {
            "images": np.stack([obs.images[name] for name in self._camera_names])[None],
            "tokens": tokens[None],
            "token_mask": mask[None],
            "state": state,
        }
        return {name: available[name] for name in self._prefix_names}

    def prefix(self, obs: Observation, state: np.ndarray | None = None) -> tuple[tuple[np.ndarray, np.ndarray], bool]:
        """The prefix KV of an observation and whether it came from the cache.

        The cache key covers every prefix.onnx input (the state too when the graph takes
        it; a state written into the prompt is in the tokens).

        Returns:
            ((prefix_kv float32 (1, L, 2, P, D), prefix_mask float32 (1, P)), cache_hit)
        """
        feeds = self.prefix_inputs(obs, state)
        key = None
        if self.cache is not None:
            key = (self.prefix_digest, content_key(*feeds.values()))
            hit = self.cache.get(key)
            if hit is not None:
                return hit, True
        kv, mask = self._prefix.run(None, feeds)
        if key is not None:
            self.cache.put(key, (kv, mask))
        return (kv, mask), False

    def make_noise(self, seed: int | None = None) -> np.ndarray:
        """Standard normal noise, float32 ``noise_shape`` (H, max_action_dim); reproducible when ``seed`` is given."""
        if seed is not None:
            return np.random.default_rng(seed).standard_normal(self.noise_shape, dtype=np.float32)
        with self._rng_lock:
            return self._rng.standard_normal(self.noise_shape, dtype=np.float32)

    def act(
        self,
        obs: Observation,
        *,
        num_steps: int | None = None,
        seed: int | None = None,
        noise: np.ndarray | None = None,
    ) -> ActResult:
        """Predict an action chunk.

        Args:
            obs: the observation (validated first).
            num_steps: Euler steps for this call (the policy default if None), 1..100.
            seed: seed of the initial noise, for determinism.
            noise: explicit initial noise, float32 (H, max_action_dim) in normalized
                action units (``noise_shape``); takes precedence over ``seed``.

        Returns:
            :class:`ActResult` with unnormalized actions float32 (H, A); ``extra["noise"]``
            is the initial noise used (so another version can be run on the same noise).

        Raises:
            InvalidObservation: on an observation or argument that does not fit.
        """
        start = time.perf_counter()
        self.validate(obs)
        n = self._check_steps(num_steps) if num_steps is not None else self.num_steps
        if noise is None:
            noise = self.make_noise(seed)
        elif noise.shape != self.noise_shape:
            raise InvalidObservation("noise", f"expected shape {self.noise_shape}, got {noise.shape}")
        state = self.model_state(obs)
        (kv, mask), hit = self.prefix(obs, state)
        t_prefix = time.perf_counter()
        x = noise.astype(np.float32)[None]
        feeds = {"prefix_kv": kv, "prefix_mask": mask}
        if "state" in self._expert_names:
            feeds["state"] = state
        dt = np.float32(1.0 / n)
        for t, s in euler_schedule(n, self.manifest.target_time):
            feeds["x_t"] = x
            feeds["t"] = np.full((1,), t, dtype=np.float32)
            feeds["s"] = np.full((1,), s, dtype=np.float32)
            (v,) = self._expert.run(None, feeds)
            x = x - dt * v
        t_expert = time.perf_counter()
        actions = self.stats.action.unnormalize(x[0, :, : self.manifest.action_dim])
        end = time.perf_counter()
        return ActResult(
            actions=actions,
            num_steps=n,
            prefix_ms=(t_prefix - start) * 1e3,
            expert_ms=(t_expert - t_prefix) * 1e3,
            total_ms=(end - start) * 1e3,
            cache_hit=hit,
            version=self.version,
            extra={"noise": noise},
        )

    def warmup(self, n: int = 3) -> None:
        """Run ``n`` calls on a synthetic observation (first-run allocations, thread pools)."""
        m = self.manifest
        images = {c.name: np.zeros((c.height, c.width, 3), np.uint8) for c in m.cameras}
        obs = Observation(images=images, state=self.stats.state.mean.copy(), instruction="warm up")
        for i in range(n):
            self.act(obs, seed=i)
