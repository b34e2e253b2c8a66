import os

# Tests never reach a model hub: fail fast instead of retrying the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

from alignkit.models.tiny import tiny_random_llama


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


@pytest.fixture
def tiny_model_and_tokenizer():
    return tiny_random_llama(seed=0)
