"""`gptforge chat` as a user meets it: in a terminal (pexpect), typing, Ctrl-C, /exit; a chat model
through its template (answers recomputed by a plain greedy loop over issue 13's render)."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys

import pexpect
import pytest

from gptforge.generate import Sampling, generate_text
from gptforge.tokenizer import tokenizer_of
from gptforge.tokenizer.chat import render
from gptforge.weights import load_any

from helpers import early_end, greedy_tokens, turn_ends_after

# The CLI with every decoding step slowed down (each token is drawn by generate.sample_next,
# whatever computes the logits), so an answer of 40 tokens streams for 8 s whatever the machine.
SLOW_CLI = ("import importlib, sys, time; g = importlib.import_module('gptforge.generate'); draw = g.sample_next; "
            "g.sample_next = lambda *a, **k: (time.sleep(0.2), draw(*a, **k))[1]; "
            "from gptforge.cli import main; sys.exit(main(sys.argv[1:]))")


def reference(checkpoint, prompt, n):
    model = load_any(checkpoint)
    return "".join(generate_text(model, prompt, n, temperature=0.0, stop_at_eos=True))


def spawn(*args, slow=False):
    argv = ["-c", SLOW_CLI] if slow else ["-m", "gptforge"]
    return pexpect.spawn(sys.executable, argv + ["chat", *args], encoding="utf-8", timeout=60,
                         dimensions=(50, 400))


def answer_line(child) -> str:
    """The text after "model> " up to the end of its line."""
    child.expect_exact("model> ")
    child.expect_exact("\r\n")
    return child.before


@pytest.mark.slow  # a terminal and Ctrl-C
def test_a_base_model_continues_each_line_and_ctrl_c_stops_only_the_answer(tiny_checkpoint):
    child = spawn("--checkpoint", str(tiny_checkpoint), "--temperature", "0", "--max-new-tokens", "40", slow=True)
    child.expect_exact("plain continuation mode")
    child.expect_exact("you> ")
    child.sendline("Hello there")
    child.expect(r"model> [\s\S]")  # seen: the answer has begun streaming (its first piece, whatever it is)
    child.sendintr()
    child.expect_exact("[stopped]")
    child.expect_exact("you> ")  # still running, ready for the next line
    child.sendline("Hello there")
    assert answer_line(child) == reference(tiny_checkpoint, "Hello there", 40)
    child.expect_exact("you> ")
    child.sendintr()  # at the prompt: a hint, not an exit
    child.expect_exact("/exit or Ctrl-D to leave")
    child.sendline("/exit")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


@pytest.mark.slow  # a CLI process
def test_chat_reads_piped_input_to_the_end(tiny_checkpoint):
    out = subprocess.run([sys.executable, "-m", "gptforge", "chat", "--checkpoint", str(tiny_checkpoint),
                          "--temperature", "0", "--max-new-tokens", "8"],
                         input="Once upon\nOnce upon\n", capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    answers = [line.split("model> ", 1)[1] for line in out.stdout.splitlines() if "model> " in line]
    expected = reference(tiny_checkpoint, "Once upon", 8)
    assert answers == [expected, expected]  # a base model: no history, the same continuation twice


@pytest.mark.parametrize("args, fragment", [(["--temperature", "-1"], "temperature"),
                                            (["--max-new-tokens", "0"], "--max-new-tokens"),
                                            (["--tools", "calculator,web"], "unknown tool set 'web'"),
                                            (["--tools", "clock"], "this model has no tool tokens"),
                                            (["--tools-module", "nowhere.py"], "is not a .py file")])
def test_bad_flags_are_one_line(tiny_checkpoint, args, fragment):
    from helpers import assert_user_error, run_cli

    assert_user_error(run_cli("chat", "--checkpoint", str(tiny_checkpoint), *args), fragment)


# A chat model (its tokenizer has the chat tokens): answers through the template, with the history.

def talk(model, lines, max_new_tokens=8, system=None) -> tuple[list[str], str]:
    """chat_in_terminal fed `lines`: (the answers, everything written)."""
    from gptforge.chat import ChatSettings, chat_in_terminal

    out, pending = io.StringIO(), iter(lines)

    def read(prompt):
        out.write(prompt)
        try:
            return next(pending)
        except StopIteration:
            raise EOFError from None

    chat_in_terminal(model, ChatSettings(Sampling(max_new_tokens, temperature=0.0), system), read=read, out=out)
    return answers(out.getvalue()), out.getvalue()


def answers(transcript: str) -> list[str]:
    """The answers of a transcript: what follows "model> " up to the next "you> " (less its newline)."""
    return [part.split("model> ", 1)[1][:-1] for part in transcript.split("you> ") if "model> " in part]


def test_a_chat_model_answers_through_its_template_with_the_history(chat_model):
    def ref(messages):
        return tokenizer_of(chat_model).decode(greedy_tokens(chat_model, messages, 8))

    got, transcript = talk(chat_model, ["What is a fox?", "And a dog?", "/system Be brief.", "Hi", "/reset", "Hi"])
    assert transcript.startswith("Chat with the model") and "plain continuation" not in transcript
    first = [{"role": "user", "content": "What is a fox?"}]
    a1 = ref(first)
    a2 = ref([*first, {"role": "assistant", "content": a1}, {"role": "user", "content": "And a dog?"}])
    a3 = ref([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}])
    assert got == [a1, a2, a3, a3]  # /system starts over with it; /reset keeps it


def test_a_chat_answer_ends_at_the_end_of_its_turn(chat_model):
    messages = [{"role": "user", "content": "What is a fox?"}]
    token, expected = early_end(chat_model, messages, 20)
    with turn_ends_after(chat_model, token):
        got, _ = talk(chat_model, ["What is a fox?"], max_new_tokens=20)
    assert got == [expected]


def test_the_oldest_turns_are_dropped_to_fit_and_it_is_said_once(chat_model):
    lines = [f"Tell me about the river, the old stone bridge and the town number {i}" for i in range(5)]
    got, transcript = talk(chat_model, lines)
    assert transcript.count("no longer fits the model's context of 64 tokens") == 1
    turns, dropped, tokenizer = [], 0, tokenizer_of(chat_model)
    for line, answer in zip(lines, got, strict=True):  # the rule: drop the oldest question and answer
        turns.append({"role": "user", "content": line})  # until the prompt leaves 8 tokens for the answer
        while len(render(turns, tokenizer, add_generation_prompt=True)[0]) + 8 > 64:
            del turns[:2]
            dropped += 2
        assert answer == tokenizer.decode(greedy_tokens(chat_model, turns, 8))
        turns.append({"role": "assistant", "content": answer})
    assert dropped >= 4


@pytest.mark.slow  # a CLI process
def test_chat_with_a_chat_checkpoint_in_a_subprocess(chat_checkpoint):
    model = load_any(chat_checkpoint)  # its tokenizer comes back with it
    out = subprocess.run([sys.executable, "-m", "gptforge", "chat", "--checkpoint", str(chat_checkpoint),
                          "--temperature", "0", "--max-new-tokens", "6"],
                         input="Hi\nHi\n", capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("Chat with the model")
    hi = [{"role": "user", "content": "Hi"}]
    a1 = tokenizer_of(model).decode(greedy_tokens(model, hi, 6))
    a2 = tokenizer_of(model).decode(greedy_tokens(model, [*hi, {"role": "assistant", "content": a1}, *hi], 6))
    assert answers(out.stdout) == [a1, a2]


# Ctrl-C at any moment of a chat: it stops the answer being streamed (or about to be), never the chat.

def ctrl_c_when(monkeypatch, owner, name, after: int = 1):
    """Patch owner.name to send this process SIGINT (a Ctrl-C) on its `after`-th call, then go on."""
    real, calls = getattr(owner, name), []

    def patched(*args, **kwargs):
        calls.append(1)
        if len(calls) == after:
            os.kill(os.getpid(), signal.SIGINT)
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, patched)


def test_ctrl_c_while_an_answer_streams_stops_only_that_answer(chat_model, monkeypatch):
    import importlib

    expected, _ = talk(chat_model, ["What is a fox?"], max_new_tokens=20)
    ctrl_c_when(monkeypatch, importlib.import_module("gptforge.generate"), "sample_next", after=3)
    got, transcript = talk(chat_model, ["What is a fox?", "/reset", "What is a fox?"], max_new_tokens=20)
    assert transcript.count(" [stopped]") == 1 and got[0].endswith(" [stopped]")
    assert expected[0].startswith(got[0].removesuffix(" [stopped]")) and len(got[0]) < len(expected[0]) + 10
    assert got[1] == expected[0]  # the chat goes on: the next answer is whole


@pytest.mark.parametrize("moment", ["answered", "prompt"])
def test_a_ctrl_c_between_answers_never_ends_the_chat(chat_model, monkeypatch, moment):
    """A Ctrl-C landing after an answer ended and before the prompt is read again (or while the next
    prompt is rendered) used to escape both of the loop's handlers and end the chat with a traceback."""
    from gptforge.chat import Conversation

    ctrl_c_when(monkeypatch, Conversation, moment, after=1)
    try:
        got, transcript = talk(chat_model, ["Hi", "Hi", "Hi"], max_new_tokens=6)
    except KeyboardInterrupt:
        pytest.fail("the Ctrl-C ended the chat")
    assert len(got) == 3 and transcript.endswith("you> \n")  # the end of input, as ever
    if moment == "prompt":  # pressed after Enter: that answer stops before its first piece
        assert got[0] == " [stopped]"


# Tools: the chat runs the model's calls and feeds the results back (a scripted model stands in).

def tool_model():
    from gptforge.model.vocab import grow_vocabulary
    from gptforge.tokenizer import CHAT_TOKENS, TOOL_TOKENS, gpt2

    from helpers import random_gpt

    tokenizer = gpt2().with_special_tokens(CHAT_TOKENS + TOOL_TOKENS)
    model = grow_vocabulary(random_gpt(0, vocab_size=50257, context_length=512), 50263, tokenizer).eval()
    return model


def scripted_chat(monkeypatch, model, replies, tools="calculator", rounds=5):
    """chat_in_terminal on one question, the model's replies scripted: (transcript, the prompt
    ids each reply was generated from)."""
    from gptforge import chat
    from gptforge.tools.registry import builtin_tools

    prompts, script = [], iter(replies)

    def fake_stream(model, ids, *args, **kwargs):
        prompts.append(list(ids))
        yield next(script)

    monkeypatch.setattr(chat, "stream_text", fake_stream)
    out, lines = io.StringIO(), iter(["What is 123456789 * 987654321?"])

    def read_line(prompt):
        out.write(prompt)
        try:
            return next(lines)
        except StopIteration:
            raise EOFError from None

    settings = chat.ChatSettings(Sampling(64, temperature=0.0), None, builtin_tools(tools), rounds)
    chat.chat_in_terminal(model, settings, read=read_line, out=out)
    return out.getvalue(), prompts


CALL = '<tool_call>\n{"name": "calculator", "arguments": {"expression": "123456789 * 987654321"}}\n</tool_call>'


def test_the_chat_runs_a_call_and_feeds_its_result_back(monkeypatch):
    from gptforge.tokenizer.chat import render
    from gptforge.tools.registry import builtin_tools

    model = tool_model()
    transcript, prompts = scripted_chat(monkeypatch, model, [CALL, "It is 121932631112635269."])
    assert "Tools it may call: calculator." in transcript
    assert '[tool] calculator({"expression": "123456789 * 987654321"}) -> 121932631112635269' in transcript
    assert len(prompts) == 2
    tools = [tool.schema for tool in builtin_tools("calculator")]
    question = {"role": "user", "content": "What is 123456789 * 987654321?"}
    call = {"role": "assistant", "content": "", "tool_calls": [{"id": "c", "type": "function", "function": {
        "name": "calculator", "arguments": {"expression": "123456789 * 987654321"}}}]}
    result = {"role": "tool", "tool_call_id": "c", "content": "121932631112635269"}
    tokenizer = model.tokenizer
    assert prompts[0] == render([question], tokenizer, True, tools)[0]
    assert prompts[1] == render([question, call, result], tokenizer, True, tools)[0]  # the result turn's ids
    assert tokenizer.decode(prompts[1]).endswith(
        "<|im_start|>tool\n<tool_response>\n121932631112635269\n</tool_response><|im_end|>\n<|im_start|>assistant\n")


def test_the_tool_rounds_are_bounded_and_bad_calls_are_not_run(monkeypatch):
    transcript, prompts = scripted_chat(monkeypatch, tool_model(), [CALL] * 3, rounds=2)
    assert len(prompts) == 3 and transcript.count("[tool]") == 2 and "(stopped after 2 rounds of tool calls)" in transcript
    transcript, prompts = scripted_chat(monkeypatch, tool_model(), ['<tool_call>\n{"name": \n</tool_call>'])
    assert len(prompts) == 1 and "[tool]" not in transcript and "(its tool call was not run: a tool call is not JSON" in transcript


def test_tools_need_a_model_with_the_tool_tokens(monkeypatch, chat_model):
    from gptforge.errors import UserError

    with pytest.raises(UserError, match="this model has no tool tokens"):
        scripted_chat(monkeypatch, chat_model, ["x"])
