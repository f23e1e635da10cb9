"""NVFP4: packed layers, ModelOpt's export layout, `sana-serve quantize` round trip, loading, bad input."""
import json
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from sana_serve.cli import main
from sana_serve.engine.model.nvfp4 import NVFP4Linear
from sana_serve.engine.model.transformer import SanaVideoTransformer
from sana_serve.engine.quantize import (
    QUANTIZED_SUFFIXES, compressed_tensors_config, load_quantized_transformer, memory_report, quant_config,
    quantize_transformer, summarize_exclude_modules,
)
from sana_serve.engine.video import decode_video
from sana_serve.kernels.nvfp4 import dequantize_nvfp4, quantize_nvfp4

PROMPT = "a blue square moving up on a white background"
TINY = dict(in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=16, num_layers=3,
            num_cross_attention_heads=2, cross_attention_head_dim=16, cross_attention_dim=32, caption_channels=24,
            sample_size=4)


def tiny_model(seed):
    torch.manual_seed(seed)
    model = SanaVideoTransformer(**TINY).eval()
    for p in model.parameters():
        p.data.normal_(0, 0.3 if p.ndim > 1 else 0.05)
    return model


def calibrate_with(seed):
    def calibrate(model):
        g = torch.Generator().manual_seed(seed)
        text = model.encode_text(torch.randn(1, 5, 24, generator=g))
        state = model.new_state(1)
        with torch.no_grad():
            for _ in range(2):
                x = torch.randn(1, 4, 2, 4, 4, generator=g)
                model.forward_chunk(x, torch.rand(1, generator=g) * 1000, text, state)
                model.forward_chunk(x, torch.zeros(1), text, state, update_state=True)
    return calibrate


def psnr(a, b):
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 10 * np.log10(255.0**2 / max(mse, 1e-12))


# ---- the packed layer --------------------------------------------------------------------

@pytest.mark.parametrize("out_f, in_f, bias, seed", [(48, 64, True, 1), (24, 160, False, 2), (640, 128, True, 3)])
def test_packed_layer_equals_dequantize_then_linear(out_f, in_f, bias, seed):
    g = torch.Generator().manual_seed(seed)
    linear = nn.Linear(in_f, out_f, bias=bias)
    linear.weight.data = torch.randn(out_f, in_f, generator=g) * torch.exp(torch.randn(out_f, 1, generator=g))
    x = torch.randn(3, 7, in_f, generator=g)
    layer = NVFP4Linear.from_linear(linear)
    want = F.linear(x, dequantize_nvfp4(quantize_nvfp4(linear.weight, 16)), linear.bias)
    assert torch.equal(layer(x), want)
    # resident: packed weight + scales + global scale, ~4.5 bits per weight
    assert layer.weight.dtype == torch.uint8 and layer.weight.shape == (out_f, in_f // 2)
    assert memory_report(nn.Sequential(layer))["nvfp4_vs_bf16"] <= 0.32


def test_dtype_and_device_moves_leave_the_packed_format_alone():
    g = torch.Generator().manual_seed(4)
    linear = nn.Linear(64, 32)
    linear.weight.data = torch.randn(32, 64, generator=g)
    layer = NVFP4Linear.from_linear(linear)
    before = {k: v.clone() for k, v in layer.state_dict().items()}
    layer.to(torch.bfloat16)
    assert layer.weight_scale.dtype == torch.float8_e4m3fn and layer.weight_scale_2.dtype == torch.float32
    assert layer.bias.dtype == torch.bfloat16
    for k in ("weight", "weight_scale", "weight_scale_2"):
        assert torch.equal(layer.state_dict()[k].view(torch.uint8) if k == "weight_scale" else layer.state_dict()[k],
                           before[k].view(torch.uint8) if k == "weight_scale" else before[k])
    x = torch.randn(5, 64, generator=g).bfloat16()
    assert layer(x).dtype == torch.bfloat16


# ---- quantizing a model: which layers, which tensors -----------------------------------------

def test_quantized_state_dict_is_modelopt_export_layout_and_excluded_layers_are_untouched():
    model = tiny_model(7)
    original = {k: v.clone() for k, v in model.state_dict().items()}
    qcfg = quantize_transformer(model, exclude_blocks={2}, calibrate=calibrate_with(3))
    state = model.state_dict()
    quantized = [f"transformer_blocks.{i}.{s}" for i in (0, 1) for s in QUANTIZED_SUFFIXES]
    for name in quantized:
        out_f, in_f = original[f"{name}.weight"].shape[:2]
        assert state[f"{name}.weight"].dtype == torch.uint8 and state[f"{name}.weight"].shape == (out_f, in_f // 2)
        assert state[f"{name}.weight_scale"].dtype == torch.float8_e4m3fn
        assert state[f"{name}.weight_scale"].shape == (out_f, in_f // 16)
        for scalar in ("weight_scale_2", "input_scale"):
            assert state[f"{name}.{scalar}"].dtype == torch.float32 and state[f"{name}.{scalar}"].shape == ()
            assert state[f"{name}.{scalar}"] > 0
        q = quantize_nvfp4(original[f"{name}.weight"].flatten(1), 16)
        assert torch.equal(state[f"{name}.weight"], q.packed) and torch.equal(state[f"{name}.weight_scale_2"], q.global_scale)
    packed = {f"{n}.{t}" for n in quantized for t in ("weight", "weight_scale", "weight_scale_2", "input_scale")}
    for key, value in state.items():  # everything else: the original high-precision tensor, bit for bit
        if key not in packed:
            assert value.dtype == torch.float32 and torch.equal(value, original[key]), key
    q = qcfg["quantization"]
    assert qcfg["producer"]["name"] == "modelopt" and q["quant_algo"] == "NVFP4" and q["group_size"] == 16
    assert {"patch_embedding", "proj_out", "time_embed*", "caption_projection*", "transformer_blocks.2*",
            "transformer_blocks.0.ff.conv_temp", "transformer_blocks.1.ff.conv_depth"} <= set(q["exclude_modules"])


def test_input_scale_is_the_calibrated_input_amax_over_6x448():
    model = tiny_model(8)
    seen = {}
    names = [f"transformer_blocks.{i}.{s}" for i in range(3) for s in QUANTIZED_SUFFIXES if "conv" not in s]
    hooks = [model.get_submodule(n).register_forward_hook(
        lambda m, args, out, n=n: seen.__setitem__(n, max(seen.get(n, 0.0), args[0].abs().max().item()))) for n in names]
    calibrate_with(5)(model)
    for h in hooks:
        h.remove()
    quantize_transformer(model, calibrate=calibrate_with(5))
    for n in names:
        assert model.get_submodule(n).input_scale.item() == pytest.approx(seen[n] / (6 * 448), rel=1e-6)


def test_weight_only_has_no_input_scale():
    model = tiny_model(9)
    qcfg = quantize_transformer(model)
    assert qcfg["quantization"]["quant_algo"] == "W4A16_NVFP4"
    assert not any(k.endswith("input_scale") for k in model.state_dict())
    assert "input_activations" not in compressed_tensors_config(qcfg)["config_groups"]["group_0"]


@pytest.fixture(scope="module")
def modelopt_export():
    pytest.importorskip("modelopt")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from modelopt.torch.export import convert_hf_config, quant_utils
        from modelopt.torch.quantization.qtensor.nvfp4_tensor import NVFP4QTensor
    return quant_utils, convert_hf_config, NVFP4QTensor


@pytest.mark.parametrize("weight_only", [False, True])
def test_configs_and_tensors_match_modelopts_own_export_code(modelopt_export, weight_only):
    quant_utils, convert_hf_config, NVFP4QTensor = modelopt_export
    model = tiny_model(10)
    original = {k: v.clone() for k, v in model.state_dict().items()}
    qcfg = quantize_transformer(model, exclude_blocks={0}, calibrate=None if weight_only else calibrate_with(1))
    # per-layer formats as ModelOpt's get_quant_config collects them, summarised by ModelOpt itself
    layer_formats = {}
    for name, m in model.named_modules():
        if isinstance(m, (nn.Linear, nn.Conv2d, nn.Conv3d, NVFP4Linear)):
            packed = isinstance(m, NVFP4Linear)
            layer_formats[f"{name}.quantization"] = ("w4a16_nvfp4" if weight_only else "nvfp4") if packed else None
            layer_formats[f"{name}.awq_block_size"] = 16 if packed else 0
    expected = {"quant_algo": None, "kv_cache_quant_algo": None}
    expected.update(quant_utils.process_layer_quant_config(layer_formats))
    assert qcfg["quantization"] == expected
    assert compressed_tensors_config(qcfg) == convert_hf_config.convert_hf_quant_config_format(qcfg)
    # packed tensors: NVFP4QTensor's
    for name in ("transformer_blocks.1.attn1.to_q", "transformer_blocks.2.ff.conv_inverted"):
        ref, ref_scales, ref_global = NVFP4QTensor.quantize(original[f"{name}.weight"].flatten(1).clone(), 16)
        layer = model.get_submodule(name)
        assert torch.equal(layer.weight, ref._quantized_data)
        assert torch.equal(layer.weight_scale.view(torch.uint8), ref_scales.view(torch.uint8))
        assert torch.equal(layer.weight_scale_2, ref_global)


def test_exclude_summary_matches_modelopt_on_a_larger_layer_list(modelopt_export):
    quant_utils = modelopt_export[0]
    model = SanaVideoTransformer(**{**TINY, "num_layers": 12})
    names = [n for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d, nn.Conv3d))]
    quantized = [n for n in names if n.startswith("transformer_blocks.") and int(n.split(".")[1]) not in (0, 1, 11)
                 and n.endswith(QUANTIZED_SUFFIXES)]
    unquantized = [n for n in names if n not in quantized]
    want = sorted(quant_utils._prefix_wildcard_summarize_exclude_modules(unquantized, quantized))
    assert summarize_exclude_modules(unquantized, quantized) == want


# ---- the CLI round trip and loading ----------------------------------------------------------

@pytest.fixture(scope="module")
def quantized_checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("q") / "shapes-nvfp4"
    proc = subprocess.run([sys.executable, "-m", "sana_serve", "quantize", "--out", str(out), "--exclude-blocks",
                           "last", "--calibration", "1", "--device", "cpu"], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "calibrating" in proc.stderr and "wrote" in proc.stderr  # progress bars and the summary line
    return out


def test_quantize_cli_writes_a_full_checkpoint_in_modelopt_layout(quantized_checkpoint):
    d = quantized_checkpoint
    for f in ("model_index.json", "vae/config.json", "transformer/config.json", "transformer/hf_quant_config.json",
              "transformer/diffusion_pytorch_model.safetensors"):
        assert (d / f).is_file(), f
    qcfg = json.loads((d / "transformer/hf_quant_config.json").read_text())
    assert qcfg["quantization"]["quant_algo"] == "NVFP4" and "transformer_blocks.5*" in qcfg["quantization"]["exclude_modules"]
    config = json.loads((d / "transformer/config.json").read_text())
    assert config["quantization_config"]["quant_method"] == "modelopt"
    state = load_file(str(d / "transformer/diffusion_pytorch_model.safetensors"))
    assert state["transformer_blocks.0.attn1.to_q.weight"].dtype == torch.uint8
    assert state["transformer_blocks.0.attn1.to_q.weight"].shape == (128, 64)
    assert state["transformer_blocks.0.ff.conv_inverted.weight_scale"].dtype == torch.float8_e4m3fn
    assert state["transformer_blocks.0.ff.conv_inverted.weight_scale"].shape == (640, 8)
    assert state["transformer_blocks.0.attn2.to_v.input_scale"].shape == ()
    assert state["transformer_blocks.5.attn1.to_q.weight"].dtype == torch.float32  # excluded block
    assert state["transformer_blocks.5.ff.conv_inverted.weight"].shape == (640, 128, 1, 1)
    assert state["proj_out.weight"].dtype == torch.float32 and state["patch_embedding.weight"].dtype == torch.float32


def test_loading_keeps_weights_packed_and_generates(quantized_checkpoint, tmp_path):
    from sana_serve.engine import GenerationRequest, load_engine

    engine = load_engine("shapes-tiny", checkpoint=quantized_checkpoint, device="cpu")
    model = engine.transformer
    packed = [n for n, m in model.named_modules() if isinstance(m, NVFP4Linear)]
    assert len(packed) == 5 * len(QUANTIZED_SUFFIXES)
    assert not any(n.startswith("transformer_blocks.5.") for n in packed)
    assert isinstance(model.get_submodule("transformer_blocks.5.attn1.to_q"), nn.Linear)
    mem = memory_report(model)
    assert mem["nvfp4_vs_bf16"] <= 0.32 and 4.4 < mem["bits_per_weight"] < 4.6

    # the same random weights quantized on load (weight-only) pack to the same bits
    on_load = load_engine("shapes-tiny", device="cpu", precision="nvfp4").transformer
    for name in packed:
        a, b = model.get_submodule(name), on_load.get_submodule(name)
        assert torch.equal(a.weight, b.weight) and torch.equal(a.weight_scale_2, b.weight_scale_2)

    frames = np.concatenate([b.frames for b in engine.stream(GenerationRequest(PROMPT, seconds=1.0, seed=3))])
    assert frames.shape == (16, 64, 64, 3)

    # and through the CLI, with resident bytes in the report
    out, report = tmp_path / "q.mp4", tmp_path / "q.json"
    proc = subprocess.run([sys.executable, "-m", "sana_serve", "generate", "--checkpoint", str(quantized_checkpoint),
                           "--prompt", PROMPT, "--seconds", "1", "--seed", "3", "--out", str(out), "--report",
                           str(report), "--quiet"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert decode_video(out).shape == (16, 64, 64, 3)
    r = json.loads(report.read_text())
    assert r["memory"]["nvfp4_layers"] == len(packed) and r["memory"]["nvfp4_vs_bf16"] <= 0.32


def test_precision_nvfp4_quantizes_on_load_and_stays_close_to_fp32():
    from sana_serve.engine import GenerationRequest, load_engine

    fp32 = load_engine("shapes-tiny", device="cpu")
    nvfp4 = load_engine("shapes-tiny", device="cpu", precision="nvfp4")
    layers = [m for m in nvfp4.transformer.modules() if isinstance(m, NVFP4Linear)]
    assert len(layers) == 6 * len(QUANTIZED_SUFFIXES) and all(m.input_scale is None for m in layers)
    assert memory_report(nvfp4.transformer)["nvfp4_vs_bf16"] <= 0.32
    req = GenerationRequest(PROMPT, seconds=1.0, seed=11)
    a = np.concatenate([b.frames for b in fp32.stream(req)])
    b = np.concatenate([b.frames for b in nvfp4.stream(req)])
    assert 20 < psnr(a, b) < 99  # close to fp32, yet really different weights


def test_loaded_packed_model_equals_the_in_memory_quantized_one(tmp_path):
    from sana_serve.engine.checkpoint import save_transformer

    model = tiny_model(12)
    quantize_transformer(model, exclude_blocks={1}, calibrate=calibrate_with(2))
    save_transformer(tmp_path, model)
    (tmp_path / "transformer/hf_quant_config.json").write_text(json.dumps(quant_config(model, "NVFP4")))
    loaded = load_quantized_transformer(tmp_path / "transformer")
    g = torch.Generator().manual_seed(0)
    text = torch.randn(1, 5, 24, generator=g)
    x, t = torch.randn(1, 4, 2, 4, 4, generator=g), torch.tensor([500.0])
    with torch.no_grad():
        assert torch.equal(loaded(x, text, t), model(x, text, t))


# ---- bad input ------------------------------------------------------------------------------

def cli_error(capsys, *argv):
    code = main(list(argv))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err
    assert err and err[-1].startswith("sana-serve: error:") and "Traceback" not in "\n".join(err)
    return err[-1]


def test_quantize_bad_inputs_give_one_clear_line(tmp_path, capsys, quantized_checkpoint):
    full = tmp_path / "full"
    full.mkdir()
    (full / "x").write_text("x")
    assert "no-such-dir" in cli_error(capsys, "quantize", "--checkpoint", str(tmp_path / "no-such-dir"),
                                      "--out", str(tmp_path / "o1"))
    assert "not empty" in cli_error(capsys, "quantize", "--out", str(full))
    assert "not a directory" in cli_error(capsys, "quantize", "--out", str(full / "x"))
    assert "not writable" in cli_error(capsys, "quantize", "--out", str(full / "x" / "sub"))
    assert "already quantized" in cli_error(capsys, "quantize", "--checkpoint", str(quantized_checkpoint),
                                            "--out", str(tmp_path / "o2"))
    assert "unknown config" in cli_error(capsys, "quantize", "--config", "nope", "--out", str(tmp_path / "o3"))
    assert "--calibration" in cli_error(capsys, "quantize", "--calibration", "0", "--out", str(tmp_path / "o4"))
    assert "--exclude-blocks" in cli_error(capsys, "quantize", "--exclude-blocks", "middle", "--out", str(tmp_path / "o5"))
    assert "does not exist" in cli_error(capsys, "quantize", "--exclude-blocks", "9", "--out", str(tmp_path / "o6"))
    assert "--out" in cli_error(capsys, "quantize")
    assert not any((tmp_path / f"o{i}").exists() for i in range(1, 7))


def test_a_broken_quantized_checkpoint_is_a_clear_error(tmp_path, capsys, quantized_checkpoint):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(quantized_checkpoint, bad)
    qpath = bad / "transformer/hf_quant_config.json"
    qcfg = json.loads(qpath.read_text())
    qcfg["quantization"]["quant_algo"] = "FP8"
    qpath.write_text(json.dumps(qcfg))
    argv = ["generate", "--checkpoint", str(bad), "--prompt", PROMPT, "--seconds", "1", "--out", str(tmp_path / "x.mp4")]
    assert "FP8" in cli_error(capsys, *argv)
    qcfg["quantization"]["quant_algo"] = "NVFP4"
    qcfg["quantization"]["exclude_modules"].append("transformer_blocks.0.attn1*")
    qpath.write_text(json.dumps(qcfg))
    assert "matches exclude_modules" in cli_error(capsys, *argv)
    assert "kernels" in cli_error(capsys, *argv[:-2], "--out", str(tmp_path / "y.mp4"), "--kernels", "cuda")


def test_quantize_from_a_checkpoint_copies_its_other_parts(tmp_path):
    from sana_serve.engine.checkpoint import save_transformer, write_model_index
    from sana_serve.engine.load import build_random_models
    from sana_serve.engine.config import load_config
    from sana_serve.engine import load_engine

    src = tmp_path / "src"
    transformer, vae = build_random_models(load_config("shapes-tiny"))
    save_transformer(src, transformer)
    vae.save_pretrained(src / "vae")
    write_model_index(src, {"transformer": ["sana_serve", "SanaVideoTransformer"], "vae": ["sana_serve", "CausalVideoVAE"]})
    (src / "README.md").write_text("model card")
    out = tmp_path / "out"
    assert main(["quantize", "--checkpoint", str(src), "--out", str(out), "--weight-only", "--quiet"]) == 0
    assert (out / "README.md").read_text() == "model card"
    assert (out / "model_index.json").read_bytes() == (src / "model_index.json").read_bytes()
    for f in (src / "vae").iterdir():
        assert (out / "vae" / f.name).read_bytes() == f.read_bytes()
    qcfg = json.loads((out / "transformer/hf_quant_config.json").read_text())
    assert qcfg["quantization"]["quant_algo"] == "W4A16_NVFP4"
    assert not any(p.name.startswith(".out.partial") for p in tmp_path.iterdir())
    engine = load_engine("shapes-tiny", checkpoint=out, device="cpu")
    assert memory_report(engine.transformer)["nvfp4_layers"] == 6 * len(QUANTIZED_SUFFIXES)
