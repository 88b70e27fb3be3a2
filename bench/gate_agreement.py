"""P3 (action agreement) of several candidates against one teacher on the same frames.

    python bench/gate_agreement.py --teacher models/metaworld8-teacher --data data/demos8 \
        --candidate naive-1step=@1 --candidate snapflow=models/metaworld8-snapflow \
        --tasks reach-wall-v3,pick-place-wall-v3 --observations 64 --samples 16

``NAME=@N`` is the teacher itself at N Euler steps. Frames are spread evenly over the
demonstration directory (restricted to ``--tasks`` when given), exactly as the gates pick
them; each candidate and the teacher see the same noise per draw. Prints, per candidate,
the pooled relative energy distance (P3's statistic), the mean and the quantiles of the
per-frame ratios, the mean-chunk MSE and cosine: the figures `reflex_serve/gates/defaults.toml`'s ``[action_agreement]``
thresholds were set from (docs/gates.md).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import parse_named

from reflex_serve.export.validate import compare, pooled_relative_energy
from reflex_serve.gates.evidence import demo_observations
from reflex_serve.runtime.policy import Policy


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--teacher", type=Path, required=True)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--candidate", action="append", default=[], help="NAME=DIR or NAME=@STEPS")
    ap.add_argument("--tasks", default="")
    ap.add_argument("--observations", type=int, default=64)
    ap.add_argument("--samples", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    teacher = Policy(args.teacher)
    tasks = args.tasks.split(",") if args.tasks else None
    obs = demo_observations(args.data, teacher.manifest, args.observations, tasks)
    print(f"{len(obs)} frames of {args.tasks or 'every task'}, {args.samples} draws each")
    print(f"{'candidate':<18} {'pooled':>7} {'rel ED mean':>11} {'p50':>6} {'p90':>6} {'max':>6} {'MSE':>7} {'cos':>6}")
    for name, spec in parse_named(args.candidate, flag="--candidate").items():
        spec = str(spec)
        if spec.startswith("@"):
            cand = Policy(args.teacher, num_steps=int(spec[1:]))
        else:
            cand = Policy(Path(spec))
        per = compare(cand, teacher, obs, args.samples, args.seed)
        rel = np.array([r.relative_energy for r in per])
        pooled = pooled_relative_energy(per)
        mse = np.mean([r.mean_mse for r in per])
        cos = np.mean([r.mean_cosine for r in per])
        print(f"{name:<18} {pooled:>7.3f} {rel.mean():>11.3f} {np.median(rel):>6.3f} "
              f"{np.quantile(rel, 0.9):>6.3f} {rel.max():>6.3f} {mse:>7.4f} {cos:>6.3f}")


if __name__ == "__main__":
    main()
