"""The modern block's parts and switches: each one against a plain re-computation, and each one
inside the model (shapes, causality, the KV cache, padding, decoding)."""

import math

import pytest
import torch
import torch.nn.functional as F

from gptforge.config import GPTConfig
from gptforge.errors import UserError
from gptforge.generate import generate
from gptforge.model import GPT, prepare_for_decoding
from gptforge.model.layers import apply_rotary, rotary_angles

SWITCHES = [dict(positions="rope"), dict(norm="rmsnorm"), dict(mlp="swiglu"), dict(mlp="relu2"),
            dict(qk_norm=True), dict(bias=False), dict(tie_embeddings=False), dict(zero_init_proj=True),
            dict(logit_softcap=5.0), dict(arch="modern"), dict(arch="modern", mlp="relu2", logit_softcap=15.0)]


def config(**switches) -> GPTConfig:
    return GPTConfig.from_preset("gpt2-tiny", vocab_size=101, context_length=32, emb_dim=32, n_heads=4,
                                 n_layers=2, **switches)


def trained(cfg: GPTConfig, steps: int = 30, seed: int = 0) -> GPT:
    """A model trained a few steps on a repeating sequence: confident, non-trivial predictions,
    and weights (gains included) away from their initial values."""
    torch.manual_seed(seed)
    model = GPT(cfg)
    ids = torch.arange(cfg.context_length + 1).remainder(13).mul(7).remainder(cfg.vocab_size)[None]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(steps):
        optimizer.zero_grad()
        model(ids[:, :-1], targets=ids[:, 1:]).backward()
        optimizer.step()
    return model.eval()


def test_rotary_turns_each_pair_by_position_times_its_frequency():
    """A plain re-computation with complex numbers: pair (i, i + hs/2) is the complex number
    x_i + j x_{i+hs/2}, multiplied by exp(j * position * theta^(-2i/hs))."""
    torch.manual_seed(0)
    B, H, T, hs, theta = 2, 3, 5, 8, 500.0
    x = torch.randn(B, H, T, hs, dtype=torch.float64)
    positions = torch.tensor([[0, 1, 2, 3, 4], [7, 8, 9, 10, 11]])
    cos, sin = rotary_angles(positions, hs, theta)
    got = apply_rotary(x, cos.double(), sin.double())
    freq = theta ** (-torch.arange(hs // 2, dtype=torch.float64) * 2 / hs)
    z = torch.complex(x[..., : hs // 2], x[..., hs // 2:])
    turned = z * torch.exp(1j * positions[:, None, :, None].double() * freq)
    expected = torch.cat([turned.real, turned.imag], dim=-1)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)  # the angles are float32


def test_rotary_scores_depend_only_on_the_distance():
    torch.manual_seed(0)
    q, k = torch.randn(1, 1, 1, 16), torch.randn(1, 1, 1, 16)

    def score(m, n):
        cq, sq = rotary_angles(torch.tensor([[m]]), 16, 10000.0)
        ck, sk = rotary_angles(torch.tensor([[n]]), 16, 10000.0)
        return (apply_rotary(q, cq, sq) * apply_rotary(k, ck, sk)).sum().item()

    assert score(3, 1) == pytest.approx(score(23, 21), abs=1e-4)
    assert score(3, 1) != pytest.approx(score(3, 2), abs=1e-3)


@pytest.mark.parametrize("switches", SWITCHES, ids=lambda s: ",".join(f"{k}={v}" for k, v in s.items()))
def test_each_switch_trains_is_causal_and_caches(switches):
    cfg = config(**switches)
    model = trained(cfg, steps=3)
    idx = torch.randint(0, cfg.vocab_size, (2, 20), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = model(idx)
        changed = idx.clone()
        changed[:, 12:] = (changed[:, 12:] + 1) % cfg.vocab_size
        torch.testing.assert_close(model(changed)[:, :12], full[:, :12], atol=0, rtol=0)
        cache = model.new_cache(2)
        parts = [model(idx[:, :7], cache), model(idx[:, 7:11], cache)]
        parts += [model(idx[:, i:i + 1], cache) for i in range(11, 20)]
    assert (torch.cat(parts, dim=1) - full).abs().max().item() < 1e-5
    loss = model.train()(idx[:, :-1], targets=idx[:, 1:])
    plain = F.cross_entropy(model.eval()(idx[:, :-1]).flatten(0, 1), idx[:, 1:].flatten())
    torch.testing.assert_close(loss, plain, atol=1e-5, rtol=0)  # padding and the cap agree in both paths
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_rope_kv_cache_gives_the_same_greedy_tokens(tmp_path):
    """Greedy decoding of a trained rotary model, with the cache (prefill, one token per step, a
    reset when the window is full) and without it, past the context length."""
    model = trained(config(arch="modern"), steps=40)
    prompt = torch.tensor([[0, 7, 14, 8, 15]])
    cached = generate(model, prompt, 45, temperature=0.0, use_cache=True)
    recomputed = generate(model, prompt, 45, temperature=0.0, use_cache=False)
    assert torch.equal(cached, recomputed)
    assert len(set(cached[0, 5:].tolist())) > 3  # a real sequence, not one repeated token
    prepared = generate(prepare_for_decoding(model), prompt, 45, temperature=0.0)  # the CPU fast path
    assert torch.equal(prepared, cached)


def test_the_modern_block_has_what_it_says():
    cfg = config(arch="modern")
    assert (cfg.positions, cfg.norm, cfg.mlp, cfg.qk_norm, cfg.bias, cfg.tie_embeddings, cfg.zero_init_proj) == (
        "rope", "rmsnorm", "swiglu", True, False, False, True)
    model = GPT(cfg)
    names = dict(model.named_parameters())
    assert not [n for n in names if n.endswith(".bias")]  # no biases anywhere
    assert model.pos_emb is None and model.lm_head.weight is not model.tok_emb.weight
    assert names["blocks.0.attn.q_norm.weight"].shape == (cfg.head_dim,)
    assert cfg.mlp_width == 128 and names["blocks.0.mlp.fc.weight"].shape == (2 * 128, 32)  # [gate; up]
    # zero-initialised projections: every block starts as the identity
    x, positions = torch.randn(2, 5, 32), torch.arange(5).expand(2, 5)
    with torch.no_grad():
        assert torch.equal(model.blocks[0](x, positions, rotary_angles(positions, 8, 10000.0)), x)
    # a switch set explicitly wins over the arch's choice
    assert config(arch="modern", tie_embeddings=True, mlp="gelu").tie_embeddings is True


def test_swiglu_and_relu2_compute_their_formulas():
    torch.manual_seed(0)
    x = torch.randn(3, 32)
    for kind, act in (("swiglu", None), ("relu2", lambda h: F.relu(h) ** 2)):
        mlp = GPT(config(mlp=kind, bias=False)).blocks[0].mlp
        h = x @ mlp.fc.weight.t()
        if act is None:
            gate, up = h.chunk(2, dim=-1)
            h = gate * torch.sigmoid(gate) * up
        else:
            h = act(h)
        torch.testing.assert_close(mlp(x), h @ mlp.out_proj.weight.t(), atol=1e-6, rtol=1e-5)


def test_logit_softcap_bounds_the_logits():
    model = trained(config(logit_softcap=2.0), steps=10)
    with torch.no_grad():
        logits = model(torch.randint(0, 101, (2, 16)))
    assert logits.abs().max() < 2.0 and logits.abs().max() > 1.5  # trained logits press on the cap


def test_modern_124m_preset_and_odd_head_sizes():
    with torch.device("meta"):
        model = GPT(GPTConfig.from_preset("modern-124m"))
    c = model.config
    assert (c.n_layers, c.emb_dim, c.n_heads, c.head_dim, c.mlp_width) == (12, 768, 12, 64, 2048)
    hidden = 12 * (4 * 768 * 768 + 3 * 768 * 2048 + 2 * 768 + 2 * 64)  # attention, SwiGLU, gains
    assert model.num_params(include_embeddings=False) == hidden + 768 + 50257 * 768  # + final gain, head
    with pytest.raises(UserError, match="rotary positions need an even head size"):
        GPTConfig.from_preset("gpt2-tiny", emb_dim=60, n_heads=4, positions="rope")
    assert math.isclose(GPTConfig.from_preset("gpt2-tiny", arch="modern").mlp_width / 64, 3.0)


def test_rmsnorm_decoding_steps_run_the_kernel_with_torchs_numbers(monkeypatch):
    from gptforge.model import layers
    from gptforge.model.cpu_decoding import float_kernels

    lib = float_kernels()
    if lib is None:
        pytest.skip("no C compiler here to build the kernels")
    calls = []

    class Spy:
        def rms_norm(self, *args):
            calls.append(args[3:5])  # M, K
            return lib.rms_norm(*args)

    monkeypatch.setattr(layers, "decoding_kernels", lambda x: Spy() if not torch.is_grad_enabled() else None)
    norm = layers.RMSNorm(100, eps=1e-5)
    norm.weight.data = torch.rand(100, generator=torch.Generator().manual_seed(0)) + 0.5
    x = torch.randn(3, 2, 100, generator=torch.Generator().manual_seed(1)) * 4
    with torch.no_grad():
        got = norm(x)
        assert calls == [(6, 100)]
        torch.testing.assert_close(got, torch.nn.functional.rms_norm(x, (100,), norm.weight, 1e-5), rtol=1e-5, atol=1e-6)
        assert torch.equal(norm(x[1:2, 1:2]), got[1:2, 1:2])  # a row's numbers are its own
        many = torch.randn(40, 3, 100)
        assert torch.equal(norm(many)[17], norm(many[17:18])[0])  # however many rows
    assert len(calls) == 4
    torch.testing.assert_close(norm(x), got)  # with gradients: torch's, the same to rounding
    assert len(calls) == 4
