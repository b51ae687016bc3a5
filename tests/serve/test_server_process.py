"""`gptforge serve` as a user runs it: a subprocess on a free 127.0.0.1 port, stopped by Ctrl-C
(SIGINT) or SIGTERM, in the middle of a streamed answer."""

from __future__ import annotations

import json
import os
import signal
import threading

import httpx
import pytest

from helpers import assert_user_error, run_cli
from server_helpers import start


@pytest.mark.slow  # server processes
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_the_server_stops_cleanly_on_a_signal(tiny_checkpoint, sig):
    proc, url = start(tiny_checkpoint, "--model-name", "tiny")
    try:
        assert httpx.get(url + "/health", timeout=30).json()["model"] == "tiny"
        body = {"model": "tiny", "prompt": "Hi", "max_tokens": 5, "temperature": 0}
        assert httpx.post(url + "/v1/completions", json=body, timeout=60).json()["choices"][0]["finish_reason"]
        # a streamed answer is running when the signal comes
        events = []
        with httpx.stream("POST", url + "/v1/completions", json={**body, "max_tokens": 60, "stream": True},
                          timeout=60) as response:
            lines = response.iter_lines()
            events.append(next(lines))
            proc.send_signal(sig)
            reader = threading.Thread(target=lambda: events.extend(lines), daemon=True)
            reader.start()
            out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        assert "stopped" in out and "Traceback" not in err
        assert events[0].startswith("data: ")
        with pytest.raises(httpx.ConnectError):  # the port is closed
            httpx.get(url + "/health", timeout=5)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.slow  # a server process
def test_the_server_listens_on_localhost_by_default(tiny_checkpoint):
    proc, url = start(tiny_checkpoint)
    try:
        assert url.startswith("http://127.0.0.1:")
        name = os.path.basename(str(tiny_checkpoint))
        assert httpx.get(url + "/v1/models", timeout=30).json()["data"][0]["id"] == name
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=30)


@pytest.mark.slow  # a CLI process
def test_serve_refuses_bad_flags_in_one_line(tiny_checkpoint):
    assert_user_error(run_cli("serve", "--checkpoint", str(tiny_checkpoint), "--max-batch", "0"), "--max-batch")
    assert_user_error(run_cli("serve", "--checkpoint", "no/such/run"), "no such checkpoint")
    assert_user_error(run_cli("serve", "--preset", "gpt2-tiny"), "--random-init")


@pytest.mark.slow  # a server process
def test_one_hostile_request_fails_alone_and_huge_stop_strings_are_refused(tiny_checkpoint):
    """Issue 22, items 1 and 2, as a user meets them: while a streamed answer is running, requests
    with sampling values the engine cannot use and a megabyte stop string each get a 400 naming
    the field, and the running answer ends with the text it has alone."""
    from gptforge.generate import generate_text
    from gptforge.weights import load_any

    expected = "".join(generate_text(load_any(tiny_checkpoint), "Hi", 40, temperature=0.0, stop_at_eos=True))
    proc, url = start(tiny_checkpoint, "--model-name", "tiny")
    try:
        body = {"model": "tiny", "prompt": "Hi", "max_tokens": 40, "temperature": 0}
        hostile = [({"temperature": 1e-300}, "temperature"), ({"top_p": 1e-300}, "top_p"),
                   ({"seed": 2**64}, "seed"), ({"seed": -2**63 - 1}, "seed"),
                   ({"stop": "a" * 1_040_000, "max_tokens": 2}, "stop"),
                   ({"stop": ["x"] * 5}, "stop")]
        text = ""
        with httpx.stream("POST", url + "/v1/completions", json={**body, "stream": True}, timeout=60) as response:
            for n, line in enumerate(response.iter_lines()):
                if n == 1:  # the answer has begun: now the hostile requests
                    for extra, field in hostile:
                        r = httpx.post(url + "/v1/completions", json={**body, **extra}, timeout=60)
                        assert r.status_code == 400 and r.json()["error"]["param"] == field, r.text[:300]
                if line.startswith("data: {"):
                    text += json.loads(line[6:])["choices"][0]["text"]
        assert text == expected
        assert httpx.get(url + "/health", timeout=5).json()["running"] == 0
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    assert "Traceback" not in err, err


@pytest.mark.slow  # server processes
def test_serve_refuses_an_empty_api_key_and_says_whether_one_is_required(tiny_checkpoint):
    assert_user_error(run_cli("serve", "--checkpoint", str(tiny_checkpoint), "--api-key", ""), "--api-key")
    proc, _ = start(tiny_checkpoint, "--api-key", "k")
    try:
        notes = proc.stdout.readline()
        assert "API key required" in notes
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=30)
