"""/v1/embeddings driven by the official openai client (floats and base64, text and token ids),
against the model's embedder in this process; its errors in OpenAI's shape; and the URL embedder
pointed at our own server on 127.0.0.1."""

from __future__ import annotations

import httpx
import numpy as np
import openai
import pytest

from gptforge.retrieval.embed import ModelEmbedder, URLEmbedder
from gptforge.tokenizer import tokenizer_of

from server_helpers import serving

TEXTS = ["To reset the pump, hold the red lever.", "The boat is green.", "<|endoftext|> is text here"]


@pytest.fixture(scope="module")
def embed_server(base_model):
    with serving(base_model, "tiny", api_key="k") as (url, _):
        yield url


@pytest.fixture(scope="module")
def client(embed_server):
    return openai.OpenAI(base_url=embed_server + "/v1", api_key="k", max_retries=0)


@pytest.mark.parametrize("encoding_format", ["float", "base64", None])
def test_the_vectors_are_the_models_mean_pooled_states(client, base_model, encoding_format):
    # None: the client's default, which asks for base64 and decodes it to floats itself
    extra = {"encoding_format": encoding_format} if encoding_format else {}
    out = client.embeddings.create(model="tiny", input=TEXTS, **extra)
    expected = ModelEmbedder(base_model, "m").embed(TEXTS)
    assert out.object == "list" and out.model == "tiny" and [d.index for d in out.data] == [0, 1, 2]
    if encoding_format != "base64":
        got = np.array([d.embedding for d in out.data], dtype=np.float32)
    else:  # the client hands base64 back as the string it got
        import base64

        got = np.array([np.frombuffer(base64.b64decode(d.embedding), "<f4") for d in out.data])
    np.testing.assert_allclose(got, expected, atol=1e-5)
    tokens = sum(len(tokenizer_of(base_model).encode(t)) for t in TEXTS)
    assert out.usage.prompt_tokens == out.usage.total_tokens == tokens


def test_one_string_and_token_ids(client, base_model):
    ids = tokenizer_of(base_model).encode(TEXTS[0])
    one = client.embeddings.create(model="tiny", input=TEXTS[0], encoding_format="float").data
    by_ids = client.embeddings.create(model="tiny", input=ids, encoding_format="float").data
    rows = client.embeddings.create(model="tiny", input=[ids, ids[:3]], encoding_format="float").data
    assert len(one) == len(by_ids) == 1 and len(rows) == 2
    np.testing.assert_allclose(one[0].embedding, by_ids[0].embedding, atol=1e-6)
    np.testing.assert_allclose(rows[0].embedding, one[0].embedding, atol=1e-6)


@pytest.mark.parametrize("body, status, fragment", [
    ({"model": "tiny", "input": []}, 400, "must not be an empty list"),
    ({"model": "tiny", "input": ""}, 400, "input 0 is empty"),
    ({"model": "tiny", "input": [50257]}, 400, "outside the vocabulary"),
    ({"model": "tiny", "input": "word " * 100}, 400, "this model's context is 64"),
    ({"model": "tiny", "input": "x", "encoding_format": "int8"}, 400, "encoding_format"),
    ({"model": "other", "input": "x"}, 404, "does not exist"),
    ({"input": "x"}, 400, "missing required field 'model'"),
])
def test_bad_requests_get_openai_errors(embed_server, body, status, fragment):
    response = httpx.post(embed_server + "/v1/embeddings", json=body, headers={"Authorization": "Bearer k"},
                          timeout=60)
    assert response.status_code == status and fragment in response.json()["error"]["message"]


def test_the_key_is_required(embed_server):
    response = httpx.post(embed_server + "/v1/embeddings", json={"model": "tiny", "input": "x"}, timeout=60)
    assert response.status_code == 401


def test_the_url_embedder_against_our_own_server(embed_server, base_model, monkeypatch):
    monkeypatch.setenv("GPTFORGE_EMBEDDER_KEY", "k")
    embedder = URLEmbedder(embed_server + "/v1")  # the model: the first /v1/models lists
    assert embedder.record == {"kind": "url", "source": embedder.url, "model": "tiny"}
    texts = TEXTS * 7  # more than one request's batch
    np.testing.assert_allclose(embedder.embed(texts), ModelEmbedder(base_model, "m").embed(texts), atol=1e-5)
