"""A sequence classifier: the GPT's blocks with a classification head in place of the LM head.

The head, `score` (n_classes, emb_dim) with no bias (as transformers' *ForSequenceClassification),
reads the final-normed hidden state of each sequence's last real token. Padding is the pad id
(the tokenizer's <|endoftext|>, which no text encodes to): a padded row's real tokens are moved
to its start before the forward pass, so left and right padding, and any amount of it, give the
same logits as the unpadded text (attention is causal: the pads after the last real token are
never seen). transformers picks the same token, the last one that is not config.pad_token_id.
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import GPTConfig
from ..tokenizer import Tokenizer
from .gpt import GPT


class Classifier(GPT):
    """forward: (B, T) ids (padded with pad_id on either side), or with an explicit (B, T) mask
    of the real tokens -> (B, n_classes) logits."""

    def __init__(self, config: GPTConfig, classes: list[str], pad_id: int, tokenizer: Tokenizer | None = None):
        super().__init__(config, tokenizer)
        del self.lm_head  # never computed; the state dict has score.weight instead
        self.classes, self.pad_id = list(classes), pad_id
        self.score = nn.Linear(config.emb_dim, len(classes), bias=False, device=self.tok_emb.weight.device)
        nn.init.normal_(self.score.weight, std=0.02)

    def forward(self, idx: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        mask = idx != self.pad_id if mask is None else mask.bool()
        lengths = mask.sum(1)  # (B,)
        order = torch.argsort((~mask).to(torch.int8), dim=1, stable=True)  # real tokens first, in order
        x = super().forward(idx.gather(1, order), head=False)  # (B, T, C)
        last = x[torch.arange(x.size(0), device=x.device), (lengths - 1).clamp(min=0)]  # (B, C)
        return self.score(self.final_norm(last))

    def num_params(self, include_embeddings: bool = True) -> int:
        c = self.config
        n = sum(p.numel() for p in self.parameters()) - (c.padded_vocab_size - c.vocab_size) * c.emb_dim
        if not include_embeddings:
            n -= c.vocab_size * c.emb_dim + (c.context_length * c.emb_dim if c.positions == "learned" else 0)
        return n

    def flops_per_token(self, seq_len: int | None = None) -> float:
        """As GPT's, without the LM head (the classification head runs once per sequence)."""
        c = self.config
        n = self.num_params(include_embeddings=False) - self.score.weight.numel()
        return 6 * n + 12 * c.n_layers * (seq_len or c.context_length) * c.emb_dim


def as_classifier(model: GPT, classes: list[str], pad_id: int) -> Classifier:
    """`model`'s embeddings and blocks under a new classification head (N(0, 0.02), drawn from
    torch's generator), on its device, with its tokenizer."""
    weight = model.tok_emb.weight
    with torch.device("meta"):
        clf = Classifier(model.config, classes, pad_id, model.tokenizer)
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("lm_head.")}
    state["score.weight"] = torch.empty(len(classes), model.config.emb_dim, device=weight.device,
                                        dtype=weight.dtype).normal_(std=0.02)
    clf.load_state_dict(state, assign=True)
    return clf.train(model.training)


def set_trainable(model: Classifier, trainable: str, blocks: int = 1) -> None:
    """Which weights train: 'all', the 'head' only, or the 'last' `blocks` blocks, the final norm
    and the head; with LoRA adapters (model.lora) the adapters and the head. The head always trains."""
    lora = getattr(model, "lora", None) is not None
    if not lora:
        for p in model.parameters():
            p.requires_grad_(trainable == "all")
        if trainable == "last":
            for module in (*model.blocks[-blocks:], model.final_norm):
                module.requires_grad_(True)
    model.score.requires_grad_(True)
