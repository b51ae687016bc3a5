"""The server through the official openai client (what users' tools speak) and raw HTTP (the
errors), against single-stream generation of the same model as the reference."""

from __future__ import annotations

import json
import socket
import threading
import time

import httpx
import openai
import pytest

from gptforge.generate import generate_text
from gptforge.tokenizer import gpt2, tokenizer_of
from gptforge.tokenizer.chat import render

from helpers import early_end, greedy_tokens, turn_ends_after
from server_helpers import serving, wait_until

PROMPT = "The quick brown fox"


def reference(model, prompt, max_tokens, **sampling):
    """What single-stream generation gives: the text and its token count."""
    return "".join(generate_text(model, prompt, max_tokens, stop_at_eos=True, **{"temperature": 0.0, **sampling}))


@pytest.fixture(scope="module")
def client(base_server):
    url, _ = base_server
    return openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)


def test_completion_matches_single_stream_generation(client, base_model):
    out = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=12, temperature=0)
    assert out.object == "text_completion" and out.id.startswith("cmpl-") and out.model == "tiny"
    assert abs(out.created - time.time()) < 60
    (choice,) = out.choices
    assert choice.text == reference(base_model, PROMPT, 12)
    assert choice.finish_reason == "length" and choice.index == 0
    assert out.usage.prompt_tokens == len(gpt2().encode_prompt(PROMPT))
    assert out.usage.completion_tokens == 12 and out.usage.total_tokens == out.usage.prompt_tokens + 12


def test_streaming_sends_the_same_text_in_pieces(client, base_model):
    chunks = list(client.completions.create(model="tiny", prompt=PROMPT, max_tokens=12, temperature=0, stream=True,
                                            stream_options={"include_usage": True}))
    texts = [c.choices[0].text for c in chunks if c.choices]
    assert "".join(texts) == reference(base_model, PROMPT, 12)
    assert sum(1 for t in texts if t) > 3  # streamed as it came, not in one piece
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "length" and set(finishes[:-1]) == {None}
    assert chunks[-1].usage.completion_tokens == 12 and chunks[-1].choices == []
    assert len({c.id for c in chunks}) == 1


@pytest.mark.parametrize("stream", [False, True])
def test_stop_sequences_cut_the_text_before_them(client, base_model, stream):
    full = reference(base_model, PROMPT, 30)
    stop = full[12:15]
    expected = full[:full.index(stop)]
    out = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=30, temperature=0, stop=[stop, "never"],
                                    stream=stream)
    if stream:
        chunks = list(out)
        text, reason = "".join(c.choices[0].text for c in chunks), chunks[-1].choices[0].finish_reason
    else:
        text, reason = out.choices[0].text, out.choices[0].finish_reason
    assert text == expected and reason == "stop"


def test_n_choices_are_independent_seeded_samples(client, base_model):
    out = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=10, temperature=1.0, n=3, seed=11)
    assert [c.index for c in out.choices] == [0, 1, 2]
    for i, choice in enumerate(out.choices):  # choice i draws from seed + i
        assert choice.text == reference(base_model, PROMPT, 10, temperature=1.0, seed=11 + i)
    assert len({c.text for c in out.choices}) == 3
    assert out.usage.completion_tokens == 30


def test_a_list_of_prompts_and_streamed_n(client, base_model):
    out = client.completions.create(model="tiny", prompt=["One", "Two"], max_tokens=5, temperature=0, n=2)
    assert [c.text for c in out.choices] == [reference(base_model, p, 5) for p in ("One", "One", "Two", "Two")]
    chunks = list(client.completions.create(model="tiny", prompt=PROMPT, max_tokens=6, temperature=0, n=2,
                                            stream=True))
    by_index = {0: "", 1: ""}
    for c in chunks:
        by_index[c.choices[0].index] += c.choices[0].text
    assert by_index[0] == by_index[1] == reference(base_model, PROMPT, 6)


def test_models_and_health(client, base_server):
    url, _ = base_server
    models = client.models.list()
    assert [m.id for m in models.data] == ["tiny"] and models.data[0].owned_by == "gptforge"
    assert client.models.retrieve("tiny").id == "tiny"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("other")
    health = httpx.get(url + "/health").json()
    assert health["status"] == "ok" and health["running"] == 0


def test_special_token_text_in_a_prompt_stays_text(client):
    out = client.completions.create(model="tiny", prompt="<|endoftext|>", max_tokens=1, temperature=0)
    assert out.usage.prompt_tokens == len(gpt2().encode_prompt("<|endoftext|>")) > 1


# A chat model: the template's prompt, answers ending at <|im_end|>.
CHAT = [{"role": "system", "content": "You answer briefly."}, {"role": "user", "content": "What is a fox?"}]


def chat_reference(model, messages, max_tokens):
    return tokenizer_of(model).decode(greedy_tokens(model, messages, max_tokens))


@pytest.fixture(scope="module")
def chat_client(chat_server):
    url, _ = chat_server
    return openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)


def test_chat_completion_answers_through_the_template(chat_client, chat_model):
    out = chat_client.chat.completions.create(model="chat", messages=CHAT, max_completion_tokens=10, temperature=0)
    assert out.object == "chat.completion" and out.id.startswith("chatcmpl-") and out.model == "chat"
    (choice,) = out.choices
    assert choice.message.role == "assistant" and choice.finish_reason == "length"
    assert choice.message.content == chat_reference(chat_model, CHAT, 10)
    assert out.usage.prompt_tokens == len(render(CHAT, tokenizer_of(chat_model), add_generation_prompt=True)[0])
    assert out.usage.completion_tokens == 10
    assert chat_client.models.retrieve("chat").model_extra["chat"] is True


def test_chat_streams_deltas_and_n_answers(chat_client, chat_model):
    expected = chat_reference(chat_model, CHAT, 8)
    chunks = list(chat_client.chat.completions.create(model="chat", messages=CHAT, max_tokens=8, temperature=0,
                                                      n=2, stream=True))
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    by_index, firsts = {0: "", 1: ""}, {}
    for choice in (choice for c in chunks for choice in c.choices):
        by_index[choice.index] += choice.delta.content or ""
        firsts.setdefault(choice.index, choice.delta)
    assert by_index == {0: expected, 1: expected}
    assert firsts[0].role == firsts[1].role == "assistant"  # each choice opens with its role
    assert chunks[-1].choices[0].finish_reason == "length"


@pytest.mark.parametrize("stream", [False, True])
def test_a_chat_answer_ends_at_the_end_of_its_turn(chat_client, chat_model, stream):
    token, expected = early_end(chat_model, CHAT, 20)
    with turn_ends_after(chat_model, token):
        out = chat_client.chat.completions.create(model="chat", messages=CHAT, max_tokens=20, temperature=0,
                                                  stream=stream)
        if stream:
            chunks = list(out)
            text = "".join(c.choices[0].delta.content or "" for c in chunks)
            reason = chunks[-1].choices[0].finish_reason
        else:
            text, reason = out.choices[0].message.content, out.choices[0].finish_reason
    assert text == expected and reason == "stop"  # <|im_end|> ends it and is not part of it


def test_chat_stop_strings_and_history(chat_client, chat_model):
    full = chat_reference(chat_model, CHAT, 20)
    stop = full[8:11]
    out = chat_client.chat.completions.create(model="chat", messages=CHAT, max_tokens=20, temperature=0, stop=stop)
    assert out.choices[0].message.content == full[:full.index(stop)] and out.choices[0].finish_reason == "stop"
    history = [*CHAT, {"role": "assistant", "content": "A small <|im_end|> dog."}, {"role": "user", "content": "And?"}]
    out = chat_client.chat.completions.create(model="chat", messages=history, max_tokens=6, temperature=0)
    assert out.choices[0].message.content == chat_reference(chat_model, history, 6)  # chat-token text stays text


def test_chat_errors(chat_server):
    url, _ = chat_server
    body = {"model": "chat", "messages": CHAT}
    assert_error(post(url, "/v1/chat/completions", {**body, "messages": []}), 400, param="messages")
    assert_error(post(url, "/v1/chat/completions", {**body, "messages": [{"role": "robot", "content": "hi"}]}),
                 400, param="messages[0].role")
    assert_error(post(url, "/v1/chat/completions", {**body, "max_completion_tokens": 500}), 400,
                 "exceeds this model's context of 64 tokens", param="max_completion_tokens")
    long = [{"role": "user", "content": "word " * 100}]
    assert_error(post(url, "/v1/chat/completions", {**body, "messages": long}), 400, "context is 64 tokens",
                 param="messages")


def post(url, path, body, **kw):
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"Content-Type": "application/json", **kw.pop("headers", {})}
    return httpx.post(url + path, content=content, headers=headers, timeout=30, **kw)


def assert_error(response, status, *fragments, param=None):
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert {"message", "type", "param", "code"} <= set(error)
    if error["code"] == "context_length_exceeded":  # the sizes a client trims by
        assert set(error) - {"message", "type", "param", "code"} == {"context_length", "prompt_tokens"}
    else:
        assert set(error) == {"message", "type", "param", "code"}
    for fragment in fragments:
        assert fragment in error["message"], error["message"]
    if param is not None:
        assert error["param"] == param
    return error


GOOD = {"model": "tiny", "prompt": "Hello", "max_tokens": 3}


@pytest.mark.parametrize("body, param, fragment", [
    (b'{"model": "tiny", "prompt": "Hello"', None, "not valid JSON"),
    (b"[1, 2]", None, "JSON object"),
    ({"model": "tiny"}, "prompt", "missing required field"),
    ({"prompt": "Hello"}, "model", "missing required field"),
    ({**GOOD, "max_tokens": "5"}, "max_tokens", "invalid"),
    ({**GOOD, "max_tokens": 0}, "max_tokens", "greater than or equal to 1"),
    ({**GOOD, "temperature": -1}, "temperature", "invalid"),
    ({**GOOD, "top_p": 0}, "top_p", "invalid"),
    ({**GOOD, "stream": "yes"}, "stream", "invalid"),
    ({**GOOD, "n": 100}, "n", "invalid"),
    ({**GOOD, "prompt": [1, 2, 3]}, "prompt", "invalid"),  # token ids are refused: text only
    ({**GOOD, "stop": ["a", "b", "c", "d", "e"]}, "stop", "at most 4"),
    # values that once failed every request in flight (issue 22): refused before the engine sees them
    ({**GOOD, "temperature": 1e-300}, "temperature", "temperature"),
    ({**GOOD, "top_p": 1e-300}, "top_p", "top_p"),
    ({**GOOD, "seed": 2**64}, "seed", "seed"),
    ({**GOOD, "seed": -2**63 - 1}, "seed", "seed"),
    ({**GOOD, "stop": "a" * 1_040_000}, "stop", "at most"),
    ({**GOOD, "stop": ["a", "b" * 100_000]}, "stop", "at most"),
    ({**GOOD, "stream_options": "yes"}, "stream_options", "stream_options"),
    ({**GOOD, "stream_options": {"include_usage": "yes"}}, "stream_options.include_usage", "include_usage"),
])
def test_malformed_requests_get_400(base_server, body, param, fragment):
    url, _ = base_server
    error = assert_error(post(url, "/v1/completions", body), 400, fragment, param=param)
    assert error["type"] == "invalid_request_error"


def test_context_limits_are_named(base_server):
    url, service = base_server
    long_prompt = "word " * 200
    assert_error(post(url, "/v1/completions", {**GOOD, "prompt": long_prompt}), 400, "context is 64 tokens",
                 param="prompt")
    n = len(gpt2().encode_prompt("Hello"))
    error = assert_error(post(url, "/v1/completions", {**GOOD, "max_tokens": 64}), 400,
                         "exceeds this model's context of 64 tokens", f"at most {64 - n}", param="max_tokens")
    assert error["code"] == "context_length_exceeded"
    assert (error["context_length"], error["prompt_tokens"]) == (64, n)
    assert post(url, "/v1/completions", {**GOOD, "max_tokens": 64 - n}).status_code == 200  # exactly full is fine


def test_unknown_model_route_and_method(base_server):
    url, _ = base_server
    assert_error(post(url, "/v1/completions", {**GOOD, "model": "../../etc/passwd"}), 404, "does not exist",
                 param="model")
    assert_error(httpx.get(url + "/v1/nothing"), 404)
    assert_error(httpx.get(url + "/v1/completions"), 405)


def test_a_chat_request_to_a_base_model_says_to_use_completions(base_server):
    url, _ = base_server
    body = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}]}
    assert_error(post(url, "/v1/chat/completions", body), 400, "/v1/completions")


def test_bodies_over_the_limit_get_413(base_server):
    from gptforge.serve.app import MAX_BODY_BYTES

    url, _ = base_server
    huge = json.dumps({**GOOD, "prompt": "x" * (MAX_BODY_BYTES + 10)}).encode()
    assert_error(post(url, "/v1/completions", huge), 413, "larger than")

    def chunks():  # no Content-Length: the limit is found while reading
        for i in range(0, len(huge), 65536):
            yield huge[i:i + 65536]
    response = httpx.post(url + "/v1/completions", content=chunks(), timeout=30,
                          headers={"Content-Type": "application/json"})
    assert_error(response, 413)
    assert post(url, "/v1/completions", GOOD).status_code == 200  # and it keeps serving


def test_api_key(base_model):
    with serving(base_model, api_key="s3cret") as (url, _):
        assert_error(post(url, "/v1/completions", GOOD), 401, "API key")
        assert_error(post(url, "/v1/completions", GOOD, headers={"Authorization": "Bearer nope"}), 401)
        assert_error(httpx.get(url + "/v1/models"), 401)
        assert post(url, "/v1/completions", GOOD, headers={"Authorization": "Bearer s3cret"}).status_code == 200
        client = openai.OpenAI(base_url=url + "/v1", api_key="s3cret", max_retries=0)
        assert client.completions.create(model="tiny", prompt="Hi", max_tokens=2).choices[0].finish_reason
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=url + "/v1", api_key="wrong", max_retries=0).models.list()
        assert httpx.get(url + "/health").status_code == 200  # health and the page stay open
        assert httpx.get(url + "/").status_code == 200


def gate(service):
    """Hold the engine before its next step until the returned event is set."""
    release = threading.Event()
    step = service.engine.step

    def held():
        release.wait(30)
        step()
    service.engine.step = held
    return release


def test_a_full_queue_gets_503_with_retry_after(base_model):
    with serving(base_model, max_batch=1, max_queue=1) as (url, service):
        release = gate(service)
        first = []
        waiter = threading.Thread(target=lambda: first.append(post(url, "/v1/completions", GOOD)))
        waiter.start()
        wait_until(lambda: service.engine.load()["waiting"] == 1, what="the first request to queue")
        response = post(url, "/v1/completions", GOOD)
        assert_error(response, 503, "busy")
        assert response.headers["Retry-After"] == "1"
        release.set()
        waiter.join(30)
        assert first[0].status_code == 200
        assert post(url, "/v1/completions", GOOD).status_code == 200


def test_a_client_that_disconnects_frees_its_row_at_once(base_model):
    with serving(base_model) as (url, service):
        step = service.engine.step
        service.engine.step = lambda: (time.sleep(0.1), step())  # 60 tokens would take > 6 s
        body = {**GOOD, "max_tokens": 60, "stream": True}
        with httpx.stream("POST", url + "/v1/completions", json=body, timeout=30) as response:
            lines = response.iter_lines()
            assert next(lines).startswith("data: ")
            assert service.engine.load()["running"] == 1
        left = time.monotonic()
        wait_until(lambda: service.engine.load()["running"] == 0, timeout=5, what="the row to be freed")
        assert time.monotonic() - left < 0.5

        # the same for a request that is not streamed: sent by hand, then the socket closed
        body = json.dumps({**GOOD, "max_tokens": 60}).encode()
        host, port = url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port))) as sock:
            sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                         b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
            wait_until(lambda: service.engine.load()["running"] == 1, what="the request to start")
        left = time.monotonic()
        wait_until(lambda: service.engine.load()["running"] == 0, timeout=5, what="the row to be freed")
        assert time.monotonic() - left < 1.0


def test_serve_fails_loudly_when_its_http_thread_cannot_start(monkeypatch):
    """serve() decodes on the calling thread and runs uvicorn in another: uvicorn's startup failure
    (a SystemExit in that thread) must still end serve() with it, the engine's loop stopped."""
    import uvicorn

    from gptforge.serve.app import serve

    from helpers import random_gpt

    def fail_to_start(self, sockets=None):
        raise SystemExit(3)  # what uvicorn does when its startup fails

    monkeypatch.setattr(uvicorn.Server, "run", fail_to_start)
    with pytest.raises(SystemExit) as stopped:
        serve(random_gpt(0), "tiny", port=0)
    assert stopped.value.code == 3
