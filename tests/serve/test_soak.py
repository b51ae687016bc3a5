"""A short soak of `gptforge serve` (a subprocess on 127.0.0.1): 50 mixed requests from 8 threads,
some streamed and cancelled halfway, some invalid or hostile (issue 22: sampling values the engine
cannot use, megabyte stop strings, requests that can never fit the queue, other sites' requests).
Every valid one completes with the right text, every invalid one gets its error, /health answers
within a second throughout, and the server's memory ends within 10% of where it started."""

from __future__ import annotations

import json
import random
import signal
import threading
import time

import httpx
import psutil
import pytest

from gptforge.generate import generate_text
from gptforge.weights import load_any

from server_helpers import start, wait_until

N_REQUESTS, N_THREADS = 64, 8
PROMPTS = ["Once upon a time", "The king said", "Hello", "In the beginning", "A B C D E F G"]
JSON = {"Content-Type": "application/json"}


def _hostile(status: int, headers: dict = JSON, **fields) -> tuple[bytes, int, dict]:
    return json.dumps({"model": "tiny", "prompt": "Hi", "max_tokens": 4, **fields}).encode(), status, headers


INVALID = [  # (body, expected status, headers)
    (b"{not json", 400, JSON),
    _hostile(400, max_tokens=-3),
    _hostile(400, prompt="word " * 80, max_tokens=None),
    _hostile(404, model="nope"),
    # a chat request to a base model
    (json.dumps({"model": "tiny", "messages": [{"role": "user", "content": "hi"}]}).encode(), 400, JSON),
    _hostile(400, temperature=1e-300), _hostile(400, top_p=1e-300),
    _hostile(400, seed=2**64), _hostile(400, seed=-2**63 - 1),
    _hostile(400, stop="a" * 1_040_000, max_tokens=2), _hostile(400, stop=["x"] * 5),
    _hostile(400, stream_options="yes", stream=True),
    _hostile(400, prompt=["Hi"] * 100), _hostile(400, prompt=["Hi"] * 5, n=16),
    _hostile(415, {"Content-Type": "application/x-www-form-urlencoded"}),
    _hostile(400, {**JSON, "Host": "evil.example"}),
]


def plan(i: int) -> dict:
    """Request i of the mix: kind is "full", "stream", "cancel" or "invalid"."""
    rng = random.Random(i)
    kind = ["full", "stream", "cancel", "invalid"][i % 4]
    prompt, max_tokens = rng.choice(PROMPTS), rng.randint(4, 30)
    return {"kind": kind, "prompt": prompt, "max_tokens": max_tokens, "invalid": INVALID[i // 4 % len(INVALID)]}


def perform(url: str, client: httpx.Client, job: dict) -> str | None:
    """Send one request; return None if it behaved, else what went wrong."""
    if job["kind"] == "invalid":
        body, status, headers = job["invalid"]
        path = "/v1/chat/completions" if b"messages" in body else "/v1/completions"
        r = client.post(url + path, content=body, headers=headers)
        ok = r.status_code == status and "message" in r.json()["error"]
        return None if ok else f"invalid request got {r.status_code}: {r.text[:200]}"
    body = {"model": "tiny", "prompt": job["prompt"], "max_tokens": job["max_tokens"], "temperature": 0}
    if job["kind"] == "full":
        choice = client.post(url + "/v1/completions", json=body).json()["choices"][0]
        return None if choice["text"] == job["expected"] else f"wrong text for {job}: {choice['text']!r}"
    text, finished = "", None
    with client.stream("POST", url + "/v1/completions", json={**body, "stream": True}) as r:
        for n, line in enumerate(r.iter_lines()):
            if job["kind"] == "cancel" and n == 2:
                return None  # leave halfway: the response is closed here
            if line.startswith("data: {"):
                choice = json.loads(line[6:])["choices"][0]
                text += choice["text"]
                finished = choice["finish_reason"] or finished
    return None if text == job["expected"] and finished else f"stream of {job} gave {text!r}, {finished}"


@pytest.mark.slow
def test_soak(tiny_checkpoint):
    model = load_any(tiny_checkpoint)
    jobs = [plan(i) for i in range(N_REQUESTS)]
    for job in jobs:
        job["expected"] = "".join(generate_text(model, job["prompt"], job["max_tokens"], temperature=0.0,
                                                stop_at_eos=True))
    proc, url = start(tiny_checkpoint, "--model-name", "tiny", "--max-batch", "4")
    try:
        server = psutil.Process(proc.pid)
        client = httpx.Client(timeout=60)
        for job in jobs[:8]:  # warm up: first allocations, lazy imports
            assert perform(url, client, job) is None
        before = server.memory_info().rss

        problems, lock = [], threading.Lock()

        def worker(k):
            with httpx.Client(timeout=60) as own:
                for job in jobs[k::N_THREADS]:
                    try:
                        problem = perform(url, own, job)
                    except httpx.HTTPError as e:
                        problem = f"{job}: {e!r}"
                    if problem:
                        with lock:
                            problems.append(problem)

        threads = [threading.Thread(target=worker, args=(k,)) for k in range(N_THREADS)]
        health_times = []

        def watch_health():  # the event loop is never blocked: /health answers at once throughout
            with httpx.Client(timeout=30) as own:
                while any(t.is_alive() for t in threads):
                    start = time.monotonic()
                    assert own.get(url + "/health").status_code == 200
                    health_times.append(time.monotonic() - start)
                    time.sleep(0.1)

        for t in threads:
            t.start()
        watcher = threading.Thread(target=watch_health)
        watcher.start()
        for t in threads:
            t.join(300)
        watcher.join(60)
        assert not any(t.is_alive() for t in threads), "the soak did not finish"
        assert problems == []
        assert health_times and max(health_times) < 1.0, max(health_times)
        health = lambda: client.get(url + "/health").json()  # noqa: E731
        wait_until(lambda: health()["running"] == 0 and health()["waiting"] == 0, what="the server to be idle")
        after = server.memory_info().rss
        assert abs(after - before) <= 0.10 * before, (before, after)
        assert perform(url, client, jobs[0]) is None  # still serving
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
    assert proc.returncode == 0
