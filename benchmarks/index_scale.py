"""Benchmark `gptforge index` at scale: index N MB of text, then time queries.

    python benchmarks/index_scale.py [--mb 100] [--queries 200] [--workdir /tmp/gptforge-index-bench]

The corpus is generated (once per size, seeded) from the bundled Shakespeare: each copy of a play
has the words of every line shuffled with its own seed, so every file is new text (its own sha256
and chunks) with the same vocabulary; one play copy per .txt file (~150 KB), written one at a time.
Then, in a fresh process, `add_paths` (what `gptforge index add` calls) over the folder (one
transaction, GPT-2's tokenizer, the default chunk settings), timed inside that process; its peak
resident memory is the kernel's ru_maxrss, read once after importing gptforge (which imports torch:
most of the baseline) and once after indexing. The indexer reads one file at a time, so the peak
should not grow with the corpus: compare two sizes (e.g. --mb 20 and --mb 100). Last, --queries searches of 1 to 3
words drawn from the corpus's vocabulary (seeded), each through `search()` as the CLI calls it
(opening the database each time), timed one by one: p50 and p95.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from gptforge.text import read_documents
from gptforge.retrieval import index_stats, search

INDEX = """
import json, resource, sys, time
from gptforge.retrieval import add_paths
imported = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.perf_counter()
add_paths(sys.argv[2], [sys.argv[1]], progress=False)
print(json.dumps({"seconds": time.perf_counter() - t, "imported_kib": imported,
                  "peak_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""


def make_corpus(folder: Path, mb: int, seed: int = 0) -> list[Path]:
    """About `mb` MB of shuffled Shakespeare, one play copy per file, written as it is made."""
    done = folder / "DONE"
    if done.is_file() and done.read_text() == f"{mb} {seed}\n":
        return sorted(folder.glob("*.txt"))
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    plays = [text for _, text in read_documents("builtin:shakespeare")]
    written, copy = 0, 0
    while written < mb * 1_000_000:
        for number, play in enumerate(plays):
            rng = random.Random(f"{seed}-{copy}-{number}")
            lines = []
            for line in play.split("\n"):
                words = line.split()
                rng.shuffle(words)
                lines.append(" ".join(words))
            data = "\n".join(lines).encode()
            (folder / f"{copy:04d}-{number:02d}.txt").write_bytes(data)
            written += len(data)
            if written >= mb * 1_000_000:
                break
        copy += 1
    done.write_text(f"{mb} {seed}\n")
    return sorted(folder.glob("*.txt"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=int, default=100, help="MB of text to index (default: 100)")
    parser.add_argument("--queries", type=int, default=200, help="searches to time (default: 200)")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/gptforge-index-bench"))
    args = parser.parse_args()

    files = make_corpus(args.workdir / f"corpus-{args.mb}mb", args.mb)
    size = sum(f.stat().st_size for f in files)
    index = args.workdir / f"index-{args.mb}mb"
    shutil.rmtree(index, ignore_errors=True)
    out = subprocess.run([sys.executable, "-c", INDEX, str(files[0].parent), str(index)], check=True,
                         capture_output=True, text=True).stdout
    run = json.loads(out.splitlines()[-1])
    seconds = run["seconds"]
    stats = index_stats(index)

    rng = random.Random(0)
    vocabulary = sorted(set(re.findall(r"[a-z]{4,}", files[0].read_text().lower())))
    times = []
    for _ in range(args.queries):
        query = " ".join(rng.sample(vocabulary, rng.randint(1, 3)))
        t = time.perf_counter()
        search(index, query, k=5)
        times.append(time.perf_counter() - t)
    cuts = statistics.quantiles(times, n=20)
    print(f"corpus          {len(files):,} files, {size / 1e6:.1f} MB")
    print(f"indexing        {seconds:.1f} s: {len(files) / seconds:.1f} documents/s, {size / 1e6 / seconds:.2f} MB/s "
          "(inside the process)")
    print(f"index           {stats['chunks']:,} chunks, {stats['tokens']:,} tokens, "
          f"{stats['index_bytes'] / 1e6:.1f} MB on disk ({stats['index_bytes'] / size:.2f}x the text)")
    print(f"peak RSS        {run['peak_kib'] / 1024:.0f} MiB (after importing gptforge: {run['imported_kib'] / 1024:.0f} MiB)")
    print(f"query latency   p50 {statistics.median(times) * 1e3:.2f} ms, p95 {cuts[18] * 1e3:.2f} ms "
          f"({args.queries} queries of 1-3 words, k=5)")


if __name__ == "__main__":
    main()
