"""`sana-serve` command line. Bad input: one clear line on stderr and exit code 2, never a traceback."""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import resource
import sys
import time
from pathlib import Path


class UsageError(Exception):
    pass


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--seconds must be a number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"--seconds must be a positive number, got {text}")
    return value


def _frames(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--frames must be a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"--frames must be a positive integer, got {text}")
    return value


def _size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--size must be WIDTHxHEIGHT, e.g. 832x480, got {text!r}") from None
    if width < 1 or height < 1:
        raise argparse.ArgumentTypeError(f"--size must be WIDTHxHEIGHT with positive sides, got {text}")
    return width, height


def _seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a non-negative integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a non-negative integer, got {text}")
    return value


def _check_writable(path: Path, what: str) -> None:
    parent = path.resolve().parent
    if path.is_dir():
        raise UsageError(f"{what} {path} is a directory")
    if not parent.is_dir():
        raise UsageError(f"{what} {path}: directory {parent} does not exist")
    if not os.access(parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise UsageError(f"{what} {path} is not writable")


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2 (argparse's default prints usage too)
        raise UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="sana-serve", description="Streaming text-to-video with block-causal linear DiTs")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    g = sub.add_parser("generate", help="generate one video to an MP4 file (or raw frames to .npy)")
    g.add_argument("--prompt", required=True)
    length = g.add_mutually_exclusive_group(required=True)
    length.add_argument("--seconds", type=_positive_seconds,
                        help="video length; the frame count is the nearest the model can make (README)")
    length.add_argument("--frames", type=_frames, help="exact frame count (Wan VAE models: 1 + 4k, e.g. 81)")
    g.add_argument("--size", type=_size, help="WIDTHxHEIGHT (default: the config's; the checkpoint's resolution bins)")
    g.add_argument("--seed", type=_seed, default=0)
    g.add_argument("--out", type=Path, required=True,
                   help="output .mp4, or .npy for the raw uint8 frames (T, H, W, 3)")
    g.add_argument("--config", default=None,
                   help="config name in configs/ or a .yaml path (default: shapes-tiny, or the release config "
                        "matching a diffusers --checkpoint)")
    g.add_argument("--checkpoint", help="checkpoint directory (Hugging Face layout) or a Hub repo id, "
                                        "overrides the config's")
    g.add_argument("--precision", choices=["auto", "fp32", "bf16", "nvfp4"], default="auto",
                   help="auto: bf16 on CUDA, fp32 on CPU; nvfp4: quantize the transformer blocks' weights on load "
                        "(a quantized --checkpoint stays packed), the rest bf16 on CUDA")
    g.add_argument("--kernels", choices=["auto", "triton", "torch"], default="auto",
                   help="linear attention / NVFP4 GEMM kernels: auto = Triton on CUDA, PyTorch on CPU")
    g.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    g.add_argument("--compile", action="store_true", help="torch.compile the transformer (pays off for long videos)")
    g.add_argument("--negative-prompt", default="")
    g.add_argument("--steps", type=int, help="denoising steps per block (default: the config's)")
    g.add_argument("--guidance", type=float, help="classifier-free guidance scale (1 = off)")
    g.add_argument("--report", type=Path, help="write a JSON report: per-block seconds, time to first block, peak RSS")
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    t = sub.add_parser("train", help="train the built-in Shapes model (resumable; see sana_serve/shapes/train.py)")
    t.add_argument("phase", choices=["vae", "latents", "transformer", "export"])
    t.add_argument("--work", type=Path, required=True, help="directory for resumable training state and loss logs")
    t.add_argument("--config", default="shapes-tiny", help="config whose random_init section gives the architecture")
    t.add_argument("--steps", type=int, default=None, help="total optimiser steps for this phase")
    t.add_argument("--batch", type=int, default=None)
    t.add_argument("--lr", type=float, default=None)
    t.add_argument("--first-chunk-batch", type=int, default=0,
                   help="transformer phase: clips per step that train their first chunk alone (empty state)")
    t.add_argument("--cooldown", type=int, default=0,
                   help="transformer phase: the last N steps take the learning rate linearly to zero")
    t.add_argument("--optimizer", choices=["adamw", "muon"], default="adamw",
                   help="transformer phase: muon orthogonalises the blocks' matrix updates (sana_serve/shapes/optim.py)")
    t.add_argument("--own-context", type=float, default=0.0, metavar="SHARE",
                   help="transformer phase: share of clips whose context chunk is the model's own one-step "
                        "estimate of it, as a rollout's blocks are (0-1)")
    t.add_argument("--clips", type=int, default=4096, help="latents phase: clips to render and encode")
    t.add_argument("--crop", type=int, default=None,
                   help="vae phase: train on CROPxCROP windows around the object (a multiple of 8)")
    t.add_argument("--latent-noise", type=float, default=0.0, metavar="SIGMA",
                   help="vae phase: noise on the decoder's input, SIGMA times each latent channel's spread")
    t.add_argument("--frames", type=int, default=None,
                   help="vae phase: frames per training clip (default 16; a multiple of 4). The encoder "
                        "and decoder see ~8 latent frames back: clips shorter than that leave the steady "
                        "state of a long video untrained")
    t.add_argument("--freeze-encoder", action="store_true",
                   help="vae phase: train the decoder only, keeping the code (resume a trained vae.pt "
                        "with a larger --steps)")
    t.add_argument("--out", type=Path, help="export phase: checkpoint directory to write")
    e = sub.add_parser("eval", help="generate fixed prompt sets and judge them with the Shapes checker")
    e.add_argument("--config", default="shapes-tiny")
    e.add_argument("--checkpoint", type=Path)
    e.add_argument("--set", dest="sets", action="append", choices=["template", "heldout", "paraphrase", "long"],
                   help="prompt set(s) to run (repeatable; default: all four)")
    e.add_argument("--limit", type=int, help="videos per set (default: 48 / 24 / 48 / 8)")
    e.add_argument("--seconds", type=_positive_seconds, help="override the video length of every set")
    e.add_argument("--json", type=Path, help="write per-video results and the summary here")
    e.add_argument("--steps", type=int, help="denoising steps of every block (default: the config's)")
    e.add_argument("--first-chunk-steps", type=int,
                   help="denoising steps of the first block only, the others keep the config's (default: the config's)")
    e.add_argument("--guidance", type=float, help="classifier-free guidance scale (default: the config's)")
    e.add_argument("--flow-shift", type=float, help="flow-matching timestep shift (default: the config's)")
    e.add_argument("--seed-base", type=_seed, default=None,
                   help="the i-th video of a set uses seed SEED_BASE + i (default 1000, the reported numbers; "
                        "tune settings on other seeds)")
    e.add_argument("--device")
    e.add_argument("--precision", choices=["auto", "fp32", "bf16", "nvfp4"], default="auto",
                   help="nvfp4: quantize on load (compare pass rates with fp32)")
    q = sub.add_parser("quantize", help="write an NVFP4 checkpoint (ModelOpt's Hugging Face export layout)")
    q.add_argument("--config", default="shapes-tiny", help="config name in configs/ or a .yaml path")
    q.add_argument("--checkpoint", type=Path, help="checkpoint directory to quantize (default: the config's)")
    q.add_argument("--out", type=Path, required=True, help="new (or empty) directory for the quantized checkpoint")
    q.add_argument("--exclude-blocks", default="", help="blocks kept high precision, e.g. first,last or 0,5")
    q.add_argument("--weight-only", action="store_true",
                   help="no activation calibration: quant_algo W4A16_NVFP4, no input_scale")
    q.add_argument("--calibration", type=int, default=4, help="sample prompts for the activation calibration")
    q.add_argument("--device", help="cpu, cuda ... (default: cuda if available; ModelOpt calibrates on CUDA)")
    q.add_argument("--quiet", action="store_true", help="no progress bars")
    v = sub.add_parser("serve", help="run the HTTP server (OpenAI Videos API compatible, live block streaming)")
    from sana_serve.server.config import add_serve_arguments  # argparse only; the server itself loads in cmd_serve

    add_serve_arguments(v)
    from sana_serve.server.config import add_cluster_arguments

    for role, text in (("api", "run a stateless API node of a cluster (jobs in Redis, files in shared storage)"),
                       ("worker", "run a cluster worker: one model on one device, jobs from the shared Redis queue")):
        r = sub.add_parser(role, help=text)
        add_serve_arguments(r)
        add_cluster_arguments(r, role)
    return parser


def cmd_quantize(args) -> int:
    from sana_serve.engine.quantize import quantize_checkpoint
    from sana_serve.shapes.eval import calibration_prompts

    if not args.weight_only and args.calibration < 1:
        raise UsageError("--calibration must be >= 1 prompt (or use --weight-only)")
    prompts = [] if args.weight_only else calibration_prompts(args.calibration)
    summary = quantize_checkpoint(args.out, args.config, args.checkpoint, args.exclude_blocks, args.weight_only,
                                  prompts, args.device, progress=not args.quiet)
    print(f"wrote {summary['out']} ({summary['quant_algo']}: {summary['nvfp4_layers']} layers, "
          f"{summary['nvfp4_weight_bytes'] / 1e6:.2f} MB packed = {summary['nvfp4_vs_bf16']:.3f}x bf16, "
          f"{summary['bits_per_weight']:.2f} bits/weight; from {summary['source']})", file=sys.stderr)
    return 0


def cmd_eval(args) -> int:
    from sana_serve.engine import load_engine
    from sana_serve.shapes.eval import DEFAULT_SEED_BASE, SETS, format_table, run_eval, write_json

    if args.json is not None:
        _check_writable(args.json, "--json")
    if args.limit is not None and args.limit < 1:
        raise UsageError("--limit must be >= 1")
    if args.steps is not None and args.steps < 1:
        raise UsageError("--steps must be >= 1")
    if args.first_chunk_steps is not None and args.first_chunk_steps < 1:
        raise UsageError("--first-chunk-steps must be >= 1")
    if args.first_chunk_steps is not None and args.steps is not None:
        raise UsageError("--first-chunk-steps and --steps exclude each other (--steps sets every block's steps)")
    if args.guidance is not None and args.guidance < 1:
        raise UsageError("--guidance must be >= 1 (1 = no guidance)")
    if args.flow_shift is not None and args.flow_shift <= 0:
        raise UsageError("--flow-shift must be > 0")
    engine = load_engine(args.config, checkpoint=args.checkpoint, device=args.device, precision=args.precision)
    if args.flow_shift is not None:
        engine.config.sampling.flow_shift = args.flow_shift
    if args.first_chunk_steps is not None:
        engine.config.sampling.first_chunk_steps = args.first_chunk_steps
    seed_base = DEFAULT_SEED_BASE if args.seed_base is None else args.seed_base
    report = run_eval(engine, args.sets or list(SETS), args.limit, args.seconds,
                      steps=args.steps, guidance=args.guidance, seed_base=seed_base)
    print(format_table(report))
    if args.json is not None:
        write_json(report, args.json)
    return 0


def cmd_train(args) -> int:
    from sana_serve.shapes import train

    opts = {k: v for k, v in (("steps", args.steps), ("batch", args.batch), ("lr", args.lr)) if v is not None}
    if args.phase == "vae":
        if not 0 <= args.latent_noise <= 1:
            raise UsageError(f"--latent-noise is a share of each latent channel's spread, between 0 and 1, "
                             f"got {args.latent_noise}")
        if args.frames is not None:
            opts["frames"] = args.frames
        train.train_vae(args.work, args.config, **{"steps": 1500, **opts, "crop": args.crop},
                        latent_noise=args.latent_noise, freeze_encoder=args.freeze_encoder)
    elif args.phase == "latents":
        train.build_latent_bank(args.work, args.config, clips=args.clips)
    elif args.phase == "transformer":
        steps = opts.setdefault("steps", 3000)
        if not 0 <= args.cooldown <= steps:
            raise UsageError(f"--cooldown must be between 0 and --steps ({steps}), got {args.cooldown}")
        if not 0 <= args.own_context <= 1:
            raise UsageError(f"--own-context is a share of the clips, between 0 and 1, got {args.own_context}")
        train.train_transformer(args.work, args.config, **opts,
                                first_chunk_batch=args.first_chunk_batch, cooldown=args.cooldown,
                                optimizer=args.optimizer, own_context=args.own_context)
    else:
        if args.out is None:
            raise UsageError("train export needs --out DIR")
        train.export(args.work, args.config, args.out)
        print(f"wrote checkpoint {args.out}", file=sys.stderr)
    return 0


def cmd_generate(args) -> int:
    import numpy as np
    from tqdm import tqdm

    from sana_serve.engine import GenerationRequest, load_engine
    from sana_serve.engine.load import resolve_precision
    from sana_serve.engine.quantize import memory_report
    from sana_serve.engine.video import Mp4Writer

    from sana_serve.engine.config import is_hub_repo_id
    from sana_serve.engine.rollout import Rollout

    out_kind = args.out.suffix.lower()
    if out_kind not in (".mp4", ".npy"):
        raise UsageError(f"--out must end in .mp4 (video) or .npy (raw uint8 frames), got {args.out}")
    _check_writable(args.out, "--out")
    if args.report is not None:
        _check_writable(args.report, "--report")
    if args.checkpoint is not None and not is_hub_repo_id(args.checkpoint) \
            and not (Path(args.checkpoint) / "model_index.json").is_file():
        raise UsageError(f"--checkpoint {args.checkpoint} is not a checkpoint directory (no model_index.json) "
                         f"nor a Hub repo id (owner/name)")

    t_load = time.perf_counter()
    engine = load_engine(args.config, checkpoint=args.checkpoint, device=args.device, precision=args.precision,
                         compile=args.compile, kernels=args.kernels)
    load_s = time.perf_counter() - t_load
    width, height = args.size or (None, None)
    req = GenerationRequest(prompt=args.prompt, seconds=args.seconds, frames=args.frames, seed=args.seed,
                            negative_prompt=args.negative_prompt, num_inference_steps=args.steps,
                            guidance_scale=args.guidance, width=width, height=height)
    try:
        engine.validate(req)
    except ValueError as e:
        raise UsageError(str(e)) from None

    video = engine.config.video
    width, height = engine.request_size(req)
    total = engine.request_frames(req)
    seconds = total / video.fps
    blocks, state_bytes, frames = [], 0, []
    start = time.perf_counter()
    first_block_s = None
    rollout = Rollout(engine, req)
    # full-sequence models spend most of the time denoising the whole clip: the bar counts those steps too
    bar = tqdm(total=100, unit="%", desc="generating", disable=args.quiet, file=sys.stderr,
               bar_format="{l_bar}{bar}| {n:.0f}/{total}% [{elapsed}<{remaining}{postfix}]")
    writer = Mp4Writer(args.out, width, height, video.fps) if out_kind == ".mp4" else contextlib.nullcontext()
    with writer:
        while not rollout.done:
            block = engine.step([rollout])[0]
            bar.update(100 * rollout.progress - bar.n)
            if block is None:
                continue
            if first_block_s is None:
                first_block_s = time.perf_counter() - start
            if out_kind == ".mp4":
                writer.write(block.frames)
            else:
                frames.append(block.frames)
            blocks.append({"index": block.index, "frames": block.frame_count, "seconds": round(block.seconds, 6)})
            state_bytes = block.state_bytes
            bar.set_postfix(block=f"{block.index + 1}/{block.num_blocks}", frames=rollout.next_frame)
    bar.close()
    if out_kind == ".npy":
        np.save(args.out, np.concatenate(frames))
    total_s = time.perf_counter() - start

    report = {
        "config": engine.config.name,
        "checkpoint": str(engine.config.checkpoint) if engine.config.checkpoint else None,
        "random_weights": engine.config.checkpoint is None,
        "mode": engine.mode, "size": f"{width}x{height}",
        "prompt": args.prompt, "seconds": seconds, "seed": args.seed, "fps": video.fps,
        "frames": sum(b["frames"] for b in blocks),
        "blocks": blocks,
        "time_to_first_block_s": round(first_block_s, 6),
        "total_s": round(total_s, 6),
        "load_s": round(load_s, 6),
        "realtime_factor": round(seconds / total_s, 4),
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "state_bytes": state_bytes,
        "precision": resolve_precision(args.precision, engine.device),  # "auto" as resolved on this device
        "memory": memory_report(engine.transformer),
    }
    if args.report is not None:
        args.report.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out} ({report['frames']} frames, {total_s:.2f}s, {report['realtime_factor']:.2f}x realtime)",
          file=sys.stderr)
    return 0


def cmd_serve(args) -> int:
    from sana_serve.server.app import serve

    return serve(args)


COMMANDS = {"generate": cmd_generate, "train": cmd_train, "eval": cmd_eval, "quantize": cmd_quantize}
COMMANDS["serve"] = cmd_serve


def cmd_cluster_role(role: str):
    def run(args) -> int:
        from sana_serve.server.app import serve

        return serve(args, role)

    return run


COMMANDS["api"] = cmd_cluster_role("api")
COMMANDS["worker"] = cmd_cluster_role("worker")


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from sana_serve.engine.config import ConfigError

    try:
        args = build_parser().parse_args(argv)
        return COMMANDS[args.command](args)
    except (UsageError, ConfigError, ValueError, FileNotFoundError, PermissionError) as e:
        print(f"sana-serve: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("sana-serve: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # a bug or a failing dependency: still one line, not a wall of traceback
        if os.environ.get("SANA_SERVE_DEBUG"):
            raise
        print(f"sana-serve: error: {type(e).__name__}: {e} (set SANA_SERVE_DEBUG=1 for a traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
