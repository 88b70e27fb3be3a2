"""The self-distilling loop (docs/loop.md).

    candidates.py   the candidate step: the teacher at fewer Euler steps (teacher@N) and
                    the SnapFlow student through the nine gates; the fastest that passes
    choice.py       the choice among gated candidates and each verdict's reason
    schedule.py     --distill-schedule specs (nightly, every N, cron) -> next fire times
    config.py       LoopConfig: every setting of the loop, TOML and flags
    scheduler.py    DistillLoop: the thread in the server that claims due runs and
                    starts, watches and stops worker processes
    worker.py       python -m reflex_serve.loop.worker: one run in its own process
    pipeline.py     the stages data -> distill -> candidates -> shadow -> promote -> monitor
    admin.py        the worker's client of the server's admin API
    metrics.py      reflex_distill_* Prometheus metrics, read from the store
    cli.py          reflex runs list | show, and the reflex serve --distill-* options

Modules import their heavy dependencies lazily; this package imports nothing on import.
"""
