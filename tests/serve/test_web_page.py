"""The web chat page in a real headless browser (Debian's chromium driven by playwright): type,
watch the answer stream, stop it, start over, with no request leaving the server's origin.

GPTFORGE_SCREENSHOT=PATH keeps the screenshot of a random model (docs/web-chat.png, a trained one,
is taken by scripts/web_chat_screenshot.py)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time

import pytest

from gptforge.generate import generate_text
from gptforge.model import prepare_for_decoding
from gptforge.tokenizer import tokenizer_of

from helpers import greedy_tokens
from server_helpers import serving, wait_until

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--no-sandbox", "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--no-first-run", "--disable-gpu"]

if CHROMIUM is None:
    if os.environ.get("CI"):
        raise RuntimeError("CI must run the browser tests: chromium is missing (.ci/run installs it)")
    pytest.skip("chromium is not installed (apt-get install chromium); CI installs it and runs these tests",
                allow_module_level=True)


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield b
        b.close()


@contextlib.contextmanager
def opened(browser, model, **options):
    """(page, base URL, Service): the page of a server running `model` (Service's `options`), loaded
    in a fresh context."""
    with serving(model, **options) as (url, service):
        context = browser.new_context(viewport={"width": 900, "height": 560})
        page = context.new_page()
        requested = []
        page.on("request", lambda r: requested.append(r.url))
        page.goto(url + "/")
        page.wait_for_function("document.getElementById('model').textContent.includes('tiny')")
        yield page, url, service
        context.close()
        assert requested and all(r.startswith(url + "/") for r in requested), requested  # nothing external


@pytest.fixture
def page(browser, chat_model):
    with opened(browser, prepare_for_decoding(chat_model)) as running:
        yield running


def ask(page, text, temperature="0", max_tokens="20"):
    page.fill("#temperature", temperature)
    page.fill("#max-tokens", max_tokens)
    page.fill("#prompt", text)
    page.press("#prompt", "Enter")


def test_type_and_watch_the_answer_stream(page, chat_model, tmp_path):
    page, _, _ = page
    assert "plain text" not in page.inner_text("#model")  # a chat model
    ask(page, "Hello there", max_tokens="12")
    page.wait_for_selector(".msg.assistant[data-done='1']")
    first = [{"role": "user", "content": "Hello there"}]
    a1 = tokenizer_of(chat_model).decode(greedy_tokens(chat_model, first, 12))
    assert page.inner_text(".msg.assistant") == a1
    assert page.inner_text(".msg.user") == "Hello there"
    ask(page, "A second line", max_tokens="12")
    page.wait_for_function("document.querySelectorAll(\".msg.assistant[data-done='1']\").length === 2")
    history = [*first, {"role": "assistant", "content": a1}, {"role": "user", "content": "A second line"}]
    assert page.locator(".msg.assistant").nth(1).inner_text() == tokenizer_of(chat_model).decode(
        greedy_tokens(chat_model, history, 12))  # the page sends the conversation so far
    page.screenshot(path=os.environ.get("GPTFORGE_SCREENSHOT") or str(tmp_path / "page.png"))
    page.click("#new")
    assert page.locator(".msg").count() == 0


def test_a_base_model_continues_text(browser, base_model):
    with opened(browser, base_model) as (page, _, _):
        assert "continued as plain text" in page.inner_text("#model")  # a base model says so
        ask(page, "Hello there")
        page.wait_for_selector(".msg.assistant[data-done='1']")
        expected = "".join(generate_text(base_model, "Hello there", 20, temperature=0.0, stop_at_eos=True))
        assert page.inner_text(".msg.assistant") == expected


def test_stop_ends_the_answer_and_frees_the_server(page):
    page, url, service = page
    step = service.engine.step
    service.engine.step = lambda: (time.sleep(0.1), step())  # 50 tokens would take 5 s
    ask(page, "Tell me", temperature="1", max_tokens="50")
    page.wait_for_function("document.querySelector('.msg.assistant').textContent.length > 0")
    assert page.get_attribute("body", "data-busy") == "1"
    page.click("#stop")
    page.wait_for_selector(".msg.assistant[data-done='1']")
    assert page.inner_text(".msg.assistant").endswith("[stopped]"), page.inner_text(".msg.assistant")
    assert page.get_attribute("body", "data-busy") == "0"
    wait_until(lambda: service.engine.load()["running"] == 0, timeout=2, what="the server to free the row")


def test_errors_are_shown_and_the_page_goes_on(page):
    page, url, service = page
    ask(page, "word " * 100)  # longer than the context of 64 tokens
    page.wait_for_selector(".msg.error")
    assert "context is 64 tokens" in page.inner_text(".msg.error")
    ask(page, "Hi", max_tokens="3")
    page.wait_for_selector(".msg.assistant[data-done='1']")


def test_a_long_conversation_trims_its_oldest_turns_and_says_so(page, chat_model):
    """Issue 22, item 11: with a context of 64 tokens and 20-token answers, the third question no
    longer fits beside the first two turns. The page leaves out the oldest turns (and says so)
    rather than showing the server's refusal, and the answer is the model's to what it was sent."""
    page, _, _ = page
    sent = []
    page.on("request", lambda r: r.url.endswith("/v1/chat/completions") and sent.append(json.loads(r.post_data)))
    questions = ["Hello there", "What is a fox?", "Tell me more about it", "And then?"]
    for n, question in enumerate(questions, start=1):
        ask(page, question, max_tokens="20")
        page.wait_for_function(f"document.querySelectorAll(\".msg.assistant[data-done='1']\").length === {n}")
    assert page.locator(".msg.error").count() == 0
    assert "left out" in page.inner_text(".fitted")
    last = sent[-1]
    assert last["messages"][-1]["content"] == "And then?" and last["messages"][0]["content"] != "Hello there"
    assert last["max_tokens"] == 20  # turns were dropped before the answer was shortened
    expected = tokenizer_of(chat_model).decode(greedy_tokens(chat_model, last["messages"], 20))
    assert page.locator(".msg.assistant").nth(3).inner_text() == expected


def test_a_question_that_leaves_little_room_gets_a_shorter_answer_not_an_error(page, chat_model):
    page, _, _ = page
    sent = []
    page.on("request", lambda r: r.url.endswith("/v1/chat/completions") and sent.append(json.loads(r.post_data)))
    ask(page, "word " * 40, max_tokens="60")  # fits the context of 64, but not with 60 more tokens
    page.wait_for_selector(".msg.assistant[data-done='1']")
    assert page.locator(".msg.error").count() == 0
    left = sent[-1]["max_tokens"]
    assert 0 < left < 60 and f"limited to {left} tokens" in page.inner_text(".fitted")
    expected = tokenizer_of(chat_model).decode(greedy_tokens(chat_model, sent[-1]["messages"], left))
    assert page.inner_text(".msg.assistant") == expected


def test_the_sources_of_an_answer_are_listed_under_it(browser, tmp_path):
    """serve --index: the page shows the passages the answer was given, numbered as in the prompt."""
    import torch

    from gptforge.config import GPTConfig
    from gptforge.model import GPT
    from gptforge.retrieval import add_paths
    from gptforge.retrieval.passages import retriever
    from gptforge.tokenizer import CHAT_TOKENS, gpt2

    from helpers import write

    write(tmp_path / "docs" / "pump.md", "To reset the pump, hold the red lever.\n")
    add_paths(tmp_path / "index", [tmp_path / "docs"], progress=False)
    tokenizer = gpt2().with_special_tokens(CHAT_TOKENS)
    torch.manual_seed(5)
    model = GPT(GPTConfig.from_preset("gpt2-tiny", vocab_size=tokenizer.vocab_size, context_length=256), tokenizer)
    with opened(browser, prepare_for_decoding(model), retrieve=retriever(tmp_path / "index", 2)) as (page, _, _):
        ask(page, "How do I reset the pump?", max_tokens="4")
        page.wait_for_selector(".msg.assistant[data-done='1']")
        assert page.inner_text(".sources") == f"Sources: [1] {tmp_path / 'docs' / 'pump.md'}:1"
