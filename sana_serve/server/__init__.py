"""sana-serve HTTP server: OpenAI-compatible Videos API over the engine (the README's Server section).

One HTTP layer over two backends, each behind the interfaces it implements:

    interfaces.py  JobRecords, WorkQueue, JobFiles, BlockHub, Runner; Parts (what a backend's build returns)
    app.py         create_app(parts, settings): routers, errors, auth / body-limit guard; `serve|api|worker`
    routes/        videos, streaming (WS stream), realtime (WS), operations (health, metrics), page
    deps.py        the parts a handler needs, through Depends
    validation.py  every check of a request, each error naming its parameter;  schemas.py: bodies
    worker.py      the one Worker loop (continuous batching, the writer thread, checkpoints, sessions)
                   and the WorkerStrategy it is given;  jobs.py: the job record
    hub.py         what both block hubs share (viewer buffers, replay, Subscription);  outputs.py: fMP4 files
    embedded/      `serve`: SQLite store, in-process hub, local job directories
    cluster/       `api` / `worker`: Redis store and hub, shared storage (directory or S3), ClusterStrategy,
                   the API node's runner, cluster metrics
    metrics.py     Prometheus metrics;  config.py: ServerSettings and the command-line options
"""
