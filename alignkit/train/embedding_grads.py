"""Input-embedding gradients as the rows a batch used, not a dense copy of the whole table.

The gradient of an embedding lookup E[ids] is nonzero only on the rows of `ids`, yet
autograd's default materialises it as a dense [vocabulary, hidden] tensor: zero-filled,
the used rows added in, and, when the table is tied to the LM head (SmolLM2, Llama 3.2,
Qwen2.5 small models), added to the head's own dense gradient. For SmolLM2-135M that is a
49,152 × 576 float32 buffer (113 MB) allocated and filled at every backward, alive at the
end of the backward where the peak memory is.

With `nn.Embedding.sparse` on, the lookup's gradient is a sparse tensor of the used rows.
Autograd sums it into the head's dense gradient before it reaches the parameter, so a tied
table ends with the same dense `.grad` as before; an untied one (a reward model's backbone,
whose LM head is unused) ends with a sparse `.grad`, which :func:`densify_sparse_grads`
turns dense before clipping and the optimizer. The values are the same up to the order of
float additions; the peak memory it saves is in benchmarks/README.md.

Only for one process: DistributedDataParallel treats a sparse embedding as one whose
gradients it must all-reduce sparsely. The engine switches the embeddings back when its
run closes.
"""

from __future__ import annotations

from collections.abc import Iterable

from torch import nn


def use_sparse_embedding_grads(model: nn.Module) -> list[nn.Embedding]:
    """Switch every trainable `nn.Embedding` in `model` to sparse gradients; returns those
    switched (for :func:`restore_dense_embedding_grads`)."""
    switched = []
    for module in model.modules():
        if isinstance(module, nn.Embedding) and module.weight.requires_grad and not module.sparse:
            module.sparse = True
            switched.append(module)
    return switched


def restore_dense_embedding_grads(embeddings: Iterable[nn.Embedding]) -> None:
    """Undo :func:`use_sparse_embedding_grads`: a model handed back to its user trains with
    any optimizer, as loaded (most refuse sparse gradients)."""
    for module in embeddings:
        module.sparse = False


def densify_sparse_grads(params: Iterable[nn.Parameter]) -> None:
    """Replace each sparse `.grad` with its dense equivalent (optimizers and norms want dense)."""
    for param in params:
        if param.grad is not None and param.grad.is_sparse:
            param.grad = param.grad.to_dense()


__all__ = [
    "densify_sparse_grads",
    "restore_dense_embedding_grads",
    "use_sparse_embedding_grads",
]
