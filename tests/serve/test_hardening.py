"""What the server refuses before any work is done (issue 22, item 7): other sites' pages (a Host
that is not this server's, a cross-site form post), requests that can never fit the queue, clients
that never finish their headers; and what an open /health says when a key is required."""

from __future__ import annotations

import socket
import time

import httpx
import pytest
from test_app import GOOD, assert_error, post

from server_helpers import serving


def test_a_host_that_is_not_this_server_is_refused_when_no_key_is_set(base_server, base_model):
    url, _ = base_server
    # DNS rebinding: a page on evil.example whose name now points at 127.0.0.1
    assert_error(post(url, "/v1/completions", GOOD, headers={"Host": "evil.example"}), 400, "Host")
    assert_error(httpx.get(url + "/health", headers={"Host": "evil.example:8000"}), 400, "Host")
    port = url.rsplit(":", 1)[1]
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", "localhost", f"[::1]:{port}"):
        assert httpx.get(url + "/health", headers={"Host": host}).status_code == 200, host
    with serving(base_model, api_key="k") as (keyed, _):  # with a key, the key is what protects it
        response = post(keyed, "/v1/completions", GOOD, headers={"Host": "my.server", "Authorization": "Bearer k"})
        assert response.status_code == 200


@pytest.mark.parametrize("content_type", ["application/x-www-form-urlencoded", "text/plain", "multipart/form-data",
                                          None])
def test_a_post_that_is_not_json_is_refused(base_server, content_type):
    url, _ = base_server
    headers = {"Content-Type": content_type} if content_type else {}
    response = httpx.post(url + "/v1/completions", content=b'{"model": "tiny", "prompt": "Hi"}', headers=headers)
    assert_error(response, 415, "application/json")
    ok = post(url, "/v1/completions", GOOD, headers={"Content-Type": "application/json; charset=utf-8"})
    assert ok.status_code == 200


def test_a_request_that_can_never_fit_the_queue_gets_400(base_model):
    with serving(base_model, max_queue=64) as (url, _):
        error = assert_error(post(url, "/v1/completions", {**GOOD, "prompt": ["Hi"] * 100}), 400, "100", "64",
                             param="prompt")
        assert error["code"] != "server_overloaded"
        assert_error(post(url, "/v1/completions", {**GOOD, "prompt": ["Hi"] * 5, "n": 16}), 400, "80", param="n")
        assert post(url, "/v1/completions", {**GOOD, "prompt": ["Hi"] * 4, "n": 16}).status_code == 200


def test_health_does_not_name_the_model_when_a_key_is_required(base_model):
    with serving(base_model, api_key="k") as (url, _):
        health = httpx.get(url + "/health").json()
        assert health["status"] == "ok" and "model" not in health and "tiny" not in str(health)
    with serving(base_model) as (url, _):
        assert httpx.get(url + "/health").json()["model"] == "tiny"


def test_clients_that_never_finish_their_headers_are_closed(base_model):
    with serving(base_model, header_timeout=1.0) as (url, _):
        host, port = url.removeprefix("http://").split(":")
        socks = []
        for _ in range(50):
            s = socket.create_connection((host, int(port)))
            s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Ty")
            s.settimeout(30)
            socks.append(s)
        start = time.monotonic()
        for s in socks:  # each is closed by the server: recv sees the end of the stream
            while s.recv(1024):
                pass
            s.close()
        assert time.monotonic() - start < 25  # 1 s timeout; far below the 30 s a recv would wait
        assert post(url, "/v1/completions", GOOD).status_code == 200  # and the server is fine


def test_startup_says_whether_a_key_is_required_and_warns_when_open_to_the_network():
    from gptforge.serve.app import is_loopback, startup_notes

    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.5") and not is_loopback("::")
    assert "no API key" in startup_notes("127.0.0.1", None)[0]
    assert "API key required" in startup_notes("0.0.0.0", "k")[0] and len(startup_notes("0.0.0.0", "k")) == 1
    open_notes = startup_notes("0.0.0.0", None)
    assert len(open_notes) == 2 and "warning" in open_notes[1] and "--api-key" in open_notes[1]


def test_a_body_that_never_arrives_gets_408(base_model, monkeypatch):
    import gptforge.serve.app as app

    monkeypatch.setattr(app, "BODY_TIMEOUT_S", 0.5)
    with serving(base_model) as (url, service):
        host, port = url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port))) as s:
            s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                      b"Content-Length: 100\r\n\r\n{\"model\": ")
            s.settimeout(30)
            reply = b""
            while chunk := s.recv(4096):
                reply += chunk
                if b"}}" in reply:
                    break
        assert reply.startswith(b"HTTP/1.1 408") and b"did not arrive" in reply, reply
        assert service.engine.load()["waiting"] == 0
