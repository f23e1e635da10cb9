"""The embedded backend: `sana-serve serve`, everything in one process.

    store.py    SqliteJobStore: JobRecords + WorkQueue in one SQLite database (WAL)
    files.py    LocalJobFiles: one directory per job under data_dir/videos/
    hub.py      InProcessBlockHub: fan-out of finished blocks inside the process

The worker thread is the one server.worker.Worker with the default WorkerStrategy (a worker
alone with its queue: cancels arrive as direct calls, nobody else takes a job over).
`build(settings)` wires them into the Parts that server.app serves.
"""
from __future__ import annotations

from sana_serve.server.config import ServerSettings, load_model_config
from sana_serve.server.embedded.files import LocalJobFiles, remove_orphans
from sana_serve.server.embedded.hub import InProcessBlockHub
from sana_serve.server.embedded.store import SqliteJobStore
from sana_serve.server.interfaces import Parts
from sana_serve.server.worker import Worker, WorkerRunner, engine_loader

__all__ = ["build"]


def build(settings: ServerSettings) -> Parts:
    model_config = load_model_config(settings)
    data_dir = settings.data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    store = SqliteJobStore(data_dir / "jobs.sqlite3")
    files = LocalJobFiles(data_dir, keep_frames=settings.keep_frames)
    hub = InProcessBlockHub(files.replay_reader)
    worker = Worker(settings, store, files, engine_loader(settings, model_config), hub=hub)

    def clean_orphans() -> None:
        import logging

        orphans = remove_orphans(store, files)
        if orphans:
            logging.getLogger("sana_serve.server").info("removed %d orphaned video directories", len(orphans))

    return Parts(model_config=model_config, records=store, files=files, hub=hub, runner=WorkerRunner(worker, files, hub),
                 queue=store, description=str(data_dir), on_start=[clean_orphans])
