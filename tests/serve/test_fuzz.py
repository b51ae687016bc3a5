"""Generated hostile requests against the server's ASGI app, in process (issue 22): wrong types,
extreme numbers, NaN and infinities, huge, nested and unicode strings, missing and extra fields,
bodies that are not JSON, wrong headers, every route. Beside each one a well-formed request runs.

The properties: no request gets a 5xx; every refusal is a 4xx JSON error, and one about a field of
a JSON object names it (param); the well-formed request gets the text it gets alone; and after it
all the engine is idle and still serving.

Fixed seed (derandomize) and GPTFORGE_FUZZ_EXAMPLES examples (default 150); for a longer hunt:
    GPTFORGE_FUZZ_EXAMPLES=5000 python -m pytest -q -s tests/serve/test_fuzz.py
The summary line (requests tried, distinct error classes) is printed at the end.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import os
import time

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gptforge.generate import generate_text
from gptforge.model import prepare_for_decoding
from gptforge.serve.app import Service, build_app

EXAMPLES = int(os.environ.get("GPTFORGE_FUZZ_EXAMPLES", "150"))
WELL_FORMED = {"model": "chat", "prompt": "The quick brown fox", "max_tokens": 8, "temperature": 0}
REQUEST_TIMEOUT_S = 60  # one request; with the examples' count this bounds the test's time

# ---- what is thrown -----------------------------------------------------------------------------
EXTREME_NUMBERS = st.sampled_from([0, 1, -1, 2**31, 2**63, 2**64, -2**63 - 1, 10**40, 0.5, -0.0, 1e-300,
                                   5e-324, 1e308, float("nan"), float("inf"), float("-inf")])
STRINGS = st.one_of(st.text(max_size=40), st.sampled_from(
    ["", "tiny", "chat", "<|endoftext|>", "<|im_start|>", "\x00", "\ud800", "é" * 3000, "a" * 1_040_000,
     "word " * 300, "[" * 5000, "../../etc/passwd"]))
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(min_value=-2**70, max_value=2**70), EXTREME_NUMBERS,
                    st.floats(), STRINGS)
ANY = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner,
                                                                                       max_size=4), max_leaves=12)
MESSAGE = st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "assistant", "developer", "tool"]) | ANY,
                                 "content": STRINGS | st.lists(st.fixed_dictionaries({"type": st.just("text"),
                                                                                      "text": STRINGS}) | ANY,
                                                               max_size=3) | ANY})
# each field: plausible values and anything at all
FIELDS = {
    "model": st.sampled_from(["chat", "chat"]) | ANY,
    "prompt": STRINGS | st.lists(STRINGS, max_size=100) | ANY,
    "messages": st.lists(MESSAGE, max_size=4) | ANY,
    "max_tokens": st.integers(min_value=-2, max_value=70) | EXTREME_NUMBERS | ANY,
    "max_completion_tokens": st.integers(min_value=-2, max_value=70) | EXTREME_NUMBERS | ANY,
    "temperature": st.sampled_from([1e-300, 5e-324, 1e-7, 1e-6, 2.0000001, -0.0]) | st.floats(-1, 3) | EXTREME_NUMBERS | ANY,
    "top_p": st.sampled_from([1e-300, 5e-324, 1e-7, 1e-6, 1.0000001]) | st.floats(-1, 2) | EXTREME_NUMBERS | ANY,
    "top_k": st.integers(min_value=-2, max_value=100_000) | EXTREME_NUMBERS | ANY,
    "seed": st.sampled_from([2**64 - 1, 2**64, -2**63, -2**63 - 1, 2**100]) | st.integers() | ANY,
    "n": st.integers(min_value=-1, max_value=20) | EXTREME_NUMBERS | ANY,
    "stop": STRINGS | st.lists(STRINGS, max_size=6) | ANY,
    "stream": st.booleans() | ANY,
    "stream_options": st.fixed_dictionaries({}, optional={"include_usage": st.booleans() | ANY}) | ANY,
    "user": ANY, "logit_bias": ANY,  # OpenAI fields this server ignores
}
VALID = {"/v1/completions": {"model": "chat", "prompt": "Hi", "max_tokens": 4},
         "/v1/chat/completions": {"model": "chat", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}}
FIELD_VALUE = st.sampled_from(sorted(FIELDS)).flatmap(lambda name: FIELDS[name].map(lambda value: (name, value)))
EXTRA = st.dictionaries(st.text(max_size=12), ANY, max_size=2)


def _mutated(path: str):
    """A valid body for `path` with one to three fields set to generated values, sometimes a
    required field dropped, sometimes unknown fields added: most of these reach the engine's door."""
    valid = VALID.get(path, VALID["/v1/completions"])
    changes = st.tuples(st.lists(FIELD_VALUE, min_size=1, max_size=3), st.sets(st.sampled_from(sorted(valid)),
                                                                              max_size=1), EXTRA)
    return changes.map(lambda c: {**{k: v for k, v in valid.items() if k not in c[1]}, **dict(c[0]), **c[2]})


ANY_OBJECT = st.fixed_dictionaries({}, optional=FIELDS).flatmap(lambda body: EXTRA.map(lambda extra: {**extra, **body}))
RAW_BODIES = st.one_of(st.binary(max_size=200), st.sampled_from([b"", b"{", b"[" * 100_000, b"null", b"\xff\xfe",
                                                               b'{"model": "chat", "prompt": "hi"' + b" " * 10]))
ROUTES = st.sampled_from([("POST", "/v1/completions")] * 4 + [("POST", "/v1/chat/completions")] * 4 +
                         [("GET", "/v1/models"), ("GET", "/v1/models/chat"), ("GET", "/v1/models/%00x"),
                          ("GET", "/health"), ("GET", "/"), ("POST", "/health"), ("GET", "/v1/completions"),
                          ("POST", "/v1/nothing")])
GOOD_HEADERS = {"Content-Type": "application/json"}
HEADERS = st.sampled_from([GOOD_HEADERS] * 8 + [{}, {"Content-Type": "text/plain"},
                                                {"Content-Type": "application/x-www-form-urlencoded"},
                                                {**GOOD_HEADERS, "Host": "evil.example"},
                                                {**GOOD_HEADERS, "Content-Length": "-1"}])
REQUESTS = ROUTES.flatmap(lambda route: st.tuples(st.just(route), HEADERS, st.one_of(
    _mutated(route[1]).map(lambda b: (b, True)), _mutated(route[1]).map(lambda b: (b, True)),
    ANY_OBJECT.map(lambda b: (b, True)), RAW_BODIES.map(lambda b: (b, False)))))
# refusals that concern the request as a whole (its headers, route, or a body that is no JSON
# object), not a field of it: these alone may leave param empty
WHOLE_REQUEST = ("not valid JSON", "must be a JSON object", "Host header", "Content-Type", "Content-Length",
                 "does not exist", "Method Not Allowed", "Not Found")


@pytest.fixture(scope="module")
def fuzzed(chat_model, request):
    """(service, app, the well-formed request's text alone, tally of error classes)."""
    model = prepare_for_decoding(chat_model)
    service = Service(model, "chat", max_batch=4, max_queue=32)
    service.engine.start()
    expected = "".join(generate_text(model, WELL_FORMED["prompt"], WELL_FORMED["max_tokens"], temperature=0.0,
                                     stop_at_eos=True))
    tally = collections.Counter()
    started = time.monotonic()
    try:
        yield service, build_app(service), expected, tally
    finally:
        service.engine.stop()
    tried = sum(tally.values())
    summary = (f"fuzz: {tried} generated requests in {time.monotonic() - started:.0f} s, "
               f"{len([k for k in tally if k[0] >= 400])} distinct error classes, none unhandled (5xx)")
    classes = "\n".join(f"    {count:5d}  {key}" for key, count in sorted(tally.items(), key=str))
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        print(f"\n{summary}\n{classes}", flush=True)  # shown whether or not output is captured
    with open(os.environ.get("GPTFORGE_FUZZ_SUMMARY", os.devnull), "a") as f:
        f.write(summary + "\n")


async def _send(app, method, path, headers, content):
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1") as client:
        return await asyncio.wait_for(client.request(method, path, headers=headers, content=content),
                                      REQUEST_TIMEOUT_S)


async def _beside(app, hostile):
    """The hostile request and the well-formed one, at once."""
    good = _send(app, "POST", "/v1/completions", GOOD_HEADERS, json.dumps(WELL_FORMED).encode())
    return await asyncio.gather(_send(app, *hostile), good)


def _error_class(response, is_object: bool, sent_json: bool) -> tuple:
    assert response.status_code < 500, (response.status_code, response.text[:500])
    if response.status_code < 400:
        return (response.status_code,)
    error = response.json()["error"]  # every refusal is an OpenAI-style JSON error
    message, param = error["message"], error["param"]
    assert isinstance(message, str) and message
    if is_object and sent_json and response.status_code == 400 and not any(w in message for w in WHOLE_REQUEST):
        assert param, f"a refusal of a field that does not name it: {message}"
    field = param.split("[")[0].split(".")[0] if param else None
    return response.status_code, error["code"] or error["type"], field


@pytest.mark.slow
@settings(max_examples=EXAMPLES, derandomize=True, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example,
                                 HealthCheck.function_scoped_fixture])
@given(sent=REQUESTS)
def test_no_request_gets_a_5xx_or_hurts_a_well_formed_one(fuzzed, sent):
    _, app, expected, tally = fuzzed
    (method, path), headers, (body, is_object) = sent
    content = json.dumps(body).encode() if is_object else body
    hostile, good = asyncio.run(_beside(app, (method, path, headers, content)))
    sent_json = headers.get("Content-Type") == "application/json" and "Host" not in headers
    tally[_error_class(hostile, is_object, sent_json)] += 1
    assert good.status_code == 200, good.text
    assert good.json()["choices"][0]["text"] == expected


@pytest.mark.slow
def test_after_the_fuzzing_the_engine_is_idle_and_serving(fuzzed):
    service, app, expected, _ = fuzzed
    good = asyncio.run(_send(app, "POST", "/v1/completions", GOOD_HEADERS, json.dumps(WELL_FORMED).encode()))
    assert good.json()["choices"][0]["text"] == expected
    deadline = time.monotonic() + 30
    while service.engine.load()["running"] or service.engine.load()["waiting"]:
        assert time.monotonic() < deadline, service.engine.load()
        time.sleep(0.01)
