"""The scheduler thread inside a serving process: claim due runs, start and watch workers.

Every ``poll_s`` (or at once after a run-now) the thread:

1. fails runs whose heartbeat is older than ``stale_after_s`` (their worker and the
   replica that started it are gone: a killed server, a lost host);
2. watches its own worker: an exit status other than 0 (a crash, a signal) fails the
   run with that reason if the worker did not end it itself, and the worker's process
   group is killed;
3. with no worker of its own, claims a queued manual run, else the schedule's due run
   (:func:`reflex_serve.storage.distill_runs.claim_due`: exactly once across replicas),
   and starts a worker for it.

The thread only issues short store queries and ``Popen``: serving never waits on it,
and training, gates and shadowing run in the worker process. On server stop the
running worker is sent SIGTERM (SIGKILL after ``stop_timeout_s``) and its run is marked
failed ("server stopped"): the worker promotes through this server, so it cannot
finish without it.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

from reflex_serve.loop.admin import KEY_ENV, SERVER_ENV
from reflex_serve.loop.config import LoopConfig
from reflex_serve.loop.schedule import parse_schedule
from reflex_serve.loop.worker import STORE_ENV
from reflex_serve.storage import distill_runs as runs
from reflex_serve.storage.models import utcnow
from reflex_serve.storage.store import Store

log = logging.getLogger(__name__)

#: () -> (version, export directory) of the version served now (the run's teacher)
TeacherFn = Callable[[], tuple[str, Path]]


def exit_reason(returncode: int) -> str:
    """``worker killed by signal SIGKILL`` / ``worker exited with status 1``."""
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = str(-returncode)
        return f"worker killed by signal {name}"
    return f"worker exited with status {returncode}"


def resolve_teacher(store: Store, version: str, export_dir: Path) -> tuple[str, Path]:
    """The flow-matching teacher behind the version served now: the version itself when
    it is one; for a distilled student (``target_time`` not ``instantaneous``) or a
    teacher at fewer steps (provenance ``teacher-steps``), its parent, followed up the
    ``parent_version`` chain through the store's registered locations. Falls back to
    the served version when a parent is unknown or has no location here."""
    from reflex_serve.export.manifest import read_manifest
    from reflex_serve.storage.gate_runs import find_version

    seen: set[str] = set()
    manifest = read_manifest(export_dir)
    while (manifest.target_time != "instantaneous"
           or manifest.provenance.get("kind") == "teacher-steps"):
        parent = manifest.parent_version
        row = find_version(store, parent) if parent and parent not in seen else None
        if row is None or not row.location or not Path(row.location).is_dir():
            log.warning("the teacher of %s is not registered with a location; distilling "
                        "from %s itself", manifest.version, manifest.version)
            break
        seen.add(parent)
        version, export_dir = row.version, Path(row.location)
        manifest = read_manifest(export_dir)
    return version, Path(export_dir)


class DistillLoop:
    """The loop of one serving process.

    Args:
        store: the store (schedule, runs, served rows).
        config: the loop settings (``config.schedule`` None: run-now only).
        teacher: what is served now (the router's active version).
        admin_key: the key the worker uses on this server's admin API.
        server_url: this server's loopback URL (may be set later, before a run starts).
        replica: ``host:pid`` recorded with each run.
    """

    def __init__(self, store: Store, config: LoopConfig, teacher: TeacherFn, admin_key: str,
                 server_url: str | None = None, replica: str | None = None) -> None:
        from reflex_serve.router.promote import replica_name

        self.store, self.config, self.teacher = store, config, teacher
        self.admin_key, self.server_url = admin_key, server_url
        self.replica = replica or replica_name()
        self.schedule = parse_schedule(config.schedule) if config.schedule else None
        self.proc: subprocess.Popen | None = None
        self.run_id: str | None = None
        self.log_path: Path | None = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        """Create or read the schedule row (a restart keeps its next fire time) and start
        the thread."""
        if self.schedule is not None:
            row = runs.ensure_schedule(self.store, self.config.schedule_name, self.schedule.spec,
                                       self.schedule.next_after(utcnow()))
            log.info("distill schedule %s (%s): next run at %s", row["spec"],
                     self.schedule.describe(), row["next_run_at"].isoformat())
        self._thread = threading.Thread(target=self._loop, daemon=True, name="distill-scheduler")
        self._thread.start()

    def close(self) -> None:
        """Stop the thread; stop a running worker and mark its run failed."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(30)
        if self.proc is not None and self.proc.poll() is None:
            self._kill(self.proc, self.config.stop_timeout_s)
            runs.fail_run(self.store, self.run_id, "server stopped")
            log.warning("distill run %s stopped with the server", self.run_id)

    def run_now(self, actor: str = "admin") -> tuple[str, bool]:
        """Queue a manual run: (its id, True), or (the active run's id, False)."""
        now = utcnow()
        run_id, created = runs.queue_manual(self.store, now, stale_before=self._stale_before(now),
                                            actor=actor)
        if created:
            self._wake.set()
        return run_id, created

    # -- the thread -------------------------------------------------------------------------

    def _stale_before(self, now):
        return now - timedelta(seconds=self.config.stale_after_s)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.tick()
            except Exception:
                log.exception("distill scheduler tick failed")
            self._wake.wait(self.config.poll_s)
            self._wake.clear()

    def tick(self) -> str | None:
        """One pass (module docstring); the id of a run started now, if any."""
        now = utcnow()
        for run_id in runs.fail_stale(self.store, self._stale_before(now)):
            log.error("distill run %s failed: its worker stopped sending heartbeats", run_id)
        if self.proc is not None and not self._watch():
            return None
        if self.server_url is None:
            return None
        run_id = runs.claim_queued(self.store, self.replica, now)
        if run_id is None and self.schedule is not None:
            version, _ = resolve_teacher(self.store, *self.teacher())
            claim = runs.claim_due(
                self.store, self.config.schedule_name, now, self.schedule.next_after(now),
                host=self.replica, stale_before=self._stale_before(now),
                min_new_samples=self.config.min_new_samples, teacher_version=version)
            if claim is not None and claim.skipped:
                log.info("distill run %s skipped: %s", claim.run_id, claim.reason)
            elif claim is not None:
                run_id = claim.run_id
        if run_id is not None:
            try:
                self._spawn(run_id, now)
            except Exception as exc:
                log.exception("cannot start the worker of distill run %s", run_id)
                runs.fail_run(self.store, run_id, f"cannot start the worker: {exc}")
                self.proc = self.run_id = None
        return run_id

    def _watch(self) -> bool:
        """Check the worker; True when it is gone (and its run settled)."""
        proc, run_id = self.proc, self.run_id
        code = proc.poll()
        run = runs.get_run(self.store, run_id)
        over = run is None or run["status"] not in ("queued", "running")
        if code is None and not over:
            return False
        if code is None:  # its run was ended by someone else (a lost heartbeat)
            self._kill(proc, 0)
            code = proc.returncode
        else:
            self._killpg(proc)  # children it left (gate measurements)
        if code != 0 and runs.fail_run(self.store, run_id, self._reason(code)):
            log.error("distill run %s failed: %s", run_id, exit_reason(code))
        elif code == 0 and runs.fail_run(self.store, run_id, "worker exited without a result"):
            log.error("distill run %s failed: the worker recorded no result", run_id)
        self.proc = self.run_id = None
        return True

    def _reason(self, code: int) -> str:
        """The exit reason, with the last line of the worker's log after an exit status
        (a killed worker has nothing to add)."""
        reason = exit_reason(code)
        if code > 0 and self.log_path is not None and self.log_path.is_file():
            lines = [x for x in self.log_path.read_text(errors="replace").splitlines() if x]
            if lines:
                reason += f": {lines[-1][-300:]}"
        return reason

    def _spawn(self, run_id: str, now) -> None:
        version, teacher_dir = resolve_teacher(self.store, *self.teacher())
        run_dir = (self.config.work_dir / run_id).resolve()
        run_dir.mkdir(parents=True, exist_ok=True)
        self.config.save(run_dir / "config.json")
        runs.update_run(self.store, run_id, teacher_version=version, data_until=now,
                        heartbeat_at=utcnow(),
                        summary={"teacher_dir": str(Path(teacher_dir).resolve()),
                                 "run_dir": str(run_dir)})
        threads = str(self.config.threads)
        env = {**os.environ, STORE_ENV: self.store.url, SERVER_ENV: self.server_url,
               KEY_ENV: self.admin_key, "OMP_NUM_THREADS": threads,
               "MKL_NUM_THREADS": threads, "OPENBLAS_NUM_THREADS": threads,
               "PYTHONUNBUFFERED": "1"}
        self.log_path = run_dir / "worker.log"
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "reflex_serve.loop.worker", "--run-id", run_id,
                 "--run-dir", str(run_dir)],
                env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True)
        self.run_id = run_id
        runs.update_run(self.store, run_id, worker_pid=self.proc.pid)
        log.info("distill run %s started: worker pid %d, teacher %s, log %s", run_id,
                 self.proc.pid, version, run_dir / "worker.log")

    @staticmethod
    def _killpg(proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def _kill(self, proc: subprocess.Popen, grace_s: float) -> None:
        if grace_s > 0:
            self._killpg(proc, signal.SIGTERM)
            try:
                proc.wait(grace_s)
            except subprocess.TimeoutExpired:
                pass
        self._killpg(proc)
        proc.wait()
