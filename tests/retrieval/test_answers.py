"""Answers from an index: `ask` and `chat --index` put the retrieved passages into the prompt
(checked on the ids, against render() given the passages search() finds) and list their sources;
the answers are recomputed by a plain greedy loop over that prompt."""

from __future__ import annotations

import io

import pytest
import torch

from gptforge.chat import ChatSettings, chat_in_terminal, fit_passages
from gptforge.config import GPTConfig
from gptforge.model import GPT
from gptforge.retrieval import add_paths, search
from gptforge.retrieval.ask import question_prompt
from gptforge.retrieval.passages import retriever
from gptforge.sampling import Sampling
from gptforge.tokenizer import CHAT_TOKENS, gpt2, tokenizer_of
from gptforge.tokenizer.chat import render

from helpers import assert_user_error, greedy_after, run_cli, run_cli_here, write

DOCS = {
    "pump.md": "# The pump\n\nTo reset the pump, hold the red lever for five seconds.\n\nThe pump hums when it runs.\n",
    "garden.txt": "Water the roses every morning.\nThe shed key is under the blue pot.\n",
    "boat.md": "# The boat\n\nThe boat is painted green and sleeps four.\n",
}
QUESTION = "How do I reset the pump?"


@pytest.fixture(scope="module")
def chat_model_256():
    """A random gpt2-tiny chat model with room for passages: context 256."""
    tokenizer = gpt2().with_special_tokens(CHAT_TOKENS)
    torch.manual_seed(3)
    model = GPT(GPTConfig.from_preset("gpt2-tiny", vocab_size=tokenizer.vocab_size, context_length=256),
                tokenizer).eval()
    return model


@pytest.fixture(scope="module")
def index(tmp_path_factory):
    root = tmp_path_factory.mktemp("answers")
    for name, text in DOCS.items():
        write(root / "docs" / name, text)
    add_paths(root / "index", [root / "docs"], chunk_tokens=32, overlap=0, progress=False)
    return root / "index"


def expected_passages(index, question, k):
    return [{"source": f"{h.path}:{h.where.rsplit(':', 1)[1]}", "text": h.text.strip()} for h in search(index, question, k)]


def greedy(model, ids, max_tokens):
    """A plain greedy loop: a full forward pass per token, up to the end of the turn."""
    return tokenizer_of(model).decode(greedy_after(model, list(ids), max_tokens))


def test_the_questions_passages_are_in_the_prompt(chat_model_256, index, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # sources are shown as absolute paths outside the current folder
    ids, passages = question_prompt(chat_model_256, QUESTION, retriever(index, 2), answer_room=32)
    expected = expected_passages(index, QUESTION, 2)
    assert "red lever" in expected[0]["text"]  # the fixture's point: the pump's chunk ranks first
    assert [{"source": p["source"], "text": p["text"]} for p in passages] == expected
    reference, _ = render([{"role": "user", "content": QUESTION}], tokenizer_of(chat_model_256), True, context=expected)
    assert ids == reference
    text_ids = tokenizer_of(chat_model_256).encode("\n" + expected[0]["text"])
    assert any(ids[i:i + len(text_ids)] == text_ids for i in range(len(ids)))


def test_passages_are_trimmed_to_fit_least_relevant_first(chat_model_256):
    tokenizer = tokenizer_of(chat_model_256)
    long = " ".join(["word"] * 120)
    passages = [{"source": "a.txt:1", "text": "first " + long}, {"source": "b.txt:1", "text": "second " + long}]
    messages = [{"role": "user", "content": "Hi"}]
    ids, kept = fit_passages(chat_model_256, messages, passages, 200)
    assert len(ids) <= 200 and ids == render(messages, tokenizer, True, context=kept)[0]
    assert kept[0] == passages[0] and len(kept) == 2 and passages[1]["text"].startswith(kept[1]["text"])
    ids, kept = fit_passages(chat_model_256, messages, passages, 140)  # only a cut first passage fits
    assert len(ids) <= 140 and len(kept) == 1 and passages[0]["text"].startswith(kept[0]["text"])
    ids, kept = fit_passages(chat_model_256, messages, passages, 20)  # none fits at all
    assert kept == [] and ids == render(messages, tokenizer, True)[0]


def test_chat_retrieves_each_turn_and_lists_the_sources(chat_model_256, index, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    lines = iter([QUESTION, "Where is the shed key?"])
    out = io.StringIO()

    def read(prompt):
        out.write(prompt)
        try:
            return next(lines)
        except StopIteration:
            raise EOFError from None

    settings = ChatSettings(Sampling(8, temperature=0.0), retrieve=retriever(index, 1))
    chat_in_terminal(chat_model_256, settings, read=read, out=out)
    transcript = out.getvalue()
    first = expected_passages(index, QUESTION, 1)
    second = expected_passages(index, "Where is the shed key?", 1)
    assert "garden.txt" in second[0]["source"] and "pump.md" in first[0]["source"]
    tokenizer = tokenizer_of(chat_model_256)
    turn1 = [{"role": "user", "content": QUESTION}]
    a1 = greedy(chat_model_256, render(turn1, tokenizer, True, context=first)[0], 8)
    turn2 = turn1 + [{"role": "assistant", "content": a1}, {"role": "user", "content": "Where is the shed key?"}]
    a2 = greedy(chat_model_256, render(turn2, tokenizer, True, context=second)[0], 8)
    assert f"model> {a1}\n[1] {first[0]['source']}\nyou> " in transcript
    assert f"model> {a2}\n[1] {second[0]['source']}\n" in transcript


def test_ask_prints_the_answer_and_its_sources(chat_model_256, index, tmp_path):
    from gptforge.weights.checkpoint import save_checkpoint

    checkpoint = save_checkpoint(tmp_path / "checkpoint", chat_model_256)
    result = run_cli("ask", "--checkpoint", str(checkpoint), "--index", str(index), "-k", "2",
                     "--max-new-tokens", "6", QUESTION, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    expected = expected_passages(index, QUESTION, 2)
    ids, _ = render([{"role": "user", "content": QUESTION}], tokenizer_of(chat_model_256), True, context=expected)
    answer = greedy(chat_model_256, ids, 6)
    assert result.stdout == f"{answer}\n\nsources:\n[1] {expected[0]['source']}\n[2] {expected[1]['source']}\n"


def test_ask_refuses_a_missing_index_and_a_base_model(tiny_checkpoint, index, tmp_path):
    assert_user_error(run_cli_here("ask", "--checkpoint", str(tiny_checkpoint), "--index", str(tmp_path / "none"), "q"),
                      "no index at")
    assert_user_error(run_cli_here("ask", "--checkpoint", str(tiny_checkpoint), "--index", str(index), "q"),
                      "--index needs a chat model")
