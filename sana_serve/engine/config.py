"""Servable model configs: one YAML per model (configs/*.yaml).

A config names a checkpoint directory (Hugging Face layout) or, until a trained checkpoint
exists, asks for seeded random weights at a given shape; plus the text encoder, the video
geometry, the sampling defaults and the request limits a server enforces.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path

import yaml

from sana_serve.engine.sampler import SAMPLERS



def _data_dir(name: str) -> Path:
    """configs/ and models/ sit at the checkout's root; a wheel carries them inside the package
    (pyproject maps them to sana_serve/configs and sana_serve/models), so one relative path
    (`checkpoint: ../models/shapes-tiny`) holds in both."""
    package = Path(__file__).resolve().parent.parent
    inside = package / name
    return inside if inside.is_dir() else package.parent / name


CONFIG_DIR = _data_dir("configs")
DEFAULT_CONFIG = "shapes-tiny"
MODES = ("block_causal", "full_sequence")

# The sizes a SANA-Video checkpoint was trained at, as diffusers' SanaVideoPipeline keys them: by the
# transformer's `sample_size` (30: 480p, ASPECT_RATIO_480_BIN; 22: 720p). (width, height), diffusers lists (h, w).
_RESOLUTION_BINS = {
    30: [(896, 448), (832, 480), (768, 528), (720, 560), (624, 624), (592, 672), (560, 720), (528, 768),
         (496, 816), (480, 832), (448, 896)],
    # 22: 720p (SANA-Video 2B/720p, LTX-2 VAE), ASPECT_RATIO_720_BIN
    22: [(1344, 672), (1280, 704), (1152, 800), (1088, 832), (960, 960), (896, 1024), (832, 1088), (800, 1152),
         (736, 1248), (704, 1280), (672, 1344)],
}


def resolution_bins(sample_size: int | None) -> list[tuple[int, int]] | None:
    """The checkpoint's resolution bins, or None when it has none (the built-in model, tiny test models)."""
    return _RESOLUTION_BINS.get(sample_size)


def is_hub_repo_id(text: str) -> bool:
    """'owner/name' that is not a local path: a Hugging Face Hub repository to download from."""
    parts = str(text).split("/")
    return (len(parts) == 2 and all(parts) and not str(text).startswith((".", "~"))
            and not Path(text).exists())


class ConfigError(ValueError):
    """A config file that is missing or malformed; the message says which and why."""


@dataclass
class SamplingConfig:
    # block_causal: chunk by chunk through the stream state (LongSANA, the built-in model);
    # full_sequence: all latent frames denoised together (bidirectional SANA-Video), then streamed out
    mode: str = "block_causal"
    chunk_frames: int = 4  # latent frames per streamed block
    steps: int = 4  # denoising steps per chunk
    # steps for the first chunk (None = `steps`): it starts from an empty state, so position and
    # shape come from the prompt alone; later chunks continue a scene the state already holds
    first_chunk_steps: int | None = None
    sampler: str = "euler"
    flow_shift: float = 3.0
    guidance_scale: float = 1.0
    timesteps: list[float] | None = None  # explicit per-chunk schedule (0..1000), overrides steps/shift
    window_chunks: int | None = None  # remember only the last N chunks (None = all)
    # block_causal: the remainder joins the first denoising chunk (LongSANA's reference: 21 latent
    # frames in chunks of 10 -> 11 + 10) instead of being a short chunk of its own (the built-in model)
    merge_remainder: bool = False
    # with `timesteps`: call the model at those t but predict x0 / re-noise at the nearest sigma of the
    # shifted 1000-step grid, as LongSANA's reference sampler does (sampler.snapped_sigmas)
    snap_timesteps: bool = False

    def block_steps(self, requested: int | None = None) -> tuple[int, int]:
        """(first block's, later blocks') denoising steps for a request that asked for `requested`
        steps (None: the config's). A request's own steps, like an explicit `timesteps` schedule,
        apply to every block; only the config's own default gives the first block more."""
        if requested is not None:
            return requested, requested
        if self.timesteps is not None:
            return len(self.timesteps), len(self.timesteps)
        return self.first_chunk_steps or self.steps, self.steps


@dataclass
class VideoConfig:
    width: int = 64
    height: int = 64
    fps: int = 16


@dataclass
class LimitsConfig:
    max_seconds: float = 600.0
    max_steps: int = 50
    min_guidance: float = 1.0
    max_guidance: float = 15.0
    max_prompt_chars: int = 1000


@dataclass
class DecodeConfig:
    """How a non-causal VAE (LTX-2, 720p) decodes; causal VAEs stream exactly and ignore it."""
    # latent frames each side of a streamed block's window; None: the whole clip at once (exact)
    context: int | None = None
    # spatial tiles of `tile` pixels every `tile_stride` pixels, blended (diffusers' tiled decode);
    # None: no tiling
    tile: int | None = None
    tile_stride: int | None = None  # None: tile - 64 (diffusers' 512 / 448)
    # refuse (before it starts) a request whose decode needs more than this many GiB of activations;
    # None: on CUDA the device's memory left after loading the model, on CPU no limit
    max_gib: float | None = None


@dataclass
class ModelConfig:
    name: str
    checkpoint: Path | None = None
    checkpoint_repo: str | None = None  # a Hugging Face Hub repo id, resolved (downloaded) by load_engine
    random_init: dict | None = None  # {seed, transformer: {...}, vae: {...}} when there is no checkpoint
    text_encoder: str = "builtin:minilm-l6"
    text_max_length: int = 64
    # Gemma-2 checkpoints: lines of the "complex human instruction" put before every prompt (None: the
    # SanaVideoPipeline's default video instruction, []: none), as encode_prompt's complex_human_instruction
    text_instruction: list[str] | None = None
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    video: VideoConfig = field(default_factory=VideoConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    source: Path | None = None


def _section(cls, data, where):
    if data is None:
        return cls()
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping")
    known = {f.name for f in fields(cls)}
    unknown = set(data) - known
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(known))}")
    return cls(**data)


def resolve_config_path(name_or_path: str | os.PathLike) -> Path:
    """A path to a YAML file, or the name of one in configs/ (e.g. 'shapes-tiny')."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml"):
        if not p.is_file():
            raise ConfigError(f"config file {p} does not exist")
        return p
    candidate = CONFIG_DIR / f"{p.name}.yaml"
    if candidate.is_file() and p.name == str(name_or_path):
        return candidate
    available = ", ".join(sorted(x.stem for x in CONFIG_DIR.glob("*.yaml")))
    raise ConfigError(f"unknown config {str(name_or_path)!r}; available: {available} (or a path to a .yaml file)")


def load_config(name_or_path: str | os.PathLike = DEFAULT_CONFIG) -> ModelConfig:
    path = resolve_config_path(name_or_path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    data = dict(data)
    cfg = ModelConfig(
        name=data.pop("name", path.stem),
        checkpoint=None,
        random_init=data.pop("random_init", None),
        text_encoder=data.pop("text_encoder", "builtin:minilm-l6"),
        text_max_length=int(data.pop("text_max_length", 64)),
        text_instruction=data.pop("text_instruction", None),
        sampling=_section(SamplingConfig, data.pop("sampling", None), f"{path}: sampling"),
        video=_section(VideoConfig, data.pop("video", None), f"{path}: video"),
        limits=_section(LimitsConfig, data.pop("limits", None), f"{path}: limits"),
        decode=_section(DecodeConfig, data.pop("decode", None), f"{path}: decode"),
        source=path,
    )
    checkpoint = data.pop("checkpoint", None)
    if data:
        raise ConfigError(f"{path}: unknown key(s) {', '.join(sorted(data))}")
    if checkpoint is not None:
        ckpt = (path.parent / checkpoint).resolve()
        if (ckpt / "model_index.json").is_file():
            cfg.checkpoint = ckpt
        elif is_hub_repo_id(checkpoint):
            cfg.checkpoint_repo = str(checkpoint)
        elif cfg.random_init is None:
            raise ConfigError(f"{path}: checkpoint {ckpt} has no model_index.json")
    if cfg.checkpoint is None and cfg.checkpoint_repo is None and cfg.random_init is None:
        raise ConfigError(f"{path}: needs a `checkpoint` or `random_init`")
    if cfg.text_instruction is not None and not (isinstance(cfg.text_instruction, list)
                                                 and all(isinstance(x, str) for x in cfg.text_instruction)):
        raise ConfigError(f"{path}: text_instruction must be a list of strings (lines), or absent")
    s = cfg.sampling
    if s.mode not in MODES:
        raise ConfigError(f"{path}: sampling.mode must be one of {', '.join(MODES)}, got {s.mode!r}")
    if s.sampler not in SAMPLERS:
        raise ConfigError(f"{path}: sampling.sampler must be one of {', '.join(SAMPLERS)}")
    if s.chunk_frames < 1 or s.steps < 1:
        raise ConfigError(f"{path}: sampling.chunk_frames and sampling.steps must be >= 1")
    if s.first_chunk_steps is not None and s.first_chunk_steps < 1:
        raise ConfigError(f"{path}: sampling.first_chunk_steps must be >= 1")
    return cfg
