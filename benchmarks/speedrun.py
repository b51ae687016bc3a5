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
    python benchmarks/speedrun.py --base bpe-4k,modern --rows baseline,muon   # knobs on a new baseline

`--base` stacks rows' knobs under every row (the baseline included), so a second round measures
each knob against the first round's winner. A slower machine is emulated with one thread on one
core (`taskset -c 0 env OMP_NUM_THREADS=1 python benchmarks/speedrun.py ...`): the rows' training
processes inherit both, and the matmul figure is measured the same way.

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

from gptforge.data import load_splits
from gptforge.device import matmul_peak_flops
from gptforge.evaluate import evaluate_tokens
from gptforge.generate import generate_text
from gptforge.tokenizer import tokenizer_of
from gptforge.training.budget import parse_duration
from gptforge.training.config import TrainConfig
from gptforge.training.config_files import load_config_file
from gptforge.weights import load_any

DATA = "builtin:shakespeare"
BASELINE = "shakespeare-cpu"  # the quickstart before the speedrun, trained on the clock instead of 300 steps

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
    "lr-x4": dict(lr=8e-3),
    "constant-lr": dict(lr_schedule="constant"),
    "no-warmup": dict(warmup_steps=0),
    "eval-every-100": dict(eval_every=100),  # fewer evaluations: more of the budget for training
    # batch size and context length
    "batch-4": dict(batch_size=4),
    "batch-16": dict(batch_size=16),
    "ctx-128": dict(context_length=128),
    "ctx-512": dict(context_length=512),
    # model shape
    "layers-2": dict(n_layers=2),
    "layers-6": dict(n_layers=6),
    "width-128": dict(emb_dim=128, n_heads=2),
    "width-192": dict(emb_dim=192, n_heads=3),
    "width-384": dict(emb_dim=384, n_heads=6),
    # the tokenizer: a byte-level BPE of N ids trained on the train split at the start of the run,
    # inside its budget (GPT-2's has 50257 ids)
    "bpe-1k": dict(tokenizer="bpe:1024"),
    "bpe-4k": dict(tokenizer="bpe:4096"),
    "bpe-16k": dict(tokenizer="bpe:16384"),
}


def row_knobs(name: str, base: list[str]) -> dict:
    """Everything a row changes from the --baseline config: the --base rows' knobs, then its own."""
    knobs: dict = {}
    for row in [*base, name]:
        knobs.update(ROWS[row])
    return knobs


def row_config(name: str, budget: str, out: Path, base: list[str], baseline: str) -> Path:
    """The row's whole training config as a TOML file (also a record of what the row ran)."""
    settings = load_config_file(baseline)
    settings.pop("max_steps", None)  # the clock decides
    knobs = row_knobs(name, base)
    settings.update(epochs=1000, max_time=budget, save_every=0, sample_every=0, out=str(out / name), data=DATA,
                    **knobs)
    TrainConfig.from_dict(settings)  # a bad row fails here, before any training
    path = out / f"{name}.toml"
    path.write_text("".join(f"{key} = {json.dumps(value)}\n" for key, value in settings.items()))
    return path


def run_row(name: str, budget: str, out: Path, device: str, base: list[str], baseline: str) -> dict:
    gflops = matmul_peak_flops(torch.device("cpu"), torch.float32, n=2048) / 1e9
    config = row_config(name, budget, out, base, baseline)
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
    last = metrics[-1]
    sample = "".join(generate_text(model, "ROMEO.\n", 60, temperature=0.8, top_k=40, seed=123, include_prompt=True))
    return {"row": name, "knobs": ROWS[name], "baseline": baseline, "base": base, "budget_s": parse_duration(budget),
            "wall_s": round(wall, 1), "steps": last["step"], "tokens_seen": last["tokens_seen"],
            "tokens_per_s": round(last["tokens_seen"] / last["elapsed_s"]),  # training steps' time only
            "params": model.num_params(), "val_bpb": score["bits_per_byte"], "val_loss": score["loss"],
            "matmul_gflops": round(gflops, 1), "sample": sample}


def table(results: list[dict]) -> str:
    base = next((r for r in results if r["row"] == "baseline" and "val_bpb" in r), None)
    lines = ["| row | changes | params | steps | tokens | tokens/s | wall (s) | val bits/byte | vs baseline "
             "| fp32 matmul GFLOP/s |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['row']} | failed: {r['error']} | | | | | | | | {r['matmul_gflops']:.0f} |")
            continue
        changes = ", ".join(f"{k}={v}" for k, v in r["knobs"].items()) or "(the baseline)"
        delta = f"{r['val_bpb'] - base['val_bpb']:+.3f}" if base else ""
        lines.append(f"| {r['row']} | {changes} | {r['params'] / 1e6:.1f}M | {r['steps']} | {r['tokens_seen']:,} | "
                     f"{r['tokens_per_s']:,} | {r['wall_s']:.0f} | {r['val_bpb']:.3f} | {delta} | "
                     f"{r['matmul_gflops']:.0f} |")
    samples = [f"{r['row']}: {r['sample']!r}" for r in results if "sample" in r]
    return "\n".join(lines + ["", "Samples (60 tokens after 'ROMEO.\\n', temperature 0.8, top-k 40, seed 123):",
                                *samples])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--budget", default="10m", help="wall-clock budget per row (default: 10m)")
    p.add_argument("--rows", default=",".join(ROWS), help="comma-separated rows (default: all; see --list)")
    p.add_argument("--baseline", default=BASELINE, help=f"bundled config or TOML file the rows start from "
                   f"(default: {BASELINE}; speedrun-cpu is the recipe this benchmark found)")
    p.add_argument("--base", default="", help="comma-separated rows whose knobs every row starts from "
                   "(default: none: the --baseline config as it is)")
    p.add_argument("--rerun-baseline", action="store_true", help="run the baseline again at the end")
    p.add_argument("--device", default="cpu", help="device for training (default: cpu)")
    p.add_argument("--out", default="runs/speedrun", help="folder for configs, runs and results.jsonl")
    p.add_argument("--list", action="store_true", help="print the rows and exit")
    p.add_argument("--table", action="store_true", help="print the table of --out's results.jsonl (rows run "
                   "by several invocations, e.g. one per core) and exit")
    args = p.parse_args()
    if args.list:
        print("\n".join(f"{name:<12} {knobs or '(the baseline)'}" for name, knobs in ROWS.items()))
        return
    if args.table:
        lines = (Path(args.out) / "results.jsonl").read_text().splitlines()
        print(table(sorted((json.loads(line) for line in lines), key=lambda r: r["row"] != "baseline")))
        return
    names = [n for n in args.rows.split(",") if n]
    base = [n for n in args.base.split(",") if n]
    unknown = [n for n in names + base if n not in ROWS]
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
          f"torch {torch.__version__}, {torch.get_num_threads()} threads; baseline: {args.baseline}"
          f"{' + ' + ' + '.join(base) if base else ''}", flush=True)
    results = []
    for i, name in enumerate(names):
        if (out / name).exists():  # a rerun of a row (the baseline at the end) gets a fresh folder
            name_dir = out / f"{name}-{i}"
            ROWS[name_dir.name] = ROWS[name]
            name = name_dir.name
        results.append(run_row(name, args.budget, out, args.device, base, args.baseline))
        with open(out / "results.jsonl", "a") as f:
            f.write(json.dumps({**results[-1], "date": time.strftime("%Y-%m-%d %H:%M")}) + "\n")
        print(table(results[-1:]).splitlines()[2], flush=True)
    print()
    print(table(results))


if __name__ == "__main__":
    main()
