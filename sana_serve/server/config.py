"""Server settings: where data lives, who may call, how much work is let in.

One frozen dataclass, filled from the `serve` command line; the API keys may also come from
the environment (SANA_SERVE_API_KEYS, comma-separated) so they stay out of process listings.
The model's own request limits (max seconds, steps, guidance, prompt length) live in the
model config (engine.config.LimitsConfig), not here.
"""
from __future__ import annotations

import hmac
import os
from dataclasses import dataclass
from typing import Optional
from pathlib import Path

API_KEYS_ENV = "SANA_SERVE_API_KEYS"


def keys_from_env(environ: dict | None = None) -> tuple[str, ...]:
    raw = (environ if environ is not None else os.environ).get(API_KEYS_ENV, "")
    return tuple(k.strip() for k in raw.split(",") if k.strip())


@dataclass(frozen=True)
class ServerSettings:
    config: str | None = None  # model config name in configs/ or a .yaml path; None: shapes-tiny, or the
    # release config matching a diffusers --checkpoint (engine.load.default_config_name)
    data_dir: Path = Path("data")
    host: str = "127.0.0.1"
    port: int = 8000
    api_keys: tuple[str, ...] = ()  # empty: no authentication
    cors_origins: tuple[str, ...] = ()  # e.g. ("*",) or ("https://app.example",)
    max_queued: int = 64  # jobs waiting (not yet running); more -> 429 with Retry-After
    max_batch: int = 4  # rollouts advanced together per engine step (jobs + realtime sessions)
    max_sessions: int = 2  # concurrent realtime sessions
    job_ttl_seconds: int = 24 * 3600  # finished videos expire this long after completion
    cleanup_interval_seconds: float = 60.0
    max_body_bytes: int = 64 * 1024  # request bodies above this -> 413
    torch_threads: int | None = None  # None: all cores
    device: str | None = None  # None: cuda if available, else cpu
    checkpoint: str | None = None  # overrides the model config's checkpoint directory
    precision: str = "auto"  # auto (bf16 on CUDA, fp32 on CPU) | fp32 | bf16 | nvfp4 (quantize on load)
    kernels: str = "auto"  # auto (Triton on CUDA, PyTorch on CPU) | triton | torch
    compile: bool = False  # torch.compile the chunk forward: faster once warm, ~1 min per new batch shape
    # A job's frames do not depend on what it is batched with (or on which worker resumes it):
    # GEMMs, convs and attention run per request inside the shared forward (engine.Engine).
    batch_invariant: bool = True
    log_format: str = "json"  # json | text
    keep_frames: bool = False  # also store each block's raw frames (.npy); tests compare them exactly
    # Reachable without an API key: health probes and the playground page's static shell (code,
    # no data; the page's own API calls carry the key). Entries ending in "/" are prefixes.
    public_paths: tuple[str, ...] = ("/healthz", "/readyz", "/", "/static/", "/favicon.ico")
    realtime_idle_seconds: float = 120.0  # a realtime session with no client message for this long ends
    realtime_buffer_blocks: int = 4  # blocks a realtime viewer may fall behind before it is cut off

    def __post_init__(self):
        for name in ("max_queued", "max_batch", "max_body_bytes", "job_ttl_seconds"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_sessions < 0:
            raise ValueError(f"max_sessions must be >= 0, got {self.max_sessions}")
        if self.log_format not in ("json", "text"):
            raise ValueError(f"log_format must be json or text, got {self.log_format!r}")
        object.__setattr__(self, "data_dir", Path(self.data_dir))

    # -- authentication ------------------------------------------------------------------------
    @property
    def auth_enabled(self) -> bool:
        return bool(self.api_keys)

    def check_key(self, token: str | None) -> bool:
        """True if no keys are configured or `token` is one of them (constant-time comparison)."""
        if not self.api_keys:
            return True
        if not token:
            return False
        candidate = token.encode()
        ok = False
        for key in self.api_keys:  # compare against every key: timing does not reveal which matched
            ok |= hmac.compare_digest(candidate, key.encode())
        return ok


def load_model_config(settings: ServerSettings):
    """The served model's config (fast, YAML; fails early on a bad --config). No --config: the one
    that matches --checkpoint (engine.load.default_config_name)."""
    from sana_serve.engine.config import load_config
    from sana_serve.engine.load import default_config_name

    return load_config(settings.config or default_config_name(settings.checkpoint))


def bearer_token(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header, else None."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


def add_serve_arguments(p) -> None:
    """The `sana-serve serve` options (argparse); see ServerSettings for what each means."""
    d = ServerSettings()
    p.add_argument("--config", default=d.config, help="model config name in configs/ or a .yaml path")
    p.add_argument("--checkpoint", help="checkpoint directory (Hugging Face layout) or a Hub repo id, "
                                        "overrides the config's")
    p.add_argument("--host", default=d.host)
    p.add_argument("--port", type=int, default=d.port)
    p.add_argument("--data-dir", default=str(d.data_dir), help="job database and video files (created if missing)")
    p.add_argument("--api-key", action="append", default=[],
                   help=f"accepted API key (repeatable; also ${API_KEYS_ENV}, comma-separated). None: no auth")
    p.add_argument("--cors-origin", action="append", default=[], help="allowed CORS origin (repeatable, or '*')")
    p.add_argument("--max-queued", type=int, default=d.max_queued, help="waiting jobs before 429")
    p.add_argument("--max-batch", type=int, default=d.max_batch, help="rollouts advanced together per engine step")
    p.add_argument("--max-sessions", type=int, default=d.max_sessions, help="concurrent realtime sessions")
    p.add_argument("--job-ttl", type=int, default=d.job_ttl_seconds, help="seconds a finished video is kept")
    p.add_argument("--cleanup-interval", type=float, default=d.cleanup_interval_seconds)
    p.add_argument("--max-body-bytes", type=int, default=d.max_body_bytes)
    p.add_argument("--threads", type=int, help="torch intra-op threads (default: all cores)")
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16", "nvfp4"], default=d.precision,
                   help="weights: auto (bf16 on CUDA, fp32 on CPU), fp32, bf16, or nvfp4 (quantized on load)")
    p.add_argument("--kernels", choices=["auto", "triton", "torch"], default=d.kernels,
                   help="auto: Triton on CUDA, PyTorch on CPU")
    p.add_argument("--compile", action="store_true", help="torch.compile the chunk forward (warm-up per batch shape)")
    p.add_argument("--no-batch-invariance", dest="batch_invariant", action="store_false",
                   help="let a job's pixels depend on what it is batched with, for a little throughput "
                        "(README: Batching and determinism)")
    p.add_argument("--log-format", choices=["json", "text"], default=d.log_format)
    p.add_argument("--keep-frames", action="store_true", help="also store each block's raw frames (.npy) beside its fMP4 segment")


def settings_from_args(args, environ: dict | None = None) -> ServerSettings:
    keys = tuple(dict.fromkeys([*args.api_key, *keys_from_env(environ)]))
    return ServerSettings(
        config=args.config, checkpoint=args.checkpoint, host=args.host, port=args.port, data_dir=Path(args.data_dir),
        api_keys=keys, cors_origins=tuple(args.cors_origin), max_queued=args.max_queued, max_batch=args.max_batch,
        max_sessions=args.max_sessions, job_ttl_seconds=args.job_ttl, cleanup_interval_seconds=args.cleanup_interval,
        max_body_bytes=args.max_body_bytes, torch_threads=args.threads, device=args.device,
        log_format=args.log_format, keep_frames=args.keep_frames, precision=args.precision, kernels=args.kernels,
        compile=args.compile, batch_invariant=args.batch_invariant)


# -- the cluster roles (sana-serve api / worker; server/cluster/) -------------------------------
@dataclass(frozen=True)
class ClusterSettings:
    store_url: str  # redis://HOST:PORT/DB
    storage: str  # a shared directory or s3://bucket/prefix
    s3_endpoint_url: Optional[str] = None  # MinIO and friends (else AWS_ENDPOINT_URL or AWS itself)
    lease_seconds: float = 15.0  # a running job whose worker has not renewed for this long is reclaimed
    max_attempts: int = 3  # a job claimed more often than this (it killed its workers) fails
    worker_name: Optional[str] = None  # the consumer name; default host-pid
    prefix: str = "sana"

    def __post_init__(self):
        if not self.store_url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(f"--store {self.store_url!r}: expected a Redis URL such as redis://HOST:6379/0")
        if self.lease_seconds <= 0:
            raise ValueError(f"--lease-seconds must be > 0, got {self.lease_seconds:g}")
        if self.max_attempts < 1:
            raise ValueError(f"--max-attempts must be >= 1, got {self.max_attempts}")


def add_cluster_arguments(p, role: str) -> None:
    d = ClusterSettings("redis://", "")
    p.add_argument("--store", required=True, help="the shared job store: redis://HOST:6379/0")
    p.add_argument("--storage", required=True, help="shared storage: a directory every node mounts, or s3://bucket/prefix")
    p.add_argument("--s3-endpoint-url", help="S3-compatible endpoint (MinIO ...); default AWS_ENDPOINT_URL or AWS")
    p.add_argument("--lease-seconds", type=float, default=d.lease_seconds,
                   help="a running job whose worker has not renewed its lease for this long is taken over")
    p.add_argument("--max-attempts", type=int, default=d.max_attempts,
                   help="a job that was running on this many workers that stopped fails instead of retrying")
    p.add_argument("--redis-wait", type=float, default=60.0, help="seconds to wait for Redis at start-up")
    if role == "worker":
        p.add_argument("--worker-name", help="this worker's name in the queue (default HOST-PID; keep it stable "
                                             "across restarts of one container to take its jobs back at once)")


def cluster_settings_from_args(args) -> ClusterSettings:
    return ClusterSettings(store_url=args.store, storage=args.storage, s3_endpoint_url=args.s3_endpoint_url,
                           lease_seconds=args.lease_seconds, max_attempts=args.max_attempts,
                           worker_name=getattr(args, "worker_name", None))
