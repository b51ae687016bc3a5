"""The HTTP side of `gptforge serve`: OpenAI-compatible routes over the engine, the web chat page at
`/`, and `serve()`, which runs it all under uvicorn.

Every request is checked before it reaches the engine; a bad one gets an OpenAI-style JSON error
with the right status and changes nothing. Prompts are plain text (never token ids, so a special
token cannot be smuggled in), and no request names a file, a model path or code to run.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources

import anyio
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from ..chat import chat_prompt, has_chat, stop_ids
from ..errors import UserError
from ..generate import TextPieces, token_bytes_of
from ..model import GPT
from ..tokenizer import tokenizer_of
from ..tools.structured import Grammar, compile_grammar, grammar_text, require
from .embeddings import embeddings as embeddings_response
from .engine import Engine, QueueFull, Sampling, Sequence
from .protocol import (
    ApiError,
    CallDeltas,
    ChatRequest,
    CompletionRequest,
    Reply,
    ResponseFormat,
    SamplingFields,
    parse,
    usage,
)

MAX_BODY_BYTES = 1 << 20  # far more text than any context we serve holds
DEFAULT_COMPLETION_TOKENS = 16  # OpenAI's default max_tokens for /v1/completions
HEADER_TIMEOUT_S = 10.0  # from connecting (or the previous response) to a request's complete headers
BODY_TIMEOUT_S = 30.0  # for its body, once the headers are in


class Service:
    """What the routes share: the model and its name, the engine, the API key (None: open)."""

    def __init__(self, model: GPT, name: str, api_key: str | None = None, max_batch: int = 8,
                 max_queue: int = 64, retrieve: Callable[[str], list[dict]] | None = None,
                 engine_thread: bool = True):
        self.model, self.name, self.api_key = model, name, api_key
        self.retrieve = retrieve  # a chat request's last user message -> passages for its prompt (--index)
        self.engine = Engine(model, max_batch=max_batch, max_queue=max_queue)
        # the app's startup starts the engine in a thread of its own, unless its owner runs it (serve())
        self.engine_thread = engine_thread
        self.context = model.config.context_length
        self.chat = has_chat(model)
        self.token_bytes = token_bytes_of(model)
        self.created = int(time.time())

    def card(self) -> dict:
        """The model as /v1/models lists it (context_length and chat are extensions)."""
        return {"id": self.name, "object": "model", "created": self.created, "owned_by": "gptforge",
                "context_length": self.context, "chat": self.chat}

    def authorize(self, request: Request) -> None:
        if self.api_key is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), self.api_key.encode()):
            raise ApiError(401, "missing or wrong API key: send the header 'Authorization: Bearer KEY'",
                           code="invalid_api_key")

    def check_fits_queue(self, prompts: int, n: int) -> None:
        """A request of more sequences than the queue holds could never run: 400, not a 503 that
        tells the client to retry."""
        if prompts * n > self.engine.max_queue:
            raise ApiError(400, f"{prompts} prompt{'s' if prompts > 1 else ''} x n={n} is {prompts * n} sequences; "
                                f"this server queues at most {self.engine.max_queue} at once",
                           param="n" if n > 1 else "prompt")

    def check_model(self, name: str) -> None:
        if name != self.name:
            raise ApiError(404, f"the model '{name}' does not exist; this server has '{self.name}'",
                           param="model", code="model_not_found")

    def budget(self, prompt_tokens: int, requested: int | None, default: int | None,
               fields: tuple[str, str] = ("prompt", "max_tokens")) -> int:
        """max_tokens for a prompt: the request's, else the default, else the rest of the context.
        `fields` name the prompt and the limit in the errors."""
        # how many tokens the prompt has, against the context: the web page trims its conversation by them
        sizes = {"context_length": self.context, "prompt_tokens": prompt_tokens}
        if prompt_tokens >= self.context:
            raise ApiError(400, f"the prompt has {prompt_tokens} tokens; this model's context is "
                                f"{self.context} tokens, with room needed for the answer", param=fields[0],
                           code="context_length_exceeded", details=sizes)
        room = self.context - prompt_tokens
        if requested is not None and requested > room:
            raise ApiError(400, f"{fields[1]} ({requested}) plus the prompt ({prompt_tokens} tokens) exceeds "
                                f"this model's context of {self.context} tokens (at most {room} here)",
                           param=fields[1], code="context_length_exceeded", details=sizes)
        return requested if requested is not None else min(default or room, room)

    def grammar(self, response_format: ResponseFormat | None, tools: list[dict] | None = None,
                tool_mode: tuple[str, str | None] = ("auto", None), parallel: bool = True) -> Grammar | None:
        """What a reply must keep to (tools/structured.py): JSON per the response_format, calls to
        the tools as tool_mode says; None when neither is asked for."""
        schema = response_format.schema() if response_format is not None else None
        if schema is None and not tools:
            return None
        try:
            require()
        except UserError as e:
            raise ApiError(400, str(e), param="tools" if tools else "response_format") from None
        tokenizer = tokenizer_of(self.model)
        if schema is not None:  # the JSON alone first, so that an error in its schema is named as such
            grammar = self._compiled(grammar_text(tokenizer, json_schema=schema, json_content=True), "response_format")
        if tools:
            text = grammar_text(tokenizer, tools, *tool_mode, parallel, schema, json_content=schema is not None)
            try:
                grammar = self._compiled(text, "tools")
            except ApiError:  # name the tool whose schema it is
                for i, tool in enumerate(tools):
                    self._compiled(grammar_text(tokenizer, json_schema=tool["function"].get("parameters"),
                                                json_content=True), f"tools[{i}].function.parameters")
                raise
        return grammar

    def _compiled(self, text: str, param: str) -> Grammar:
        try:
            return compile_grammar(tokenizer_of(self.model), text, self.model.config.vocab_size)
        except ValueError as e:  # a schema it cannot enforce
            raise ApiError(400, f"invalid '{param}': {e}", param=param) from None


@dataclass
class Prepared:
    """A request checked and tokenized, ready to become a Run."""

    request: SamplingFields
    prompts: list[list[int]]
    budgets: list[int]  # max_tokens of each prompt
    stops: frozenset[int]  # token ids that end an answer
    grammar: Grammar | None = None  # what every answer keeps to
    tools: bool = False  # answers may hold tool calls
    extra: dict = field(default_factory=dict)  # fields the response carries beside its choices

    def run(self, service: Service) -> Run:
        return Run(service, self.prompts, self.request, self.budgets, self.stops, self.grammar, self.tools)


class Run:
    """One request's sequences (n per prompt) in the engine, and their text as it becomes final."""

    def __init__(self, service: Service, prompts: list[list[int]], fields: SamplingFields,
                 max_tokens: list[int], stops: frozenset[int], grammar: Grammar | None = None, tools: bool = False):
        self.service, self.prompts, self.tools = service, prompts, tools
        self.events: asyncio.Queue = asyncio.Queue()
        self.stop_strings = fields.stop_strings()
        loop = asyncio.get_running_loop()
        n = fields.n or 1
        self.sequences = []
        for p, ids in enumerate(prompts):
            for j in range(n):  # choice j's seed is seed + j, wrapped into torch's range (same generator)
                sampling = Sampling(max_new_tokens=max_tokens[p], temperature=_or(fields.temperature, 1.0),
                                    top_k=fields.top_k or None, top_p=fields.top_p,
                                    seed=None if fields.seed is None else (fields.seed + j) % 2**64,
                                    stop_ids=stops)
                constraint = grammar.constraint(stops) if grammar is not None else None
                self.sequences.append(Sequence(ids, sampling, self._emitter(loop, len(self.sequences)), constraint))
        self.tokens = [0] * len(self.sequences)

    def _emitter(self, loop: asyncio.AbstractEventLoop, index: int):
        def emit(token, reason):  # runs in the engine's thread
            try:
                loop.call_soon_threadsafe(self.events.put_nowait, (index, token, reason))
            except RuntimeError:  # the event loop is gone (shutting down): nobody is listening
                pass
        return emit

    def submit(self) -> None:
        try:
            self.service.engine.submit(self.sequences)
        except QueueFull as e:
            raise ApiError(503, f"the server is busy: {e}; retry shortly", type="server_error",
                           code="server_overloaded", headers={"Retry-After": "1"}) from None
        except UserError as e:
            raise ApiError(400, str(e)) from None

    def cancel(self) -> None:
        self.service.engine.cancel(self.sequences)

    async def updates(self):
        """Yield (choice index, new text, finish reason or None) as the text becomes final."""
        pieces: list[TextPieces | None] = [TextPieces(self.service.token_bytes, self.stop_strings)
                                           for _ in self.sequences]
        while any(p is not None for p in pieces):
            index, token, reason = await self.events.get()
            text = pieces[index]
            if text is None:  # closed by a stop string; this is its cancellation arriving
                continue
            if token is not None:
                self.tokens[index] += 1
                piece = text.push(token)  # on the loop, but cheap: linear in the token's text (TextPieces)
                if text.stopped:
                    pieces[index] = None
                    self.service.engine.cancel([self.sequences[index]])
                    yield index, piece, "stop"
                elif piece:
                    yield index, piece, None
                continue
            pieces[index] = None
            if reason == "error":
                raise ApiError(500, "internal error while generating", type="server_error")
            if reason == "cancelled":
                raise ApiError(503, "the server is shutting down", type="server_error")
            yield index, text.finish(), reason

    def usage(self) -> dict:
        return usage(sum(len(p) for p in self.prompts), sum(self.tokens))


def _or(value, default):
    return default if value is None else value


class EventStream(StreamingResponse):
    """Server-sent events that notice a client leaving at once (not at the next write): the
    stream is cancelled, and with it the request's sequences."""

    media_type = "text/event-stream"

    async def __call__(self, scope, receive, send) -> None:
        async with anyio.create_task_group() as group:
            async def respond():
                await self.stream_response(send)
                group.cancel_scope.cancel()
            group.start_soon(respond)
            await self.listen_for_disconnect(receive)
            group.cancel_scope.cancel()


async def _body(request: Request) -> bytes:
    """The request's body; a client that takes longer than BODY_TIMEOUT_S to send it gets 408."""
    try:
        return await asyncio.wait_for(request.body(), BODY_TIMEOUT_S)
    except asyncio.TimeoutError:
        raise ApiError(408, f"the request body did not arrive within {BODY_TIMEOUT_S} s", code="timeout") from None


def _sse(obj) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


async def _stream(run: Run, reply: Reply, include_usage: bool):
    try:
        if reply.chat:  # OpenAI opens each chat choice with its role
            yield _sse({**reply.chunk([reply.choice(i, "", None, chunk=True, first=True)
                                       for i in range(len(run.sequences))]), **reply.extra})
        calls = [CallDeltas() for _ in run.sequences] if run.tools else None
        try:
            async for index, text, reason in run.updates():
                if calls is not None:
                    for chunk in _call_chunks(reply, index, calls[index], text, reason):
                        yield _sse(chunk)
                elif text or reason:
                    yield _sse(reply.chunk([reply.choice(index, text, reason, chunk=True)]))
        except ApiError as e:
            yield _sse(e.body())
        else:
            if include_usage:
                yield _sse(reply.chunk([], usage=run.usage()))
        yield "data: [DONE]\n\n"
    finally:
        run.cancel()


def _call_chunks(reply: Reply, index: int, calls: CallDeltas, text: str, reason: str | None) -> list[dict]:
    """The chunks of one choice's new text when it may hold tool calls: its deltas, then at the
    end an empty delta with the finish reason ("tool_calls" for a reply that ended on its calls)."""
    deltas = calls.push(text) + (calls.finish() if reason else [])
    chunks = [reply.chunk([reply.delta(index, delta)]) for delta in deltas]
    if reason:
        reason = "tool_calls" if reason == "stop" and calls.calls else reason
        chunks.append(reply.chunk([reply.delta(index, {}, reason)]))
    return chunks


async def _until_disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _respond(request: Request, run: Run, reply: Reply, fields: SamplingFields):
    run.submit()
    if fields.stream:
        return EventStream(_stream(run, reply, bool(fields.stream_options and fields.stream_options.include_usage)),
                           headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    texts, reasons = [""] * len(run.sequences), [""] * len(run.sequences)

    async def collect():
        async for index, text, reason in run.updates():
            texts[index] += text
            reasons[index] = reason or reasons[index]

    work, gone = asyncio.ensure_future(collect()), asyncio.ensure_future(_until_disconnected(request))
    try:
        await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        if not work.done():  # the client left (or the server is stopping): free its rows
            work.cancel()
            run.cancel()
    if work.cancelled():
        return Response(status_code=499)  # nobody is there to read it
    work.result()  # raises the ApiError the generation ended with, if any
    return JSONResponse(reply.complete(texts, reasons, run.usage(), tools=run.tools))


def build_app(service: Service) -> Starlette:
    """The ASGI application: routes, error handlers, the body-size limit, the engine's lifetime."""

    # Parsing, validating and tokenizing a body of up to 1 MB is CPU work: it runs in a worker
    # thread, so the event loop (every stream, /health) never waits for it.
    def prepare_completion(body: bytes) -> Prepared:
        req = parse(CompletionRequest, body)
        service.check_model(req.model)
        texts = [req.prompt] if isinstance(req.prompt, str) else req.prompt
        if not texts:
            raise ApiError(400, "prompt must not be an empty list", param="prompt")
        service.check_fits_queue(len(texts), req.n or 1)
        tokenizer = tokenizer_of(service.model)
        prompts = [tokenizer.encode_prompt(t) for t in texts]
        budgets = [service.budget(len(p), req.max_tokens, DEFAULT_COMPLETION_TOKENS) for p in prompts]
        return Prepared(req, prompts, budgets, stop_ids(service.model, chat=False),
                        service.grammar(req.response_format))

    def prepare_chat(body: bytes) -> Prepared:
        req = parse(ChatRequest, body)
        service.check_model(req.model)
        if not service.chat:
            raise ApiError(400, f"'{service.name}' is a base model without a chat template: use /v1/completions",
                           param="messages")
        service.check_fits_queue(1, req.n or 1)
        tools = req.tool_list()
        messages = req.conversation(tools)
        extra = {}
        try:
            if service.retrieve is not None:
                prompt, extra = _retrieved_prompt(service, messages, req, tools)
            else:
                prompt = chat_prompt(service.model, messages, tools)
        except ValueError as e:  # a model not fine-tuned for tools: its tokenizer has no tool tokens
            raise ApiError(400, f"'{service.name}' cannot take tools: {e}",
                           param="tools" if tools else "messages") from None
        field = "max_completion_tokens" if req.max_completion_tokens is not None else "max_tokens"
        budget = service.budget(len(prompt), getattr(req, field), None, ("messages", field))
        grammar = service.grammar(req.response_format, tools, req.tool_mode(), req.parallel_tool_calls is not False)
        return Prepared(req, [prompt], [budget], stop_ids(service.model, chat=True), grammar, bool(tools), extra)

    async def completions(request: Request):
        service.authorize(request)
        ready = await anyio.to_thread.run_sync(prepare_completion, await _body(request))
        return await _respond(request, ready.run(service), Reply(service.name, chat=False), ready.request)

    async def chat_completions(request: Request):
        service.authorize(request)
        ready = await anyio.to_thread.run_sync(prepare_chat, await _body(request))
        reply = Reply(service.name, chat=True)
        reply.extra = ready.extra
        return await _respond(request, ready.run(service), reply, ready.request)

    async def embeddings(request: Request):
        service.authorize(request)
        body = await _body(request)
        return JSONResponse(await anyio.to_thread.run_sync(embeddings_response, service, body))

    async def models(request: Request):
        service.authorize(request)
        return JSONResponse({"object": "list", "data": [service.card()]})

    async def model(request: Request):
        service.authorize(request)
        service.check_model(request.path_params["name"])
        return JSONResponse(service.card())

    async def health(request: Request):  # open to all: with a key required, it does not name the model
        named = {"model": service.name} if service.api_key is None else {}
        return JSONResponse({"status": "ok", **named, **service.engine.load()})

    async def page(request: Request):
        return HTMLResponse(resources.files("gptforge.serve").joinpath("static/chat.html").read_text("utf-8"))

    @contextlib.asynccontextmanager
    async def lifespan(app):
        if service.engine_thread:
            service.engine.start()
        try:
            yield
        finally:
            service.engine.stop()

    routes = [Route("/", page), Route("/health", health), Route("/v1/models", models),
              Route("/v1/models/{name:path}", model),
              Route("/v1/completions", completions, methods=["POST"]),
              Route("/v1/chat/completions", chat_completions, methods=["POST"]),
              Route("/v1/embeddings", embeddings, methods=["POST"])]
    handlers = {ApiError: _api_error, HTTPException: _http_error, Exception: _internal_error}
    app = Starlette(routes=routes, exception_handlers=handlers, lifespan=lifespan)
    return Guard(BodyLimit(app, MAX_BODY_BYTES), check_host=service.api_key is None)


def _retrieved_prompt(service: Service, messages: list[dict], req: ChatRequest,
                      tools: list[dict] | None) -> tuple[list[int], dict]:
    """(prompt ids, {"sources": ...}) of a chat request on a server with an index: the last user
    message's passages in the system turn, trimmed to leave room for the answer (the request's
    max_tokens, else a quarter of the context)."""
    from ..chat import fit_passages
    from ..retrieval.passages import sources

    question = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "") or ""
    try:
        passages = service.retrieve(question) if question.strip() else []
    except UserError as e:  # the index went missing or broke while serving
        raise ApiError(500, f"the index could not be searched: {e}", type="server_error") from None
    room = req.max_completion_tokens or req.max_tokens or service.context // 4
    prompt, passages = fit_passages(service.model, messages, passages, service.context - room, tools)
    return prompt, {"sources": sources(passages)}


def _error_response(error: ApiError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers)


async def _api_error(request, exc: ApiError):
    return _error_response(exc)


async def _http_error(request, exc: HTTPException):
    kind = "not_found" if exc.status_code == 404 else None
    return _error_response(ApiError(exc.status_code, f"{exc.detail}: {request.method} {request.url.path}",
                                    code=kind, headers=exc.headers))


async def _internal_error(request, exc: Exception):
    return _error_response(ApiError(500, "internal server error", type="server_error"))


class Guard:
    """ASGI middleware against other sites' pages in the user's browser. Without an API key, a
    request must name this machine in its Host header (localhost or an IP address): a DNS-rebinding
    page reaches 127.0.0.1 under its own host name, which is refused. And a POST must say its body
    is JSON, which no cross-site form can (forms send urlencoded, multipart or text/plain, and a
    script on another origin that sets application/json needs a CORS preflight, never granted)."""

    def __init__(self, app, check_host: bool):
        self.app, self.check_host = app, check_host

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            headers = dict(scope["headers"])
            error = None
            if self.check_host and not _is_local_name(headers.get(b"host", b"localhost").decode("latin-1")):
                error = ApiError(400, "the Host header names another server: this one, without an API key, "
                                      "answers only requests to localhost or its IP address", code="invalid_host")
            elif scope["method"] == "POST" and _media_type(headers.get(b"content-type", b"")) != "application/json":
                error = ApiError(415, "send the body as JSON, with the header 'Content-Type: application/json'",
                                 code="unsupported_media_type")
            if error is not None:
                return await _error_response(error)(scope, receive, send)
        await self.app(scope, receive, send)


def _media_type(content_type: bytes) -> str:
    return content_type.decode("latin-1").partition(";")[0].strip().lower()


def _host_name(host: str) -> str:
    """The name in a Host header, without its port ("[::1]:80" -> "::1")."""
    if host.startswith("["):
        return host[1:].partition("]")[0]
    return host.rpartition(":")[0] if host.count(":") == 1 else host


def _is_local_name(host: str) -> bool:
    name = _host_name(host).lower().rstrip(".")
    if name == "localhost":
        return True
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def is_loopback(host: str) -> bool:
    """Whether listening on `host` keeps the server to this machine."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def startup_notes(host: str, api_key: str | None) -> list[str]:
    """What `gptforge serve` says at start about who may use it; a last line starting "warning:"
    when it is open to the network with no key."""
    if api_key is not None:
        return ["API key required on /v1 (header 'Authorization: Bearer KEY'); the page at / asks for it"]
    notes = ["no API key required: whoever can reach this address can use it"]
    if not is_loopback(host):
        notes.append(f"warning: listening on {host}, beyond this machine, with no API key: anyone on the "
                     "network can use this server; set --api-key (or $GPTFORGE_API_KEY)")
    return notes


class BodyLimit:
    """ASGI middleware: a request body over `limit` bytes gets 413, whether announced by its
    Content-Length or only found while reading (chunked)."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        too_large = ApiError(413, f"the request body is larger than {self.limit} bytes", code="body_too_large")
        declared = dict(scope["headers"]).get(b"content-length", b"0")
        if not declared.isdigit() or int(declared) > self.limit:
            return await _error_response(too_large if declared.isdigit() else
                                         ApiError(400, "bad Content-Length header"))(scope, receive, send)
        seen = 0

        async def counted():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise too_large
            return message

        await self.app(scope, counted, send)


def _announcing_server():
    import uvicorn

    class AnnouncingServer(uvicorn.Server):
        """uvicorn's server that calls `announce` once it listens (serve() handles the signals)."""

        def __init__(self, config, announce: Callable[[], None]):
            super().__init__(config)
            self.announce = announce

        async def startup(self, sockets=None) -> None:
            await super().startup(sockets=sockets)
            if not self.should_exit:
                self.announce()

    return AnnouncingServer


def serve(model: GPT, name: str, host: str = "127.0.0.1", port: int = 8000, api_key: str | None = None,
          max_batch: int = 8, max_queue: int = 64, retrieve: Callable[[str], list[dict]] | None = None) -> None:
    """Serve `model` until Ctrl-C or SIGTERM (uvicorn's graceful shutdown: running requests get a
    few seconds, then the engine stops and every open stream ends; a second signal stops at once).

    The engine decodes on the calling (main) thread and uvicorn runs in a second one: on the
    2-core machine measured, the same decoding steps ran 1.2-1.5x slower in a second thread."""
    import signal
    import socket
    import threading

    from .transport import server_config

    AnnouncingServer = _announcing_server()

    service = Service(model, name, api_key, max_batch, max_queue, retrieve, engine_thread=False)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise UserError(f"cannot listen on {host}:{port}: {e.strerror}") from None
    bound = sock.getsockname()[1]
    shown = f"[{host}]" if family == socket.AF_INET6 else host

    def announce() -> None:  # once uvicorn listens and handles Ctrl-C: a client that saw this may stop it
        print(f"gptforge serve: '{name}' ({'chat' if service.chat else 'base'} model, context {service.context}) "
              f"on http://{shown}:{bound}  (web chat at /, API at /v1; Ctrl-C stops)", flush=True)
        for note in startup_notes(host, api_key):
            print(f"gptforge serve: {note}", file=sys.stderr if note.startswith("warning:") else sys.stdout, flush=True)

    config = server_config(build_app(service), HEADER_TIMEOUT_S, timeout_graceful_shutdown=3)
    server = AnnouncingServer(config, announce)

    failures: list[BaseException] = []

    def http() -> None:
        try:
            server.run(sockets=[sock])
        except BaseException as error:  # uvicorn's startup failure is a SystemExit: the main thread re-raises it
            failures.append(error)
        finally:  # shut down, or never started: the decoding loop ends too
            service.engine.stop()

    # uvicorn in a thread leaves the signals to us: the first SIGINT/SIGTERM asks for its graceful
    # shutdown, a second one for an immediate one; either way serve() returns (exit code 0).
    def interrupt(*_):
        server.force_exit = server.should_exit
        server.should_exit = True

    stops = (signal.SIGINT, signal.SIGTERM)
    previous = {s: signal.signal(s, interrupt) for s in stops}
    thread = threading.Thread(target=http, name="gptforge-http")
    try:
        thread.start()
        service.engine.run()  # until the HTTP side has shut down
    finally:
        server.should_exit = True  # (already, unless the engine's loop itself failed)
        thread.join()
        for s, handler in previous.items():
            signal.signal(s, handler)
    if failures:
        raise failures[0]
    print("gptforge serve: stopped", flush=True)
