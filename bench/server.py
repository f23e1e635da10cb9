"""Server benchmark: continuous batching vs one job at a time, through the real HTTP/websocket API.

Two `sana-serve serve` processes run side by side on 127.0.0.1 with the same model: one with
`--max-batch 8` (continuous batching: concurrent jobs share one batched forward per step) and
one with `--max-batch 1` (one job at a time). Only one of them generates at any moment; the
concurrency levels alternate between the two so both see the same machine load. For 1, 2, 4
and 8 concurrent jobs it measures:
  - aggregate throughput: generated video frames per second of wall time, from the first
    POST to the last job's `video.completed` on its websocket stream;
  - time to first block: POST -> first `video.block` event on the job's stream (mean and max);
  - API latency: GET /v1/videos/{id}, polled continuously while the jobs generate (p50, p99).
  - server CPU seconds per frame (user + system time of the server process): on a machine
    shared with other work, wall-clock throughput swings with the neighbours' load, the CPU
    time a frame costs much less.
Prints a table of ratios, writes bench/results/server.json and bench/results/server.png.
Target: with 4 concurrent jobs, batching >= 1.5x the aggregate throughput of one at a time.

Usage: python bench/server.py [--seconds 4] [--steps N] [--concurrency 1,2,4,8] [--repeats 3] [--quick]
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
from websockets.sync.client import connect

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
PROMPT = "a red circle moving right on a black background"
FPS = 16


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, max_batch: int, workdir: Path, config: str, threads: int):
        self.max_batch = max_batch
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        data = workdir / f"batch{max_batch}"
        self.log = open(workdir / f"batch{max_batch}.log", "wb")
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
        env.pop("SANA_SERVE_API_KEYS", None)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sana_serve", "serve", "--config", config, "--host", "127.0.0.1",
             "--port", str(self.port), "--data-dir", str(data), "--max-batch", str(max_batch),
             "--max-queued", "64", "--threads", str(threads), "--log-format", "text"],
            cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server (max_batch={self.max_batch}) exited; see its log in {self.log.name}")
            try:
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        raise RuntimeError(f"server (max_batch={self.max_batch}) not ready in {timeout}s")

    def cpu_seconds(self) -> float:
        """User + system CPU time of the server process so far (from /proc; Linux)."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[k]


def run_level(server: Server, jobs: int, seconds: float, steps: int | None, seed0: int) -> dict:
    """Submit `jobs` jobs at once; watch each on its websocket; poll the API meanwhile."""
    client = httpx.Client(base_url=server.url, timeout=60)
    body = {"prompt": PROMPT, "seconds": seconds}
    if steps is not None:
        body["num_inference_steps"] = steps
    posted, first_block, completed, ids = {}, {}, {}, []
    lock = threading.Lock()
    errors: list[str] = []
    cpu_start = server.cpu_seconds()
    start = time.perf_counter()

    def submit(i: int) -> None:
        with httpx.Client(base_url=server.url, timeout=60) as c:
            t = time.perf_counter()
            r = c.post("/v1/videos", json={**body, "seed": seed0 + i})
        if r.status_code != 200:
            errors.append(f"POST: {r.status_code} {r.text[:200]}")
            return
        video_id = r.json()["id"]
        with lock:
            posted[video_id] = t
            ids.append(video_id)
        watch(video_id)

    def watch(video_id: str) -> None:
        url = server.url.replace("http://", "ws://") + f"/v1/videos/{video_id}/stream"
        with connect(url, max_size=None, open_timeout=60) as ws:
            while True:
                message = ws.recv(timeout=600)
                if isinstance(message, bytes):
                    continue
                event = json.loads(message)
                now = time.perf_counter()
                if event["type"] == "video.block":
                    first_block.setdefault(video_id, now)
                else:
                    if event["type"] != "video.completed":
                        errors.append(f"{video_id}: {event}")
                    completed[video_id] = now
                    return

    latencies: list[float] = []
    stop_polling = threading.Event()

    def poll() -> None:
        i = 0
        while not stop_polling.is_set():
            with lock:
                current = list(ids)
            if not current:
                time.sleep(0.01)
                continue
            t = time.perf_counter()
            r = client.get(f"/v1/videos/{current[i % len(current)]}")
            latencies.append(time.perf_counter() - t)
            if r.status_code != 200:
                errors.append(f"GET: {r.status_code}")
            i += 1
            time.sleep(0.02)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    threads = [threading.Thread(target=submit, args=(i,)) for i in range(jobs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stop_polling.set()
    poller.join()
    cpu = server.cpu_seconds() - cpu_start
    for video_id in ids:  # keep the data dir small; the next level starts from an idle worker
        client.delete(f"/v1/videos/{video_id}")
    client.close()
    if errors or len(completed) != jobs:
        raise RuntimeError(f"max_batch={server.max_batch}, {jobs} jobs: {errors[:5]}")
    wall = max(completed.values()) - start
    ttfb = [first_block[v] - posted[v] for v in ids]
    frames = jobs * round(seconds * FPS)
    return {"jobs": jobs, "max_batch": server.max_batch, "wall_s": wall, "frames": frames,
            "frames_per_s": frames / wall, "cpu_s": cpu, "frames_per_cpu_s": frames / cpu, "ttfb_mean_s": statistics.mean(ttfb), "ttfb_max_s": max(ttfb),
            "api_p50_ms": 1000 * percentile(latencies, 50), "api_p99_ms": 1000 * percentile(latencies, 99),
            "api_requests": len(latencies)}


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = results["concurrency"]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for mode, style in (("batching", "o-"), ("one_at_a_time", "s--")):
        rows = results[mode]
        label = "continuous batching" if mode == "batching" else "one at a time"
        axes[0].plot(levels, [r["frames_per_s"] for r in rows], style, label=label)
        axes[1].plot(levels, [r["ttfb_mean_s"] for r in rows], style, label=f"{label} (mean)")
        axes[1].plot(levels, [r["ttfb_max_s"] for r in rows], style, alpha=0.4, label=f"{label} (max)")
        axes[2].plot(levels, [r["api_p50_ms"] for r in rows], style, label=f"{label} p50")
        axes[2].plot(levels, [r["api_p99_ms"] for r in rows], style, alpha=0.4, label=f"{label} p99")
    axes[0].set(title="Aggregate throughput", xlabel="concurrent jobs", ylabel="video frames / s")
    axes[1].set(title="Time to first block", xlabel="concurrent jobs", ylabel="seconds")
    axes[2].set(title="GET /v1/videos/{id} latency while generating", xlabel="concurrent jobs", ylabel="ms")
    for ax in axes:
        ax.set_xticks(levels)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"sana-serve, {results['seconds']:g} s videos, steps={results['steps'] or 'config default'}, "
                 f"{os.cpu_count()} CPU cores")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="shapes-tiny")
    p.add_argument("--seconds", type=float, default=4.0, help="length of every video (2 s per block)")
    p.add_argument("--steps", type=int, default=None, help="denoising steps per block (default: the config's)")
    p.add_argument("--concurrency", default="1,2,4,8")
    p.add_argument("--repeats", type=int, default=3,
                   help="back-to-back pairs per level: ratios are the pairs' median, throughputs the best run")
    p.add_argument("--threads", type=int, default=2, help="torch threads of each server")
    p.add_argument("--quick", action="store_true", help="2 s videos, 1 step, levels 1,4: a smoke run")
    args = p.parse_args()
    if args.quick:
        args.seconds, args.steps, args.concurrency = 2.0, 1, "1,4"
    levels = [int(x) for x in args.concurrency.split(",")]

    workdir = Path(tempfile.mkdtemp(prefix="sana-bench-server-"))
    batching, single = Server(max(levels), workdir, args.config, args.threads), Server(1, workdir, args.config, args.threads)
    results = {"seconds": args.seconds, "steps": args.steps, "concurrency": levels, "batching": [], "one_at_a_time": []}
    try:
        batching.wait_ready()
        single.wait_ready()
        # Warm-up (first forward passes, allocator), not measured.
        run_level(batching, 1, 2.0, 1, 999)
        run_level(single, 1, 2.0, 1, 999)
        for jobs in levels:
            best, ratios = {}, []
            for r in range(args.repeats):
                # Back to back, alternating which goes first: a pair sees the same neighbours' load.
                order = [("batching", batching), ("one_at_a_time", single)]
                pair = {}
                for name, server in (order if r % 2 == 0 else order[::-1]):
                    row = run_level(server, jobs, args.seconds, args.steps, seed0=100 * jobs + 10 * r)
                    pair[name] = row
                    if name not in best or row["frames_per_s"] > best[name]["frames_per_s"]:
                        best[name] = row
                    print(f"  {name:>14} jobs={jobs}: {row['frames_per_s']:.1f} frames/s "
                          f"({row['frames_per_cpu_s']:.1f} per server CPU-s), "
                          f"first block {row['ttfb_mean_s']:.2f}s (max {row['ttfb_max_s']:.2f}s), "
                          f"API p50 {row['api_p50_ms']:.1f} ms p99 {row['api_p99_ms']:.1f} ms", flush=True)
                ratios.append(pair["batching"]["frames_per_s"] / pair["one_at_a_time"]["frames_per_s"])
            best["batching"]["ratio_median"] = statistics.median(ratios)
            best["batching"]["ratios"] = ratios
            results["batching"].append(best["batching"])
            results["one_at_a_time"].append(best["one_at_a_time"])
    finally:
        batching.stop()
        single.stop()

    print()
    print(f"{'jobs':>4} | {'batching f/s':>12} | {'1-at-a-time f/s':>15} | {'ratio':>5} | {'pair median':>11} | "
          f"{'per CPU-s ratio':>15} | "
          f"{'TTFB mean b/1':>14} | {'TTFB max b/1':>13} | {'API p50 b/1 ms':>15} | {'API p99 b/1 ms':>15}")
    print("-" * 150)
    for b, s in zip(results["batching"], results["one_at_a_time"]):
        print(f"{b['jobs']:>4} | {b['frames_per_s']:>12.1f} | {s['frames_per_s']:>15.1f} | "
              f"{b['frames_per_s'] / s['frames_per_s']:>5.2f} | {b['ratio_median']:>11.2f} | "
              f"{b['frames_per_cpu_s'] / s['frames_per_cpu_s']:>15.2f} | "
              f"{b['ttfb_mean_s']:>6.2f} / {s['ttfb_mean_s']:<5.2f} | {b['ttfb_max_s']:>5.2f} / {s['ttfb_max_s']:<5.2f} | "
              f"{b['api_p50_ms']:>6.1f} / {s['api_p50_ms']:<6.1f} | {b['api_p99_ms']:>6.1f} / {s['api_p99_ms']:<6.1f}")
    if 4 in levels:
        i = levels.index(4)
        ratio = results["batching"][i]["ratio_median"]
        results["ratio_at_4"] = ratio
        print(f"\n4 concurrent jobs: batching delivers {ratio:.2f}x the throughput of one at a time "
              f"(median of {args.repeats} back-to-back pairs; target >= 1.5x): {'MET' if ratio >= 1.5 else 'NOT MET'}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "server.json").write_text(json.dumps(results, indent=2))
    plot(results, RESULTS / "server.png")
    print(f"wrote {RESULTS / 'server.json'} and {RESULTS / 'server.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
