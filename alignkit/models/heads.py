"""Reward and critic models: a causal LM's backbone with a scalar head on every position.

A reward model reads the head at the last real token of prompt + response (one score per
sequence); a critic reads it at every response token (one value per state). Both start from
a language model's weights: the backbone is the LM without its vocabulary projection.

A saved scalar-head model is an ordinary transformers folder for the backbone, plus
`scalar_head.safetensors` and `scalar_head.json` (its kind and, for reward models, the
normalisation statistics a trainer chose to store).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoModel, PreTrainedModel, PreTrainedTokenizerBase

from alignkit.errors import UserError
from alignkit.models.loading import load_causal_lm
from alignkit.models.scoring import pack_batch
from alignkit.ops.stats import last_token_index

HEAD_WEIGHTS = "scalar_head.safetensors"
HEAD_CONFIG = "scalar_head.json"


class ScalarHeadModel(nn.Module):
    """Backbone + linear head: `forward` gives one scalar per position, float32, shape [B, T]."""

    def __init__(
        self,
        backbone: PreTrainedModel,
        head: nn.Linear | None = None,
        kind: str = "reward",
        *,
        seed: int = 0,
    ):
        super().__init__()
        self.backbone = backbone
        hidden = backbone.config.hidden_size
        if head is None:
            # Small init so the first rewards/values are near 0 and do not swamp the KL term;
            # drawn from its own generator so a run is reproducible from its seed alone.
            head = nn.Linear(hidden, 1, bias=True)
            generator = torch.Generator().manual_seed(seed)
            nn.init.normal_(head.weight, std=1.0 / math.sqrt(hidden + 1), generator=generator)
            nn.init.zeros_(head.bias)
        self.head = head.to(dtype=torch.float32, device=backbone.device)
        self.kind = kind
        self.metadata: dict[str, Any] = {}

    @property
    def config(self):
        return self.backbone.config

    @property
    def device(self) -> torch.device:
        return self.head.weight.device

    @classmethod
    def from_causal_lm(
        cls, lm: PreTrainedModel, kind: str = "reward", *, seed: int = 0
    ) -> ScalarHeadModel:
        """Wrap the decoder of a loaded causal LM (its vocabulary projection is dropped)."""
        backbone = lm.get_decoder() if hasattr(lm, "get_decoder") else lm.base_model
        return cls(backbone, kind=kind, seed=seed)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return self.head(hidden.to(self.head.weight.dtype)).squeeze(-1)

    def score(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        *,
        prompt_lengths: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """One scalar per sequence, read at its last attended token (left or right padding).

        A padded batch on a Llama-family backbone runs as one packed row of its real tokens
        (restarting position ids, each sequence attending to itself), so no pad token goes
        through the network and the head reads one hidden state per sequence. With
        `prompt_lengths` [B] (row b opens with a prompt of that many real tokens), rows with
        the same prompt run it through the network once.
        """
        last = last_token_index(attention_mask)
        packed = pack_batch(self.backbone, input_ids, attention_mask, prompt_lengths=prompt_lengths)
        if packed is not None:
            hidden = self.backbone(
                input_ids=packed.input_ids,
                position_ids=packed.position_ids,
                use_cache=False,
                **packed.forward_kwargs,
            ).last_hidden_state[0]
            rows = packed.index.gather(1, last.unsqueeze(1)).squeeze(1)
            return self.head(hidden[rows].to(self.head.weight.dtype)).squeeze(-1)
        values = self(input_ids, attention_mask)
        return values.gather(1, last.unsqueeze(1)).squeeze(1)

    def save_pretrained(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.backbone.save_pretrained(directory, safe_serialization=True)
        save_file(
            {k: v.detach().contiguous() for k, v in self.head.state_dict().items()},
            directory / HEAD_WEIGHTS,
        )
        (directory / HEAD_CONFIG).write_text(
            json.dumps({"kind": self.kind, "metadata": self.metadata}, indent=2) + "\n"
        )

    def load_weights(self, directory: str | Path) -> None:
        """Load weights written by :meth:`save_pretrained` into this model, in place."""
        directory = Path(directory)
        backbone_state: dict[str, torch.Tensor] = {}
        for file in sorted(directory.glob("*.safetensors")):
            if file.name != HEAD_WEIGHTS:
                backbone_state.update(load_file(file))
        self.backbone.load_state_dict(backbone_state)
        self.head.load_state_dict(load_file(directory / HEAD_WEIGHTS))

    @classmethod
    def from_pretrained(
        cls, directory: str | Path, *, dtype: torch.dtype = torch.float32
    ) -> ScalarHeadModel:
        directory = Path(directory)
        if not (directory / HEAD_CONFIG).is_file():
            raise UserError(
                f"{directory} holds no scalar-head model (no {HEAD_CONFIG}); train one with `alignkit rm`"
            )
        info = json.loads((directory / HEAD_CONFIG).read_text())
        backbone = AutoModel.from_pretrained(directory, dtype=dtype)
        state = load_file(directory / HEAD_WEIGHTS)
        head = nn.Linear(backbone.config.hidden_size, 1, bias="bias" in state)
        head.load_state_dict(state)
        model = cls(backbone, head, kind=info.get("kind", "reward"))
        model.metadata = info.get("metadata", {})
        return model


@torch.no_grad()
def trunk_states(
    model: ScalarHeadModel, sequences: list[list[int]], layers: int, *, batch_size: int = 16
) -> list[torch.Tensor]:
    """Each sequence's hidden states after the embeddings and the bottom `layers` decoder
    layers, [T_i, H] float32 on the CPU: what the frozen part of the network feeds the rest,
    computed once (:func:`score_from_trunk` runs the layers above it)."""
    backbone = model.backbone
    was_training = backbone.training
    backbone.eval()
    states: list[torch.Tensor] = []
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))  # little padding
    by_index: dict[int, torch.Tensor] = {}
    try:
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            length = max(len(sequences[i]) for i in rows)
            ids = torch.full((len(rows), length), 0, dtype=torch.long)
            mask = torch.zeros((len(rows), length), dtype=torch.long)
            for r, i in enumerate(rows):
                ids[r, : len(sequences[i])] = torch.tensor(sequences[i])
                mask[r, : len(sequences[i])] = 1
            hidden = run_layers(backbone, ids.to(model.device), mask.to(model.device), layers)
            for r, i in enumerate(rows):
                by_index[i] = hidden[r, : len(sequences[i])].float().cpu()
    finally:
        backbone.train(was_training)
    states = [by_index[i] for i in range(len(sequences))]
    return states


def run_layers(
    backbone: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, layers: int
) -> torch.Tensor:
    """The hidden states after the embeddings and the first `layers` decoder layers of a
    right-padded batch [B, T, H] (the layers above are not run)."""
    return decoder_layers(backbone, backbone.embed_tokens(input_ids), attention_mask, 0, layers)


def decoder_layers(
    backbone: nn.Module,
    hidden: torch.Tensor,
    attention_mask: torch.Tensor,
    start: int,
    stop: int | None = None,
) -> torch.Tensor:
    """Decoder layers `start`..`stop` over hidden states [B, T, H] of a right-padded batch,
    with the positions and causal mask of the full forward."""
    from transformers.masking_utils import create_causal_mask

    batch, length = attention_mask.shape
    position_ids = torch.arange(length, device=hidden.device).expand(batch, -1)
    mask = create_causal_mask(
        config=backbone.config,
        inputs_embeds=hidden,
        attention_mask=attention_mask,
        cache=None,
        position_ids=position_ids,
    )
    position_embeddings = backbone.rotary_emb(hidden, position_ids=position_ids)
    for layer in backbone.layers[start:stop]:
        hidden = layer(
            hidden,
            attention_mask=mask,
            position_ids=position_ids,
            position_embeddings=position_embeddings,
        )
    return hidden


def score_from_trunk(
    model: ScalarHeadModel, states: torch.Tensor, attention_mask: torch.Tensor, start: int
) -> torch.Tensor:
    """One scalar per sequence from its frozen trunk's output `states` [B, T, H]
    (right-padded, `attention_mask` [B, T]): decoder layers `start`.. and the final norm
    run over them as in the full forward (same positions, same causal mask), and the head
    reads the last real token."""
    backbone = model.backbone
    batch = attention_mask.shape[0]
    hidden = decoder_layers(backbone, states.to(backbone.dtype), attention_mask, start)
    hidden = backbone.norm(hidden)
    last = last_token_index(attention_mask)
    rows = hidden[torch.arange(batch, device=hidden.device), last]
    return model.head(rows.to(model.head.weight.dtype)).squeeze(-1)


def is_scalar_head_folder(name: str) -> bool:
    return (Path(name).expanduser() / HEAD_CONFIG).is_file()


def load_scalar_model(
    name: str, *, kind: str = "reward", dtype: str = "float32", seed: int = 0
) -> tuple[ScalarHeadModel, PreTrainedTokenizerBase]:
    """A reward/critic model: a saved scalar-head folder, or any causal LM with a fresh head."""
    from alignkit.models.loading import DTYPES, load_tokenizer, run_folder_model

    name = run_folder_model(name)
    if is_scalar_head_folder(name):
        model = ScalarHeadModel.from_pretrained(Path(name).expanduser(), dtype=DTYPES[dtype])
        model.kind = kind
        return model, load_tokenizer(name)
    lm, tokenizer = load_causal_lm(name, dtype=dtype, seed=seed)
    return ScalarHeadModel.from_causal_lm(lm, kind=kind, seed=seed), tokenizer
