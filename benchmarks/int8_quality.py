"""What `--quantize int8` costs in quality: bits per byte on a held-out split, float32 vs int8, and how
often int8's greedy choice agrees with float32's: given the same context (float32's greedy
continuation of a few prompts, fed to both), and for each prompt how far the two free-running
greedy continuations go before their first difference.

    gptforge prepare builtin:shakespeare --split chars --tokenizer RUN/tokenizer --out /tmp/held
    python benchmarks/int8_quality.py --checkpoint RUN --data /tmp/held --tokens 64

(`--split chars` holds out the last tenth of the characters, the split a run on builtin:shakespeare
validated on.)
"""

from __future__ import annotations

import argparse

import torch

from gptforge.evaluate import evaluate_path
from gptforge.generate import complete_ids, model_for_generation
from gptforge.sampling import Sampling
from gptforge.tokenizer import tokenizer_of

PROMPTS = ["ROMEO.\n", "First Citizen:\nBefore we proceed", "The king is", "O, what a", "Enter HAMLET",
           "My lord,", "To be, or not", "JULIET.\nWhat"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--data", required=True, help="prepared corpus (its val split) or text")
    p.add_argument("--tokens", type=int, default=64, help="greedy tokens per prompt (default: 64)")
    args = p.parse_args()
    for how in (None, "int8"):
        r = evaluate_path(args.checkpoint, args.data, device="cpu", progress=False, quantize=how)
        print(f"{how or 'float32':8} bits per byte {r['bits_per_byte']:.5f}  loss {r['loss']:.5f}  "
              f"({r['tokens']:,} tokens of {r['split'] or 'text'})")
    fp32, int8 = (model_for_generation(args.checkpoint, device="cpu", quantize=how) for how in (None, "int8"))
    tokenizer = tokenizer_of(fp32)
    same = total = 0
    firsts = []
    for prompt in PROMPTS:
        ids = tokenizer.encode_prompt(prompt)
        greedy = Sampling(args.tokens, temperature=0.0)
        a, b = (complete_ids(m, ids, greedy) for m in (fp32, int8))
        firsts.append(next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), len(a)))
        context = torch.tensor([ids + a])
        with torch.no_grad():  # the choice each model makes after every prefix of the same text
            picks = [m(context)[0, len(ids) - 1:-1].argmax(-1) for m in (fp32, int8)]
        same += int((picks[0] == picks[1]).sum())
        total += len(a)
    identical = sum(f == args.tokens for f in firsts)
    print(f"greedy agreement on the same context: {same}/{total} next tokens ({100 * same / total:.1f}%)")
    print(f"free-running greedy: {identical}/{len(PROMPTS)} continuations identical; first difference at "
          f"token {firsts} (of {args.tokens})")


if __name__ == "__main__":
    main()
