"""Imported LeRobot teachers and their 1-step students, end to end, with /act side by side.

    python bench/bench_imported.py [--kinds smolvla,pi0,pi05] [--out runs/imported]
        [--requests 400] [--steps 300] [--rounds 150]

Needs the LeRobot venv (scripts/lerobot_venv.sh). For each kind: a tiny random-weight
checkpoint built offline (seed 0), `reflex import lerobot`, the teacher served with
`--collect-data` and driven with ``--requests`` synthetic observations over HTTP,
`reflex train distill` from that store alone (``--steps``), `reflex validate export`
against the teacher, then bench/bench_student.py: the teacher at 10 steps, the teacher
asked for 1 step and the student, one server each, interleaved, prefix cache off.
Everything lands under ``--out/<kind>``; the figures are in docs/lerobot.md.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

from reflex_serve.client import ReflexClient
from reflex_serve.export.parity import random_observations
from reflex_serve.lerobot_import import venv
from reflex_serve.runtime.policy import Policy
from reflex_serve.server.runner import spawn_server

BENCH = Path(__file__).parent


def reflex(*args: str) -> str:
    """Run a reflex command; its output, or exit with its stderr."""
    done = subprocess.run([sys.executable, "-m", "reflex_serve.cli", *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.exit(f"reflex {' '.join(args)} failed ({done.returncode}):\n{done.stderr}{done.stdout}")
    return done.stdout


def drive(teacher: Path, data_dir: Path, requests: int) -> None:
    """Serve the teacher with collection and send it ``requests`` observations."""
    observations = random_observations(Policy(teacher), requests, seed=1)
    proc, url = spawn_server(teacher, "--collect-data", "--data-dir", str(data_dir))
    try:
        client = ReflexClient(url)
        for i, obs in enumerate(observations):
            client.act(obs, episode_id=f"e{i // 20}", step=i % 20)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def run_kind(kind: str, root: Path, args: argparse.Namespace) -> None:
    root.mkdir(parents=True, exist_ok=True)
    ckpt, teacher, student = root / "ckpt", root / "teacher", root / "student"
    for old in (root / "data", root / "run"):  # a rerun starts from an empty store
        shutil.rmtree(old, ignore_errors=True)
    if not ckpt.exists():
        venv.build_tiny(kind, ckpt, seed=0, hf_home=root / "hf-home")
    tokenizer = sorted((root / "hf-home" / "hub").glob("models--google--paligemma*/snapshots/*/tokenizer.json"))
    option = ["--tokenizer", str(tokenizer[0])] if tokenizer else []
    print(reflex("import", "lerobot", str(ckpt), "--output", str(teacher), "--overwrite", *option).strip())
    drive(teacher, root / "data", args.requests)
    print(reflex("train", "distill", str(teacher), "--output", str(student), "--overwrite",
                 "--data-dir", str(root / "data"), "--steps", str(args.steps),
                 "--run-dir", str(root / "run"), "--no-resume", "--no-progress").strip())
    verdict = reflex("validate", "export", str(student), "--reference", str(teacher),
                     "--data-dir", str(root / "data"))
    print("\n".join(line for line in verdict.splitlines() if "|diff|" in line or "pooled" in line
                    or line.strip() in ("PASS", "FAIL")))
    bench = subprocess.run([sys.executable, str(BENCH / "bench_student.py"), "--teacher", str(teacher),
                            "--student", f"snapflow={student}", "--rounds", str(args.rounds)],
                           capture_output=True, text=True, check=True)
    print(bench.stdout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kinds", default="smolvla,pi0,pi05")
    ap.add_argument("--out", type=Path, default=Path("runs/imported"))
    ap.add_argument("--requests", type=int, default=400)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=150)
    args = ap.parse_args()
    for kind in args.kinds.split(","):
        print(f"=== {kind} ===", flush=True)
        run_kind(kind, args.out / kind, args)


if __name__ == "__main__":
    main()
