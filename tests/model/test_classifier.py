"""The classifier: the head reads the last real token, so neither the side nor the amount of
padding changes its logits; what trains under each --trainable choice."""

import pytest
import torch

from gptforge.model.classifier import Classifier, as_classifier, set_trainable
from gptforge.model.lora import add_lora

from helpers import random_gpt

PAD = 256


@pytest.fixture(params=["gpt2", "modern"])
def classifier(request):
    extra = {"arch": "modern"} if request.param == "modern" else {}
    torch.manual_seed(1)
    return as_classifier(random_gpt(0, **extra), ["a", "b", "c"], PAD).eval()


def test_padding_side_and_length_do_not_change_the_logits(classifier):
    texts = [torch.randint(0, PAD, (n,)) for n in (3, 7, 11)]
    alone = torch.cat([classifier(t[None]) for t in texts])  # (3, classes), no padding at all
    for width in (11, 16):
        right = torch.full((3, width), PAD)
        left = torch.full((3, width), PAD)
        for i, t in enumerate(texts):
            right[i, :len(t)] = t
            left[i, width - len(t):] = t
        torch.testing.assert_close(classifier(right), alone, rtol=0, atol=1e-5)
        torch.testing.assert_close(classifier(left), alone, rtol=0, atol=1e-5)
    assert torch.equal(classifier(right).argmax(-1), alone.argmax(-1))


def test_the_logits_are_the_head_on_the_final_normed_last_token(classifier):
    """An independent computation: the language model's own last hidden state of the unpadded
    text, final-normed, times the head."""
    ids = torch.randint(0, PAD, (1, 9))
    hidden = super(Classifier, classifier).forward(ids, head=False)[:, -1]
    expected = classifier.final_norm(hidden) @ classifier.score.weight.T
    torch.testing.assert_close(classifier(ids), expected)


def test_as_classifier_keeps_the_body_and_drops_the_lm_head():
    model = random_gpt(0)
    clf = as_classifier(model, ["x", "y"], PAD)
    assert not hasattr(clf, "lm_head") and clf.score.weight.shape == (2, model.config.emb_dim)
    body = {k: v for k, v in model.state_dict().items() if not k.startswith("lm_head")}
    ours = clf.state_dict()
    assert set(ours) == set(body) | {"score.weight"}
    assert all(torch.equal(ours[k], v) for k, v in body.items())


@pytest.mark.parametrize("trainable,expected", [
    ("all", None), ("head", {"score.weight"}),
    ("last", {"score.weight", "final_norm.weight", "final_norm.bias", "blocks.1."})])
def test_what_trains(trainable, expected):
    clf = as_classifier(random_gpt(0), ["x", "y"], PAD)
    set_trainable(clf, trainable, blocks=1)
    names = {n for n, p in clf.named_parameters() if p.requires_grad}
    if expected is None:
        assert names == {n for n, _ in clf.named_parameters()}
    else:
        assert all(n in expected or n.startswith("blocks.1.") for n in names), names
        assert "score.weight" in names and not any(n.startswith(("blocks.0.", "tok_emb")) for n in names)
        assert any(n.startswith("blocks.1.") for n in names) == (trainable == "last")


def test_with_lora_the_adapters_and_the_head_train():
    clf = as_classifier(random_gpt(0), ["x", "y"], PAD)
    add_lora(clf, 2, 4.0, 0.0, ("qkv",))
    set_trainable(clf, "all")
    names = {n for n, p in clf.named_parameters() if p.requires_grad}
    assert "score.weight" in names and all("lora_" in n or n == "score.weight" for n in names)
