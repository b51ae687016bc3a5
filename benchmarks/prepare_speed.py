"""Benchmark `gptforge prepare` on a ~200 MB corpus: speed against single-threaded encode_ordinary,
peak memory, and token-for-token equality.

    python benchmarks/prepare_speed.py [--size-mb 200] [--workdir /tmp/gptforge-bench]

The corpus is generated (once, seeded) from varied real text: the bundled Shakespeare plus Python's
standard-library sources, cut into ~9k documents of 1 KB to 1 MB and three of 10 MB, one .txt file
each. It is not part of the repository. Then:

1. baseline: tiktoken `encode_ordinary` on one thread over every document (timing the calls only,
   not the reading; the faster of two passes), written as the expected train/val token streams;
2. for comparison, tiktoken's thread pool (`encode_ordinary_batch`, 2 threads);
3. `prepare_corpus` with --workers 1 and with the default (every core), 3 times each (the median
   is reported, memory peaks are the largest of the 3), each in a fresh process,
   timed inside that process (so without the interpreter's start) and from outside (the whole
   command); memory sampled every 50 ms: RSS summed over the process and its workers, the largest
   process's peak RSS (VmHWM), and every second the summed PSS (shared pages counted once);
   its tokens are compared with the baseline's.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import sysconfig
import time
from datetime import date
from pathlib import Path

import numpy as np

from gptforge.data import load_corpus
from gptforge.data.encode import default_workers
from gptforge.text import read_documents
from gptforge.text.split import val_documents
from gptforge.tokenizer import gpt2

RUN_PREPARE = """
import json, sys, time
from gptforge.data import prepare_corpus
t = time.perf_counter()
meta = prepare_corpus([sys.argv[1]], sys.argv[2], workers=int(sys.argv[3]), progress=False)
print(json.dumps({"seconds": time.perf_counter() - t, "tokens": meta["tokens"], "split": meta["split"]}))
"""


def make_corpus(folder: Path, size_mb: int, seed: int = 0) -> list[Path]:
    """Documents cut from Shakespeare and the stdlib's .py files, at line boundaries, seeded."""
    done = folder / "DONE"
    if done.is_file() and done.read_text() == f"{size_mb} {seed}\n":
        return sorted(folder.glob("*.txt"))
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.txt"):
        old.unlink()
    pool = [text for _, text in read_documents("builtin:shakespeare")]
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for path in sorted(stdlib.rglob("*.py")):
        text = path.read_bytes().decode("utf-8", errors="replace")
        if "site-packages" not in path.parts and len(text) > 200:
            pool.append(text)
    rng = np.random.default_rng(seed)
    sizes = list(np.clip(rng.lognormal(np.log(12_000), 1.0, size=100_000), 1_000, 1_000_000).astype(int))
    target, total, index = size_mb * 1_000_000, 0, 0
    while total < target:
        size = 10_000_000 if index in (10, 5000, 9000) else sizes[index]
        parts, n = [], 0
        while n < size:  # slices of random sources until the document is long enough
            text = pool[rng.integers(len(pool))]
            start = text.rfind("\n", 0, int(rng.integers(len(text)))) + 1
            part = text[start:start + size - n]
            parts.append(part)
            n += len(part) + 1
        doc = "\n".join(parts)
        (folder / f"doc{index:06d}.txt").write_text(doc, encoding="utf-8")
        total += len(doc.encode())
        index += 1
    done.write_text(f"{size_mb} {seed}\n")
    return sorted(folder.glob("*.txt"))


def baseline(files: list[Path], workdir: Path) -> dict:
    """Single-threaded encode_ordinary over every document; the expected streams written to disk."""
    enc = gpt2().encoding
    is_val = val_documents(len(files), 0.1, 0)  # the split prepare's default (auto -> documents) makes
    outs = [open(workdir / f"expected-{s}.bin", "wb") for s in ("train", "val")]
    started = [False, False]
    passes = []
    for repeat in range(2):
        seconds, tokens, chars = 0.0, 0, 0
        for path, val in zip(files, is_val.tolist()):
            text = path.read_text(encoding="utf-8")
            t = time.perf_counter()
            ids = enc.encode_ordinary(text)
            seconds += time.perf_counter() - t
            if repeat == 0:
                np.asarray(([enc.eot_token] if started[val] else []) + ids, dtype=np.uint16).tofile(outs[val])
                started[val] = True
            tokens, chars = tokens + len(ids), chars + len(text)
            del ids
        passes.append(seconds)
        if repeat == 0:
            for f in outs:
                f.close()
    seconds = min(passes)
    return {"seconds": seconds, "passes_s": passes, "tokens": tokens, "chars": chars, "tok_s": tokens / seconds}


def thread_pool(files: list[Path], threads: int = 2) -> dict:
    """tiktoken's own thread pool, 64 documents per call (timing the calls only)."""
    enc = gpt2().encoding
    seconds, tokens = 0.0, 0
    for i in range(0, len(files), 64):
        texts = [p.read_text(encoding="utf-8") for p in files[i:i + 64]]
        t = time.perf_counter()
        tokens += sum(map(len, enc.encode_ordinary_batch(texts, num_threads=threads)))
        seconds += time.perf_counter() - t
    return {"seconds": seconds, "tokens": tokens, "tok_s": tokens / seconds}


def _tree(pid: int) -> list[int]:
    pids, todo = [], [pid]
    while todo:
        p = todo.pop()
        pids.append(p)
        try:
            todo += [int(c) for c in Path(f"/proc/{p}/task/{p}/children").read_text().split()]
        except OSError:
            pass
    return pids


def _rss(pids: list[int]) -> tuple[int, int]:
    """(summed resident memory, largest peak resident memory VmHWM) of these processes, from
    /proc/PID/status (cheap to read)."""
    total = largest = 0
    for p in pids:
        try:
            status = dict(line.split(":", 1) for line in Path(f"/proc/{p}/status").read_text().splitlines())
        except OSError:
            continue
        if "VmRSS" not in status:  # a process that has just exited
            continue
        total += int(status["VmRSS"].split()[0]) * 1024
        largest = max(largest, int(status["VmHWM"].split()[0]) * 1024)
    return total, largest


def _pss(pids: list[int]) -> int:
    """Summed proportional memory (shared pages split between their users): the real footprint.
    Reading smaps_rollup walks the page tables and stalls the process, so it is sampled rarely."""
    total = 0
    for p in pids:
        try:
            rollup = Path(f"/proc/{p}/smaps_rollup").read_text()
        except OSError:
            continue
        total += next((int(line.split()[1]) * 1024 for line in rollup.splitlines() if line.startswith("Pss:")), 0)
    return total


def run_prepare(corpus: Path, out: Path, workers: int) -> dict:
    """prepare_corpus in a fresh process; its memory and its workers' sampled while it runs."""
    subprocess.run(["rm", "-rf", str(out)], check=True)
    t = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", RUN_PREPARE, str(corpus), str(out), str(workers)],
                            stdout=subprocess.PIPE, text=True)
    peak_rss = peak_pss = largest = 0
    ticks = 0
    while proc.poll() is None:
        pids = _tree(proc.pid)
        rss, hwm = _rss(pids)
        peak_rss, largest = max(peak_rss, rss), max(largest, hwm)
        if ticks % 20 == 0:  # every second
            peak_pss = max(peak_pss, _pss(pids))
        ticks += 1
        time.sleep(0.05)
    wall = time.perf_counter() - t
    result = json.loads(proc.stdout.read())
    assert proc.returncode == 0
    tokens = result["tokens"]["train"] + result["tokens"]["val"]
    return {"workers": workers, "seconds": result["seconds"], "command_wall_s": wall, "tokens": result["tokens"],
            "split": result["split"], "tok_s": tokens / result["seconds"], "peak_rss_sum_mb": peak_rss / 1e6,
            "peak_pss_sum_mb": peak_pss / 1e6, "peak_rss_largest_process_mb": largest / 1e6}


def same_tokens(out: Path, workdir: Path) -> bool:
    corpus = load_corpus(out)
    for split in ("train", "val"):
        expected = np.memmap(workdir / f"expected-{split}.bin", dtype=np.uint16, mode="r")
        got = getattr(corpus, split)
        if len(got) != len(expected):
            return False
        for i in range(0, len(expected), 10_000_000):  # compare in slices: bounded memory
            if not np.array_equal(got[i:i + 10_000_000], expected[i:i + 10_000_000]):
                return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=int, default=200)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/gptforge-bench"))
    args = parser.parse_args()
    corpus = args.workdir / f"corpus-{args.size_mb}mb"
    files = make_corpus(corpus, args.size_mb)
    size = sum(p.stat().st_size for p in files)
    print(f"corpus: {len(files)} documents, {size / 1e6:.1f} MB in {corpus}", flush=True)
    report = {"date": date.today().isoformat(), "machine": f"{platform.machine()}, {default_workers()} cores, "
              f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB, Python "
              f"{platform.python_version()}", "load_before": os.getloadavg(), "corpus_mb": size / 1e6,
              "documents": len(files)}
    report["baseline_encode_ordinary"] = baseline(files, args.workdir)
    print("baseline", report["baseline_encode_ordinary"], flush=True)
    report["encode_ordinary_batch_2_threads"] = thread_pool(files)
    print("threads", report["encode_ordinary_batch_2_threads"], flush=True)
    for workers in (1, default_workers()):
        # The median of 3 runs (the machine's speed varies from run to run by 10% or more).
        runs = sorted((run_prepare(corpus, args.workdir / f"out-{workers}", workers) for _ in range(3)),
                      key=lambda r: r["seconds"])
        result = {**runs[1], "seconds_all_runs": [r["seconds"] for r in runs],
                  "peak_rss_sum_mb": max(r["peak_rss_sum_mb"] for r in runs),
                  "peak_pss_sum_mb": max(r["peak_pss_sum_mb"] for r in runs),
                  "peak_rss_largest_process_mb": max(r["peak_rss_largest_process_mb"] for r in runs)}
        result["same_tokens_as_baseline"] = same_tokens(args.workdir / f"out-{workers}", args.workdir)
        result["speedup_vs_baseline"] = result["tok_s"] / report["baseline_encode_ordinary"]["tok_s"]
        result["speedup_whole_command"] = (sum(result["tokens"].values()) / result["command_wall_s"]
                                           / report["baseline_encode_ordinary"]["tok_s"])
        report[f"prepare_workers_{workers}"] = result
        print(f"prepare --workers {workers}", result, flush=True)
    report["load_after"] = os.getloadavg()
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
