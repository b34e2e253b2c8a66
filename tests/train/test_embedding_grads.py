"""Sparse input-embedding gradients: the same gradients, without a dense copy of the table."""

import sys
from pathlib import Path

import pytest
import torch

from alignkit.models.heads import ScalarHeadModel
from alignkit.models.tiny import tiny_random_llama
from alignkit.train.embedding_grads import densify_sparse_grads, use_sparse_embedding_grads
from alignkit.train.engine import Engine

IDS = torch.tensor([[5, 9, 9, 40, 7, 5], [3, 3, 100, 7, 8, 2]])


def lm_loss(model):
    logits = model(input_ids=IDS).logits
    return torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), IDS[:, 1:].flatten())


def grads_after(model, loss_fn):
    model.zero_grad(set_to_none=True)
    loss_fn(model).backward()
    params = list(model.parameters())
    densify_sparse_grads(params)
    return {name: p.grad.clone() for name, p in model.named_parameters()}


def embedding_backward_is_sparse(loss: torch.Tensor) -> bool:
    """Whether the graph's embedding lookup produces a sparse gradient."""
    stack, seen = [loss.grad_fn], set()
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if type(node).__name__.startswith("EmbeddingBackward"):
            return bool(node._saved_sparse)
        stack.extend(next_node for next_node, _ in node.next_functions)
    raise AssertionError("no embedding lookup in the graph")


def test_a_tied_embedding_gets_the_same_dense_gradient():
    model, _ = tiny_random_llama(seed=0)
    assert model.get_input_embeddings().weight is model.get_output_embeddings().weight
    assert not embedding_backward_is_sparse(lm_loss(model))
    dense = grads_after(model, lm_loss)
    model.zero_grad(set_to_none=True)
    assert len(use_sparse_embedding_grads(model)) == 1
    loss = lm_loss(model)
    assert embedding_backward_is_sparse(loss)
    loss.backward()
    # the sparse rows were summed into the LM head's dense gradient by autograd itself
    assert not model.get_input_embeddings().weight.grad.is_sparse
    sparse = grads_after(model, lm_loss)
    assert dense.keys() == sparse.keys()
    for name in dense:
        torch.testing.assert_close(sparse[name], dense[name], atol=1e-7, rtol=1e-6)


def test_an_embedding_used_alone_is_densified_before_the_optimizer_sees_it():
    # a reward model: the backbone's embedding, no LM head in the loss
    model = ScalarHeadModel.from_causal_lm(tiny_random_llama(seed=1)[0], kind="reward", seed=0)

    def score_loss(m):
        return m(input_ids=IDS, attention_mask=torch.ones_like(IDS)).sum()

    dense = grads_after(model, score_loss)
    model.zero_grad(set_to_none=True)
    use_sparse_embedding_grads(model)
    score_loss(model).backward()
    embedding = model.backbone.get_input_embeddings().weight
    assert embedding.grad.is_sparse
    densify_sparse_grads(list(model.parameters()))
    assert not embedding.grad.is_sparse
    sparse = grads_after(model, score_loss)
    for name in dense:
        torch.testing.assert_close(sparse[name], dense[name], atol=1e-7, rtol=1e-6)


def test_frozen_embeddings_are_left_alone():
    model, _ = tiny_random_llama(seed=0)
    model.get_input_embeddings().weight.requires_grad_(False)
    assert use_sparse_embedding_grads(model) == []
    assert not model.get_input_embeddings().sparse


def fit(cfg):
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from engine_helpers import collate, next_token_loss, synthetic_dataset, tiny_model

    engine = Engine(cfg, tiny_model())
    seen = []

    def loss_fn(model, batch):
        seen.append(model.get_input_embeddings().sparse)
        return next_token_loss(model, batch)

    engine.fit(synthetic_dataset(n=16), collate, loss_fn)
    return engine, seen


@pytest.mark.parametrize("accumulation", [1, 2])
def test_training_with_sparse_embedding_grads_matches_dense(tmp_path, accumulation):
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from engine_helpers import make_config

    runs = {}
    for sparse in (True, False):
        cfg = make_config(
            tmp_path / str(sparse),
            max_steps=4,
            batch_size=4 // accumulation,
            gradient_accumulation_steps=accumulation,
            max_grad_norm=0.5,  # clipped: the norm is taken over the densified gradients
            sparse_embedding_grads=sparse,
        )
        runs[sparse], seen = fit(cfg)
        assert set(seen) == {sparse}  # on while training when asked
        # and off again when the run ends: the model goes back to its user as loaded
        assert not runs[sparse].unwrapped_model.get_input_embeddings().sparse
    for a, b in zip(
        runs[True].unwrapped_model.parameters(),
        runs[False].unwrapped_model.parameters(),
        strict=True,
    ):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
