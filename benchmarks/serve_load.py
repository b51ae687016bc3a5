"""Load test of `gptforge serve`: 1, 4, 8 and 16 concurrent streaming clients against a server on
127.0.0.1, compared with transformers' `generate` serving the same requests one after another.

The server runs as a subprocess (`gptforge serve --preset gpt2-124m --random-init --seed 0`); this
process builds the same weights for transformers. Each client sends its requests one after another
(greedy, `max_tokens` each, distinct prompts of different lengths, so the rows sit at different
positions). Per wave: aggregate tokens/s (all tokens received / wall time), time to first token, and
per-token latency (the gaps between a stream's chunks), p50 and p95. Every answer is checked against
transformers' greedy output for the same prompt. The rounds alternate the server's waves and
transformers' sequential pass; everything is bounded (a fixed number of requests, timeouts) and
talks to 127.0.0.1 only.

    python benchmarks/serve_load.py                        # gpt2-124m, 2 rounds (~5 minutes on 2 cores)
    python benchmarks/serve_load.py --preset gpt2-tiny --tokens 16 --rounds 1   # a quick look
    python benchmarks/serve_load.py --quantize int8        # the server int8; correct = int8 alone

A decoding step for 8 rows reads the weights once, so aggregate tokens/s grows with the clients
until the matmuls become compute-bound: the table gives the matmul work done per second (2 x the
matrix weights per token) against this machine's float32 matmul peak, measured here.
"""

from __future__ import annotations

import argparse
import http.client
import json
import platform
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
from datetime import date
from urllib.parse import urlsplit

import torch

from gptforge.device import matmul_peak_flops
from gptforge.generate import complete_ids, model_for_generation
from gptforge.model import prepare_for_decoding
from gptforge.sampling import Sampling
from gptforge.text import read_documents
from gptforge.tokenizer import gpt2
from gptforge.weights.hf import hf_config, hf_state_dict

CLIENTS = (1, 4, 8, 16)


def make_prompts(n: int, longest: int) -> list[str]:
    """n distinct prompts of about 5 to `longest` tokens: runs of words from the bundled plays."""
    words = dict(read_documents("builtin:shakespeare"))["builtin:shakespeare/hamlet"].split()
    prompts = []
    for i in range(n):
        k = 4 + (i * 11) % (longest - 4)  # words; a token or more each
        while len(gpt2().encode_prompt(text := " ".join(words[700 * i: 700 * i + k]))) > longest:
            k -= 1
        prompts.append(text)
    return prompts


def start_server(preset: str, max_batch: int, quantize: str | None) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-m", "gptforge", "serve", "--preset", preset, "--random-init",
                             "--seed", "0", "--port", "0", "--max-batch", str(max_batch), "--model-name", "m",
                             *(["--quantize", quantize] if quantize else [])],
                            stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    match = re.search(r"on (http://127\.0\.0\.1:\d+)", line)
    if not match:
        proc.kill()
        raise SystemExit(f"the server did not start: {line!r}")
    return proc, match.group(1)


def stream_one(url: str, prompt: str, tokens: int) -> dict:
    """One streamed request: its text, send time, the arrival time of each content chunk. Read with
    the standard library's http.client, line by line: the clients share the server's cores, and
    httpx's streaming cost ~0.65 ms of CPU per token here (30% of a core at 8 clients)."""
    body = {"model": "m", "prompt": prompt, "max_tokens": tokens, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}
    sent, arrivals, text, used = time.perf_counter(), [], "", 0
    address = urlsplit(url)
    connection = http.client.HTTPConnection(address.hostname, address.port, timeout=300)
    try:
        connection.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
        response = connection.getresponse()
        if response.status != 200:
            raise RuntimeError(f"the server answered {response.status}: {response.read()[:200]!r}")
        for line in response:
            if not line.startswith(b"data: {"):
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                used = chunk["usage"]["completion_tokens"]
            elif piece := chunk["choices"][0]["text"]:
                arrivals.append(time.perf_counter())
                text += piece
    finally:
        connection.close()
    return {"text": text, "sent": sent, "arrivals": arrivals, "tokens": used}


def wave(url: str, prompts: list[str], clients: int, per_client: int, tokens: int) -> dict:
    """`clients` threads, each sending `per_client` requests in turn."""
    results: list[dict] = [{}] * (clients * per_client)

    def client(k: int) -> None:
        for j in range(per_client):
            i = k * per_client + j
            results[i] = {"index": i, **stream_one(url, prompts[i], tokens)}

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(600)
    wall = time.perf_counter() - start
    return {"clients": clients, "wall": wall, "results": results}


def hf_model(model):
    from transformers import GPT2Config, GPT2LMHeadModel

    hf = GPT2LMHeadModel(GPT2Config(**hf_config(model.config)))
    hf.load_state_dict(hf_state_dict(model), strict=False)
    return hf.eval()


@torch.no_grad()
def transformers_pass(hf, prompts: list[str], tokens: int) -> dict:
    """The same requests served one after another by transformers' generate (greedy, KV cache)."""
    texts, count, start = [], 0, time.perf_counter()
    tokenizer = gpt2()
    eot = tokenizer.eot_id
    for prompt in prompts:
        idx = torch.tensor([tokenizer.encode_prompt(prompt)])
        out = hf.generate(idx, max_new_tokens=tokens, do_sample=False, use_cache=True, eos_token_id=eot,
                          pad_token_id=eot, attention_mask=torch.ones_like(idx))[0, idx.size(1):].tolist()
        new = out[:out.index(eot)] if eot in out else out
        count += len(out)
        texts.append(tokenizer.decode(new))
    return {"wall": time.perf_counter() - start, "tokens": count, "texts": texts}


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


def summarize(w: dict, expected: list[str]) -> dict:
    rs = w["results"]
    count = sum(r["tokens"] for r in rs)
    ttft = [r["arrivals"][0] - r["sent"] for r in rs if r["arrivals"]]
    gaps = [b - a for r in rs for a, b in zip(r["arrivals"], r["arrivals"][1:])]
    correct = sum(r["text"] == expected[r["index"]] for r in rs)
    return {"clients": w["clients"], "requests": len(rs), "correct": correct,
            "tokens_per_s": count / w["wall"],
            "ttft_p50": pct(ttft, 50), "ttft_p95": pct(ttft, 95),
            "token_p50": pct(gaps, 50), "token_p95": pct(gaps, 95)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="gpt2-124m")
    p.add_argument("--tokens", type=int, default=48, help="max_tokens of every request")
    p.add_argument("--per-client", type=int, default=2, help="requests each client sends in turn")
    p.add_argument("--rounds", type=int, default=2, help="rounds of (server waves, transformers pass)")
    p.add_argument("--quantize", choices=["int8"], default=None,
                   help="serve int8; correct then means our int8 model's greedy text for the prompt alone")
    args = p.parse_args()

    n = max(CLIENTS) * args.per_client
    model = model_for_generation(None, args.preset, seed=0)  # the server's weights
    prompts = make_prompts(n, min(60, model.config.context_length - args.tokens))
    hf = hf_model(model)
    matmul_flops = 2 * (model.num_params(include_embeddings=False) + model.config.vocab_size * model.config.emb_dim)
    int8_texts = None
    if args.quantize:
        alone = prepare_for_decoding(model, quantize=args.quantize)
        stop = Sampling(args.tokens, temperature=0.0, stop_ids=frozenset({gpt2().eot_id}))
        int8_texts = [gpt2().decode(complete_ids(alone, gpt2().encode_prompt(q), stop)) for q in prompts]
    del model
    peak = matmul_peak_flops(torch.device("cpu"), torch.float32, n=2048)
    proc, url = start_server(args.preset, max(CLIENTS), args.quantize)
    rows: dict[int, list[dict]] = {c: [] for c in CLIENTS}
    hf_runs = []
    try:
        stream_one(url, prompts[0], 4)  # warm-up
        for _ in range(args.rounds):
            hf_runs.append(transformers_pass(hf, prompts, args.tokens))
            for c in CLIENTS:
                rows[c].append(wave(url, prompts, c, args.per_client, args.tokens))
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    assert all(run["texts"] == hf_runs[0]["texts"] for run in hf_runs)
    expected = int8_texts or hf_runs[0]["texts"]
    hf_rate = statistics.mean(r["tokens"] / r["wall"] for r in hf_runs)
    print(f"{date.today()}, {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}; {args.preset} random init, {n} distinct prompts, max_tokens "
          f"{args.tokens}, greedy, {args.per_client} requests per client, mean of {args.rounds} rounds; "
          f"server {args.quantize or 'float32'}; float32 matmul peak {peak / 1e9:.0f} GFLOP/s")
    print("| clients | requests | correct | tokens/s | vs 1 client | vs transformers | matmul GFLOP/s (of fp32 peak) "
          "| TTFT p50 / p95 (s) | per-token p50 / p95 (ms) |")
    print("|---|---|---|---|---|---|---|---|---|")
    base = None
    for c in CLIENTS:
        s = [summarize(w, expected) for w in rows[c]]
        m = {k: statistics.mean(x[k] for x in s) for k in s[0]}
        base = base or m["tokens_per_s"]
        print(f"| {c} | {int(m['requests'])} | {sum(x['correct'] for x in s)}/{sum(x['requests'] for x in s)} "
              f"| {m['tokens_per_s']:.1f} | {m['tokens_per_s'] / base:.2f}x | {m['tokens_per_s'] / hf_rate:.2f}x "
              f"| {m['tokens_per_s'] * matmul_flops / 1e9:.1f} ({100 * m['tokens_per_s'] * matmul_flops / peak:.0f}%) "
              f"| {m['ttft_p50']:.2f} / {m['ttft_p95']:.2f} | {1000 * m['token_p50']:.0f} / "
              f"{1000 * m['token_p95']:.0f} |")
    print(f"| transformers, one after another | {n} | {'' if int8_texts else 'reference'} | {hf_rate:.1f} | | 1.00x "
          f"| {hf_rate * matmul_flops / 1e9:.1f} ({100 * hf_rate * matmul_flops / peak:.0f}%) | | |")


if __name__ == "__main__":
    main()
