"""The HTTP and websocket routes, one router per concern (FastAPI's "bigger applications" layout).

    videos.py      POST/GET/DELETE /v1/videos..., cancel, content
    streaming.py   WS /v1/videos/{id}/stream
    realtime.py    WS /v1/realtime
    operations.py  /healthz, /readyz, /metrics
    page.py        the playground page (GET /, /static/...)
"""
