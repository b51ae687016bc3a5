"""The speedrun: the best model this machine trains in a fixed wall-clock time.

The task is fixed: train on the builtin Shakespeare corpus (`--data builtin:shakespeare`, 90/10
split by characters) for a `--max-time` budget (default 10 minutes, start-up, evaluations and
saves included), then score the final checkpoint in bits per byte on the *whole* held-out split
(every token once, non-overlapping windows: gptforge.evaluate.evaluate_tokens). Lower is better.

Each row is the baseline recipe with one knob changed (model shape, each block option, the
optimizer, learning rate and schedule, batch size, context length), trained in its own process
as a user would run it, so its budget covers start-up too. The baseline runs first (and with
--rerun-baseline again at the end, to show how much the machine drifted), every row in the same
session, and every row is printed beside this machine's fp32 2048x2048 matmul GFLOP/s measured
just before it: the machines these run on drift by +-15% in a day.

    python benchmarks/speedrun.py                          # every row, 10 minutes each
    python benchmarks/speedrun.py --budget 30s --rows baseline,modern    # a smoke run
    python benchmarks/speedrun.py --list                   # the rows and what they change

Rows, configs (TOML, one per row), run folders and results.jsonl go under --out.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

from gptforge.config import TrainConfig, load_config_file, parse_duration
from gptforge.data import load_splits, read_documents
from gptforge.device import matmul_peak_flops
from gptforge.evaluate import evaluate_tokens
from gptforge.tokenizer import tokenizer_of
from gptforge.tokenizer.train import train_tokenizer
from gptforge.weights import load_any

DATA = "builtin:shakespeare"
BASELINE = "shakespeare-cpu"  # the bundled quickstart recipe, trained on the clock instead of 300 steps

# One knob at a time: each row is the baseline with these fields changed.
ROWS: dict[str, dict] = {
    "baseline": {},
    # the block, all at once and one switch at a time
    "modern": dict(arch="modern"),
    "rope": dict(positions="rope"),
    "rmsnorm": dict(norm="rmsnorm"),
    "swiglu": dict(mlp="swiglu"),
    "relu2": dict(mlp="relu2"),
    "qk-norm": dict(qk_norm=True),
    "no-bias": dict(bias=False),
    "untied": dict(tie_embeddings=False),
    "zero-init": dict(zero_init_proj=True),
    "softcap-15": dict(logit_softcap=15.0),
    # the optimizer, learning rate and schedule
    "muon": dict(optimizer="muon"),
    "lr-x0.5": dict(lr=1e-3),
    "lr-x2": dict(lr=4e-3),
    "constant-lr": dict(lr_schedule="constant"),
    "no-warmup": dict(warmup_steps=0),
    # batch size and context length
    "batch-4": dict(batch_size=4),
    "batch-16": dict(batch_size=16),
    "ctx-128": dict(context_length=128),
    "ctx-512": dict(context_length=512),
    # model shape
    "layers-2": dict(n_layers=2),
    "layers-6": dict(n_layers=6),
    "width-128": dict(emb_dim=128, n_heads=2),
    "width-384": dict(emb_dim=384, n_heads=6),
    # the tokenizer's size: a byte-level BPE trained on the training split (GPT-2's has 50257 ids)
    "bpe-1k": dict(tokenizer_vocab=1024),
    "bpe-4k": dict(tokenizer_vocab=4096),
    "bpe-16k": dict(tokenizer_vocab=16384),
}


def tokenizer_for(knobs: dict, out: Path) -> str | None:
    """The --tokenizer of a row with a `tokenizer_vocab` knob: a BPE of that many ids trained on
    the training split alone (the first 90% of the characters, as training splits them), so no
    held-out text shapes the vocabulary. Bits per byte keeps rows with different tokenizers comparable."""
    vocab = knobs.get("tokenizer_vocab")
    if vocab is None:
        return None
    folder = out / f"tokenizer-{vocab}"
    if not folder.exists():
        texts = [text for _, text in read_documents(DATA)]
        left = int(0.9 * sum(map(len, texts)))
        split = out / "tokenizer-training-text"
        split.mkdir(exist_ok=True)
        for i, text in enumerate(texts):
            if left > 0:
                (split / f"{i:03d}.txt").write_text(text[:left])
            left -= len(text)
        train_tokenizer(str(split), folder, vocab, progress=False)
    return str(folder)


def row_config(name: str, budget: str, out: Path) -> Path:
    """The row's whole training config as a TOML file (also a record of what the row ran)."""
    settings = load_config_file(BASELINE)
    settings.pop("max_steps", None)  # the clock decides
    knobs = {k: v for k, v in ROWS[name].items() if k != "tokenizer_vocab"}
    settings.update(epochs=1000, max_time=budget, save_every=0, sample_every=0, out=str(out / name), data=DATA,
                    **knobs)
    tokenizer = tokenizer_for(ROWS[name], out)
    if tokenizer:
        settings["tokenizer"] = tokenizer
    TrainConfig.from_dict(settings)  # a bad row fails here, before any training
    path = out / f"{name}.toml"
    path.write_text("".join(f"{key} = {json.dumps(value)}\n" for key, value in settings.items()))
    return path


def run_row(name: str, budget: str, out: Path, device: str) -> dict:
    gflops = matmul_peak_flops(torch.device("cpu"), torch.float32, n=2048) / 1e9
    config = row_config(name, budget, out)
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "gptforge", "train", "--config", str(config), "--device", device,
                           "--no-progress"], capture_output=True, text=True)
    wall = time.monotonic() - start
    if proc.returncode != 0:
        return {"row": name, "error": proc.stderr.strip().splitlines()[-1:], "matmul_gflops": gflops}
    metrics = [json.loads(line) for line in (out / name / "metrics.jsonl").read_text().splitlines()]
    model = load_any(out / name, device="cpu")
    val_tokens = load_splits(DATA, 0.1, tokenizer=tokenizer_of(model))[1]  # the row's own tokenizer's
    score = evaluate_tokens(model, val_tokens, batch_size=8)
    return {"row": name, "knobs": ROWS[name], "budget_s": parse_duration(budget), "wall_s": round(wall, 1),
            "steps": metrics[-1]["step"], "tokens_seen": metrics[-1]["tokens_seen"],
            "params": model.num_params(), "val_bpb": score["bits_per_byte"], "val_loss": score["loss"],
            "matmul_gflops": round(gflops, 1)}


def table(results: list[dict]) -> str:
    base = next((r for r in results if r["row"] == "baseline" and "val_bpb" in r), None)
    lines = ["| row | changes | steps | tokens | wall (s) | val bits/byte | vs baseline | fp32 matmul GFLOP/s |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['row']} | failed: {r['error']} | | | | | | {r['matmul_gflops']:.0f} |")
            continue
        changes = ", ".join(f"{k}={v}" for k, v in r["knobs"].items()) or "(the quickstart recipe)"
        delta = f"{r['val_bpb'] - base['val_bpb']:+.3f}" if base else ""
        lines.append(f"| {r['row']} | {changes} | {r['steps']} | {r['tokens_seen']:,} | {r['wall_s']:.0f} | "
                     f"{r['val_bpb']:.3f} | {delta} | {r['matmul_gflops']:.0f} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--budget", default="10m", help="wall-clock budget per row (default: 10m)")
    p.add_argument("--rows", default=",".join(ROWS), help="comma-separated rows (default: all; see --list)")
    p.add_argument("--rerun-baseline", action="store_true", help="run the baseline again at the end")
    p.add_argument("--device", default="cpu", help="device for training (default: cpu)")
    p.add_argument("--out", default="runs/speedrun", help="folder for configs, runs and results.jsonl")
    p.add_argument("--list", action="store_true", help="print the rows and exit")
    args = p.parse_args()
    if args.list:
        print("\n".join(f"{name:<12} {knobs or '(the baseline)'}" for name, knobs in ROWS.items()))
        return
    names = [n for n in args.rows.split(",") if n]
    unknown = [n for n in names if n not in ROWS]
    if unknown:
        raise SystemExit(f"unknown rows: {', '.join(unknown)} (see --list)")
    if "baseline" in names:  # the reference for every other row, run first
        names.remove("baseline")
        names.insert(0, "baseline")
    if args.rerun_baseline:
        names.append("baseline")
    parse_duration(args.budget, "--budget")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(f"speedrun: {len(names)} row(s) of {args.budget} on {DATA}, scored on its whole held-out tenth, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads", flush=True)
    results = []
    for i, name in enumerate(names):
        if (out / name).exists():  # a rerun of a row (the baseline at the end) gets a fresh folder
            name_dir = out / f"{name}-{i}"
            ROWS[name_dir.name] = ROWS[name]
            name = name_dir.name
        results.append(run_row(name, args.budget, out, args.device))
        with open(out / "results.jsonl", "a") as f:
            f.write(json.dumps({**results[-1], "date": time.strftime("%Y-%m-%d %H:%M")}) + "\n")
        print(table(results[-1:]).splitlines()[-1], flush=True)
    print()
    print(table(results))


if __name__ == "__main__":
    main()
