"""Closed-loop comparison of a teacher, its naive 1-step version and its 1-step students.

    # run (each variant in its own `reflex serve` process, episodes driven through HTTP)
    python bench/eval_students.py run --teacher DIR --student snapflow=DIR \
        --student trajectory=DIR --out docs/eval/students [--only teacher,naive]
    # then the tables (docs/eval/students/README.md)
    python bench/eval_students.py summarize --out docs/eval/students

For every variant and every episode seed set (``--seed``, repeatable; default 1,000,000
and 2,000,000, never used for demonstrations) it runs the default suite (six tasks) and
the bimodal suite (two wall tasks, detour left or right) with ``--episodes`` episodes per
task, then the decision-point probe on the bimodal tasks (``--probe-points`` points per
task, ``--probe-samples`` chunks each, the same noise seeds for every variant). The
naive 1-step variant is the teacher's server asked for ``num_steps=1``.

``summarize`` writes per-task success with Wilson 95% intervals (per seed set and
pooled), the client-side /act p50 of the closed-loop runs, the share of probe samples
that commit to a mode, and the energy distance of each variant's probe samples to the
teacher's (action units, mean over points) and relative to the teacher's own spread.
The /act p50 ratio measured side by side is `bench/bench_student.py`'s job.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import parse_named

from reflex_serve.export.validate import energy_distance
from reflex_serve.sim.report import EvalReport, wilson_interval
from reflex_serve.sim.tasks import SUITES

TEACHER, NAIVE = "teacher", "naive-1step"


def run(args: argparse.Namespace) -> None:
    """Evaluate the selected variants; results under ``out/<variant>/``."""
    from reflex_serve.client import ReflexClient
    from reflex_serve.server.runner import spawn_server
    from reflex_serve.sim.evaluate import run_eval, sim_settings_from_manifest
    from reflex_serve.sim.probe import probe

    exports = {TEACHER: args.teacher, NAIVE: args.teacher, **parse_named(args.student, reserved=(TEACHER, NAIVE))}
    only = args.only.split(",") if args.only else list(exports)
    unknown = set(only) - set(exports)
    if unknown:
        raise SystemExit(f"--only: unknown variants {sorted(unknown)}; known {list(exports)}")
    for name in only:
        proc, url = spawn_server(exports[name])
        try:
            client = ReflexClient(url)
            settings = sim_settings_from_manifest(client.wait_ready())
            steps = 1 if name == NAIVE else None
            for seed in args.seed:
                for suite in ("default", "bimodal"):
                    out = args.out / name / f"{suite}-seed{seed}"
                    print(f"== {name}: {suite} suite, seeds {seed}.. -> {out}", flush=True)
                    run_eval(client, list(SUITES[suite]), args.episodes, seed, out_dir=out,
                             num_steps=steps, progress=False, print_report=False, **settings)
                report = probe(client, list(SUITES["bimodal"]), args.probe_points,
                               args.probe_samples, seed, num_steps=steps, **settings)
                report.save(args.out / name / f"probe-seed{seed}", stem="probe")
        finally:
            proc.terminate()
            proc.wait(timeout=20)


def _complete(out: Path, variant: str, seeds: list[int]) -> bool:
    """Whether every suite report and probe of ``variant`` exists for ``seeds``."""
    files = [out / variant / f"{suite}-seed{s}" / "eval.json" for suite in SUITES for s in seeds]
    files += [out / variant / f"probe-seed{s}" / "probe_samples.npz" for s in seeds]
    return all(f.is_file() for f in files)


def _variants(out: Path) -> list[str]:
    """Variants with complete results for the teacher's seed sets (teacher, naive first)."""
    found = sorted(p.name for p in out.iterdir() if p.is_dir())
    ordered = [v for v in (TEACHER, NAIVE) if v in found] + [v for v in found if v not in (TEACHER, NAIVE)]
    seeds = _seeds(out, TEACHER) if TEACHER in found else []
    done = [v for v in ordered if seeds and _complete(out, v, seeds)]
    for v in set(ordered) - set(done):
        print(f"(skipping {v}: results incomplete for seeds {seeds})", file=sys.stderr)
    return done


def _seeds(out: Path, variant: str) -> list[int]:
    return sorted({int(p.name.rsplit("seed", 1)[1]) for p in (out / variant).glob("default-seed*")})


def _load(out: Path, variant: str, suite: str, seed: int) -> EvalReport:
    return EvalReport.from_dict(json.loads((out / variant / f"{suite}-seed{seed}" / "eval.json").read_text()))


def _fmt(k: int, n: int) -> str:
    lo, hi = wilson_interval(k, n)
    return f"{k}/{n} ({100 * k / n:.0f}%) [{100 * lo:.1f}, {100 * hi:.1f}]"


def success_table(out: Path, variants: list[str], suite: str) -> list[str]:
    """Markdown rows: per task and suite average, each seed set and pooled, per variant."""
    seeds = _seeds(out, variants[0])
    head = ["variant", "task"] + [f"seeds {s}.." for s in seeds] + ["pooled"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for v in variants:
        reports = [_load(out, v, suite, s) for s in seeds]
        for task in SUITES[suite]:
            cells = [_fmt(r.task(task).successes, r.task(task).episodes) for r in reports]
            k = sum(r.task(task).successes for r in reports)
            n = sum(r.task(task).episodes for r in reports)
            lines.append(f"| {v} | {task} | " + " | ".join(cells) + f" | {_fmt(k, n)} |")
        cells = [_fmt(r.successes, r.episodes) for r in reports]
        k, n = sum(r.successes for r in reports), sum(r.episodes for r in reports)
        lines.append(f"| **{v}** | **all** | " + " | ".join(cells) + f" | **{_fmt(k, n)}** |")
    return lines


def probe_rows(out: Path, variants: list[str]) -> list[str]:
    """Markdown rows: commitment share and energy distance to the teacher, per task."""
    lines = ["| variant | task | points | commit share | vs teacher's | energy distance to teacher | relative to teacher spread |",
             "|---|---|---|---|---|---|---|"]
    seeds = _seeds(out, TEACHER)
    load = {v: [np.load(out / v / f"probe-seed{s}" / "probe_samples.npz") for s in seeds] for v in variants}
    for v in variants:
        for task in SUITES["bimodal"]:
            ed, spread, commit, tcommit, points = [], [], [], [], 0
            for mine, ref in zip(load[v], load[TEACHER]):
                xs, ys = mine[f"{task}/samples"], ref[f"{task}/samples"]
                commit.append(float(np.mean(mine[f"{task}/labels"] >= 0)))
                tcommit.append(float(np.mean(ref[f"{task}/labels"] >= 0)))
                for x, y in zip(xs, ys):
                    d, _, sy = energy_distance(x.reshape(len(x), -1), y.reshape(len(y), -1))
                    ed.append(d)
                    spread.append(sy)
                    points += 1
            c, tc = float(np.mean(commit)), float(np.mean(tcommit))
            rel = float(np.mean(ed)) / max(float(np.mean(spread)), 1e-9)
            lines.append(f"| {v} | {task} | {points} | {c:.1%} | {c / tc if tc else float('nan'):.2f}x | "
                         f"{np.mean(ed):.4f} | {rel:.3f} |")
    return lines


def latency_rows(out: Path, variants: list[str]) -> list[str]:
    """Markdown rows: client-side /act p50 and mean server time over the closed-loop runs."""
    lines = ["| variant | /act calls | client p50 ms | p50 / teacher's | server total mean ms |", "|---|---|---|---|---|"]
    stats = {}
    for v in variants:
        reps = [_load(out, v, suite, s) for suite in SUITES for s in _seeds(out, v)]
        calls = sum(r.latency.act_calls for r in reps)
        p50 = float(np.average([r.latency.p50_ms for r in reps], weights=[r.latency.act_calls for r in reps]))
        server = float(np.average([r.latency.server_total_ms_mean for r in reps], weights=[r.latency.act_calls for r in reps]))
        stats[v] = (calls, p50, server)
    for v, (calls, p50, server) in stats.items():
        lines.append(f"| {v} | {calls} | {p50:.2f} | {p50 / stats[TEACHER][1]:.3f} | {server:.2f} |")
    return lines


def summarize(args: argparse.Namespace) -> None:
    """Write ``out/README.md`` from the saved reports and print it."""
    variants = _variants(args.out)
    if TEACHER not in variants:
        raise SystemExit(f"{args.out}: no {TEACHER}/ results to compare with")
    parts = ["# Teacher, naive 1-step and students in closed loop", "",
             "Made by `python bench/eval_students.py summarize`; see that file for the protocol.", ""]
    for suite in SUITES:
        parts += [f"## {suite} suite: success (Wilson 95%)", "", *success_table(args.out, variants, suite), ""]
    parts += ["## Decision-point probe (bimodal suite)", "", *probe_rows(args.out, variants), "",
              "## /act latency in the closed-loop runs (client round trip, HTTP msgpack)", "",
              *latency_rows(args.out, variants), ""]
    text = "\n".join(parts)
    (args.out / "README.md").write_text(text)
    print(text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--teacher", type=Path, required=True)
    r.add_argument("--student", action="append", default=[], metavar="NAME=DIR")
    r.add_argument("--only", default=None, help="comma-separated variants to run")
    r.add_argument("--seed", type=int, action="append", default=None)
    r.add_argument("--episodes", type=int, default=50)
    r.add_argument("--probe-points", type=int, default=10)
    r.add_argument("--probe-samples", type=int, default=64)
    r.add_argument("--out", type=Path, required=True)
    s = sub.add_parser("summarize")
    s.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    if args.cmd == "run":
        args.seed = args.seed or [1_000_000, 2_000_000]
        run(args)
    else:
        summarize(args)


if __name__ == "__main__":
    sys.exit(main())
