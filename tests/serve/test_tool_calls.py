"""Tools and response_format on the server, through the official openai client: the declared tools
in the prompt, tool_choice each way, calls returned (and streamed) as OpenAI returns them, a call's
result sent back as a tool message, and JSON answers; every call and every JSON answer valid by
construction (checked by tests/helpers.py's own schema checker), and bad requests refused in one
line naming the field. The model is random, so what it says is whatever the grammar lets it say."""

from __future__ import annotations

import contextlib
import json

import httpx
import openai
import pytest
import torch

from gptforge.tokenizer import tokenizer_of
from gptforge.tokenizer.chat import render

from helpers import random_tool_model, schema_errors, steered
from server_helpers import serving

pytest.importorskip("llguidance")

CALCULATOR = {"type": "function", "function": {
    "name": "calculator", "description": "Evaluate arithmetic.",
    "parameters": {"type": "object", "properties": {"expression": {"type": "string", "maxLength": 12}},
                   "required": ["expression"], "additionalProperties": False}}}
BOOKING = {"type": "function", "function": {
    "name": "book", "description": "Book a table.",
    "parameters": {"type": "object", "properties": {
        "people": {"type": "integer", "minimum": 1, "maximum": 12},
        "day": {"type": "string", "enum": ["mon", "tue", "wed"]},
        "terrace": {"type": "boolean"},
        "dishes": {"type": "array", "items": {"type": "string", "maxLength": 6}, "maxItems": 2}},
        "required": ["people", "day"], "additionalProperties": False}}}
TOOLS = [CALCULATOR, BOOKING]
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
QUESTION = [{"role": "user", "content": "What is 48213 * 7719?"}]


@pytest.fixture(scope="module")
def tool_model():
    return random_tool_model()


@pytest.fixture(scope="module")
def server(tool_model):
    with serving(tool_model, "tools") as running:
        yield running


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server[0] + "/v1", api_key="unused", max_retries=0)


@contextlib.contextmanager
def eager_to_call(model):
    """While inside: the model wants to open a call right after the generation prompt (its last
    token, "\\n") and to end its turn right after a call, so a grammar's say decides what it does."""
    tokenizer = tokenizer_of(model)
    newline, call, call_end, end = (tokenizer.encode("\n")[0], *(tokenizer.special_tokens[t] for t in
                                                                 ("<tool_call>", "</tool_call>", "<|im_end|>")))
    with steered(model, {newline: call, call_end: end}):
        yield


def ask(client, messages=QUESTION, **options):
    return client.chat.completions.create(model="tools", messages=messages, tools=TOOLS,
                                          **{"max_tokens": 60, "temperature": 0, **options})


def check_calls(calls):
    for call in calls:
        assert call.type == "function" and call.id.startswith("call_")
        assert schema_errors(json.loads(call.function.arguments), SCHEMAS[call.function.name]) == []


def test_the_tools_are_in_the_prompt_as_the_template_renders_them(client, tool_model):
    out = ask(client, max_tokens=1)
    ids, _ = render(QUESTION, tokenizer_of(tool_model), add_generation_prompt=True, tools=TOOLS)
    assert out.usage.prompt_tokens == len(ids)


def test_tool_choice_auto_returns_the_call_the_model_makes(client, tool_model):
    with eager_to_call(tool_model):
        out = ask(client)
    (choice,) = out.choices
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    assert len(choice.message.tool_calls) == 1
    check_calls(choice.message.tool_calls)


def test_tool_choice_none_allows_no_call_even_where_the_model_wants_one(client, tool_model):
    with eager_to_call(tool_model):
        out = ask(client, tool_choice="none", max_tokens=8)
    (choice,) = out.choices
    assert not choice.message.tool_calls and choice.message.content and "<tool_call>" not in choice.message.content


def test_tool_choice_required_and_named_make_a_call_where_the_model_would_not(client):
    plain = ask(client, max_tokens=8)  # left alone, this model answers in text
    assert not plain.choices[0].message.tool_calls
    required = ask(client, tool_choice="required", parallel_tool_calls=False)
    assert required.choices[0].finish_reason == "tool_calls"
    check_calls(required.choices[0].message.tool_calls)
    named = ask(client, tool_choice={"type": "function", "function": {"name": "book"}})
    assert [c.function.name for c in named.choices[0].message.tool_calls] == ["book"]
    check_calls(named.choices[0].message.tool_calls)


def test_a_call_its_result_and_the_final_answer(client, tool_model):
    with eager_to_call(tool_model):
        first = ask(client, tool_choice={"type": "function", "function": {"name": "calculator"}})
    (call,) = first.choices[0].message.tool_calls
    history = QUESTION + [first.choices[0].message.model_dump(exclude_none=True),
                          {"role": "tool", "tool_call_id": call.id, "content": "372156147"}]
    final = ask(client, history, max_tokens=6)
    assert final.choices[0].finish_reason == "length" and final.choices[0].message.content
    # the server rendered the call and its result through the template, as fine-tuning does
    expected = history[:1] + [{**history[1], "tool_calls": [{"id": call.id, "type": "function", "function": {
        "name": call.function.name, "arguments": json.loads(call.function.arguments)}}]}] + history[2:]
    ids, _ = render(expected, tokenizer_of(tool_model), add_generation_prompt=True, tools=TOOLS)
    assert final.usage.prompt_tokens == len(ids)


def test_streamed_calls_are_openais_deltas_and_reassemble(client, tool_model, server):
    with eager_to_call(tool_model):
        whole = ask(client, tool_choice="required", parallel_tool_calls=False)
        chunks = list(ask(client, tool_choice="required", parallel_tool_calls=False, stream=True))
        with client.chat.completions.stream(model="tools", messages=QUESTION, tools=TOOLS, max_tokens=60,
                                            temperature=0, tool_choice="required") as stream:
            final = stream.get_final_completion()
    deltas = [c.choices[0].delta for c in chunks if c.choices and c.choices[0].delta.tool_calls]
    first, *rest = [d.tool_calls[0] for d in deltas]
    assert first.index == 0 and first.id.startswith("call_") and first.function.name and first.type == "function"
    assert all(d.index == 0 and d.id is None for d in rest)
    (expected,) = whole.choices[0].message.tool_calls
    assert first.function.name == expected.function.name
    assert "".join(d.function.arguments or "" for d in [first, *rest]) == expected.function.arguments
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    (got,) = final.choices[0].message.tool_calls  # the client's own reassembly
    assert (got.function.name, got.function.arguments) == (expected.function.name, expected.function.arguments)
    assert final.choices[0].finish_reason == "tool_calls"


def test_every_constrained_call_parses_and_validates(client):
    """Sampled at temperature 1 from a random model: 32 calls, each to a declared tool with
    arguments its schema accepts (the same model unconstrained writes none: benchmarks/constrained.py)."""
    calls = []
    for seed in (1, 2):
        out = ask(client, tool_choice="required", parallel_tool_calls=False, temperature=1.0, n=16, seed=seed,
                  max_tokens=80)
        assert {c.finish_reason for c in out.choices} == {"tool_calls"}
        calls += [c.message.tool_calls[0] for c in out.choices]
    check_calls(calls)
    assert len({c.function.arguments for c in calls}) > 8  # samples, not one answer repeated


@pytest.mark.parametrize("stream", [False, True])
def test_response_format_gives_json_that_validates(client, stream):
    schema = {"type": "object", "properties": {"answer": {"type": "integer", "minimum": 0, "maximum": 99},
                                               "sure": {"type": "boolean"}},
              "required": ["answer", "sure"], "additionalProperties": False}
    fmt = {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}}
    out = client.chat.completions.create(model="tools", messages=QUESTION, response_format=fmt, max_tokens=30,
                                         temperature=1.0, n=4, seed=3, stream=stream)
    if stream:
        texts = ["", "", "", ""]
        for chunk in out:
            for choice in chunk.choices:
                texts[choice.index] += choice.delta.content or ""
    else:
        texts = [c.message.content for c in out.choices]
    assert all(schema_errors(json.loads(t), schema) == [] for t in texts)



def test_json_object_ends_only_where_the_object_does(client, tool_model):
    tokenizer = tokenizer_of(tool_model)
    wanted = [tokenizer.special_tokens["<|im_end|>"], tokenizer.encode("}")[0], tokenizer.encode("{")[0]]

    def boost(module, args, logits):  # the model wants to end its turn, else to close, else to open
        logits = logits.clone()
        logits[..., wanted] += torch.tensor([3e4, 2e4, 1e4])
        return logits

    handle = tool_model.register_forward_hook(boost)
    try:
        out = client.chat.completions.create(model="tools", messages=QUESTION, max_tokens=30, temperature=0,
                                             response_format={"type": "json_object"})
    finally:
        handle.remove()
    assert out.choices[0].finish_reason == "stop" and out.choices[0].message.content == "{}", out.choices[0].message.content


def test_response_format_on_completions(client):
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"],
              "additionalProperties": False}
    out = client.completions.create(model="tools", prompt="Hello", max_tokens=20, temperature=0,
                                    extra_body={"response_format": {"type": "json_schema", "json_schema": {
                                        "name": "ok", "schema": schema}}})
    assert schema_errors(json.loads(out.choices[0].text), schema) == []


def post(server, body):
    return httpx.post(server[0] + "/v1/chat/completions", json={"model": "tools", "messages": QUESTION, **body},
                      timeout=30)


def with_parameters(parameters):
    return [{"type": "function", "function": {"name": "f", "parameters": parameters}}]


CALL = {"id": "c1", "type": "function", "function": {"name": "calculator", "arguments": "{\"expression\": \"1\"}"}}


@pytest.mark.parametrize("body, param, fragment", [
    ({"tools": with_parameters("a string")}, "tools[0].function.parameters", "object"),
    ({"tools": with_parameters({"type": "string"})}, "tools", "JSON schema object"),
    ({"tools": [CALCULATOR, *with_parameters({"type": "object", "properties": {"x": {"type": "no such type"}}})]},
     "tools[1].function.parameters", "no such type"),
    ({"tools": [CALCULATOR, CALCULATOR]}, "tools", "declared twice"),
    ({"tools": [{"type": "function", "function": {"name": "has space"}}]}, "tools[0].function.name", ""),
    ({"tools": [{"type": "retrieval"}]}, "tools[0].type", ""),
    ({"tool_choice": "required"}, "tool_choice", "needs tools"),
    ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "other"}}}, "tool_choice",
     "'other'"),
    ({"tools": TOOLS, "tool_choice": "sometimes"}, "tool_choice", ""),
    ({"tools": TOOLS, "messages": QUESTION + [{"role": "tool", "tool_call_id": "c9", "content": "5"}]},
     "messages[1]", "no call"),
    ({"tools": TOOLS, "messages": QUESTION + [{"role": "assistant", "tool_calls": [
        {**CALL, "function": {"name": "calculator", "arguments": "{not json"}}]}]}, "messages[1]", "not JSON"),
    ({"tools": TOOLS, "messages": QUESTION + [{"role": "assistant", "tool_calls": [
        {**CALL, "function": {"name": "weather", "arguments": "{}"}}]}]}, "messages[1]", "'weather'"),
    ({"messages": [{"role": "user"}]}, "messages[0].content", "missing"),
    ({"response_format": {"type": "json_schema"}}, "response_format.json_schema", "json_schema"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nope"}}}},
     "response_format", "nope"),
    ({"response_format": {"type": "xml"}}, "response_format.type", ""),
])
def test_bad_tools_and_formats_get_400_naming_the_field(server, body, param, fragment):
    response = post(server, body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and fragment in error["message"], error
    assert "\n" not in error["message"]


def test_a_model_without_tool_tokens_is_told_so(chat_server):
    response = httpx.post(chat_server[0] + "/v1/chat/completions", timeout=30,
                          json={"model": "chat", "messages": QUESTION, "tools": TOOLS})
    assert response.status_code == 400 and response.json()["error"]["param"] == "tools"
    assert "no tool tokens" in response.json()["error"]["message"]


def test_without_llguidance_constrained_requests_get_one_line(server, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "llguidance", None)  # as if not installed: importing it fails
    for body, param in (({"tools": TOOLS}, "tools"), ({"response_format": {"type": "json_object"}}, "response_format"),
                        ({"tools": TOOLS, "response_format": {"type": "json_object"}}, "tools")):
        response = post(server, body)
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert error["param"] == param and "pip install 'gptforge[structured]'" in error["message"]
    assert post(server, {"max_tokens": 2}).status_code == 200  # the rest works without it
