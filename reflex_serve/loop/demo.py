"""``reflex demo``: the whole self-distilling loop on embedded defaults.

One command, no downloads, about 15 minutes on two CPU cores:

1. ``reflex serve`` (its own process) serves the shipped teacher with ``--collect-data``
   into a SQLite store under ``--out``, an admin key, and a short distill schedule
   (``every 1m`` with ``--min-new-samples``: due times before enough traffic are
   recorded as skipped);
2. the MetaWorld simulator is the robot: rounds of closed-loop episodes through
   ``POST /act`` (msgpack), each episode's outcome reported to the server;
3. the loop does the rest by itself: its worker process distills a SnapFlow student from
   the served traffic, puts it and the teacher at fewer Euler steps through the nine
   gates, shadows the fastest candidate that passes all nine, promotes it (warm-swap) and
   the router's post-swap monitor watches it;
4. traffic goes on until a few rounds ran on the new version; then a summary: the run's
   stages and candidates, the swap, and success and /act latency before and after.

The "before" rounds are those that finished before the first run started, the "after"
rounds those served by the new version alone after the worker finished: neither shares
the CPU with the worker. The gates' side-by-side latency ratio (P4) is reported too.
"""

from __future__ import annotations

import json
import secrets
import shutil
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from ..client import ReflexClient
from ..sim.tasks import DEFAULT_TASKS
from .demo_report import quantile, summarize, to_markdown

SUMMARY_MD, SUMMARY_JSON = "summary.md", "summary.json"
FINAL = ("succeeded", "refused", "failed")


@dataclass(frozen=True)
class DemoOptions:
    """Settings of :func:`run_demo`.

    Attributes:
        out: working directory (store, loop runs, server log, summary); replaced.
        export_dir: the teacher served first.
        tasks: MetaWorld tasks of the traffic and of the gates' closed-loop suite.
        episodes_per_round: episodes per task in one round of traffic.
        min_new_samples: served rows before a scheduled run starts.
        distill_steps: optimizer steps of the student.
        teacher_steps: the teacher at these Euler steps is also a candidate.
        gate_episodes: closed-loop episodes per task and policy for P1 / P2 (25 x 6
            tasks = 150: a candidate may miss 2 episodes more than a perfect teacher and
            still pass P1's bar of 0.95; with 78, one miss of each failed a 2-step teacher).
        after_rounds: rounds served by the new version before the summary.
        max_minutes: stop (and summarize) after this long whatever happened.
        schedule: the ``--distill-schedule`` spec.
    """

    out: Path = Path("runs/demo")
    export_dir: Path | None = None
    tasks: tuple[str, ...] = tuple(DEFAULT_TASKS)
    episodes_per_round: int = 1
    min_new_samples: int = 300
    distill_steps: int = 2000
    teacher_steps: tuple[int, ...] = (1, 2, 4)
    gate_episodes: int = 25
    after_rounds: int = 3
    max_minutes: float = 30.0
    schedule: str = "every 1m"


@dataclass
class Round:
    """One round of traffic: episodes, successes and every /act call's figures."""

    index: int
    started_s: float
    finished_s: float
    episodes: int
    successes: int
    versions: dict[str, int]
    latencies_ms: list[float]
    server_ms: list[float]

    @property
    def version(self) -> str | None:
        """The version that served every call of the round (None if several did)."""
        return next(iter(self.versions)) if len(self.versions) == 1 else None


class TimedClient(ReflexClient):
    """A :class:`ReflexClient` that keeps each ``act`` call's client wall time (ms),
    the server's own time (ms) and the version that answered."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.calls: list[tuple[float, float, str]] = []

    def act(self, *args: Any, **kwargs: Any):
        res = super().act(*args, **kwargs)
        self.calls.append((res.extra["rtt_ms"], res.total_ms, res.version))
        return res


def _toml(values: dict[str, Any]) -> str:
    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (str, Path)):
            return json.dumps(str(v))
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(value(x) for x in v) + "]"
        return repr(v)

    return "".join(f"{k} = {value(v)}\n" for k, v in values.items())


def write_settings(opts: DemoOptions) -> tuple[Path, Path]:
    """The loop's and the gates' TOML files under ``opts.out``; returns their paths."""
    gates = opts.out / "gates.toml"
    gates.write_text(
        "[sim]\n" + _toml({"tasks": list(opts.tasks), "episodes": opts.gate_episodes,
                           "only_if_passing": True})
    )
    loop = opts.out / "loop.toml"
    loop.write_text(_toml({
        "distill_steps": opts.distill_steps, "teacher_steps": list(opts.teacher_steps),
        "gates_config": gates.resolve(), "work_dir": (opts.out / "loop").resolve(),
        "shadow_s": 30.0, "shadow_fraction": 0.5, "min_rows": 64,
    }))
    return loop, gates


class Demo:
    """The server process, the simulated robot and the run being watched (:func:`run_demo`)."""

    def __init__(self, opts: DemoOptions, say: Callable[[str], None]) -> None:
        self.opts, self.say = opts, say
        self.key = secrets.token_urlsafe(16)
        self.rounds: list[Round] = []
        self.t0 = time.monotonic()
        self.proc = self.url = None

    def start(self) -> None:
        """Start ``reflex serve`` with collection and the schedule; wait for /health."""
        from ..assets import default_teacher
        from ..server.runner import spawn_server

        loop, _ = write_settings(self.opts)
        teacher = self.opts.export_dir or default_teacher()
        self.proc, self.url = spawn_server(
            teacher, "--collect-data", "--data-dir", str(self.opts.out / "data"),
            "--admin-key", self.key, "--distill-schedule", self.opts.schedule,
            "--min-new-samples", str(self.opts.min_new_samples), "--loop-config", str(loop),
            log_path=self.opts.out / "server.log", timeout_s=120.0)
        self.say(f"serving {teacher} at {self.url}; loop: {self.opts.schedule}, "
                 f"after {self.opts.min_new_samples} served rows")

    def admin(self, path: str) -> Any:
        r = httpx.get(self.url + path, headers={"Authorization": f"Bearer {self.key}"}, timeout=30)
        r.raise_for_status()
        return r.json()

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def drive_round(self, client: TimedClient, settings: dict[str, Any]) -> Round:
        """One round of closed-loop episodes (new seeds each round) through /act."""
        from ..sim.evaluate import EVAL_SEED_START, evaluate

        i = len(self.rounds)
        client.calls.clear()
        start = self.elapsed()
        report = evaluate(client, list(self.opts.tasks), self.opts.episodes_per_round,
                          EVAL_SEED_START + i * self.opts.episodes_per_round, progress=False,
                          **settings)
        r = Round(i, start, self.elapsed(), report.episodes, report.successes,
                  dict(report.config.get("model_versions", {})),
                  [c[0] for c in client.calls], [c[1] for c in client.calls])
        self.rounds.append(r)
        return r

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except Exception:  # noqa: BLE001 - a server that does not stop is killed
                self.proc.kill()


def _run_line(run: dict[str, Any]) -> str:
    stages = run.get("stages") or []
    current = next((s["stage"] for s in reversed(stages) if s["status"] == "running"), None)
    return f"run {run['id']} {run['status']}" + (f" ({current})" if current else "")


def run_demo(opts: DemoOptions, say: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the loop demo (module docstring); returns the summary (also written to
    ``opts.out``/summary.json and summary.md).

    Raises:
        RuntimeError: the server did not start (its log is ``opts.out``/server.log).
    """
    from ..sim.evaluate import sim_settings_from_manifest

    opts.out.mkdir(parents=True, exist_ok=True)
    for stale in ("data", "loop"):
        shutil.rmtree(opts.out / stale, ignore_errors=True)
    demo = Demo(opts, say)
    demo.start()
    run: dict[str, Any] | None = None
    started_at: float | None = None
    after = 0
    try:
        with TimedClient(demo.url, report_outcomes=True) as client:
            settings = sim_settings_from_manifest(client.wait_ready())
            while demo.elapsed() < opts.max_minutes * 60:
                r = demo.drive_round(client, settings)
                runs = [x for x in demo.admin("/admin/distill/runs") if x["status"] != "skipped"]
                if runs and started_at is None:
                    started_at = demo.elapsed()
                run = demo.admin(f"/admin/distill/runs/{runs[-1]['id']}") if runs else None
                status = _run_line(run) if run else "no run yet"
                say(f"[{demo.elapsed() / 60:5.1f} min] round {r.index}: {r.successes}/{r.episodes} "
                    f"episodes, /act p50 {quantile(r.latencies_ms, 0.5):.1f} ms, served by "
                    f"{', '.join(r.versions)}; {status}")
                if run and run["status"] in FINAL:
                    promoted = run.get("promoted_version")
                    if not promoted or r.version == promoted:
                        after += 1
                    if after >= (opts.after_rounds if promoted else 1):
                        break
            router = demo.admin("/admin/router")
    finally:
        demo.stop()
    summary = summarize(demo.rounds, run, started_at, router if run else None, demo.elapsed())
    (opts.out / SUMMARY_JSON).write_text(json.dumps(summary, indent=2, default=str) + "\n")
    (opts.out / SUMMARY_MD).write_text(to_markdown(summary))
    return summary
