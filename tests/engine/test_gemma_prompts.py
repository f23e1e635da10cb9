"""GemmaPromptEncoder against diffusers' SanaVideoPipeline.encode_prompt, on a tiny random Gemma2Model
and a GemmaTokenizer built offline from a vocab dict (one token per character, BOS added), both saved
in the test and loaded from disk by each side: embeddings and masks must be identical."""
import string

import pytest
import torch
from diffusers import SanaVideoPipeline
from transformers import AutoTokenizer, Gemma2Config, Gemma2Model, GemmaTokenizer

from sana_serve.engine.model.text_encoder import SANA_VIDEO_INSTRUCTION, GemmaPromptEncoder

L = 40  # max_sequence_length: small, so that truncation is easy to reach
PROMPTS = ["A Cat sleeping ON a warm windowsill  ", "waves"]
LONG = "a very long prompt about a red fox running through the snowy forest at dawn, " * 2  # > L tokens
OVERRIDE = ["Describe the video:", "Prompt: "]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    root = tmp_path_factory.mktemp("gemma")
    text = "".join(SANA_VIDEO_INSTRUCTION) + "".join(OVERRIDE) + string.ascii_letters + string.digits + " .,:;'-!?>\n"
    vocab = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3, "<mask>": 4}
    for ch in sorted(set(text.replace(" ", "\u2581"))):  # every character of the tests is a known token
        vocab.setdefault(ch, len(vocab))
    GemmaTokenizer(vocab=vocab, merges=[], add_bos_token=True).save_pretrained(root / "tokenizer")
    torch.manual_seed(0)
    config = Gemma2Config(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                          num_attention_heads=2, num_key_value_heads=1, head_dim=16, max_position_embeddings=4096,
                          sliding_window=64, pad_token_id=0, bos_token_id=2, eos_token_id=1)
    Gemma2Model(config).save_pretrained(root / "text_encoder")
    return root


@pytest.fixture(scope="module")
def pipe(checkpoint):
    """The reference: diffusers' pipeline with just its text components, loaded as from_pretrained would."""
    tokenizer = AutoTokenizer.from_pretrained(checkpoint / "tokenizer")
    text_encoder = Gemma2Model.from_pretrained(checkpoint / "text_encoder").eval()
    return SanaVideoPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=None, transformer=None, scheduler=None)


@pytest.fixture(scope="module")
def ours(checkpoint):
    return GemmaPromptEncoder.from_checkpoint(checkpoint, max_sequence_length=L)


def reference(pipe, prompts, negative="", instruction=SANA_VIDEO_INSTRUCTION, max_sequence_length=L):
    with torch.no_grad():
        return pipe.encode_prompt(prompts, True, negative_prompt=negative, device=torch.device("cpu"),
                                  max_sequence_length=max_sequence_length,
                                  complex_human_instruction=list(instruction))


def test_cpu_dtype_and_shapes(ours):
    embeds, mask = ours.encode(PROMPTS)
    assert ours.dtype == torch.float32 and embeds.dtype == torch.float32  # fp32 on CPU, bf16 on GPU
    assert embeds.shape == (2, L, 32) and mask.shape == (2, L) and mask.dtype == torch.int64


@pytest.mark.parametrize("prompts", [PROMPTS, [LONG], [LONG, "short"]])
def test_default_instruction_matches_pipeline(pipe, ours, prompts):
    embeds, mask, _, _ = reference(pipe, prompts)
    got, got_mask = ours.encode(prompts)
    assert torch.equal(got, embeds) and torch.equal(got_mask, mask)


def test_truncation_keeps_bos_and_the_last_positions(pipe, ours):
    """A prompt longer than L: all L positions are real tokens; the first is BOS."""
    _, mask = ours.encode([LONG])
    assert mask.sum().item() == L
    tokens = pipe.tokenizer("\n".join(SANA_VIDEO_INSTRUCTION) + LONG.lower().strip()).input_ids
    assert tokens[0] == pipe.tokenizer.bos_token_id and len(tokens) > L


@pytest.mark.parametrize("instruction", [OVERRIDE, []])
def test_instruction_override_and_none_match_pipeline(pipe, ours, instruction):
    embeds, mask, _, _ = reference(pipe, PROMPTS, instruction=instruction)
    got, got_mask = ours.encode(PROMPTS, instruction=instruction)
    assert torch.equal(got, embeds) and torch.equal(got_mask, mask)
    default, _ = ours.encode(PROMPTS)
    assert not torch.equal(got, default)  # the instruction does change the embeddings


def test_constructor_instruction_is_the_default(pipe, checkpoint):
    encoder = GemmaPromptEncoder.from_checkpoint(checkpoint, max_sequence_length=L, instruction=OVERRIDE)
    embeds, mask, _, _ = reference(pipe, PROMPTS, instruction=OVERRIDE)
    got, got_mask = encoder.encode(PROMPTS)
    assert torch.equal(got, embeds) and torch.equal(got_mask, mask)


@pytest.mark.parametrize("negative", ["", "Blurry, LOW quality", LONG])
def test_negative_prompt_matches_pipeline(pipe, ours, negative):
    _, _, embeds, mask = reference(pipe, ["a cat"], negative=negative)
    got, got_mask = ours.encode_negative([negative])
    assert torch.equal(got, embeds) and torch.equal(got_mask, mask)


def test_default_max_sequence_length_300(pipe, checkpoint):
    encoder = GemmaPromptEncoder.from_checkpoint(checkpoint)
    assert encoder.max_sequence_length == 300
    embeds, mask, neg, neg_mask = reference(pipe, ["a cat"], negative="bad", max_sequence_length=300)
    got, got_mask = encoder.encode(["a cat"])
    got_neg, got_neg_mask = encoder.encode_negative(["bad"])
    assert got.shape == (1, 300, 32)
    assert torch.equal(got, embeds) and torch.equal(got_mask, mask)
    assert torch.equal(got_neg, neg) and torch.equal(got_neg_mask, neg_mask)


def test_encode_one_is_cached_and_equal(ours):
    a = ours.encode_one("a cat")
    assert ours.encode_one("a cat") is a
    embeds, mask = ours.encode(["a cat"])
    assert torch.equal(a[0], embeds[0]) and torch.equal(a[1], mask[0])
    neg = ours.encode_one("a cat", negative=True)
    assert torch.equal(neg[0], ours.encode_negative(["a cat"])[0][0])
    assert not torch.equal(neg[0], a[0])


def test_missing_folders_are_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="text_encoder is not a directory"):
        GemmaPromptEncoder.from_checkpoint(tmp_path)


def test_every_character_is_a_known_token(pipe):
    """The tiny tokenizer must not fold the instruction into <unk>s: that would make the parity weak."""
    ids = pipe.tokenizer("\n".join(SANA_VIDEO_INSTRUCTION) + LONG + "".join(OVERRIDE)).input_ids
    assert pipe.tokenizer.unk_token_id not in ids
