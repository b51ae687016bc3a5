"""The OpenAI API's shapes: request bodies (checked by pydantic, strictly typed), and the
completion, chunk and error objects the server sends back."""

from __future__ import annotations

import time
import uuid
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ..errors import UserError
from ..generate import check_seed, check_temperature, check_top_p

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


class CompletionRequest(SamplingFields):
    prompt: str | list[str]  # plain text only: token-id prompts could smuggle in special tokens


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class Message(_Strict):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class ChatRequest(SamplingFields):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)


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
    fields = {name for cls in (CompletionRequest, ChatRequest, Message, TextPart, StreamOptions, EmbeddingRequest)
              for name in cls.model_fields}
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

    def complete(self, texts: list[str], reasons: list[str], usage: dict) -> dict:
        choices = [self.choice(i, t, r, chunk=False) for i, (t, r) in enumerate(zip(texts, reasons))]
        return {**self._envelope(False, choices), **self.extra, "usage": usage}

    def chunk(self, choices: list[dict], usage: dict | None = None) -> dict:
        out = self._envelope(True, choices)
        if usage is not None:
            out["usage"] = usage
        return out


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}
