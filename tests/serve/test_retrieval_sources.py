"""`serve --index`: a chat request's last user message retrieves passages into the prompt (checked
by the answer, recomputed greedily over render() given the passages search() finds) and the
response carries their sources beside the choices, in a completion and in a stream's first chunk."""

from __future__ import annotations

import json

import httpx
import openai
import pytest
import torch

from gptforge.config import GPTConfig
from gptforge.model import GPT, prepare_for_decoding
from gptforge.retrieval import add_paths, search
from gptforge.retrieval.passages import retriever
from gptforge.tokenizer import CHAT_TOKENS, gpt2, tokenizer_of
from gptforge.tokenizer.chat import render

from helpers import greedy_after, write
from server_helpers import serving

QUESTION = "How do I reset the pump?"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("served")
    write(root / "docs" / "pump.md", "# The pump\n\nTo reset the pump, hold the red lever.\n\nIt hums.\n")
    write(root / "docs" / "boat.txt", "The boat is green.\nIt sleeps four.\n")
    add_paths(root / "index", [root / "docs"], chunk_tokens=32, overlap=0, progress=False)
    tokenizer = gpt2().with_special_tokens(CHAT_TOKENS)
    torch.manual_seed(5)
    model = GPT(GPTConfig.from_preset("gpt2-tiny", vocab_size=tokenizer.vocab_size, context_length=256),
                tokenizer).eval()
    model = prepare_for_decoding(model)
    with serving(model, "docs", retrieve=retriever(root / "index", 2)) as (url, _):
        yield url, model, root / "index"


def greedy(model, ids, max_tokens):
    """A plain greedy loop: a full forward pass per token, up to the end of the turn."""
    return tokenizer_of(model).decode(greedy_after(model, list(ids), max_tokens))


def test_a_chat_request_retrieves_and_returns_its_sources(served):
    url, model, index = served
    hits = search(index, QUESTION, 2)
    client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": QUESTION}]
    out = client.chat.completions.create(model="docs", messages=messages, max_tokens=6, temperature=0)
    sources = out.model_extra["sources"]
    assert [s["path"] for s in sources] == [h.path for h in hits] and hits[0].path.endswith("pump.md")
    assert [s["index"] for s in sources] == [1, 2]
    assert sources[0]["lines"] == hits[0].where.rsplit(":", 1)[1]
    context = [{"source": s["source"], "text": h.text.strip()} for s, h in zip(sources, hits)]
    ids, _ = render(messages, tokenizer_of(model), True, context=context)
    assert out.choices[0].message.content == greedy(model, ids, 6)
    assert out.usage.prompt_tokens == len(ids)


def test_a_stream_carries_the_sources_in_its_first_chunk(served):
    url, _, index = served
    body = {"model": "docs", "messages": [{"role": "user", "content": QUESTION}], "max_tokens": 3, "stream": True}
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=60) as response:
        chunks = [json.loads(line[6:]) for line in response.iter_lines() if line.startswith("data: {")]
    assert [s["path"] for s in chunks[0]["sources"]] == [h.path for h in search(index, QUESTION, 2)]
    assert all("sources" not in c for c in chunks[1:])


def test_a_message_without_words_retrieves_nothing(served):
    url, _, _ = served
    body = {"model": "docs", "messages": [{"role": "user", "content": "?!"}], "max_tokens": 2}
    out = httpx.post(url + "/v1/chat/completions", json=body, timeout=60).json()
    assert out["sources"] == [] and out["choices"][0]["message"]["role"] == "assistant"


def test_an_index_that_breaks_while_serving_is_an_openai_error(served):
    from gptforge.errors import UserError

    def broken(question):
        raise UserError("no index at /gone")

    _, model, _ = served
    with serving(model, "docs", retrieve=broken) as (url, _):
        body = {"model": "docs", "messages": [{"role": "user", "content": QUESTION}], "max_tokens": 2}
        response = httpx.post(url + "/v1/chat/completions", json=body, timeout=60)
    assert response.status_code == 500
    assert response.json()["error"]["message"] == "the index could not be searched: no index at /gone"
