"""sana-serve HTTP server: OpenAI-compatible Videos API over the engine (see DESIGN.md, Contracts).

    app.py      FastAPI app, routes, errors, auth / body-limit guard, `sana-serve serve`
    schemas.py  pydantic request/response bodies and the model-limit checks
    store.py    JobStore (SQLite WAL) and JobFiles (paths, rollout checkpoints)
    worker.py   the one thread that owns the model: continuous batching, checkpoints, sessions
    outputs.py  per-block frames + fMP4 segments, final MP4 + thumbnail
    hub.py      fan-out of finished blocks to live viewers;  ws.py: websockets and the page
    metrics.py  Prometheus metrics;  config.py: ServerSettings and the serve options
"""
