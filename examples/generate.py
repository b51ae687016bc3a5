"""Generating text from Python, the way a notebook would.

    python examples/generate.py                 # a randomly initialised model: noise, but the API
    python examples/generate.py runs/<name>     # a model you trained (or a Hugging Face GPT-2 folder)
"""

import sys

import gptforge
from gptforge.generate import model_for_generation

# Any model gptforge loads: a run folder (its newest checkpoint), a checkpoint, a Hugging Face
# GPT-2 folder or hub id; or, with none, a preset with random weights. Ready to decode: eval mode,
# and on a CPU the weights re-stored for faster decoding.
source = sys.argv[1] if len(sys.argv) > 1 else None
model = model_for_generation(source, preset="gpt2-tiny", seed=0)
print(f"{model.num_params():,} parameters, context {model.config.context_length}")

# Text streamed as it is produced: temperature, top-k and a seed, as the CLI takes them.
for piece in gptforge.generate_text(model, "Once upon a time", max_new_tokens=30, temperature=0.8,
                                    top_k=50, seed=1):
    print(piece, end="", flush=True)
print()

# Several samples of the same prompt, drawn as one batch.
for text in gptforge.generate_texts(model, "To be, or not to be", 3, max_new_tokens=15, temperature=1.0, seed=2):
    print(repr(text))

# One level down: token ids in, token ids out (greedy decoding, with the KV cache), encoded and
# decoded by the model's own tokenizer.
tokenizer = gptforge.tokenizer_of(model)
ids = gptforge.generate(model, gptforge.text_to_ids("Every effort moves you", tokenizer), max_new_tokens=10,
                        temperature=0)
print("greedy:", gptforge.ids_to_text(ids, tokenizer))
