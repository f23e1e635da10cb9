"""Build an Engine from a config (and optionally a checkpoint directory that overrides it)."""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import torch

from sana_serve.engine.checkpoint import load_transformer
from sana_serve.engine.config import ConfigError, ModelConfig, is_hub_repo_id, load_config
from sana_serve.engine.model.text_encoder import GemmaPromptEncoder, TextEncoder
from sana_serve.engine.model.nvfp4 import NVFP4Linear
from sana_serve.engine.model.transformer import SanaVideoTransformer
from sana_serve.engine.model.vae import CausalVideoVAE, load_vae, vae_classes
from sana_serve.engine.rollout import Engine

log = logging.getLogger("sana_serve.engine")

PRECISIONS = ("auto", "fp32", "bf16", "nvfp4")
# auto: bf16 on CUDA (the released models' dtype; tensor cores), fp32 on CPU (bf16 matmuls crawl there).
# nvfp4: the transformer blocks' GEMM weights packed NVFP4 (weight-only, quantized on load unless the
# checkpoint already is), everything else in the device's base dtype (bf16 on CUDA, fp32 on CPU).
# A quantized checkpoint keeps its packed layers at any precision.


def resolve_precision(precision: str, device: torch.device) -> str:
    """"auto" -> "bf16" on CUDA, "fp32" elsewhere; any other name as it is (checked)."""
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    return precision


def weights_dtype(precision: str, device: torch.device) -> torch.dtype:
    """The dtype the transformer's unquantized weights and activations run in."""
    precision = resolve_precision(precision, device)
    if precision == "nvfp4":  # the unquantized parts: tensor cores on CUDA, fp32 on CPU
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return torch.bfloat16 if precision == "bf16" else torch.float32


# The Wan VAE stays fp32 at every precision: diffusers' SANA-Video / Wan pipelines decode in fp32
# (their model cards load the VAE with torch_dtype=float32), and bf16 moves decoded pixels by
# several uint8 levels (bench/vae_precision.py; README "Precision").
VAE_DTYPE = torch.float32


def keep_freed_memory(mmap_threshold_mb: int = 32, trim_threshold_mb: int = 256) -> bool:
    """Let glibc keep freed activation buffers for reuse instead of handing them back to the OS.

    By default glibc serves blocks above ~128 KB (adaptively up to 32 MB) with mmap and unmaps
    them on free, and trims the heap as soon as 128 KB at its top are free: every step's
    activations (MBs once requests are batched) then page-fault in afresh, one fault per 4 KB.
    Measured on the built-in model, 2 threads: ten 4 s videos (two alone, eight four at a time)
    96k minor faults with glibc's defaults, under 400 with this; wall-clock gains were within
    this machine's run-to-run noise. The price: the process keeps up to its peak working set
    plus `trim_threshold_mb`. glibc only (mallopt); elsewhere a no-op, returns False."""
    import ctypes
    import ctypes.util

    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):  # no libc by that name, or not glibc
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # from glibc's malloc.h
    return bool(mallopt(m_mmap_threshold, mmap_threshold_mb << 20)) and bool(mallopt(m_trim_threshold, trim_threshold_mb << 20))


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def build_random_models(cfg: ModelConfig) -> tuple[SanaVideoTransformer, CausalVideoVAE]:
    """Seeded random weights at the config's shape: lets everything run before a model is trained.
    `random_init.vae._class_name` picks the VAE class (default: the built-in CausalVideoVAE)."""
    spec = cfg.random_init or {}
    torch.manual_seed(int(spec.get("seed", 0)))
    transformer = SanaVideoTransformer(**spec.get("transformer", {}))
    vae_spec = dict(spec.get("vae", {}))
    vae_class = vae_classes()[vae_spec.pop("_class_name", "CausalVideoVAE")]
    vae = vae_class(**vae_spec)
    return transformer, vae


def is_diffusers_pipeline(root: Path) -> bool:
    """A SanaVideoPipeline checkpoint as diffusers saves it (the releases), not one sana-serve wrote."""
    index = json.loads((root / "model_index.json").read_text())
    return index.get("_class_name") == "SanaVideoPipeline" and not index.get("_sana_serve")


def default_config_name(checkpoint: str | os.PathLike | None) -> str:
    """The config a `--checkpoint` runs with when no --config is given: the release configs for
    diffusers SanaVideoPipeline checkpoints and Hub repo ids (LongSANA when the name says LongLive, as
    the release's does), else the built-in model's."""
    if checkpoint is None:
        return "shapes-tiny"
    name = str(checkpoint)
    root = Path(checkpoint)
    if (root / "model_index.json").is_file():
        if not is_diffusers_pipeline(root):
            return "shapes-tiny"
    elif not is_hub_repo_id(name):
        return "shapes-tiny"
    if "longlive" in name.lower():
        return "longsana-2b-480p"
    vae_config = root / "vae" / "config.json"  # the 720p release differs from the 480p one by its LTX-2 VAE
    if "720p" in name.lower() or (vae_config.is_file()
                                  and json.loads(vae_config.read_text()).get("_class_name") == "AutoencoderKLLTX2Video"):
        return "sana-video-2b-720p"
    return "sana-video-2b-480p"


def resolve_checkpoint(spec: str | os.PathLike) -> Path:
    """A local checkpoint directory, or a Hugging Face Hub repo id: from the local Hub cache if it is
    there, else downloaded with huggingface_hub. Offline: one line saying how to get it."""
    path = Path(spec)
    if path.is_dir() or not is_hub_repo_id(str(spec)):
        if not (path / "model_index.json").is_file():
            raise ConfigError(f"checkpoint {path} is not a checkpoint directory (no model_index.json)")
        return path
    from huggingface_hub import snapshot_download

    repo = str(spec)
    try:
        return Path(snapshot_download(repo, local_files_only=True))
    except Exception:  # noqa: BLE001 - not in the cache: download it
        pass
    try:
        return Path(snapshot_download(repo))
    except Exception as e:  # noqa: BLE001 - offline, unknown repo, no access: say how to get it
        raise ConfigError(
            f"checkpoint {repo} is not in the local Hugging Face cache and could not be downloaded "
            f"({type(e).__name__}); on a machine with internet run `hf download {repo} --local-dir DIR` "
            f"and pass --checkpoint DIR") from None


def load_engine(config: str | os.PathLike | ModelConfig | None = None, checkpoint: str | os.PathLike | None = None,
                device: str | torch.device | None = None, precision: str = "auto", compile: bool = False,
                kernels: str = "auto", batch_invariant: bool = True) -> Engine:
    """`compile=True` compiles the transformer blocks (SanaVideoTransformer.compile_blocks): fused
    element-wise kernels, less per-op overhead, a bounded number of graphs whatever the request mix.

    precision: "auto" (bf16 on CUDA, fp32 on CPU), "fp32", "bf16" or "nvfp4" (see weights_dtype).

    kernels: "auto" (Triton on CUDA, PyTorch on CPU), "triton" or "torch" for the chunk path's linear
    attention and the NVFP4 layers (engine.quantize.set_kernels).

    batch_invariant: a request's frames are the same whatever it is batched with (Engine).

    config None: the built-in model's, or for a diffusers SanaVideoPipeline checkpoint the matching
    release config (default_config_name). checkpoint: a directory or a Hub repo id."""
    if config is None:
        config = default_config_name(checkpoint)
    root = resolve_checkpoint(checkpoint) if checkpoint is not None else None
    cfg = config if isinstance(config, ModelConfig) else load_config(config)
    device = torch.device(device) if device is not None else default_device()
    precision = resolve_precision(precision, device)
    if device.type == "cpu":
        keep_freed_memory()
    if root is None:
        root = resolve_checkpoint(cfg.checkpoint_repo) if cfg.checkpoint is None and cfg.checkpoint_repo else cfg.checkpoint
    text_path = cfg.text_encoder
    if text_path == "checkpoint" and (root is None or not (root / "text_encoder").is_dir()):
        raise ConfigError(f"config {cfg.name} takes its text encoder from the checkpoint, and "
                          f"{root or 'its (missing) checkpoint'} has no text_encoder/")
    if root is not None:
        if not (root / "model_index.json").is_file():
            raise ConfigError(f"checkpoint {root} has no model_index.json")
        transformer = load_transformer(root, device)
        vae = load_vae(root / "vae")
        if (root / "text_encoder").is_dir():
            text_path = root / "text_encoder"
        cfg.checkpoint = root
    else:
        log.warning("config %s has no trained checkpoint: running RANDOM (untrained) weights at its shape", cfg.name)
        transformer, vae = build_random_models(cfg)
    tokenizer = root / "tokenizer" if root is not None and (root / "tokenizer").is_dir() else None
    if root is not None and is_diffusers_pipeline(root):  # Gemma-2, prompts exactly as SanaVideoPipeline's
        extra = {} if cfg.text_instruction is None else {"instruction": cfg.text_instruction}
        text = GemmaPromptEncoder.from_checkpoint(root, device=device, max_sequence_length=cfg.text_max_length,
                                                  **extra)
    else:
        text = TextEncoder(text_path, tokenizer, max_length=cfg.text_max_length, device=device)
    caption = transformer.config["caption_channels"]
    if text.hidden_size != caption:
        raise ConfigError(f"text encoder is {text.hidden_size} wide but the transformer expects {caption}")
    if hasattr(vae, "configure_decode"):  # a non-causal VAE: whole-clip or windowed, tiled or not (config `decode`)
        try:
            vae.configure_decode(cfg.decode)
        except ValueError as e:
            raise ConfigError(f"config {cfg.name}: {e}") from None
    if cfg.video.height % vae.spatial_compression or cfg.video.width % vae.spatial_compression:
        raise ConfigError(f"video size {cfg.video.width}x{cfg.video.height} is not a multiple of the VAE's "
                          f"{vae.spatial_compression}x spatial compression")
    from sana_serve.engine.quantize import memory_report, quantize_transformer, set_kernels

    if precision == "nvfp4" and not any(isinstance(m, NVFP4Linear) for m in transformer.modules()):
        # weight-only, from the checkpoint's own weights (before any cast), packed by kernels.nvfp4,
        # which is bit-exact with ModelOpt's NVFP4QTensor: serving needs no ModelOpt
        quantize_transformer(transformer, method="kernels", progress=False)
    transformer = transformer.to(device=device, dtype=weights_dtype(precision, device))
    attention = set_kernels(transformer, kernels, device)
    mem = memory_report(transformer)
    if mem["nvfp4_layers"]:
        log.info("transformer resident: %.2f MB; %d NVFP4 layers hold %.2f MB (%.3fx their bf16 size, %.2f bits/weight)",
                 mem["transformer_bytes"] / 1e6, mem["nvfp4_layers"], mem["nvfp4_weight_bytes"] / 1e6,
                 mem["nvfp4_vs_bf16"], mem["bits_per_weight"])
    log.debug("chunk linear attention kernels: %s", attention)
    if compile:
        transformer.compile_blocks()
        torch._logging.set_logs(recompiles=True)  # each recompilation says why, in the log
    scheduler = None
    if cfg.sampling.mode == "full_sequence" and root is not None and (root / "scheduler").is_dir():
        from sana_serve.engine.scheduler import load_scheduler

        scheduler = load_scheduler(root)  # the checkpoint's own (DPM-Solver++ with flow sigmas for SANA-Video)
    engine = Engine(transformer, vae.to(device=device, dtype=VAE_DTYPE), text, cfg, device, scheduler=scheduler, batch_invariant=batch_invariant)
    if getattr(vae, "max_gib", False) is None and device.type == "cuda":  # UNTESTED (no GPU here)
        # the decode budget: what the device has free with every weight loaded and no job running yet
        vae.max_gib = torch.cuda.mem_get_info(device)[0] / 2**30
    return engine
