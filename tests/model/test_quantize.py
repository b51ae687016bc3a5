"""int8 inference: Int8Linear against an independent float64 reference, a quantized model's logits
against float32's, and rows of a batch that do not depend on each other."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from gptforge.errors import UserError
from gptforge.generate import generate
from gptforge.model import prepare_for_decoding
from gptforge.model.quantize import Int8Linear, quantize_model

from helpers import random_gpt


def test_int8_linear_is_the_product_of_the_rounded_integers():
    g = torch.Generator().manual_seed(0)
    weight, bias, x = torch.randn(40, 24, generator=g), torch.randn(40, generator=g), torch.randn(2, 3, 24, generator=g)
    layer = Int8Linear(weight, bias).eval()
    # The reference, written out in float64: per-row (output channel) and per-token scales of max|.| / 127.
    w64, x64 = weight.double(), x.double().reshape(-1, 24)
    sw, sx = w64.abs().amax(1) / 127, x64.abs().amax(1, keepdim=True) / 127
    qw, qx = torch.round(w64 / sw[:, None]), torch.round(x64 / sx)
    expected = ((qx @ qw.T) * sx * sw + bias.double()).reshape(2, 3, 40)
    with torch.no_grad():
        got = layer(x)
    assert layer.int8_weight().dtype == torch.int8 and got.shape == (2, 3, 40)
    torch.testing.assert_close(got.double(), expected, atol=1e-5, rtol=1e-5)
    # ... and int8's error against the float product is what 8 bits allow (about 1%, not 10%)
    exact = F.linear(x, weight, bias)
    assert (got - exact).abs().max() < 0.03 * exact.abs().max()


@pytest.mark.parametrize("arch", ["gpt2", "modern"])
def test_int8_logits_are_close_to_float32(arch):
    """Tolerance: every logit within 10% of the float32 logits' standard deviation (measured: 3-5%),
    and the same most likely token at almost every position."""
    model = prepare_for_decoding(random_gpt(0, arch=arch))
    ids = torch.randint(0, 257, (3, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        fp32 = model(ids)
        int8 = quantize_model(model, "int8")(ids)
    assert isinstance(model.lm_head, Int8Linear) and model.lm_head.out_features == 257
    assert int8.shape == fp32.shape
    assert (int8 - fp32).abs().max() < 0.1 * fp32.std()
    assert (int8.argmax(-1) == fp32.argmax(-1)).float().mean() >= 0.9
    with torch.no_grad():  # the loss path (targets) uses the int8 head too
        loss = model(ids[:, :-1], targets=ids[:, 1:])
    assert loss == pytest.approx(F.cross_entropy(int8[:, :-1].flatten(0, 1), ids[:, 1:].flatten()).item(), rel=1e-4)


def test_a_row_gets_the_same_logits_in_a_batch_as_alone():
    """Each row is quantized with its own scale and the int32 sums are exact, so a row's logits do
    not depend on its neighbours (a batch-wide activation scale would change them)."""
    model = prepare_for_decoding(random_gpt(0), quantize="int8")
    ids = torch.randint(0, 257, (4, 9), generator=torch.Generator().manual_seed(2))
    ids[3] = 5  # a row far from the others
    with torch.no_grad():
        together = model(ids)
        for i in range(4):
            assert torch.equal(model(ids[i:i + 1])[0], together[i])
    assert torch.equal(generate(model, ids, 8, temperature=0.0)[1:2], generate(model, ids[1:2], 8, temperature=0.0))


def test_a_decoding_row_beside_rows_of_other_lengths_gets_what_it_gets_alone():
    """A decoding step for rows at different lengths (the server's batches): each row's int8 logits
    equal, bit for bit, the step it takes alone. The linear layers are row-invariant by
    construction; attention must be too (each row over its own keys), or its rounding differs
    and the next layer's re-quantization can turn that into a different token."""
    model = prepare_for_decoding(random_gpt(0, n_heads=4, emb_dim=64, context_length=128), quantize="int8")
    g = torch.Generator().manual_seed(3)
    lengths = [5 + 7 * i for i in range(8)]  # not multiples of a vector's width, mostly
    prompts = [torch.randint(0, 257, (1, n), generator=g) for n in lengths]
    step = torch.randint(0, 257, (8, 1), generator=g)
    with torch.no_grad():
        alone = []
        for i, prompt in enumerate(prompts):
            cache = model.new_cache(1)
            model(prompt, cache)
            alone.append(model(step[i:i + 1], cache)[0, -1])
        cache = model.new_cache(8)
        for i, prompt in enumerate(prompts):
            model(prompt, cache.rows(i, i + 1, [0]))
        cache.lengths = list(lengths)
        together = model(step, cache)[:, -1]
    assert [i for i in range(8) if not torch.equal(together[i], alone[i])] == []


def test_int8_refuses_training_and_other_dtypes():
    model = prepare_for_decoding(random_gpt(0), quantize="int8")
    with pytest.raises(RuntimeError, match="for inference"):
        model.train()(torch.zeros(1, 2, dtype=torch.long))
    with pytest.raises(UserError, match="runs on a CPU in float32"):
        prepare_for_decoding(random_gpt(0), torch.bfloat16, "int8")
    untouched = random_gpt(0)
    assert quantize_model(untouched, None) is untouched and not isinstance(untouched.lm_head, Int8Linear)
