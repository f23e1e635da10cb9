"""The nn.Modules: the SANA-Video transformer, its stream state (the model's cache), VAEs, text encoders."""
from sana_serve.engine.model.state import StateBatch, StreamState  # noqa: F401
from sana_serve.engine.model.transformer import SanaVideoTransformer, TextContext  # noqa: F401
from sana_serve.engine.model.vae import CausalVideoVAE, load_vae  # noqa: F401
from sana_serve.engine.model.wan_vae import WanVAE  # noqa: F401

__all__ = ["SanaVideoTransformer", "TextContext", "StreamState", "StateBatch", "CausalVideoVAE", "WanVAE", "load_vae"]
