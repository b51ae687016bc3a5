"""A short soak of `gptforge serve` (a subprocess on 127.0.0.1): 50 mixed requests from 8 threads,
some streamed and cancelled halfway, some invalid. Every valid one completes with the right text,
every invalid one gets its error, and the server's memory ends within 10% of where it started."""

from __future__ import annotations

import json
import random
import signal
import threading

import httpx
import psutil
import pytest

from gptforge.generate import generate_text
from gptforge.weights import load_any

from server_helpers import start, wait_until

N_REQUESTS, N_THREADS = 50, 8
PROMPTS = ["Once upon a time", "The king said", "Hello", "In the beginning", "A B C D E F G"]
INVALID = [  # (body, expected status)
    (b"{not json", 400),
    (json.dumps({"model": "tiny", "prompt": "Hi", "max_tokens": -3}).encode(), 400),
    (json.dumps({"model": "tiny", "prompt": "word " * 80}).encode(), 400),
    (json.dumps({"model": "nope", "prompt": "Hi"}).encode(), 404),
    # a chat request to a base model
    (json.dumps({"model": "tiny", "messages": [{"role": "user", "content": "hi"}]}).encode(), 400),
]


def plan(i: int) -> dict:
    """Request i of the mix: kind is "full", "stream", "cancel" or "invalid"."""
    rng = random.Random(i)
    kind = ["full", "stream", "cancel", "invalid"][i % 4]
    prompt, max_tokens = rng.choice(PROMPTS), rng.randint(4, 30)
    return {"kind": kind, "prompt": prompt, "max_tokens": max_tokens, "invalid": INVALID[i % len(INVALID)]}


def perform(url: str, client: httpx.Client, job: dict) -> str | None:
    """Send one request; return None if it behaved, else what went wrong."""
    if job["kind"] == "invalid":
        body, status = job["invalid"]
        path = "/v1/chat/completions" if b"messages" in body else "/v1/completions"
        r = client.post(url + path, content=body, headers={"Content-Type": "application/json"})
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
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
        assert not any(t.is_alive() for t in threads), "the soak did not finish"
        assert problems == []
        health = lambda: client.get(url + "/health").json()  # noqa: E731
        wait_until(lambda: health()["running"] == 0 and health()["waiting"] == 0, what="the server to be idle")
        after = server.memory_info().rss
        assert abs(after - before) <= 0.10 * before, (before, after)
        assert perform(url, client, jobs[0]) is None  # still serving
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
    assert proc.returncode == 0
