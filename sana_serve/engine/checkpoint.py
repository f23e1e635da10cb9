"""Checkpoints in the Hugging Face / diffusers directory layout.

    model_index.json
    transformer/config.json + diffusion_pytorch_model.safetensors   (or sharded, with an index)
    vae/config.json         + diffusion_pytorch_model.safetensors
    text_encoder/, tokenizer/                                       (optional: else the config's)

so the embedded model and diffusers-format SANA-Video checkpoints load through one code path.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
INDEX_NAME = "diffusion_pytorch_model.safetensors.index.json"


def read_config(component_dir: Path) -> dict:
    path = component_dir / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing")
    return json.loads(path.read_text())


def read_weights(component_dir: Path) -> dict[str, torch.Tensor]:
    single = component_dir / WEIGHTS_NAME
    if single.is_file():
        return load_file(str(single))
    index = component_dir / INDEX_NAME
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        out: dict[str, torch.Tensor] = {}
        for shard in shards:
            out.update(load_file(str(component_dir / shard)))
        return out
    raise FileNotFoundError(f"{component_dir} has no {WEIGHTS_NAME} (nor a sharded index)")


def constructor_kwargs(config: dict) -> dict:
    """diffusers config.json -> constructor keywords (drops the `_class_name`-style metadata)."""
    return {k: v for k, v in config.items() if not k.startswith("_")}


def save_component(component_dir: Path, class_name: str, config: dict, state_dict: dict[str, torch.Tensor]) -> None:
    component_dir.mkdir(parents=True, exist_ok=True)
    (component_dir / "config.json").write_text(json.dumps({"_class_name": class_name, **config}, indent=2))
    save_file({k: v.detach().contiguous() for k, v in state_dict.items()}, str(component_dir / WEIGHTS_NAME))


def write_model_index(root: Path, components: dict[str, list[str]]) -> None:
    root.mkdir(parents=True, exist_ok=True)
    index = {"_class_name": "SanaVideoPipeline", "_sana_serve": True, **components}
    (root / "model_index.json").write_text(json.dumps(index, indent=2))


def load_transformer(root: str | os.PathLike, device="cpu"):
    from sana_serve.engine.model.transformer import SanaVideoTransformer

    d = Path(root) / "transformer"
    from sana_serve.engine.quantize import is_quantized_checkpoint, load_quantized_transformer

    if is_quantized_checkpoint(d):  # NVFP4 in ModelOpt's layout: kept packed in memory
        return load_quantized_transformer(d, device)
    model = SanaVideoTransformer(**constructor_kwargs(read_config(d)))
    model.load_state_dict(read_weights(d), strict=True)
    return model.to(device).eval()


def save_transformer(root: str | os.PathLike, model) -> None:
    save_component(Path(root) / "transformer", "SanaVideoTransformer3DModel", model.config, model.state_dict())
