"""The data store: SQLAlchemy models, Alembic migrations, the non-blocking writer, readers.

    Store.open(url | None, data_dir)        open, create or upgrade   (store.py)
    DataCollector / StoreWriter             --collect-data            (collector.py, writer.py)
    ReadQuery, iter_batches, load_frame_data                          (reader.py)
    write_demo_episode, import_demo_dir     demonstrations            (demos.py)
    store_stats, prune, export_lerobot      reflex data ...           (maintenance.py, export.py)
    register_version, set_version_state     model versions            (versions.py)
    save_gate_run, latest_gate_run, ...     gate runs and overrides   (gate_runs.py)

Nothing outside this package writes SQL. Names are imported lazily so that the CLI
(``reflex --help``) does not import SQLAlchemy.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "Store": "store",
    "StoreError": "engine",
    "WriteResult": "store",
    "OutcomeReport": "store",
    "FrameRecord": "records",
    "EpisodeInfo": "records",
    "Privacy": "records",
    "InvalidRecord": "records",
    "StoreWriter": "writer",
    "WriterConfig": "writer",
    "DataCollector": "collector",
    "CollectOptions": "collector",
    "ReadQuery": "reader",
    "Batch": "reader",
    "iter_batches": "reader",
    "read_all": "reader",
    "load_frame_data": "reader",
    "split_of": "reader",
    "write_demo_episode": "demos",
    "import_demo_dir": "demos",
    "store_stats": "maintenance",
    "prune": "maintenance",
    "parse_duration": "maintenance",
    "export_lerobot": "export",
    "register_version": "versions",
    "set_version_state": "versions",
    "transitions": "versions",
    "save_gate_run": "gate_runs",
    "latest_gate_run": "gate_runs",
    "latest_gate_runs": "gate_runs",
    "add_override": "gate_runs",
    "find_version": "gate_runs",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f"{__name__}.{module}"), name)
