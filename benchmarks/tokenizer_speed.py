"""Benchmark your own tokenizer on a ~200 MB corpus: training one (time, peak memory), then
`prepare` with it and with GPT-2's (tiktoken), side by side.

    python benchmarks/tokenizer_speed.py [--size-mb 200] [--vocab-size 32768] [--runs 2]
                                         [--workdir /tmp/gptforge-bench]

The corpus is prepare_speed.py's (generated once, seeded, from the bundled Shakespeare and Python's
standard-library sources). Then:

1. `gptforge tokenizer train CORPUS --vocab-size N` as a whole command in a fresh process: wall
   time, CPU time (user + system, over all its threads) and the largest resident size of each
   process in its tree, sampled every 50 ms and, for the command's own process, exact (the kernel's
   ru_maxrss when it exits);
2. `prepare_corpus` (every core, default settings) with GPT-2's tokenizer and with the one just
   trained, alternating, `--runs` times each, each in a fresh process and timed inside it; the
   median is reported, as tokens/s and as MB of text/s (the two tokenizers cut the same text into
   different numbers of tokens, so MB/s is the like-for-like speed).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from datetime import date
from importlib import metadata
from pathlib import Path

from prepare_speed import _rss, _tree, make_corpus

RUN_PREPARE = """
import json, sys, time
from gptforge.data import prepare_corpus
from gptforge.tokenizer import load_tokenizer
t = time.perf_counter()
meta = prepare_corpus([sys.argv[1]], sys.argv[2], tokenizer=load_tokenizer(sys.argv[3]), progress=False)
print(json.dumps({"seconds": time.perf_counter() - t, "tokens": meta["tokens"], "dtype": meta["dtype"]}))
"""


def watch(command: list[str]) -> dict:
    """Run `command`; its wall and CPU time, its exact peak RSS, and the largest peak RSS sampled
    over its process tree."""
    t = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    largest = 0
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        largest = max(largest, _rss(_tree(proc.pid))[1])
        time.sleep(0.05)
    wall = time.perf_counter() - t
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"failed: {' '.join(command)}")
    return {"wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime, "stdout": proc.stdout.read(),
            "peak_rss_mb": max(largest, usage.ru_maxrss * 1024) / 1e6}


def prepare(corpus: Path, out: Path, tokenizer: str) -> dict:
    subprocess.run(["rm", "-rf", str(out)], check=True)
    run = watch([sys.executable, "-c", RUN_PREPARE, str(corpus), str(out), tokenizer])
    result = json.loads(run["stdout"])
    return {**result, "tokens": sum(result["tokens"].values()), "peak_rss_mb": run["peak_rss_mb"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=int, default=200)
    parser.add_argument("--vocab-size", type=int, default=32768)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/gptforge-bench"))
    args = parser.parse_args()
    corpus = args.workdir / f"corpus-{args.size_mb}mb"
    files = make_corpus(corpus, args.size_mb)
    n_bytes = sum(f.stat().st_size for f in files)
    print(f"{date.today()}, {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"Python {platform.python_version()}, tokenizers {metadata.version('tokenizers')}, "
          f"tiktoken {metadata.version('tiktoken')}; corpus {n_bytes / 1e6:.1f} MB in {len(files)} files")

    tokenizer = args.workdir / f"tokenizer-{args.vocab_size}"
    train = watch([sys.executable, "-m", "gptforge", "tokenizer", "train", str(corpus), "--vocab-size",
                   str(args.vocab_size), "--out", str(tokenizer), "--overwrite"])
    print(f"tokenizer train --vocab-size {args.vocab_size}: {train['wall_s']:.1f} s wall, {train['cpu_s']:.1f} s CPU, "
          f"peak RSS {train['peak_rss_mb']:.0f} MB  ({train['stdout'].strip()})")

    runs: dict[str, list[dict]] = {"gpt2": [], "ours": []}
    for _ in range(args.runs):  # alternating: the machine's drift hits both alike
        for name, spec in (("gpt2", "gpt2"), ("ours", str(tokenizer))):
            runs[name].append(prepare(corpus, args.workdir / f"prepared-{name}", spec))
    print("| prepare, every core | seconds (median) | tokens | tokens/s | MB of text/s | bytes/token | peak RSS |")
    print("|---|---|---|---|---|---|---|")
    for name, results in runs.items():
        seconds = statistics.median(r["seconds"] for r in results)
        tokens = results[0]["tokens"]
        print(f"| {name} ({results[0]['dtype']}) | {seconds:.2f} | {tokens / 1e6:.1f}M | "
              f"{tokens / seconds / 1e6:.2f}M | {n_bytes / seconds / 1e6:.1f} | {n_bytes / tokens:.2f} | "
              f"{max(r['peak_rss_mb'] for r in results):.0f} MB |")
    print("all runs (s):", {name: [round(r["seconds"], 2) for r in results] for name, results in runs.items()})


if __name__ == "__main__":
    main()
