"""A server on 127.0.0.1 in a background thread (uvicorn, as `gptforge serve` runs it), for the
tests that drive it over HTTP."""

from __future__ import annotations

import contextlib
import socket
import threading
import time

import pytest
import torch

from gptforge.config import GPTConfig
from gptforge.model import GPT, prepare_for_decoding


@pytest.fixture(scope="session")
def base_model():
    """A random gpt2-tiny with GPT-2's vocabulary (context 64), ready to decode."""
    torch.manual_seed(0)
    return prepare_for_decoding(GPT(GPTConfig.from_preset("gpt2-tiny")))


@contextlib.contextmanager
def serving(model, name="tiny", **options):
    """(base URL, Service) of a running server, stopped on exit."""
    import uvicorn

    from gptforge.serve.app import Service, build_app

    service = Service(model, name, **options)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(build_app(service), log_level="warning", timeout_graceful_shutdown=2))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the server did not start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}", service
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


@pytest.fixture(scope="module")
def base_server(base_model):
    with serving(base_model) as running:
        yield running


def wait_until(condition, timeout=10.0, what="the condition"):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)
