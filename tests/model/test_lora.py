"""LoRA adapters: the base frozen, the update low-rank and zero at the start, merging exact."""

import pytest
import torch

from gptforge.model.lora import (
    TARGETS,
    LoRALinear,
    adapter_state,
    add_lora,
    load_adapter,
    merge_lora,
    trainable_count,
)
from gptforge.model.vocab import grow_vocabulary

from helpers import random_gpt

ALL = tuple(TARGETS)


def adapted(tied=True, rows=True, targets=ALL, seed=0):
    """A tiny GPT grown by two ids, with adapters whose B and rows are random (as after training)."""
    model = random_gpt(seed, tie_embeddings=tied)
    if rows:
        model = grow_vocabulary(model, 259)
    add_lora(model, rank=4, alpha=8.0, dropout=0.0, targets=targets, new_rows=(257, 259) if rows else None)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.requires_grad:
                p.normal_(0, 0.1)
    return model.eval()


def test_a_new_adapter_changes_nothing_and_only_it_trains():
    base = random_gpt(0).eval()
    model = random_gpt(0).eval()
    add_lora(model, rank=4, alpha=8.0, dropout=0.1, targets=("qkv", "mlp_out"))
    idx = torch.randint(0, 257, (2, 12))
    torch.testing.assert_close(model(idx), base(idx), rtol=0, atol=0)  # B starts at zero
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {f"blocks.{i}.{path}.{ab}" for i in range(2) for path in ("attn.qkv", "mlp.out_proj")
                         for ab in ("lora_A", "lora_B")}
    c = model.config.emb_dim
    per_layer = 4 * (c + 3 * c) + 4 * (4 * c + c)  # rank * (in + out) for qkv and mlp out
    assert trainable_count(model) == (2 * per_layer, base.num_params() + 2 * per_layer
                                      + (model.config.padded_vocab_size - 257) * c)
    model.train()
    model(idx, targets=idx).backward()
    assert all(p.grad is None for n, p in model.named_parameters() if n not in trainable)


@pytest.mark.parametrize("tied", [True, False])
@pytest.mark.parametrize("rows", [True, False])
def test_merged_equals_unmerged(tied, rows):
    model = adapted(tied, rows)
    idx = torch.randint(0, model.config.vocab_size, (3, 16))
    before = model(idx)
    merge_lora(model)
    assert not any(isinstance(m, LoRALinear) for m in model.modules())
    assert (model.lm_head.weight is model.tok_emb.weight) == tied
    torch.testing.assert_close(model(idx), before, rtol=0, atol=1e-5)
    assert all(p.requires_grad for p in model.parameters())


def test_the_update_is_x_a_b_times_alpha_over_rank():
    layer = torch.nn.Linear(6, 5)
    lora = LoRALinear(layer, rank=2, alpha=3.0, dropout=0.0)
    with torch.no_grad():
        lora.lora_B.normal_()
    x = torch.randn(4, 6)
    expected = x @ layer.weight.T + layer.bias + (x @ lora.lora_A.T @ lora.lora_B.T) * 1.5
    torch.testing.assert_close(lora(x), expected)


def test_new_rows_train_and_the_old_ones_stay():
    model = adapted().train()
    idx = torch.tensor([[1, 257, 258, 3]])
    model(idx, targets=torch.tensor([[257, 258, 2, 258]])).backward()
    rows = model.tok_emb.parametrizations.weight[0].new_rows
    assert rows.grad is not None and rows.grad.abs().sum() > 0
    original = model.tok_emb.parametrizations.weight.original
    assert not original.requires_grad and original.grad is None
    torch.testing.assert_close(model.tok_emb.weight[257:259], rows, rtol=0, atol=0)


def test_adapter_state_round_trips():
    model = adapted(seed=1)
    state = adapter_state(model.state_dict(), tied=True)
    assert "tok_emb.new_rows" in state and "lm_head.new_rows" not in state
    assert all(".lora_" in k or k.endswith("new_rows") for k in state)
    other = adapted(seed=2)
    idx = torch.randint(0, 259, (2, 8))
    assert not torch.allclose(other(idx), model(idx))
    load_adapter(other, state, "test")
    # the same adapters on a base with other weights: only the adapter parts must agree
    same_base = adapted(seed=1)
    load_adapter(same_base, {k: v + 0 for k, v in state.items()}, "test")
    torch.testing.assert_close(same_base(idx), model(idx), rtol=0, atol=0)
    with pytest.raises(ValueError, match="missing"):
        load_adapter(other, {k: v for k, v in state.items() if "lora_A" not in k}, "test")


def test_new_rows_start_as_the_mean_row():
    base = random_gpt(3)
    grown = grow_vocabulary(base, 259)
    mean = base.tok_emb.weight[:257].mean(0)
    torch.testing.assert_close(grown.tok_emb.weight[257], mean)
    torch.testing.assert_close(grown.tok_emb.weight[258], mean)
    torch.testing.assert_close(grown.tok_emb.weight[:257], base.tok_emb.weight[:257], rtol=0, atol=0)
    assert grown.lm_head.weight is grown.tok_emb.weight
    assert grown.config.vocab_size == 259
