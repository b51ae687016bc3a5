import math

import pytest
import torch

from gptforge.config import GPTConfig
from gptforge.model import GPT
from gptforge.tokenizer import gpt2


def test_output_shape_and_dtype(tiny_model, tiny_config):
    idx = torch.randint(0, tiny_config.vocab_size, (3, 7))
    logits = tiny_model(idx)
    assert logits.shape == (3, 7, tiny_config.vocab_size)
    assert logits.dtype == torch.float32


def test_gpt2_124m_parameter_count():
    with torch.device("meta"):  # counts shapes without allocating 0.5 GB
        model = GPT(GPTConfig.from_preset("gpt2-124m"))
    assert model.num_params() == 124_439_808  # published GPT-2 small count, tied head
    assert model.num_params(include_embeddings=False) == 124_439_808 - 50257 * 768 - 1024 * 768
    assert model.lm_head.weight is model.tok_emb.weight


def test_qkv_bias_switch_changes_count_by_the_bias_size():
    with torch.device("meta"):
        with_bias = GPT(GPTConfig.from_preset("gpt2-124m")).num_params()
        without = GPT(GPTConfig.from_preset("gpt2-124m", qkv_bias=False)).num_params()
    assert with_bias - without == 12 * 3 * 768


def test_causal_masking(tiny_model, tiny_config):
    torch.manual_seed(1)
    idx = torch.randint(0, tiny_config.vocab_size, (2, 12))
    changed = idx.clone()
    changed[:, 8:] = (changed[:, 8:] + 1) % tiny_config.vocab_size
    a, b = tiny_model(idx), tiny_model(changed)
    torch.testing.assert_close(a[:, :8], b[:, :8], rtol=0, atol=0)
    assert not torch.allclose(a[:, 8:], b[:, 8:])  # later positions do see the change


def test_kv_cache_matches_full_forward(tiny_model, tiny_config):
    torch.manual_seed(2)
    for _ in range(5):
        n = int(torch.randint(6, tiny_config.context_length + 1, ()))
        idx = torch.randint(0, tiny_config.vocab_size, (2, n))
        full = tiny_model(idx)
        cache = tiny_model.new_cache(2)
        prefill = n // 3
        chunk = (n - prefill) // 2  # a multi-token step after the prefill exercises the offset mask
        parts = [tiny_model(idx[:, :prefill], cache), tiny_model(idx[:, prefill:prefill + chunk], cache)]
        parts += [tiny_model(idx[:, i:i + 1], cache) for i in range(prefill + chunk, n)]
        incremental = torch.cat(parts, dim=1)
        assert cache.pos == n
        assert (incremental - full).abs().max().item() < 1e-5


def test_rows_at_their_own_lengths_match_each_row_alone(tiny_model, tiny_config):
    """A batch whose rows sit at different positions (continuous batching) gives each row the
    logits it gets alone: positions, the per-row writes and the mask that hides a shorter row's
    stale keys."""
    torch.manual_seed(3)
    V, ctx = tiny_config.vocab_size, tiny_config.context_length
    prompts = [torch.randint(0, V, (1, n)) for n in (3, 11, 7)]
    follow = torch.randint(0, V, (3, 6))
    alone = [tiny_model(torch.cat([p, follow[i:i + 1]], dim=1))[:, p.size(1):] for i, p in enumerate(prompts)]

    cache = tiny_model.new_cache(3)
    garbage = torch.randint(0, V, (3, ctx - 8))  # stale keys past every row's end: must stay unseen
    tiny_model(garbage, cache)
    for i, p in enumerate(prompts):  # one prefill per row, into its slot
        row = cache.rows(i, i + 1, [0])
        tiny_model(p, row)
        assert row.lengths == [p.size(1)]
    lengths = [p.size(1) for p in prompts]
    batch = cache.rows(0, 3, lengths)
    steps = [tiny_model(follow[:, t:t + 1], batch) for t in range(follow.size(1))]
    assert batch.lengths == [n + follow.size(1) for n in lengths]
    together = torch.cat(steps, dim=1)  # (3, 6, V)
    for i in range(3):
        assert (together[i] - alone[i][0]).abs().max().item() < 1e-5
    with pytest.raises(ValueError, match="different lengths"):
        batch.pos


def test_copy_row_moves_a_conversation_to_another_slot(tiny_model, tiny_config):
    torch.manual_seed(4)
    idx = torch.randint(0, tiny_config.vocab_size, (1, 9))
    cache = tiny_model.new_cache(2)
    tiny_model(idx[:, :8], cache.rows(1, 2, [0]))
    cache.copy_row(1, 0, 8)
    moved = tiny_model(idx[:, 8:], cache.rows(0, 1, [8]))
    assert (moved[0, -1] - tiny_model(idx)[0, -1]).abs().max().item() < 1e-5


def test_input_longer_than_context_is_refused(tiny_model, tiny_config):
    with pytest.raises(ValueError, match="longer than the model's context length"):
        tiny_model(torch.zeros(1, tiny_config.context_length + 1, dtype=torch.long))
    cache = tiny_model.new_cache(1)
    tiny_model(torch.zeros(1, tiny_config.context_length - 1, dtype=torch.long), cache)
    with pytest.raises(ValueError, match="longer than"):
        tiny_model(torch.zeros(1, 2, dtype=torch.long), cache)


def test_gpt2_initialisation_scales():
    torch.manual_seed(0)
    config = GPTConfig.from_preset("gpt2-tiny", emb_dim=256, n_heads=4, n_layers=8)
    model = GPT(config)
    assert model.blocks[0].mlp.fc.weight.std().item() == pytest.approx(0.02, rel=0.05)
    residual = 0.02 / math.sqrt(2 * config.n_layers)
    assert model.blocks[3].attn.out_proj.weight.std().item() == pytest.approx(residual, rel=0.05)
    assert model.blocks[3].mlp.out_proj.weight.std().item() == pytest.approx(residual, rel=0.05)
    assert model.blocks[0].attn.out_proj.bias.abs().max().item() == 0.0


def test_untrained_loss_is_near_uniform():
    torch.manual_seed(0)
    config = GPTConfig.from_preset("gpt2-tiny")
    model = GPT(config).eval()
    idx = torch.randint(0, config.vocab_size, (4, 32))
    logits = model(idx)
    loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), idx[:, 1:].flatten())
    assert abs(loss.item() - math.log(config.vocab_size)) < 0.1


def test_dropout_only_in_training_mode(tiny_config):
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_dict({**tiny_config.to_dict(), "dropout": 0.5}))
    idx = torch.randint(0, tiny_config.vocab_size, (1, 8))
    model.eval()
    torch.testing.assert_close(model(idx), model(idx))
    model.train()
    assert not torch.allclose(model(idx), model(idx))


@pytest.mark.parametrize("arch", ["gpt2", "modern"])
@pytest.mark.parametrize("tie", [True, False])
def test_vocab_padding_is_invisible_outside_the_model(tie, arch, tmp_path):
    from safetensors.torch import load_file

    from gptforge.weights.checkpoint import save_checkpoint

    torch.manual_seed(0)
    config = GPTConfig.from_preset("gpt2-tiny", context_length=16, tie_embeddings=tie, arch=arch)
    model = GPT(config, gpt2())
    assert config.vocab_size == 50257 and config.padded_vocab_size == 50304
    assert model.tok_emb.weight.shape == (50304, config.emb_dim) == model.lm_head.weight.shape
    assert model.state_dict()["tok_emb.weight"].shape == (50257, config.emb_dim)
    assert model.state_dict()["lm_head.weight"].shape == (50257, config.emb_dim)

    x = torch.randint(0, 50257, (2, 16))
    y = torch.randint(0, 50257, (2, 16))
    logits = model(x)
    assert logits.shape == (2, 16, 50257)
    # the padded loss equals a plain cross-entropy over the real vocabulary's logits
    plain = torch.nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten())
    torch.testing.assert_close(model(x, targets=y), plain, atol=1e-6, rtol=0)

    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    for _ in range(3):
        optimizer.zero_grad()
        model(x, targets=y).backward()
        assert model.tok_emb.weight.grad[50257:].abs().max() == 0  # padded ids get no gradient
        optimizer.step()
    assert model.tok_emb.weight[50257:].abs().max() == 0 == model.lm_head.weight[50257:].abs().max()

    save_checkpoint(tmp_path / "ckpt", model)
    saved = load_file(tmp_path / "ckpt" / "model.safetensors")
    assert saved["tok_emb.weight"].shape == (50257, config.emb_dim)
    fresh = GPT(config)
    fresh.load_state_dict(model.state_dict())  # 50257 rows in, padded again inside
    assert torch.equal(fresh.tok_emb.weight, model.tok_emb.weight)
    torch.testing.assert_close(fresh(x), model(x), atol=0, rtol=0)
