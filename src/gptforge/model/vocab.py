"""Growing a model's vocabulary: new token ids (a chat template's turn tokens) get new rows.

A new row starts as the mean of the existing rows (of the embedding, and of an untied LM head):
Hewitt (2021, "Initializing New Word Embeddings for Pretrained Language Models") shows that this
keeps the model's next-token distribution almost where it was, where a random row can dominate
it, so fine-tuning starts from the base model's behaviour. Existing ids keep their rows.
"""

from __future__ import annotations

import dataclasses

import torch

from ..tokenizer import Tokenizer
from .gpt import GPT, VOCAB_ROW_PARAMS

TIED_KEY = "lm_head.weight"


def grow_vocabulary(model: GPT, vocab_size: int, tokenizer: Tokenizer | None = None) -> GPT:
    """A model like `model` with `vocab_size` ids (>= its own), the new rows the mean row, carrying
    `tokenizer` (one that extends the model's own with special tokens), else the model's own."""
    old = model.config.vocab_size
    if vocab_size < old:
        raise ValueError(f"cannot shrink a vocabulary of {old} ids to {vocab_size}")
    if vocab_size == old and tokenizer is None:
        return model
    config = dataclasses.replace(model.config, vocab_size=vocab_size)
    state = model.state_dict()  # vocab_size rows (the padding is not a weight)
    for name in VOCAB_ROW_PARAMS:
        if name in state:
            rows = state[name]  # (old, C)
            mean = rows.float().mean(dim=0, keepdim=True).to(rows.dtype)
            state[name] = torch.cat([rows, mean.expand(vocab_size - old, -1)])
    if config.tie_embeddings:
        state.pop(TIED_KEY)
    device = model.tok_emb.weight.device
    with torch.device("meta"):
        grown = GPT(config, tokenizer if tokenizer is not None else model.tokenizer)
    grown.load_state_dict({k: v.to(device) for k, v in state.items()}, strict=False, assign=True)
    if config.tie_embeddings:
        grown.lm_head.weight = grown.tok_emb.weight
    return grown.train(model.training)
