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
