import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def engine():
    """The default config's engine (built-in model), loaded once for the whole run."""
    from sana_serve.engine import load_engine

    return load_engine("shapes-tiny", device="cpu")
