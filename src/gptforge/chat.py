"""Talking to a model: chat-template prompts and stop tokens (shared by `gptforge chat` and the
server), a conversation trimmed to fit the context, and the terminal chat loop.

A model whose tokenizer has the chat tokens (tokenizer/chat.py) is a chat model: a conversation is
rendered through its template and an answer ends at <|im_end|>. Any other is a base model: it
continues plain text, and an answer ends at <|endoftext|>.
"""

from __future__ import annotations

import dataclasses
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TextIO

from .errors import UserError
from .generate import prompt_ids, stream_text
from .model import GPT
from .sampling import Sampling
from .tokenizer import tokenizer_of
from .tokenizer.chat import end_of_turn, has_chat_template, has_tool_tokens, render
from .tools.calls import ToolCall, parse_reply
from .tools.registry import Tool, check_unique, run_call


def has_chat(model: GPT) -> bool:
    """Whether `model` has a chat template (its tokenizer knows the chat tokens)."""
    return has_chat_template(tokenizer_of(model))


def chat_prompt(model: GPT, messages: list[dict], tools: list[dict] | None = None,
                context: list[dict] | None = None) -> list[int]:
    """The ids of a conversation (role/content dicts) ending with the assistant's generation prompt,
    with the tools it may call (OpenAI's tool objects) and the passages it may read ({"source",
    "text"}, in the system turn). Contents are plain text: typing a chat token's text never makes
    the token."""
    ids, _ = render(messages, tokenizer_of(model), add_generation_prompt=True, tools=tools, context=context)
    return list(ids)


def fit_passages(model: GPT, messages: list[dict], passages: list[dict], limit: int,
                 tools: list[dict] | None = None) -> tuple[list[int], list[dict]]:
    """(prompt ids, the passages in it): the most relevant passages (a prefix of `passages`, the
    last one cut short where that is enough) whose chat_prompt holds at most `limit` tokens; none
    when even the first would not fit (the caller decides whether the prompt alone fits)."""
    tokenizer = tokenizer_of(model)
    kept = list(passages)
    while True:
        ids = chat_prompt(model, messages, tools, kept or None)
        over = len(ids) - limit
        if over <= 0 or not kept:
            return ids, kept
        text_ids = tokenizer.encode(kept[-1]["text"])
        if len(text_ids) > over + 16:  # a useful part of it still fits: cut it (the rest re-counted next round)
            kept[-1] = {**kept[-1], "text": tokenizer.decode(text_ids[:len(text_ids) - over])}
        else:
            kept.pop()


def stop_ids(model: GPT, chat: bool) -> frozenset[int]:
    """The tokens that end an answer: <|endoftext|>, and <|im_end|> for a chat."""
    tokenizer = tokenizer_of(model)
    if not chat:
        return frozenset({tokenizer.eot_id})
    return frozenset({tokenizer.eot_id, end_of_turn(tokenizer)})



def answer_prompt(model: GPT, messages: list[dict]) -> tuple[list[int], frozenset[int]]:
    """(prompt ids, the ids that end the answer) of a conversation: a chat model's through its
    template (chat_prompt); a base model has none, so it continues the messages' contents as plain
    text, one per line, up to <|endoftext|>."""
    chat = has_chat(model)
    if chat:
        ids = chat_prompt(model, messages)
    else:
        ids = tokenizer_of(model).encode_prompt("\n".join(m["content"] for m in messages))
    return ids, stop_ids(model, chat)


def chat_text(model: GPT, messages: list[dict], max_new_tokens: int, temperature: float = 1.0,
              top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
              use_cache: bool = True) -> Iterator[str]:
    """The model's answer to a conversation ([{"role": "system" | "user" | "assistant",
    "content": ...}, ...], see answer_prompt), yielded as it is produced."""
    ids, stops = answer_prompt(model, messages)
    yield from stream_text(model, ids, Sampling(max_new_tokens, temperature, top_k, top_p, seed, stop_ids=stops),
                           use_cache)

class Conversation:
    """The system prompt, the tools and the turns so far; prompt() renders them with a new user
    message, dropping the oldest exchanges when the whole would not fit the context with
    `answer_room` tokens left for the answer."""

    def __init__(self, model: GPT, system: str | None = None, answer_room: int = 256,
                 tools: list[dict] | None = None, retrieve: Callable[[str], list[dict]] | None = None):
        self.model, self.system, self.tools = model, system, tools or None
        # retrieve: a user message -> the passages for its answer (prompt() calls it each turn)
        self.retrieve, self.passages = retrieve, []
        self.context = model.config.context_length
        self.room = min(answer_room, self.context // 2)
        self.turns: list[dict] = []

    def reset(self) -> None:
        self.turns = []

    def _messages(self) -> list[dict]:
        return ([{"role": "system", "content": self.system}] if self.system else []) + self.turns

    def prompt(self, text: str) -> tuple[list[int], int]:
        """The ids for the conversation followed by user message `text`, and the number of earlier
        messages dropped (for good) to fit. Raises UserError if the message alone does not fit."""
        self.turns.append({"role": "user", "content": text})
        if self.retrieve is not None:
            self.passages = self.retrieve(text)
        try:
            return self.fitting_prompt()
        except UserError:
            self.turns.pop()
            raise

    def fitting_prompt(self) -> tuple[list[int], int]:
        """The ids of the conversation so far, for the assistant's next turn, its oldest exchanges
        dropped to fit (each from a user message up to the next one), and how many messages went."""
        dropped = 0
        while True:
            ids = chat_prompt(self.model, self._messages(), self.tools, self.passages or None)
            later_users = [i for i, t in enumerate(self.turns) if t["role"] == "user" and i > 0]
            if len(ids) + self.room <= self.context or not later_users:
                break
            del self.turns[:later_users[0]]  # the oldest question, its calls, results and answer
            dropped += later_users[0]
        if self.passages and len(ids) + self.room > self.context:  # the passages give way after the history
            ids, self.passages = fit_passages(self.model, self._messages(), self.passages,
                                              self.context - self.room, self.tools)
        if len(ids) >= self.context:
            raise UserError(f"that message is too long: with the system prompt it takes {len(ids)} tokens, "
                            f"and the model's context holds {self.context}")
        return ids, dropped

    def answered(self, text: str, calls: list[ToolCall] = ()) -> list[str]:
        """Record the assistant's turn (its text, its calls); returns the calls' ids."""
        turn: dict = {"role": "assistant", "content": text}
        ids = [f"call_{len(self.turns)}_{i}" for i in range(len(calls))]
        if calls:
            turn["tool_calls"] = [{"id": i, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
                                  for i, c in zip(ids, calls)]
        self.turns.append(turn)
        return ids

    def tool_result(self, call_id: str, result: str) -> None:
        self.turns.append({"role": "tool", "tool_call_id": call_id, "content": result})


@dataclass
class ChatSettings:
    """How `gptforge chat` answers."""

    sampling: Sampling = Sampling(256, temperature=0.7, top_k=50)
    """Longest answer (max_new_tokens), temperature, top-k, top-p; its seed is the first answer's
    (each later answer uses the next one; None: random)."""
    system: str | None = None
    """The system prompt."""
    tools: list[Tool] | None = None
    """The local tools the model may call (chat models with the tool tokens)."""
    max_tool_rounds: int = 5
    """The most rounds of calls (calls, results, the model again) in one answer."""
    retrieve: Callable[[str], list[dict]] | None = None
    """Passages for a message ({"source", "text"}, most relevant first; `--index`): each turn's go
    into its system turn, and their sources are listed after the answer."""


HELP = "commands: /reset (new conversation), /system TEXT (set the system prompt), /exit; Ctrl-C stops an answer"


class CtrlC:
    """Ctrl-C for a whole chat session, through one SIGINT handler installed once (see `installed`).

    At the prompt it raises KeyboardInterrupt, which interrupts read(); at any other moment it only
    sets `pressed`, which the answer's loop checks at each piece it shows. No moment is uncovered:
    swapping handlers (or relying on KeyboardInterrupt landing inside the right `try`) left
    windows, between an answer's end and the next read(), where a Ctrl-C ended the chat."""

    def __init__(self):
        self.pressed = False
        self.reading = False

    def __call__(self, signum, frame) -> None:
        if self.reading:
            self.reading = False  # once: a second Ctrl-C while the first is handled is only noted
            raise KeyboardInterrupt
        self.pressed = True

    @contextmanager
    def installed(self):
        """Handle SIGINT while the block runs (signals reach only the main thread: elsewhere no
        handler is installed and Ctrl-C keeps Python's default)."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = signal.signal(signal.SIGINT, self)
        try:
            yield self
        finally:
            signal.signal(signal.SIGINT, signal.default_int_handler if previous is None else previous)


def chat_in_terminal(model: GPT, settings: ChatSettings, read=input, out: TextIO = sys.stdout) -> None:
    """The terminal conversation: read a line, stream the answer, until /exit or end of input.
    A base model continues each line as plain text instead. Ctrl-C stops the current answer."""
    with CtrlC().installed() as ctrl_c:
        _converse(model, settings, read, out, ctrl_c)


def _read_line(read, ctrl_c: CtrlC) -> str:
    """The next line typed; a Ctrl-C at the prompt raises KeyboardInterrupt. Clears any Ctrl-C
    pressed before (it can only be meant for the answer to this line)."""
    try:
        ctrl_c.reading = True
        return read("you> ")
    finally:
        ctrl_c.reading = False
        ctrl_c.pressed = False


def _converse(model: GPT, settings: ChatSettings, read, out: TextIO, ctrl_c: CtrlC) -> None:
    chat = has_chat(model)
    tools = check_tools_fit(model, settings.tools)
    conversation = Conversation(model, settings.system, settings.sampling.max_new_tokens,
                                [t.schema for t in tools.values()], settings.retrieve)
    if chat:
        out.write(f"Chat with the model ({HELP}).\n")
        if tools:
            out.write(f"Tools it may call: {', '.join(tools)}.\n")
    else:
        out.write("This is a base model without a chat template: plain continuation mode, each line you type "
                  "is continued as text (/exit to leave).\n")
    told_trimmed, turn = False, 0
    while True:
        try:
            line = _read_line(read, ctrl_c)
        except EOFError:
            out.write("\n")
            return
        except KeyboardInterrupt:
            out.write("\n(/exit or Ctrl-D to leave)\n")
            continue
        command, _, argument = line.strip().partition(" ")
        if command == "/exit":
            return
        if command == "/reset":
            conversation.reset()
            out.write("(new conversation)\n")
            continue
        if command == "/system":
            conversation.system = argument.strip() or None
            conversation.reset()
            out.write("(system prompt set; new conversation)\n" if chat else "(no system prompt for a base model)\n")
            continue
        if not line.strip():
            continue
        first = settings.sampling.seed
        sampling = dataclasses.replace(settings.sampling, seed=None if first is None else first + turn)
        turn += 1
        if not chat:
            eos = frozenset({tokenizer_of(model).eot_id})
            _show(stream_text(model, prompt_ids(model, line)[0].tolist(), dataclasses.replace(sampling, stop_ids=eos)),
                  out, ctrl_c)
            continue
        try:
            ids, dropped = conversation.prompt(line)
        except UserError as e:
            out.write(f"({e})\n")
            continue
        if dropped and not told_trimmed:
            out.write(f"(the conversation no longer fits the model's context of {conversation.context} tokens: "
                      "the oldest turns are dropped from now on)\n")
            told_trimmed = True
        answer_with_tools(model, conversation, ids, settings, sampling, tools, out, ctrl_c)
        out.write("".join(f"{line}\n" for line in sources_lines(conversation.passages)))


def sources_lines(passages: list[dict]) -> list[str]:
    """The passages an answer was given, one line each: "[n] source" (their numbers in the prompt)."""
    return [f"[{n}] {p['source']}" for n, p in enumerate(passages, 1)]


def check_tools_fit(model: GPT, tools: list[Tool] | None) -> dict[str, Tool]:
    """The tools by name; refused for a model that cannot call them."""
    if not tools:
        return {}
    if not has_chat(model) or not has_tool_tokens(tokenizer_of(model)):
        raise UserError("this model has no tool tokens (<tool_call> ...): fine-tune a chat model on tool-use "
                        "records first (e.g. --data builtin:tools)")
    return check_unique(tools)


def answer_with_tools(model: GPT, conversation: Conversation, ids: list[int], settings: ChatSettings,
                      sampling: Sampling, tools: dict[str, Tool], out: TextIO, ctrl_c: CtrlC) -> None:
    """Stream the model's answer; while it calls tools (at most settings.max_tool_rounds rounds),
    show and run each call, feed the results back as tool turns and let it go on. An answer
    stopped by Ctrl-C runs none of its calls."""
    for round_ in range(settings.max_tool_rounds + 1):
        budget = min(sampling.max_new_tokens, conversation.context - len(ids))
        pieces = stream_text(model, ids, dataclasses.replace(sampling, max_new_tokens=budget,
                                                             stop_ids=stop_ids(model, chat=True)))
        text = _show(pieces, out, ctrl_c)
        reply = parse_reply(text) if tools and not ctrl_c.pressed else None
        if reply is None or not reply.calls:
            if reply is not None and reply.error:
                out.write(f"(its tool call was not run: {reply.error})\n")
            conversation.answered(text)
            return
        call_ids = conversation.answered(reply.content, reply.calls)
        if round_ == settings.max_tool_rounds:
            out.write(f"(stopped after {settings.max_tool_rounds} rounds of tool calls)\n")
            return
        for call_id, call in zip(call_ids, reply.calls):
            result = run_call(tools, call)
            out.write(f"[tool] {call.name}({call.arguments_json()}) -> {result}\n")
            conversation.tool_result(call_id, result)
        try:
            ids, _ = conversation.fitting_prompt()
        except UserError as e:
            out.write(f"({e})\n")
            return


def _show(pieces: Iterator[str], out: TextIO, ctrl_c: CtrlC) -> str:
    """Write an answer as it streams, until it ends or Ctrl-C is pressed (checked before each
    piece is shown: a piece comes every few tokens). Returns what was written."""
    written = []
    out.write("model> ")
    for piece in pieces:
        if ctrl_c.pressed:
            break
        out.write(piece)
        out.flush()
        written.append(piece)
    if ctrl_c.pressed:
        out.write(" [stopped]")
    out.write("\n")
    out.flush()
    return "".join(written)
