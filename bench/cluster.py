"""Cluster benchmark: aggregate throughput with 1 and 2 workers behind 2 API nodes, and the time
to take over a dead worker's job, through the real processes (redis-server, `sana-serve api`,
`sana-serve worker`) on 127.0.0.1, in one run.

- Throughput: `--jobs` jobs of `--seconds` s, submitted alternately through the two API nodes;
  frames/s of wall time from the first POST to the last completion. The 1-worker and 2-worker
  phases alternate `--repeats` times (worker 2 is stopped for the 1-worker phase), so both see
  the same machine load. Each worker runs one torch thread (`--threads 1`).
- Reclaim: a 3-block job; the worker that holds it is killed with SIGKILL after its first
  block; measured: kill -> the other worker owns the job (about the lease), and kill -> the job
  is completed.
- Batch invariance: a third phase runs the same jobs on 2 workers started with
  `--no-batch-invariance` (rows may then depend on the batch); the ratio of the default
  (batch-invariant) rate to that one is its cost here, through the whole cluster path. The
  engine-level measurement is bench/batch_invariance.py.

Prints a table, writes bench/results/cluster.json and bench/results/cluster.png.

Usage: python bench/cluster.py [--jobs 8] [--seconds 2] [--steps 1] [--repeats 2] [--lease 3]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
PROMPTS = ["a red circle moving right on a black background", "a blue square moving up on a white background",
           "a green triangle moving left on a gray background", "a yellow circle moving down on a black background"]
FPS = 16


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Proc:
    def __init__(self, name: str, args: list[str], log_dir: Path, port: int | None = None):
        self.name, self.args, self.port = name, args, port
        self.url = f"http://127.0.0.1:{port}" if port else None
        self.log = log_dir / f"{name}.log"
        self.proc = None

    def start(self) -> "Proc":
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
        self.proc = subprocess.Popen(self.args, cwd=ROOT, env=env, stdout=open(self.log, "ab"), stderr=subprocess.STDOUT)
        return self

    def wait_ready(self, timeout: float = 300) -> "Proc":
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited:\n{self.log.read_text()[-3000:]}")
            try:
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"{self.name} not ready")

    def stop(self, sig=signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(60)


def node(role: str, name: str, redis_url: str, storage: Path, tmp: Path, lease: float, extra=()) -> Proc:
    port = free_port()
    args = [sys.executable, "-m", "sana_serve", role, "--store", redis_url, "--storage", str(storage),
            "--host", "127.0.0.1", "--port", str(port), "--data-dir", str(tmp / f"{name}-scratch"),
            "--lease-seconds", str(lease), "--log-format", "text", "--max-queued", "256", *extra]
    if role == "worker":
        args += ["--worker-name", name, "--threads", "1"]
    return Proc(name, args, tmp, port)


def wait_done(client: httpx.Client, ids: list[str], timeout: float = 1800) -> None:
    deadline = time.monotonic() + timeout
    pending = set(ids)
    while pending and time.monotonic() < deadline:
        for vid in list(pending):
            v = client.get(f"/v1/videos/{vid}").json()
            if v["status"] in ("completed", "failed", "cancelled"):
                if v["status"] != "completed":
                    raise RuntimeError(f"{vid} {v['status']}: {v.get('error')}")
                pending.discard(vid)
        time.sleep(0.2)
    if pending:
        raise RuntimeError(f"{len(pending)} jobs did not finish")


def throughput(apis: list[Proc], jobs: int, seconds: float, steps: int, seed0: int) -> float:
    clients = [httpx.Client(base_url=a.url, timeout=60) for a in apis]
    t0 = time.perf_counter()
    ids = []
    for i in range(jobs):
        r = clients[i % 2].post("/v1/videos", json={"prompt": PROMPTS[i % 4], "seconds": seconds,
                                                     "num_inference_steps": steps, "seed": seed0 + i})
        r.raise_for_status()
        ids.append(r.json()["id"])
    wait_done(clients[1], ids)
    wall = time.perf_counter() - t0
    for c in clients:
        c.close()
    return jobs * round(seconds * FPS) / wall


def reclaim(api: Proc, workers: dict[str, Proc], redis_url: str, steps: int) -> dict:
    import redis

    r = redis.Redis.from_url(redis_url)
    with httpx.Client(base_url=api.url, timeout=60) as c:
        vid = c.post("/v1/videos", json={"prompt": PROMPTS[0], "seconds": 6, "num_inference_steps": steps,
                                         "seed": 99}).json()["id"]
        while c.get(f"/v1/videos/{vid}").json()["blocks_completed"] < 1:
            time.sleep(0.05)
        owner = r.hget(f"sana:job:{vid}", "worker").decode()
        workers[owner].stop(signal.SIGKILL)
        killed = time.perf_counter()
        while (r.hget(f"sana:job:{vid}", "worker") or b"").decode() == owner:
            time.sleep(0.05)
        taken = time.perf_counter() - killed
        wait_done(c, [vid])
        finished = time.perf_counter() - killed
    return {"killed_worker": owner, "kill_to_taken_over_s": taken, "kill_to_completed_s": finished}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--jobs", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--steps", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--lease", type=float, default=3.0)
    ap.add_argument("--max-batch", type=int, default=4)
    args = ap.parse_args()
    redis_bin = shutil.which("redis-server")
    if redis_bin is None:
        print("bench/cluster.py: error: redis-server is not installed (apt-get install redis-server)", file=sys.stderr)
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="sana-bench-cluster-"))
    rport = free_port()
    redis_url = f"redis://127.0.0.1:{rport}/0"
    redis_proc = Proc("redis", [redis_bin, "--port", str(rport), "--bind", "127.0.0.1", "--dir", str(tmp),
                                "--appendonly", "yes", "--save", ""], tmp).start()
    storage = tmp / "storage"
    wargs = ["--max-batch", str(args.max_batch)]
    apis = [node("api", f"api-{i}", redis_url, storage, tmp, args.lease) for i in (1, 2)]
    workers = {f"worker-{i}": node("worker", f"worker-{i}", redis_url, storage, tmp, args.lease, wargs) for i in (1, 2)}
    variant = [node("worker", f"worker-{i}-variant", redis_url, storage, tmp, args.lease,
                    [*wargs, "--no-batch-invariance"]) for i in (1, 2)]
    procs = [*apis, *workers.values()]
    try:
        time.sleep(0.5)
        for p in procs:
            p.start()
        for p in procs:
            p.wait_ready()
        # Warm-up: one job each way, so neither phase pays first-call costs.
        throughput(apis, 2, args.seconds, args.steps, seed0=10_000)
        w1, w2 = workers.values()
        phases = {1: [w1], 2: [w1, w2], "2 variant": variant}  # "variant": --no-batch-invariance
        rates = {n: [] for n in phases}
        for rep in range(args.repeats):
            for n, members in phases.items():
                for p in (*workers.values(), *variant):  # only this phase's workers run
                    if p not in members and p.proc is not None and p.proc.poll() is None:
                        p.stop()
                for p in members:
                    if p.proc is None or p.proc.poll() is not None:
                        p.start().wait_ready()
                rates[n].append(throughput(apis, args.jobs, args.seconds, args.steps, seed0=1000 * (rep + 1)))
                print(f"repeat {rep + 1}: {n} worker(s): {rates[n][-1]:.2f} frames/s", flush=True)
        for p in variant:
            p.stop()
        for p in (w1, w2):  # the reclaim needs both: one to kill, one to take over
            if p.proc.poll() is not None:
                p.start().wait_ready()
        rec = reclaim(apis[0], workers, redis_url, max(args.steps, 2))
    finally:
        for p in (*procs, *variant):
            if p.proc is not None:
                p.stop()
        redis_proc.stop()
    best = {n: max(v) for n, v in rates.items()}
    cost = best[2] / best["2 variant"]
    result = {"jobs": args.jobs, "seconds": args.seconds, "steps": args.steps, "lease_seconds": args.lease,
              "max_batch": args.max_batch, "threads_per_worker": 1, "frames_per_s": {str(k): v for k, v in rates.items()},
              "best_frames_per_s": {str(k): v for k, v in best.items()}, "scaling_2_over_1": best[2] / best[1], "reclaim": rec,
              "batch_invariance_throughput_ratio": cost}
    print()
    print(f"{'workers':>8} {'frames/s (best)':>16} {'runs':>24}")
    for n in phases:
        print(f"{n!s:>8} {best[n]:>16.2f} {', '.join(f'{x:.2f}' for x in rates[n]):>24}")
    print(f"2 workers / 1 worker: {best[2] / best[1]:.2f}x")
    print(f"reclaim (lease {args.lease:g} s): taken over {rec['kill_to_taken_over_s']:.2f} s after kill -9, "
          f"completed {rec['kill_to_completed_s']:.2f} s after")
    print(f"batch-invariant / --no-batch-invariance (2 workers): {cost:.2f}x throughput")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "cluster.json").write_text(json.dumps(result, indent=2))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.5))
    a.bar(["1 worker", "2 workers", "2 workers\nno invariance"], [best[1], best[2], best["2 variant"]],
          color=["#888", "#3a7", "#bbb"])
    a.set_ylabel("aggregate frames/s")
    a.set_title(f"{args.jobs} jobs x {args.seconds:g} s, 2 API nodes")
    b.bar(["taken over", "completed"], [rec["kill_to_taken_over_s"], rec["kill_to_completed_s"]], color="#c64")
    b.axhline(args.lease, ls="--", color="k", lw=1, label=f"lease {args.lease:g} s")
    b.set_ylabel("seconds after kill -9")
    b.legend()
    fig.tight_layout()
    fig.savefig(RESULTS / "cluster.png", dpi=120)
    print(f"wrote {RESULTS / 'cluster.json'} and {RESULTS / 'cluster.png'}")
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
