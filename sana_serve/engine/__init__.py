"""sana-serve engine: prompt -> frames, block by block, at constant memory. No HTTP in here."""
from sana_serve.engine.config import ConfigError, ModelConfig, load_config  # noqa: F401
from sana_serve.engine.rollout import Block, Cancelled, Engine, GenerationRequest  # noqa: F401


def load_engine(*args, **kwargs):
    """See engine.load.load_engine (imported lazily: it pulls in transformers)."""
    from sana_serve.engine.load import load_engine as _load

    return _load(*args, **kwargs)
