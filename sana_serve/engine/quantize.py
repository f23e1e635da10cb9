"""NVFP4 weights for the transformer: pick layers, calibrate, pack, write ModelOpt's HF layout, load it back.

What is quantized: every GEMM inside the transformer blocks, i.e. the self- and cross-attention
projections (to_q, to_k, to_v, to_out.0) and the Mix-FFN's two 1x1 convs (conv_inverted,
conv_point), which the engine runs as GEMMs anyway and are stored here as [out, in] linear
weights. What stays high precision (and is listed in `exclude_modules`): the patch embedding,
the time and caption embeddings, the output projection, the depthwise and temporal convs, and
any blocks named by `exclude_blocks` (e.g. "first,last").

Format (ModelOpt's Hugging Face export, see engine.model.nvfp4.NVFP4Linear for the tensors):
`transformer/hf_quant_config.json` is what ModelOpt's `get_quant_config` writes:

    {"producer": {"name": "modelopt", "version": ...},
     "quantization": {"quant_algo": "NVFP4", "kv_cache_quant_algo": null, "group_size": 16,
                      "exclude_modules": [prefix-wildcard summary, as ModelOpt summarises it]}}

and `transformer/config.json` carries the same as `quantization_config` in the compressed-tensors
form ModelOpt's diffusers export embeds there.

Activations: "NVFP4" (the default) is ModelOpt's W4A4 recipe: each quantized layer also gets
`input_scale = amax(input) / (6·448)` from a max calibration over sample prompts, so W4A4
runtimes (TensorRT-LLM, vLLM, Blackwell FP4 tensor cores) can use the checkpoint. This engine's
CPU and Triton paths are weight-only (they dequantize W and keep activations in fp32/bf16) and
ignore `input_scale`. `weight_only=True` writes ModelOpt's weight-only convention instead:
`quant_algo: "W4A16_NVFP4"` and no `input_scale` (no calibration needed).

Where CUDA is present, calibration runs through ModelOpt itself (`mtq.quantize` with
`NVFP4_DEFAULT_CFG` and a forward loop over the prompts) on a copy of the model and the weights
are packed by ModelOpt's `NVFP4QTensor`: UNTESTED here (no GPU; ModelOpt's NVFP4 calibration
asserts CUDA tensors). On CPU, the same max calibration is done with forward pre-hooks and the
weights are packed by kernels.nvfp4, which is bit-exact with `NVFP4QTensor` (tests/kernels).
One known difference from ModelOpt's diffusers export: it unifies the global scales of q/k/v
projections that share an input (for fused-QKV runtimes); here every layer keeps its own.
"""
from __future__ import annotations

import copy
import fnmatch
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from sana_serve.engine.model.nvfp4 import GROUP_SIZE, NVFP4Linear
from sana_serve.kernels.nvfp4 import E2M1_MAX, E4M3_MAX

log = logging.getLogger("sana_serve.quantize")

QUANT_CONFIG_NAME = "hf_quant_config.json"
MODELOPT_VERSION = "0.47.0"  # the ModelOpt release whose export format this file follows
QUANTIZED_SUFFIXES = ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0",
                      "attn2.to_q", "attn2.to_k", "attn2.to_v", "attn2.to_out.0",
                      "ff.conv_inverted", "ff.conv_point")
ALGORITHMS = ("NVFP4", "W4A16_NVFP4")


class QuantizationError(ValueError):
    """A quantized checkpoint (or a request to make one) that cannot be honoured; says why."""


# ---- which layers --------------------------------------------------------------------------

def parse_exclude_blocks(spec: str | list | tuple | None, num_layers: int) -> set[int]:
    """'first,last,3,-2' -> block indices. Blocks listed here stay high precision."""
    if spec is None or spec == "":
        return set()
    items = spec.split(",") if isinstance(spec, str) else [str(s) for s in spec]
    out = set()
    for item in (s.strip() for s in items):
        if item == "first":
            out.add(0)
        elif item == "last":
            out.add(num_layers - 1)
        else:
            try:
                i = int(item)
            except ValueError:
                raise QuantizationError(f"--exclude-blocks: expected 'first', 'last' or a block index, got {item!r}") from None
            if not -num_layers <= i < num_layers:
                raise QuantizationError(f"--exclude-blocks: block {i} does not exist (the model has {num_layers})")
            out.add(i % num_layers)
    return out


def quantizable_layers(model: nn.Module, exclude_blocks: set[int] = frozenset()) -> list[str]:
    """Names of the layers to quantize (see the module docstring), in model order."""
    names = []
    for i, _ in enumerate(model.transformer_blocks):
        if i in exclude_blocks:
            continue
        for suffix in QUANTIZED_SUFFIXES:
            name = f"transformer_blocks.{i}.{suffix}"
            layer = model.get_submodule(name)
            in_features = layer.weight.shape[1]
            if isinstance(layer, NVFP4Linear) or in_features % GROUP_SIZE:
                continue  # already packed / not a whole number of NVFP4 groups: stays high precision
            names.append(name)
    return names


def _weight_layers(model: nn.Module) -> list[str]:
    """Every module ModelOpt would give a weight quantizer (linear and conv layers)."""
    kinds = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, NVFP4Linear)
    return [name for name, m in model.named_modules() if isinstance(m, kinds)]


def summarize_exclude_modules(unquantized: list[str], quantized: list[str]) -> list[str]:
    """ModelOpt's prefix-wildcard summary of the unquantized layers (`_prefix_wildcard_summarize_
    exclude_modules` in modelopt/torch/export/quant_utils.py, same algorithm): a wildcard is used
    only at a dot and only when it matches no quantized layer."""
    negative = set()
    for layer in quantized:
        negative.add(layer)
        negative.update(layer[:i] + "*" for i in range(len(layer) + 1))
    summary: set[str] = set()
    for layer in unquantized:
        candidates = [[layer[:i] + "*"] if k == 0 else [layer[:i], layer[:i] + ".*"]
                      for i, ch in enumerate(layer) if ch == "." for k in (0, 1)] + [[layer]]
        chosen: list[str] = []
        for wildcards in candidates:
            if any(w in negative for w in wildcards):
                continue
            if all(w in summary for w in wildcards):
                chosen = []
                break
            chosen = wildcards
            break
        if len(chosen) == 2 and chosen[1] == chosen[0] + ".*":
            summary.add(chosen[1])
        else:
            summary.update(chosen)
    return sorted(summary)


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def _as_linear(layer: nn.Module) -> nn.Linear:
    """A 1x1 conv as the nn.Linear with the same [out, in] weight (the engine calls either)."""
    if isinstance(layer, nn.Linear):
        return layer
    if not isinstance(layer, nn.Conv2d) or layer.kernel_size != (1, 1) or layer.groups != 1:
        raise QuantizationError(f"cannot quantize {type(layer).__name__} {layer}: only linear and 1x1 conv layers")
    w = layer.weight.detach()
    linear = nn.Linear(w.shape[1], w.shape[0], bias=layer.bias is not None, device=w.device, dtype=w.dtype)
    linear.weight.data.copy_(w.flatten(1))
    if layer.bias is not None:
        linear.bias.data.copy_(layer.bias.detach())
    return linear


# ---- calibration ---------------------------------------------------------------------------

def _hook_input_amax(model: nn.Module, names: list[str], calibrate: Callable[[nn.Module], None]) -> dict[str, torch.Tensor]:
    """Max calibration with forward pre-hooks: the largest |input| each layer sees (fp32)."""
    amax: dict[str, torch.Tensor] = {}

    def observer(name):
        def hook(_module, args):
            a = args[0].detach().abs().amax().float()
            amax[name] = a if name not in amax else torch.maximum(amax[name], a)
        return hook

    handles = [model.get_submodule(n).register_forward_pre_hook(observer(n)) for n in names]
    try:
        calibrate(model)
    finally:
        for h in handles:
            h.remove()
    missing = [n for n in names if n not in amax]
    if missing:
        raise QuantizationError(f"calibration never ran {len(missing)} layer(s), e.g. {missing[0]}")
    return amax


def _modelopt_input_amax(model: nn.Module, names: list[str], calibrate: Callable[[nn.Module], None]) -> dict[str, torch.Tensor]:
    """ModelOpt's own max calibration (NVFP4_DEFAULT_CFG) on a copy of the model. CUDA only; UNTESTED here.

    mtq.quantize swaps every linear for a QuantLinear and runs `calibrate` with the quantizers
    collecting amax (quantization itself is off while calibrating); the copy is then discarded.
    """
    import modelopt.torch.quantization as mtq  # ~12 s import: only here

    shadow = copy.deepcopy(model)
    mtq.quantize(shadow, copy.deepcopy(mtq.NVFP4_DEFAULT_CFG), forward_loop=calibrate)
    amax = {}
    for name in names:
        quantizer = getattr(shadow.get_submodule(name), "input_quantizer", None)
        if quantizer is None or quantizer.amax is None:
            raise QuantizationError(f"ModelOpt calibration left no input amax for {name}")
        amax[name] = quantizer.amax.detach().float().reshape(()).to(model.proj_out.weight.device)
    del shadow
    return amax


def _pack_modelopt(linear: nn.Linear) -> "NVFP4Linear":
    """Weights packed by ModelOpt's NVFP4QTensor (the CUDA path). UNTESTED here."""
    from modelopt.torch.quantization.qtensor.nvfp4_tensor import NVFP4QTensor

    from sana_serve.kernels.nvfp4 import NVFP4Weight

    packed, scales, global_scale = NVFP4QTensor.quantize(linear.weight.detach().float(), GROUP_SIZE)
    packed = packed._quantized_data if hasattr(packed, "_quantized_data") else packed
    q = NVFP4Weight(packed.view(torch.uint8), scales.view(torch.float8_e4m3fn), global_scale.float().reshape(()),
                    tuple(linear.weight.shape), GROUP_SIZE)
    return NVFP4Linear.from_weight(q, linear.bias)


# ---- quantize ------------------------------------------------------------------------------

def modelopt_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("modelopt") is not None


def quantize_transformer(model: nn.Module, exclude_blocks: set[int] = frozenset(),
                         calibrate: Callable[[nn.Module], None] | None = None, method: str = "auto",
                         progress: bool = False) -> dict:
    """Replace the chosen layers of `model` (in place) by packed NVFP4Linear layers.

    calibrate(model) runs sample prompts through `model`; with it, activations get ModelOpt's
    `input_scale` (quant_algo NVFP4), without it the result is weight-only (W4A16_NVFP4).
    method: "auto" (ModelOpt on CUDA where it is installed, else kernels.nvfp4), "modelopt" or
    "kernels". The packed weights are the same bits either way; ModelOpt (the `nvfp4` extra) is
    only ever needed to calibrate with ModelOpt itself, never to serve.
    Returns the hf_quant_config dict.
    """
    if method not in ("auto", "modelopt", "kernels"):
        raise QuantizationError(f"method must be auto, modelopt or kernels, got {method!r}")
    device = model.proj_out.weight.device
    if method == "auto":
        method = "modelopt" if device.type == "cuda" and modelopt_installed() else "kernels"
    if method == "modelopt" and not modelopt_installed():
        raise QuantizationError("method 'modelopt' needs NVIDIA ModelOpt: pip install 'sana-serve[nvfp4]' "
                                "(or use method 'kernels': the same packed bits, no ModelOpt)")
    names = quantizable_layers(model, exclude_blocks)
    if not names:
        raise QuantizationError("nothing to quantize: every block is excluded")
    for name in names:  # 1x1 convs become the equivalent linears, so hooks and ModelOpt see them
        _set_module(model, name, _as_linear(model.get_submodule(name)))

    amax = None
    if calibrate is not None:
        amax = (_modelopt_input_amax if method == "modelopt" else _hook_input_amax)(model, names, calibrate)
        zero = [n for n, a in amax.items() if not a > 0]
        if zero:
            raise QuantizationError(f"calibration saw only zeros at {zero[0]}: cannot set its input_scale")

    from tqdm import tqdm

    for name in tqdm(names, desc="packing NVFP4", unit="layer", disable=not progress):
        linear = model.get_submodule(name)
        if method == "modelopt":
            layer = _pack_modelopt(linear)
        else:
            layer = NVFP4Linear.from_linear(linear)
        if amax is not None:  # ModelOpt: input_scale = amax / (maxbound 6 · E4M3 max 448), fp32 scalar
            layer.register_buffer("input_scale", (amax[name].float() / (E2M1_MAX * E4M3_MAX)).reshape(()))
        _set_module(model, name, layer.to(device))
    return quant_config(model, "W4A16_NVFP4" if amax is None else "NVFP4",
                        {"method": "modelopt mtq + NVFP4QTensor" if method == "modelopt"
                         else "kernels.nvfp4 (bit-exact with ModelOpt NVFP4QTensor), max calibration by hooks"
                         if amax is not None else "kernels.nvfp4 (bit-exact with ModelOpt NVFP4QTensor)"})


def quant_config(model: nn.Module, algo: str, notes: dict | None = None) -> dict:
    """hf_quant_config.json for a model holding NVFP4Linear layers (ModelOpt's get_quant_config shape)."""
    if algo not in ALGORITHMS:
        raise QuantizationError(f"quant_algo must be one of {', '.join(ALGORITHMS)}, got {algo!r}")
    layers = _weight_layers(model)
    quantized = [n for n in layers if isinstance(model.get_submodule(n), NVFP4Linear)]
    unquantized = [n for n in layers if n not in set(quantized)]
    config = {
        "producer": {"name": "modelopt", "version": MODELOPT_VERSION},
        "quantization": {
            "quant_algo": algo,
            "kv_cache_quant_algo": None,
            "group_size": GROUP_SIZE,
            "exclude_modules": summarize_exclude_modules(unquantized, quantized),
        },
    }
    if notes:  # not part of ModelOpt's format; runtimes read only "producer" and "quantization"
        config["sana_serve"] = {**notes, "runtime": "weight-only dequantizing GEMM (input_scale unused)"}
    return config


def compressed_tensors_config(hf_quant_config: dict) -> dict:
    """The `quantization_config` ModelOpt's diffusers export embeds in config.json
    (modelopt.torch.export.convert_hf_config.convert_hf_quant_config_format, NVFP4 cases)."""
    q = hf_quant_config["quantization"]
    group = q.get("group_size", GROUP_SIZE)
    weights = {"dynamic": False, "num_bits": 4, "type": "float", "group_size": group}
    details: dict = {}
    if q["quant_algo"] == "NVFP4":
        details["input_activations"] = {"dynamic": False, "num_bits": 4, "type": "float", "group_size": group}
    details.update(weights=weights, targets=["Linear"])
    out = {"config_groups": {"group_0": details}, "ignore": q.get("exclude_modules") or [],
           "quant_algo": q["quant_algo"], "producer": hf_quant_config["producer"], "quant_method": "modelopt"}
    return out


# ---- memory --------------------------------------------------------------------------------

def memory_report(model: nn.Module) -> dict:
    """Resident bytes of the transformer, and of its NVFP4 layers' weights vs the same weights in bf16/fp32."""
    total = sum(t.nbytes for t in (*model.parameters(), *model.buffers()))
    layers = [m for m in model.modules() if isinstance(m, NVFP4Linear)]
    packed = sum(m.weight.nbytes + m.weight_scale.nbytes + m.weight_scale_2.nbytes
                 + (m.input_scale.nbytes if m.input_scale is not None else 0) for m in layers)
    elements = sum(m.in_features * m.out_features for m in layers)
    return {
        "transformer_bytes": total,
        "nvfp4_layers": len(layers),
        "nvfp4_weight_bytes": packed,
        "nvfp4_weight_bf16_bytes": 2 * elements,
        "nvfp4_weight_fp32_bytes": 4 * elements,
        "nvfp4_vs_bf16": round(packed / (2 * elements), 5) if elements else None,
        "bits_per_weight": round(8 * packed / elements, 4) if elements else None,
    }


# ---- checkpoints ---------------------------------------------------------------------------

def write_checkpoint(out: Path, model: nn.Module, hf_quant_config: dict, source: Path | None, vae,
                     text_encoder_name: str) -> None:
    """A full HF-layout checkpoint at `out`: the quantized transformer plus the source's other parts.

    Written into a sibling temporary directory and renamed into place, so a failure never leaves
    a half-written checkpoint behind.
    """
    from sana_serve.engine.checkpoint import WEIGHTS_NAME, write_model_index

    out = Path(out)
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        if source is not None:  # vae/, text_encoder/, tokenizer/, model card ... as they are
            shutil.copytree(source, tmp, ignore=lambda d, names: ["transformer"] if Path(d) == Path(source) else [])
        else:
            tmp.mkdir(parents=True)
            vae.save_pretrained(tmp / "vae")
            write_model_index(tmp, {"transformer": ["sana_serve", "SanaVideoTransformer"],
                                    "vae": ["sana_serve", type(vae).__name__],
                                    "text_encoder": ["sana_serve", text_encoder_name]})
        tdir = tmp / "transformer"
        tdir.mkdir()
        config = {"_class_name": "SanaVideoTransformer3DModel", **model.config,
                  "quantization_config": compressed_tensors_config(hf_quant_config)}
        (tdir / "config.json").write_text(json.dumps(config, indent=2))
        (tdir / QUANT_CONFIG_NAME).write_text(json.dumps(hf_quant_config, indent=4))
        from safetensors.torch import save_file

        state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
        save_file(state, str(tdir / WEIGHTS_NAME), metadata={"format": "pt"})
        if out.exists():  # an empty directory (checked by the caller)
            out.rmdir()
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def is_quantized_checkpoint(transformer_dir: Path) -> bool:
    return (Path(transformer_dir) / QUANT_CONFIG_NAME).is_file()


def load_quantized_transformer(transformer_dir: Path, device="cpu"):
    """A transformer from a ModelOpt-layout NVFP4 checkpoint, its quantized layers kept packed."""
    from sana_serve.engine.checkpoint import constructor_kwargs, read_config, read_weights
    from sana_serve.engine.model.transformer import SanaVideoTransformer

    d = Path(transformer_dir)
    try:
        qcfg = json.loads((d / QUANT_CONFIG_NAME).read_text())
        q = qcfg["quantization"]
        algo, group = q["quant_algo"], q.get("group_size", GROUP_SIZE)
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise QuantizationError(f"{d / QUANT_CONFIG_NAME} is not a ModelOpt quantization config ({e})") from None
    if algo not in ALGORITHMS or group != GROUP_SIZE:
        raise QuantizationError(f"{d}: quant_algo {algo!r} with group_size {group} is not supported "
                                f"(this engine loads {' / '.join(ALGORITHMS)} with group_size {GROUP_SIZE})")
    config = {k: v for k, v in constructor_kwargs(read_config(d)).items() if k != "quantization_config"}
    model = SanaVideoTransformer(**config)
    state = read_weights(d)
    excluded = q.get("exclude_modules") or []
    names = sorted(k[: -len(".weight_scale_2")] for k in state if k.endswith(".weight_scale_2"))
    if not names:
        raise QuantizationError(f"{d}: {QUANT_CONFIG_NAME} says {algo} but no layer has a weight_scale_2")
    for name in names:
        if any(fnmatch.fnmatchcase(name, pattern) for pattern in excluded):
            raise QuantizationError(f"{d}: layer {name} is quantized but matches exclude_modules")
        try:
            layer = model.get_submodule(name)
        except AttributeError:
            raise QuantizationError(f"{d}: quantized layer {name} does not exist in this model") from None
        out_features, in_features = layer.weight.shape[:2]
        w, s = state[f"{name}.weight"], state.get(f"{name}.weight_scale")
        if (w.dtype != torch.uint8 or tuple(w.shape) != (out_features, in_features // 2) or s is None
                or s.dtype != torch.float8_e4m3fn or tuple(s.shape) != (out_features, in_features // GROUP_SIZE)):
            raise QuantizationError(f"{d}: {name} is not NVFP4 in ModelOpt's layout (weight {w.dtype} "
                                    f"{tuple(w.shape)}, expected uint8 {(out_features, in_features // 2)})")
        _set_module(model, name, NVFP4Linear(in_features, out_features, bias=layer.bias is not None,
                                             input_scale=f"{name}.input_scale" in state))
    model.load_state_dict(state, strict=True)
    return model.to(device).eval()


# ---- kernels -------------------------------------------------------------------------------

KERNELS = ("auto", "triton", "torch")


def set_kernels(model: nn.Module, kernels: str, device: torch.device) -> str:
    """Point the chunk path's linear attention and the NVFP4 layers at Triton or PyTorch.

    "auto": Triton on CUDA when it is installed, PyTorch on CPU (bit-for-bit the plain engine);
    "triton" forces the kernels (on CPU only under TRITON_INTERPRET=1, for testing); "torch"
    forces the references. Returns the attention backend in use.
    """
    from sana_serve.kernels._triton import is_interpreted, triton_available

    if kernels not in KERNELS:
        raise QuantizationError(f"kernels must be one of {', '.join(KERNELS)}, got {kernels!r}")
    if kernels == "triton":
        if not triton_available():
            raise QuantizationError("--kernels triton needs the `triton` package (pip install triton)")
        from sana_serve.kernels.linear_attention import _state_kernel

        if device.type == "cpu" and not is_interpreted(_state_kernel):
            raise QuantizationError("--kernels triton on CPU runs only in Triton's interpreter: "
                                    "set TRITON_INTERPRET=1 in the environment")
    attention = kernels if kernels != "auto" else ("triton" if device.type == "cuda" and triton_available() else "torch")
    from sana_serve.engine.model.attention import LinearSelfAttention

    for m in model.modules():
        if isinstance(m, LinearSelfAttention):
            m.kernels = attention
            m.kernels_fallback = kernels == "auto"  # chosen for the user: fall back (logged) if Triton fails
        elif isinstance(m, NVFP4Linear):
            m.backend = kernels  # "auto": FP4 tensor cores on Blackwell, Triton on CUDA, torch on CPU
    return attention


# ---- `sana-serve quantize` -----------------------------------------------------------------

def check_out_dir(out: Path) -> None:
    """The output must be a new or empty directory we can write to."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise QuantizationError(f"--out {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()):
        raise QuantizationError(f"--out {out} is not empty (refusing to overwrite)")
    parent = out.resolve().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK) or (out.is_dir() and not os.access(out, os.W_OK)):
        raise QuantizationError(f"--out {out} is not writable")


def quantize_checkpoint(out: Path, config="shapes-tiny", checkpoint: Path | None = None,
                        exclude_blocks: str | None = None, weight_only: bool = False, calibration: list[str] = (),
                        device: str | None = None, method: str = "auto", progress: bool = True) -> dict:
    """Load a model, quantize its transformer to NVFP4, write a full checkpoint to `out`. Returns a summary.

    `calibration`: the prompts whose activations set the input scales (the caller picks them: the
    built-in model's come from its world, sana_serve.shapes.eval.calibration_prompts)."""
    from tqdm import tqdm

    from sana_serve.engine import GenerationRequest, load_engine

    out = Path(out)
    check_out_dir(out)
    if checkpoint is not None:
        checkpoint = Path(checkpoint)
        if not (checkpoint / "model_index.json").is_file() or not (checkpoint / "transformer").is_dir():
            raise QuantizationError(f"--checkpoint {checkpoint} is not a checkpoint directory "
                                    "(needs model_index.json and transformer/)")
        if is_quantized_checkpoint(checkpoint / "transformer"):
            raise QuantizationError(f"--checkpoint {checkpoint} is already quantized ({QUANT_CONFIG_NAME})")
    if not weight_only and not calibration:
        raise QuantizationError("--calibration must be >= 1 prompt (or use --weight-only)")
    engine = load_engine(config, checkpoint=checkpoint, device=device, precision="fp32")
    model = engine.transformer
    if engine.config.checkpoint is not None and is_quantized_checkpoint(Path(engine.config.checkpoint) / "transformer"):
        raise QuantizationError(f"checkpoint {engine.config.checkpoint} is already quantized")
    blocks = parse_exclude_blocks(exclude_blocks, len(model.transformer_blocks))

    calibrate = None
    if not weight_only:
        s, v = engine.config.sampling, engine.config.video
        seconds = min(engine.config.limits.max_seconds,
                      2 * s.chunk_frames * engine.vae.temporal_compression / v.fps)  # two blocks: sees a state fold
        prompts = list(calibration)

        def calibrate(m: nn.Module) -> None:
            original, engine.transformer = engine.transformer, m
            try:
                for i, prompt in enumerate(tqdm(prompts, desc="calibrating", unit="prompt", disable=not progress)):
                    for _ in engine.stream(GenerationRequest(prompt, seconds=seconds, seed=i)):
                        pass
            finally:
                engine.transformer = original

    qcfg = quantize_transformer(model, blocks, calibrate, method=method, progress=progress)
    if calibrate is not None:
        qcfg["sana_serve"]["calibration_prompts"] = len(prompts)
    source = Path(engine.config.checkpoint) if engine.config.checkpoint is not None else None
    write_checkpoint(out, model, qcfg, source, engine.vae, engine.config.text_encoder)
    return {"out": str(out), "source": str(source) if source else f"random weights of config {engine.config.name}",
            "quant_algo": qcfg["quantization"]["quant_algo"], "excluded_blocks": sorted(blocks),
            **memory_report(model)}
