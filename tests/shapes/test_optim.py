"""The Muon/AdamW optimiser: its AdamW half is AdamW, its Muon half orthogonalises, it trains."""
import pytest
import torch

from sana_serve.shapes import train
from sana_serve.engine.model.transformer import SanaVideoTransformer
from sana_serve.shapes.optim import MuonAdamW, newton_schulz, transformer_optimizer
from tests.shapes.test_train import TINY_TRANSFORMER


@pytest.mark.parametrize("shape", [(32, 96), (96, 32), (48, 48)])
def test_newton_schulz_flattens_the_spectrum(shape):
    torch.manual_seed(0)
    k = min(shape)
    u, _ = torch.linalg.qr(torch.randn(shape[0], k))
    v, _ = torch.linalg.qr(torch.randn(shape[1], k))
    g = u @ torch.diag(torch.logspace(-1.5, 1, k)) @ v.T  # singular values spread 300x
    s = torch.linalg.svdvals(newton_schulz(g))
    # the quintic trades exactness for speed: singular values land in ~[0.7, 1.2], not at 1
    assert s.min() > 0.6 and s.max() < 1.25, s


def test_its_adamw_groups_step_exactly_like_torch_adamw():
    torch.manual_seed(0)
    a, b = torch.randn(7, 5, requires_grad=True), torch.randn(3, requires_grad=True)
    a2, b2 = a.detach().clone().requires_grad_(True), b.detach().clone().requires_grad_(True)
    ours = MuonAdamW([{"params": [a, b]}], lr=3e-3)
    ref = torch.optim.AdamW([a2, b2], lr=3e-3, weight_decay=0.01, betas=(0.9, 0.99))
    for _ in range(5):
        x = torch.randn(5)
        for opt, (w, v) in ((ours, (a, b)), (ref, (a2, b2))):
            opt.zero_grad()
            ((w @ x).sin().sum() + (v ** 3).sum()).backward()
            opt.step()
    torch.testing.assert_close(a, a2, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(b, b2, rtol=1e-6, atol=1e-7)


def test_muon_takes_the_block_matrices_and_trains_the_transformer():
    torch.manual_seed(0)
    model = SanaVideoTransformer(**TINY_TRANSFORMER)
    opt = transformer_optimizer(model, "muon", lr=3e-3)
    muon = {id(p) for g in opt.param_groups if g["muon"] for p in g["params"]}
    names = {n for n, p in model.named_parameters() if id(p) in muon}
    assert "transformer_blocks.0.attn1.to_q.weight" in names and "transformer_blocks.1.ff.conv_point.weight" in names
    assert not any("conv_depth" in n or "bias" in n or n.startswith("patch_embedding") or n.startswith("proj_out")
                   for n in names)
    recipe = train.FlowRecipe(chunk_frames=2, window_chunks=1, flow_shift=3.0)
    latents, text = torch.randn(4, 8, 6, 8, 8), torch.randn(4, 5, 384)
    history = []
    for step in range(40):
        loss = train.teacher_forced_loss(model, latents, model.encode_text(text), recipe,
                                         torch.Generator().manual_seed(step % 4))
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append(loss.item())
    assert sum(history[-4:]) < 0.8 * sum(history[:4]), history


def test_resuming_with_the_other_optimizer_says_which_one_it_was_started_with(tmp_path):
    model = torch.nn.Linear(4, 4)
    ck = train.Checkpointer(tmp_path, "transformer")
    ck.save(model, torch.optim.AdamW(model.parameters()), step=10)
    with pytest.raises(SystemExit, match="trained with AdamW, not MuonAdamW"):
        ck.load(model, MuonAdamW([{"params": list(model.parameters()), "muon": True}]))
    assert ck.load(model, torch.optim.AdamW(model.parameters())) == 10
