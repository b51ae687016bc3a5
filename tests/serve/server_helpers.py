"""Helpers for the server tests: a server on 127.0.0.1 in a background thread (uvicorn, as
`gptforge serve` runs it), and waiting for a condition."""

from __future__ import annotations

import contextlib
import re
import socket
import subprocess
import sys
import threading
import time


@contextlib.contextmanager
def serving(model, name="tiny", header_timeout=None, **options):
    """(base URL, Service) of a running server, stopped on exit; configured as `gptforge serve`
    configures it, with `header_timeout` (seconds) in place of its default."""
    import uvicorn

    from gptforge.serve.app import HEADER_TIMEOUT_S, Service, build_app
    from gptforge.serve.transport import server_config

    service = Service(model, name, **options)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = server_config(build_app(service), header_timeout or HEADER_TIMEOUT_S, timeout_graceful_shutdown=2)
    server = uvicorn.Server(config)
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


def wait_until(condition, timeout=10.0, what="the condition"):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def start(checkpoint, *extra):
    """`gptforge serve` in a subprocess on a free port: (process, base URL)."""
    proc = subprocess.Popen([sys.executable, "-m", "gptforge", "serve", "--checkpoint", str(checkpoint),
                             "--port", "0", *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    match = re.search(r"on (http://127\.0\.0\.1:\d+)", line)
    assert match, (line, proc.stderr.read() if proc.poll() is not None else "")
    return proc, match.group(1)
