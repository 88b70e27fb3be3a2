"""Frozen-prefix outputs for distillation: computed once per observation when they fit.

With the prefix frozen (SnapFlow's default: only the action expert and phi train), the
prefix KV of an observation never changes, so it need not be recomputed at every step.
Measured here (width 128, 3 prefix layers, one 64x64 camera, 2 contended CPU cores): the
prefix of a batch of 32 costs about 15 ms against about 34 ms for the rest of a SnapFlow
step, so caching saves about a third of the step. A frame's KV is L * 2 * P * D float32
(131 KiB at width 128, P = 32, L = 4: 2.2 GB for 17k frames), so the cache is bounded:
the first frames that fit are precomputed once, in fixed chunks (deterministic, also
after a resume), and the others are computed per batch under ``no_grad``.
"""

from __future__ import annotations

import time

import torch
from torch import nn

CHUNK = 64


class PrefixFeatures:
    """``get(idx) -> (prefix_kv (B, L, 2, P, D), prefix_mask (B, P))`` for frame indices.

    Args:
        model: anything with ``encode_prefix(*inputs)``; used under ``no_grad``.
        inputs: the prefix inputs of all N frames, each indexed on its first axis: for
            the native policy images uint8 (N, C, H, W, 3) and tokens int64 (N, T); an
            imported policy adds its token mask and state (:meth:`.DistillData.prefix_inputs`).
        max_bytes: cache bound in bytes (0: compute every batch).
        precompute: False computes every batch (worth it when a run visits fewer
            samples than there are frames).
    """

    def __init__(
        self,
        model: nn.Module,
        inputs: tuple[torch.Tensor, ...],
        max_bytes: float,
        precompute: bool = True,
    ) -> None:
        self.model, self.inputs = model, inputs
        n = len(inputs[0])
        with torch.no_grad():
            kv, mask = self._encode(slice(0, 1))
        self.frame_bytes = kv[0].numel() * 4 + mask[0].numel() * 4
        self.cached = min(n, int(max_bytes // self.frame_bytes)) if precompute else 0
        self.seconds = 0.0
        self.kv = torch.empty((self.cached, *kv.shape[1:]), dtype=kv.dtype)
        self.mask = torch.empty((self.cached, *mask.shape[1:]), dtype=mask.dtype)
        t0 = time.monotonic()
        with torch.no_grad():
            for start in range(0, self.cached, CHUNK):
                sl = slice(start, min(start + CHUNK, self.cached))
                self.kv[sl], self.mask[sl] = self._encode(sl)
        self.seconds = time.monotonic() - t0

    def _encode(self, idx: slice | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.encode_prefix(*(x[idx] for x in self.inputs))

    @property
    def size(self) -> int:
        return len(self.inputs[0])

    @property
    def cached_bytes(self) -> int:
        return self.cached * self.frame_bytes

    def describe(self) -> str:
        """One line for the log: how much is cached and what it cost."""
        if self.cached == 0:
            return "prefix KV computed per batch (frozen, no_grad)"
        rest = "" if self.cached == self.size else f" of {self.size}; the rest per batch"
        return (
            f"prefix KV of {self.cached} observations cached once{rest} "
            f"({self.cached_bytes / 2**20:.1f} MiB, {self.seconds:.1f} s)"
        )

    def get(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The prefix outputs of frames ``idx`` (int64 (B,)), without gradient."""
        hit = idx < self.cached
        if bool(hit.all()):
            return self.kv[idx], self.mask[idx]
        miss = ~hit
        with torch.no_grad():
            kv_miss, mask_miss = self._encode(idx[miss])
        if not bool(hit.any()):
            return kv_miss, mask_miss
        kv = torch.empty((len(idx), *kv_miss.shape[1:]), dtype=kv_miss.dtype)
        mask = torch.empty((len(idx), *mask_miss.shape[1:]), dtype=mask_miss.dtype)
        kv[hit], mask[hit] = self.kv[idx[hit]], self.mask[idx[hit]]
        kv[miss], mask[miss] = kv_miss, mask_miss
        return kv, mask
