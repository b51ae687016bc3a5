"""The chat template: a conversation as token ids, its turns between special tokens (ChatML):

    <|im_start|>system\\n{content}<|im_end|>\\n<|im_start|>user\\n{content}<|im_end|>\\n
    <|im_start|>assistant\\n{content}<|im_end|>\\n

<|im_start|> and <|im_end|> (CHAT_TOKENS) are special tokens of the vocabulary, never text: roles
and contents are encoded as plain text, so a message that contains "<|im_start|>" cannot open a
turn. A base model's tokenizer lacks them (has_chat_template is False: chat falls back to plain
continuation); fine-tuning adds them. A prompt for the model's answer ends with
"<|im_start|>assistant\\n", and the answer ends at <|im_end|>.

Tool calls (Hermes / Qwen2.5 style, what vLLM's `hermes` parser and llama.cpp read): the tools'
JSON schemas go in the system turn, one per line between <tools> and </tools>; an assistant turn
holds its calls after its content, each `<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>`
(several = parallel calls); each result comes back as a `tool` turn holding
`<tool_response>\\n{result}\\n</tool_response>`. The four markers (TOOL_TOKENS) are special tokens
like the chat tokens, so only the template makes them; <tools> stays text: the model never writes
it, and typing it declares nothing (only the caller runs a tool, and only a declared one). A
tokenizer without the tool tokens renders a conversation without tools exactly as before.

The text between two special tokens ("user\\n{content}", "\\n") is encoded in one piece, as
transformers' apply_chat_template does with CHAT_TEMPLATE_JINJA (the same template, exported with
a chat model), so both give the same ids.
"""

from __future__ import annotations

import json

from .base import CHAT_TOKENS, TOOL_TOKENS, Tokenizer

ROLES = ("system", "user", "assistant", "tool")
IM_START, IM_END = CHAT_TOKENS
TOOL_CALL, TOOL_CALL_END, TOOL_RESPONSE, TOOL_RESPONSE_END = TOOL_TOKENS

# The system turn's tool block (our own words; Qwen2.5's layout): the schemas one per line. It never
# names the markers, so it is plain text in every tokenizer.
TOOLS_INTRO = ("# Tools\n\nYou may call one or more functions to answer. Their signatures, one JSON schema "
               "per line:\n<tools>")
TOOLS_OUTRO = ("\n</tools>\n\nTo call a function, answer with a tool call holding one JSON object: the "
               "function's \"name\" and its \"arguments\". Calls that do not depend on each other may follow "
               "one another in the same answer. Each result comes back in a tool turn.")


# The system turn's context block (retrieval): the passages, numbered from [1], most relevant first,
# each under its source. Plain text in every tokenizer, like the tool block.
CONTEXT_INTRO = "# Documents\n\nAnswer from these passages, most relevant first; cite a passage by its number, as [1]."


def _jinja_string(text: str) -> str:
    """`text` as a single-quoted Jinja string literal."""
    return "'" + text.replace("\\", "\\\\").replace("\n", "\\n").replace("'", "\\'") + "'"


# The same template for transformers (tokenizer_config.json's "chat_template") and llama.cpp's
# --jinja (the GGUF's tokenizer.chat_template). `tojson` is Python's json.dumps with
# ensure_ascii=False in both, as tool_json below; arguments given as a JSON string go in as written.
# Retrieved passages come as `documents` ({"source", "text"} each: transformers' apply_chat_template
# passes its documents= argument through).
CHAT_TEMPLATE_JINJA = (
    "{%- if tools or documents %}"
    "{{- '<|im_start|>system\\n' }}"
    "{%- if messages[0]['role'] == 'system' and messages[0]['content'] %}"
    "{{- messages[0]['content'] + '\\n\\n' }}{%- endif %}"
    "{%- if documents %}{{- " + _jinja_string(CONTEXT_INTRO) + " }}"
    "{%- for doc in documents %}"
    "{{- '\\n\\n[' + (loop.index | string) + '] ' + doc['source'] + '\\n' + doc['text'] }}"
    "{%- endfor %}{%- if tools %}{{- '\\n\\n' }}{%- endif %}{%- endif %}"
    "{%- if tools %}"
    "{{- " + _jinja_string(TOOLS_INTRO) + " }}"
    "{%- for tool in tools %}{{- '\\n' + (tool | tojson) }}{%- endfor %}"
    "{{- " + _jinja_string(TOOLS_OUTRO) + " }}"
    "{%- endif %}"
    "{{- '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if (tools or documents) and loop.first and message['role'] == 'system' %}"
    "{%- elif message['role'] == 'tool' %}"
    "{{- '<|im_start|>tool\\n<tool_response>\\n' + message['content'] + '\\n</tool_response><|im_end|>\\n' }}"
    "{%- elif message['role'] == 'assistant' and message['tool_calls'] is defined and message['tool_calls'] %}"
    "{{- '<|im_start|>assistant\\n' + (message['content'] or '') }}"
    "{%- for call in message['tool_calls'] %}"
    "{%- set f = call['function'] if call['function'] is defined else call %}"
    "{%- if message['content'] or not loop.first %}{{- '\\n' }}{%- endif %}"
    "{{- '<tool_call>\\n{\"name\": ' + (f['name'] | tojson) + ', \"arguments\": ' }}"
    "{%- if f['arguments'] is string %}{{- f['arguments'] }}{%- else %}{{- f['arguments'] | tojson }}"
    "{%- endif %}"
    "{{- '}\\n</tool_call>' }}"
    "{%- endfor %}"
    "{{- '<|im_end|>\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

# The same template in Go's text/template, for an Ollama Modelfile's TEMPLATE: Ollama always asks for
# the assistant's answer, so the generation prompt comes unconditionally. It renders no tools: an
# Ollama model made from our GGUF chats, and tools go through llama.cpp's --jinja or our server.
CHAT_TEMPLATE_GO = (
    "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}"
    "<|im_start|>assistant\n"
)


def has_chat_template(tokenizer: Tokenizer) -> bool:
    """Whether the tokenizer has the chat template's special tokens."""
    return all(t in tokenizer.special_tokens for t in CHAT_TOKENS)


def has_tool_tokens(tokenizer: Tokenizer) -> bool:
    """Whether the tokenizer has the tool-call markers (a model that can be fine-tuned to call tools)."""
    return all(t in tokenizer.special_tokens for t in TOOL_TOKENS)


def end_of_turn(tokenizer: Tokenizer) -> int:
    """The id that ends a turn (<|im_end|>): generation stops there."""
    return tokenizer.special_tokens[IM_END]


def encode_marked(tokenizer: Tokenizer, text: str, mark_from: int) -> tuple[list[int], list[bool]]:
    """The ids of `text` (plain text, encoded in one piece), and for each whether it holds any of
    the text's bytes from byte `mark_from` on (a token straddling the mark counts as after it)."""
    ids = tokenizer.encode(text)
    marks, end = [], 0
    for token in ids:
        end += len(tokenizer.token_bytes(token))
        marks.append(end > mark_from)
    return ids, marks


def tool_json(value) -> str:
    """A tool schema or call arguments as the template writes them (Jinja's `tojson`)."""
    return json.dumps(value, ensure_ascii=False)


def tools_text(tools: list[dict]) -> str:
    """The system turn's tool block: the schemas one per line between <tools> and </tools>."""
    return TOOLS_INTRO + "".join("\n" + tool_json(tool) for tool in tools) + TOOLS_OUTRO


def call_text(call: dict) -> str:
    """One call's JSON as it sits between <tool_call> and </tool_call> (OpenAI's {"function":
    {"name", "arguments"}} or the bare {"name", "arguments"}; arguments an object or a JSON string)."""
    function = call.get("function", call)
    arguments = function["arguments"]
    arguments = arguments if isinstance(arguments, str) else tool_json(arguments)
    return f'{{"name": {tool_json(function["name"])}, "arguments": {arguments}}}'


def context_text(context: list[dict]) -> str:
    """The system turn's context block: each passage ({"source", "text"}) numbered, under its source."""
    return CONTEXT_INTRO + "".join(f"\n\n[{n}] {p['source']}\n{p['text']}" for n, p in enumerate(context, 1))


def _system_extra(tools: list[dict] | None, context: list[dict] | None) -> str | None:
    """What the template adds to the system turn: the context block, then the tool block."""
    parts = ([context_text(context)] if context else []) + ([tools_text(tools)] if tools else [])
    return "\n\n".join(parts) or None


# A turn as pieces: a special token's name, or (text, the byte the loss starts at; None: not trained).
Piece = str | tuple[str, int | None]


def _turn_pieces(message: dict, system_extra: str | None) -> list[Piece]:
    role, content = message["role"], message.get("content") or ""
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}; roles are {', '.join(ROLES)}")
    header = f"{role}\n"
    if role == "tool":
        return [IM_START, (header, None), TOOL_RESPONSE, (f"\n{content}\n", None), TOOL_RESPONSE_END,
                IM_END, ("\n", None)]
    if system_extra is not None:
        content = f"{content}\n\n{system_extra}" if content else system_extra
    answer = role == "assistant"
    calls = (message.get("tool_calls") or []) if answer else []
    pieces: list[Piece] = [IM_START, (header + content + ("\n" if content and calls else ""),
                                      len(header.encode()) if answer else None)]
    for i, call in enumerate(calls):
        if i:
            pieces.append(("\n", 0))
        pieces += [TOOL_CALL, (f"\n{call_text(call)}\n", 0), TOOL_CALL_END]
    return pieces + [IM_END, ("\n", None)]


def render(messages: list[dict], tokenizer: Tokenizer, add_generation_prompt: bool = False,
           tools: list[dict] | None = None, context: list[dict] | None = None) -> tuple[list[int], list[bool]]:
    """(ids, loss_mask) of a conversation, with the tools it may call (OpenAI's tool objects) and
    the retrieved passages it may read (`context`: {"source", "text"} dicts, most relevant first,
    rendered as plain text in the system turn): loss_mask marks each assistant turn's content, its
    calls and the <|im_end|> that closes it (what fine-tuning trains on), never a tool's result or
    a passage."""
    if not has_chat_template(tokenizer):
        raise ValueError(f"the tokenizer {tokenizer.name} has no chat tokens ({', '.join(CHAT_TOKENS)})")
    uses_tools = bool(tools) or any(m["role"] == "tool" or m.get("tool_calls") for m in messages)
    if uses_tools and not has_tool_tokens(tokenizer):
        raise ValueError(f"the tokenizer {tokenizer.name} has no tool tokens ({', '.join(TOOL_TOKENS)})")
    turns = list(messages)
    if (tools or context) and not (turns and turns[0]["role"] == "system"):
        turns.insert(0, {"role": "system", "content": ""})
    ids: list[int] = []
    mask: list[bool] = []
    for n, message in enumerate(turns):
        trained = message["role"] == "assistant"
        for piece in _turn_pieces(message, _system_extra(tools, context) if n == 0 else None):
            if isinstance(piece, str):
                ids.append(tokenizer.special_tokens[piece])
                mask.append(trained and piece != IM_START)
            elif piece[1] is None:
                ids += tokenizer.encode(piece[0])
                mask += [False] * (len(ids) - len(mask))
            else:
                body, marks = encode_marked(tokenizer, *piece)
                ids += body
                mask += marks
    if add_generation_prompt:
        prompt = [tokenizer.special_tokens[IM_START], *tokenizer.encode("assistant\n")]
        ids += prompt
        mask += [False] * len(prompt)
    return ids, mask
