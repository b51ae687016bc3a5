"""The chat template: a conversation as token ids, its turns between special tokens (ChatML):

    <|im_start|>system\\n{content}<|im_end|>\\n<|im_start|>user\\n{content}<|im_end|>\\n
    <|im_start|>assistant\\n{content}<|im_end|>\\n

<|im_start|> and <|im_end|> (CHAT_TOKENS) are special tokens of the vocabulary, never text: roles
and contents are encoded as plain text, so a message that contains "<|im_start|>" cannot open a
turn. A base model's tokenizer lacks them (has_chat_template is False: chat falls back to plain
continuation); fine-tuning adds them. A prompt for the model's answer ends with
"<|im_start|>assistant\\n", and the answer ends at <|im_end|>.

The text between two special tokens ("user\\n{content}", "\\n") is encoded in one piece, as
transformers' apply_chat_template does with CHAT_TEMPLATE_JINJA (the same template, exported with
a chat model), so both give the same ids.
"""

from __future__ import annotations

from .base import CHAT_TOKENS, Tokenizer

ROLES = ("system", "user", "assistant")
IM_START, IM_END = CHAT_TOKENS

# The same template for transformers (tokenizer_config.json's "chat_template").
CHAT_TEMPLATE_JINJA = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# The same template in Go's text/template, for an Ollama Modelfile's TEMPLATE: Ollama always asks for
# the assistant's answer, so the generation prompt comes unconditionally.
CHAT_TEMPLATE_GO = (
    "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}"
    "<|im_start|>assistant\n"
)


def has_chat_template(tokenizer: Tokenizer) -> bool:
    """Whether the tokenizer has the chat template's special tokens."""
    return all(t in tokenizer.special_tokens for t in CHAT_TOKENS)


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


def render(messages: list[dict], tokenizer: Tokenizer, add_generation_prompt: bool = False
           ) -> tuple[list[int], list[bool]]:
    """(ids, loss_mask) of a conversation: loss_mask marks the assistant's content tokens and
    the <|im_end|> that closes each assistant turn (what fine-tuning trains on)."""
    if not has_chat_template(tokenizer):
        raise ValueError(f"the tokenizer {tokenizer.name} has no chat tokens ({', '.join(CHAT_TOKENS)})")
    start, end = tokenizer.special_tokens[IM_START], end_of_turn(tokenizer)
    newline = tokenizer.encode("\n")
    ids: list[int] = []
    mask: list[bool] = []
    for message in messages:
        role, content = message["role"], message["content"]
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r}; roles are {', '.join(ROLES)}")
        header = f"{role}\n"
        body, after_header = encode_marked(tokenizer, header + content, len(header.encode()))
        answer = role == "assistant"
        ids += [start, *body, end, *newline]
        mask += [False, *(answer and m for m in after_header), answer, *[False] * len(newline)]
    if add_generation_prompt:
        prompt = [start, *tokenizer.encode("assistant\n")]
        ids += prompt
        mask += [False] * len(prompt)
    return ids, mask
