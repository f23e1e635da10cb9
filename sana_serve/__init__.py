"""sana-serve: streaming text-to-video inference for block-autoregressive linear diffusion transformers.

    cli      the command line, above everything it drives
    server   FastAPI app, job store, worker loop, block hub (HTTP lives here and only here)
    engine   prompt -> frames, block by block, at constant memory (no HTTP)
    kernels  Triton kernels beside the PyTorch references they must equal
    shapes   the built-in model's world: renderer, prompts, checker, training, evaluation

Dependencies point one way: cli -> server -> engine -> kernels; shapes -> engine.
"""
