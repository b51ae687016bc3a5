"""tools/structured.py: the grammars of tool calls and JSON, and the Constraint that keeps a row of
the serving engine to one, on a random model (what it writes is whatever the grammar allows).
Its calls are read back by a parser written here to the Hermes convention as vLLM's `hermes`
tool parser and llama.cpp document it, independently of tools/calls.py."""

from __future__ import annotations

import json
import re

import pytest
import torch

from gptforge.serve.engine import Engine, Sampling, Sequence
from gptforge.tokenizer import tokenizer_of
from gptforge.tokenizer.chat import render
from gptforge.tools.calls import parse_reply

from helpers import random_tool_model, schema_errors

llguidance = pytest.importorskip("llguidance")
from gptforge.tools.structured import compile_grammar, grammar_text

ADD = {"type": "function", "function": {"name": "add", "parameters": {
    "type": "object", "properties": {"a": {"type": "integer", "minimum": -99, "maximum": 99},
                                     "b": {"type": "integer", "minimum": -99, "maximum": 99}},
    "required": ["a", "b"], "additionalProperties": False}}}
LOOKUP = {"type": "function", "function": {"name": "lookup", "parameters": {
    "type": "object", "properties": {"word": {"type": "string", "maxLength": 10},
                                     "lang": {"enum": ["en", "fr"]}},
    "required": ["word"], "additionalProperties": False}}}
TOOLS = [ADD, LOOKUP]
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
QUESTION = [{"role": "user", "content": "Add 2 and 3."}]


def hermes_calls(text: str) -> tuple[str | None, list[dict]]:
    """(content, calls) by the Hermes convention: each call a JSON object {"name", "arguments"}
    between <tool_call> and </tool_call> (a last one may be unclosed); the content is what precedes
    the first <tool_call>, stripped, None when empty."""
    start = text.find("<tool_call>")
    if start < 0:
        return text, []
    blocks = re.findall(r"<tool_call>(.*?)</tool_call>|<tool_call>(?!.*</tool_call>)(.*)", text, re.DOTALL)
    calls = [json.loads((closed or open_).strip()) for closed, open_ in blocks]
    return text[:start].strip() or None, calls


@pytest.fixture(scope="module")
def model():
    return random_tool_model()


class Collect:
    def __init__(self):
        self.tokens, self.reason = [], None

    def __call__(self, token, reason):
        if token is None:
            self.reason = reason
        else:
            self.tokens.append(token)


def run(model, jobs, max_batch=4):
    """Decode (prompt ids, sampling options, constraint or None) jobs together, each ending at the
    end of its turn: each one's tokens and reason."""
    engine = Engine(model, max_batch=max_batch, max_queue=64)
    outs = [Collect() for _ in jobs]
    engine.submit([Sequence(p, Sampling(**s, stop_ids=stops(model)), o, c) for (p, s, c), o in zip(jobs, outs)])
    for _ in range(2000):
        if all(o.reason for o in outs):
            break
        engine.step()
    assert all(o.reason for o in outs)
    return outs


def chat_ids(model, tools=TOOLS):
    return render(QUESTION, tokenizer_of(model), add_generation_prompt=True, tools=tools)[0]


def stops(model):
    tokenizer = tokenizer_of(model)
    return frozenset({tokenizer.eot_id, tokenizer.special_tokens["<|im_end|>"]})


def grammar(model, **options):
    tokenizer = tokenizer_of(model)
    return compile_grammar(tokenizer, grammar_text(tokenizer, **options), model.config.vocab_size)


def test_constrained_calls_parse_and_validate_every_time(model):
    """Forty sampled replies that must call a tool, beside free rows: every one is one call to a
    declared tool whose arguments validate, read alike by parse_reply and the Hermes convention."""
    tokenizer, prompt = tokenizer_of(model), chat_ids(model)
    required = grammar(model, tools=TOOLS, choice="required", parallel=False)
    jobs = [(prompt, {"max_new_tokens": 60, "temperature": 1.0, "seed": s}, required.constraint(stops(model)))
            for s in range(40)]
    outs = run(model, jobs, max_batch=8)
    names = set()
    for out in outs:
        assert out.reason == "stop"
        text = tokenizer.decode(out.tokens)
        content, calls = hermes_calls(text)
        assert content is None and len(calls) == 1
        (call,) = calls
        assert schema_errors(call["arguments"], SCHEMAS[call["name"]]) == []
        assert [(c.name, c.arguments) for c in parse_reply(text).calls] == [(call["name"], call["arguments"])]
        names.add(call["name"])
    assert names == {"add", "lookup"}


def test_the_same_model_unconstrained_calls_nothing_valid(model):
    """The baseline beside it: sampled freely, this random model writes no call at all."""
    tokenizer, prompt = tokenizer_of(model), chat_ids(model)
    outs = run(model, [(prompt, {"max_new_tokens": 60, "temperature": 1.0, "seed": s}, None) for s in range(8)])
    assert all(not parse_reply(tokenizer.decode(o.tokens)).calls for o in outs)


def test_a_constrained_row_leaves_its_neighbours_alone(model):
    prompt = chat_ids(model)
    free = (render(QUESTION, tokenizer_of(model), add_generation_prompt=True)[0],
            {"max_new_tokens": 20, "temperature": 1.0, "seed": 3}, None)
    (alone,) = run(model, [free])
    named = grammar(model, tools=TOOLS, name="lookup").constraint(stops(model))
    _, beside, _ = run(model, [(prompt, {"max_new_tokens": 40, "temperature": 0.0}, named), free,
                               (prompt, {"max_new_tokens": 40, "temperature": 0.0}, None)])
    assert beside.tokens == alone.tokens and beside.reason == alone.reason


def test_tool_choice_none_never_allows_a_call_and_auto_allows_text_or_calls(model):
    tokenizer = tokenizer_of(model)
    call = tokenizer.special_tokens["<tool_call>"]
    none = grammar(model, tools=TOOLS, choice="none").constraint(stops(model))
    auto = grammar(model, tools=TOOLS, choice="auto").constraint(stops(model))
    required = grammar(model, tools=TOOLS, choice="required").constraint(stops(model))
    assert not none.allowed()[call] and none.allowed()[tokenizer.encode("Hi")[0]]
    assert auto.allowed()[call] and auto.allowed()[tokenizer.encode("Hi")[0]]
    assert required.allowed().nonzero().flatten().tolist() == [call]
    for token in tokenizer.encode("Sure.\n"):  # text, then a call
        auto.accept(token)
    assert auto.allowed()[call]
    for special in ("<|im_start|>", "<tool_response>"):  # no text rule makes a special token
        assert not none.allowed()[tokenizer.special_tokens[special]]


def test_json_may_end_only_where_it_is_whole(model):
    tokenizer = tokenizer_of(model)
    end = tokenizer.special_tokens["<|im_end|>"]
    constraint = grammar(model, json_content=True, json_schema={"type": "object", "properties": {
        "ok": {"type": "boolean"}}, "required": ["ok"]}).constraint(stops(model))
    pieces = tokenizer.encode('{"ok": true}')
    for token in pieces:
        assert not constraint.allowed()[end]
        assert constraint.allowed()[token]
        constraint.accept(token)
    assert constraint.allowed()[end]
    padded = torch.zeros(1, model.config.vocab_size)
    assert torch.isinf(constraint.mask(padded)[0, tokenizer.vocab_size:]).all()  # the padding rows too


def test_a_schema_it_cannot_enforce_is_one_line():
    tokenizer = tokenizer_of(random_tool_model(64))
    with pytest.raises(ValueError) as error:
        compile_grammar(tokenizer, grammar_text(tokenizer, json_content=True, json_schema={"type": "nope"}))
    assert "nope" in str(error.value) and "\n" not in str(error.value)
