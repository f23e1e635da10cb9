"""`--compile` compiles a bounded number of graphs over a server's realistic mix of requests.

A counting backend stands in for Inductor (the graphs dynamo captures and the guards that trigger
recompiles are the same; Inductor would only take minutes per graph on this CPU)."""
import torch
import torch._dynamo
from torch._dynamo.testing import CompileCounter

from sana_serve.engine import GenerationRequest, load_engine
from sana_serve.engine.rollout import Rollout



def run(engine, batches):
    """Advance each group of rollouts together until they are done (rows change as they finish)."""
    for group in batches:
        rollouts = [Rollout(engine, r) for r in group]
        while not all(r.done for r in rollouts):
            engine.step([r for r in rollouts if not r.done])


def test_compile_blocks_recompiles_a_bounded_number_of_times():
    torch._dynamo.reset()
    engine = load_engine("shapes-tiny", device="cpu")
    engine.config.sampling.first_chunk_steps = 2  # the count depends on shapes, not on how many steps
    engine.config.sampling.steps = 2
    counter = CompileCounter()
    bound = engine.transformer.compile_blocks(backend=counter, max_requests=3)
    assert bound == 9  # 3 kinds of past (none; sums without conv tail; both) x requests in the batch (1, 2, 3)
    prompt = "a red circle moving left on a black background"
    with torch.no_grad():
        run(engine, [
            [GenerationRequest(prompt, None, frames=1 + 4 * 11, seed=1)],  # alone: first chunk, later chunks, folds
            [GenerationRequest(prompt, None, frames=1 + 4 * 15, seed=2),  # two at once (4 rows with CFG), then one
             GenerationRequest(prompt, None, frames=1 + 4 * 7, seed=3, guidance_scale=1.0)],  # no CFG: 1 row
            [GenerationRequest(prompt, None, frames=1 + 4 * 9, seed=4) for _ in range(3)],  # three, another length
        ])
    assert counter.frame_count > 0  # the blocks did run compiled
    assert counter.frame_count <= bound, f"{counter.frame_count} compilations"
    # nothing fell back to eager: the recompile limit was never reached
    assert counter.frame_count <= torch._dynamo.config.recompile_limit
    engine.transformer.compile_blocks(None)
    assert all(blk._compiled_call_impl is None for blk in engine.transformer.transformer_blocks)
