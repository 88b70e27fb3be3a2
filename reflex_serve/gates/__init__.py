"""The 9-gate evaluator: may a candidate version ship? (docs/gates.md)

    config.py       thresholds; defaults in defaults.toml, --config FILE on top
    evidence.py     replay observations (store held-out split, demo frames), edge probes,
                    K draws per observation with shared noise
    safety.py       S1 finite, S2 action_limits, S3 motion_smoothness (never overridable)
    performance.py  P1 task_success, P2 per_task_regression, P3 action_agreement,
                    P4 latency_speedup, P5 latency_p99_budget, P6 resources
    measure.py      latency side by side, resources in child processes, MetaWorld suite
    results.py      the gate catalogue, GateResult, GateReport
    runner.py       run_gates(candidate, reference, config) -> GateReport
    audit.py        persist runs, audited overrides, may_ship(store, version)
    report.py       rich table and JSON
    metrics.py      Prometheus collector of the latest results (reflex serve /metrics)
    cli.py          reflex gates run | override | show

Modules import their heavy dependencies lazily; this package imports nothing on import.
"""
