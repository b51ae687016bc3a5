"""The OpenAI API's shapes: request bodies (checked by pydantic, strictly typed), and the
completion, chunk and error objects the server sends back, tool calls included (a reply's
`<tool_call>` blocks as `message.tool_calls`, or streamed as `delta.tool_calls`)."""

from __future__ import annotations

import time
import uuid
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ..data.tool_records import check_tool_answer, check_tool_calls, check_tools
from ..errors import UserError
from ..generate import check_seed, check_temperature, check_top_p
from ..tools.calls import CALL_CLOSE, CALL_OPEN, parse_reply

MAX_STOP_STRINGS = 4  # as OpenAI
MAX_STOP_CHARS = 1000  # far longer than any stop sequence in use, and the check stays cheap
MAX_CHOICES = 16


class ApiError(Exception):
    """An OpenAI-style error: the HTTP status and the body's "error" object. `details` are extra
    fields of that object (OpenAI's clients ignore them), for clients that act on the error."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None, headers: dict | None = None,
                 details: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers, self.details = headers or {}, details or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code,
                          **self.details}}


class _Strict(BaseModel):
    # Strict: "5" is not an int and 1 is not a bool, as in OpenAI's API. Unknown fields (user,
    # logit_bias, ...) are ignored rather than refused, so existing clients keep working.
    model_config = ConfigDict(strict=True, extra="ignore")


class StreamOptions(_Strict):
    include_usage: bool = False
    """Send a last chunk with the usage (and no choices) before [DONE]."""


class SamplingFields(_Strict):
    """The fields both endpoints share."""

    model: str
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    top_k: int | None = Field(None, ge=0)  # an extension; 0 or null: off
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int | None = Field(None, ge=1, le=MAX_CHOICES)
    stream: bool | None = None
    stream_options: StreamOptions | None = None

    # generate.py holds the rule for each (the CLI checks its flags with the same functions)
    @field_validator("temperature")
    @classmethod
    def _temperature(cls, value):
        return _checked(check_temperature, value, "temperature")

    @field_validator("top_p")
    @classmethod
    def _top_p(cls, value):
        return _checked(check_top_p, value, "top_p")

    @field_validator("seed")
    @classmethod
    def _seed(cls, value):
        return _checked(check_seed, value, "seed")

    @field_validator("stop")
    @classmethod
    def _stop(cls, value):
        stops = [value] if isinstance(value, str) else list(value or [])
        if len(stops) > MAX_STOP_STRINGS:
            raise ValueError(f"at most {MAX_STOP_STRINGS} stop strings, got {len(stops)}")
        if any(len(s) > MAX_STOP_CHARS for s in stops):
            raise ValueError(f"each stop string must be at most {MAX_STOP_CHARS} characters, "
                             f"got {max(len(s) for s in stops)}")
        return value

    def stop_strings(self) -> list[str]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return [s for s in stops if s]


def _checked(check, value, name: str):
    """Run one of generate.py's checks as a pydantic validator (None: not given)."""
    if value is not None:
        try:
            check(value, name)
        except UserError as e:
            raise ValueError(str(e)) from None
    return value


class JsonSchemaFormat(_Strict):
    name: str = Field(min_length=1, max_length=64)
    description: str | None = None
    schema_: dict | None = Field(None, alias="schema")  # `schema` would shadow pydantic's method
    strict: bool | None = None


class ResponseFormat(_Strict):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    def schema(self) -> dict | None:
        """The JSON schema the content must validate against ({"type": "object"} for json_object),
        or None for free text."""
        if self.type == "text":
            return None
        if self.type == "json_object":
            return {"type": "object"}
        if self.json_schema is None:
            raise ApiError(400, "response_format of type 'json_schema' needs a 'json_schema' object",
                           param="response_format.json_schema")
        return self.json_schema.schema_ or {}


class StructuredFields(SamplingFields):
    response_format: ResponseFormat | None = None
    """JSON output (an extension on /v1/completions): decoding keeps to the schema."""


class CompletionRequest(StructuredFields):
    prompt: str | list[str]  # plain text only: token-id prompts could smuggle in special tokens


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class CalledFunction(_Strict):
    name: str
    arguments: str  # a JSON object, as text


class ToolCallItem(_Strict):
    id: str
    type: Literal["function"]
    function: CalledFunction


class Message(_Strict):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None  # None only for an assistant turn of tool calls
    tool_calls: list[ToolCallItem] | None = None
    tool_call_id: str | None = None

    def text(self) -> str | None:
        return self.content if not isinstance(self.content, list) else "".join(p.text for p in self.content)


class FunctionDef(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")  # OpenAI's rule for a function's name
    description: str | None = None
    parameters: dict | None = None  # a JSON schema object; None: no arguments
    strict: bool | None = None  # calls always keep to the schema here


class ToolDef(_Strict):
    type: Literal["function"]
    function: FunctionDef


class FunctionName(_Strict):
    name: str


class NamedToolChoice(_Strict):
    type: Literal["function"]
    function: FunctionName


class ChatRequest(StructuredFields):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    tools: list[ToolDef] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None

    def tool_list(self) -> list[dict] | None:
        """The declared tools as OpenAI's dicts (checked: distinct names, parameters an object
        schema), or None."""
        if not self.tools:
            if self.tool_choice is not None and self.tool_choice != "none":
                raise ApiError(400, "tool_choice needs tools: declare them in 'tools'", param="tool_choice")
            return None
        tools = [t.model_dump(exclude_none=True) for t in self.tools]
        try:
            check_tools(tools, "invalid 'tools'")
        except UserError as e:
            raise ApiError(400, str(e), param="tools") from None
        named = self.tool_choice.function.name if isinstance(self.tool_choice, NamedToolChoice) else None
        if named is not None and named not in {t["function"]["name"] for t in tools}:
            raise ApiError(400, f"tool_choice names the function {named!r}, which 'tools' do not declare",
                           param="tool_choice")
        return tools

    def conversation(self, tools: list[dict] | None) -> list[dict]:
        """The messages as the chat template takes them ("developer" is "system"), each tool call
        to a declared tool (to any, when none is declared: a client may drop its tools for the
        final answer) with JSON-object arguments, and each tool message answering a call of the
        assistant turn before it."""
        names = {t["function"]["name"] for t in tools or []}
        out, pending = [], {}
        for i, m in enumerate(self.messages):
            where = f"messages[{i}]"
            turn = {"role": "system" if m.role == "developer" else m.role, "content": m.text()}
            try:
                if m.tool_calls and m.role == "assistant":
                    calls = [c.model_dump() for c in m.tool_calls]
                    turn["tool_calls"] = check_tool_calls(calls, names or {c.function.name for c in m.tool_calls},
                                                          f"invalid '{where}.tool_calls'")
                    pending = {c["id"]: c["function"]["name"] for c in turn["tool_calls"]}
                elif m.role == "tool":
                    check_tool_answer({"tool_call_id": m.tool_call_id}, pending, f"invalid '{where}'")
            except UserError as e:
                raise ApiError(400, str(e), param=where) from None
            if turn["content"] is None and "tool_calls" not in turn:
                raise ApiError(400, f"missing required field '{where}.content'", param=f"{where}.content")
            out.append(turn)
        return out

    def tool_mode(self) -> tuple[str, str | None]:
        """(tool_choice: "none", "auto" or "required"; the one function named, or None)."""
        if isinstance(self.tool_choice, NamedToolChoice):
            return "required", self.tool_choice.function.name
        return self.tool_choice or "auto", None


class EmbeddingRequest(_Strict):
    """/v1/embeddings: texts (plain text, never special tokens) or token ids to embed."""

    model: str
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] = "float"


def parse(cls: type[_Strict], body: bytes) -> _Strict:
    """The request object, or an ApiError(400) naming the first problem and its field."""
    try:
        return cls.model_validate_json(body)
    except ValidationError as e:
        error = e.errors(include_url=False)[0]
        if error["type"] == "json_invalid":
            raise ApiError(400, f"the request body is not valid JSON: {error['msg']}") from None
        param = _param(error["loc"])
        if error["type"] == "missing":
            raise ApiError(400, f"missing required field '{param}'", param=param) from None
        if error["type"] == "model_type":
            if param is None:
                raise ApiError(400, "the request body must be a JSON object") from None
            raise ApiError(400, f"invalid '{param}': must be a JSON object", param=param) from None
        message = str(error["ctx"]["error"]) if error["type"] == "value_error" else error["msg"]
        raise ApiError(400, f"invalid '{param}': {message}", param=param) from None


def _param(loc: tuple) -> str | None:
    """A field's path as OpenAI writes it ("messages[0].content"), without the union-member tags
    ("str", "list[str]") pydantic adds to the location."""
    fields = {name for cls in (CompletionRequest, ChatRequest, Message, TextPart, StreamOptions, ResponseFormat,
                               ToolCallItem, CalledFunction, ToolDef, FunctionDef, NamedToolChoice, EmbeddingRequest)
              for name in cls.model_fields} | {"schema"}
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part in fields:
            path += ("." if path else "") + part
    return path or None


class Reply:
    """The envelope of one response: its id, creation time and model, and the objects built on
    them (OpenAI's completion, chat.completion and their streamed chunks)."""

    def __init__(self, model: str, chat: bool):
        self.model, self.chat = model, chat
        self.extra: dict = {}  # fields beside the choices (e.g. "sources"): in the completion and the first chunk
        self.id = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        self.created = int(time.time())

    def _envelope(self, chunk: bool, choices: list[dict]) -> dict:
        kind = ("chat.completion" if self.chat else "text_completion") + (".chunk" if chunk and self.chat else "")
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model, "choices": choices}

    def choice(self, index: int, text: str, finish_reason: str | None, chunk: bool, first: bool = False) -> dict:
        if not self.chat:
            return {"index": index, "text": text, "logprobs": None, "finish_reason": finish_reason}
        if chunk:
            delta = {"role": "assistant", "content": text} if first else ({"content": text} if text else {})
            return {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        return {"index": index, "message": {"role": "assistant", "content": text}, "logprobs": None,
                "finish_reason": finish_reason}

    def call_choice(self, index: int, text: str, finish_reason: str) -> dict:
        """A chat choice whose text may hold tool calls: those as `message.tool_calls` (content the
        text before them, null if none), finishing with "tool_calls" when the reply ended there."""
        reply = parse_reply(text)
        if not reply.calls:
            return self.choice(index, text, finish_reason, chunk=False)
        message = {"role": "assistant", "content": reply.content or None, "tool_calls": call_items(reply.calls)}
        return {"index": index, "message": message, "logprobs": None,
                "finish_reason": "tool_calls" if finish_reason == "stop" else finish_reason}

    def complete(self, texts: list[str], reasons: list[str], usage: dict, tools: bool = False) -> dict:
        """The whole response; with `tools`, each choice's calls are read out of its text."""
        choices = [self.call_choice(i, t, r) if tools else self.choice(i, t, r, chunk=False)
                   for i, (t, r) in enumerate(zip(texts, reasons))]
        return {**self._envelope(False, choices), **self.extra, "usage": usage}

    def delta(self, index: int, delta: dict, finish_reason: str | None = None) -> dict:
        return {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish_reason}

    def chunk(self, choices: list[dict], usage: dict | None = None) -> dict:
        out = self._envelope(True, choices)
        if usage is not None:
            out["usage"] = usage
        return out


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def call_items(calls) -> list[dict]:
    """tools/calls.py's ToolCalls as OpenAI's tool_calls, each with a new id."""
    return [{"id": "call_" + uuid.uuid4().hex[:24], "type": "function",
             "function": {"name": c.name, "arguments": c.arguments_json()}} for c in calls]


class CallDeltas:
    """One streamed chat choice with tools: its text in, OpenAI's deltas out. Content goes out as
    it comes, but for an end that could begin a call (held back until it is known); each call
    goes out once its </tool_call> is in, read by tools/calls.py's parse_reply: a delta with its
    index, id, type and name, then one with its arguments. Text whose calls do not read goes out
    as content at the end; so a reply whose last call max_tokens cut has its earlier calls sent as
    calls here, where the whole response (parse_reply on the whole text) gives it all as content."""

    def __init__(self):
        self.text = ""
        self.sent = 0  # characters of text sent, as content or as calls
        self.calls = 0  # calls sent
        self.closed = 0  # </tool_call> seen

    def push(self, piece: str) -> list[dict]:
        self.text += piece
        if CALL_OPEN not in self.text:
            held = max(_held_back(self.text, marker) for marker in ("\n" + CALL_OPEN, CALL_OPEN))
            return self._content_upto(len(self.text) - held)
        if self.text.count(CALL_CLOSE) == self.closed:
            return []
        self.closed = self.text.count(CALL_CLOSE)
        return self._read(self.text[:self.text.rindex(CALL_CLOSE) + len(CALL_CLOSE)])

    def finish(self) -> list[dict]:
        """The deltas of what is left, once the text is complete."""
        if parse_reply(self.text).calls:
            return self._read(self.text)
        return self._content_upto(len(self.text))

    def _read(self, text: str) -> list[dict]:
        """The deltas of `text` (the start of the whole, up to the end of a call) not sent yet:
        the rest of its content and its new calls; none while its calls do not read."""
        reply = parse_reply(text)
        if reply.error:
            return []
        deltas = self._content_upto(len(reply.content))  # the content is the start of the text
        for k, item in enumerate(call_items(reply.calls[self.calls:]), start=self.calls):
            function = item["function"]
            deltas.append({"tool_calls": [{"index": k, "id": item["id"], "type": "function",
                                           "function": {"name": function["name"], "arguments": ""}}]})
            deltas.append({"tool_calls": [{"index": k, "function": {"arguments": function["arguments"]}}]})
        self.calls, self.sent = len(reply.calls), len(text)
        return deltas

    def _content_upto(self, end: int) -> list[dict]:
        text = self.text[self.sent:end]
        self.sent = max(self.sent, end)
        return [{"content": text}] if text else []


def _held_back(text: str, marker: str) -> int:
    """How many characters at the end of `text` could begin `marker`."""
    for n in range(min(len(marker), len(text)), 0, -1):
        if marker.startswith(text[-n:]):
            return n
    return 0
