"""The GPT model: token embeddings, pre-norm transformer blocks, an LM head, and a KV cache.

With the default config it is exactly GPT-2 (learned positions, LayerNorm, GELU MLP, biases, tied
head); the config's switches swap in the parts of a modern block (model.layers): rotary positions,
RMSNorm, a SwiGLU or squared-ReLU MLP, QK-norm, no biases, an untied head, zero-initialised output
projections and soft-capped logits.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import GPTConfig
from ..tokenizer import Tokenizer
from .cpu_decoding import Linear, decoding_kernels, huge_page_memory, linear, linear_weights, pointer
from .layers import MLP, RMSNorm, apply_rotary, make_norm, rotary_angles
from .native import ACTIVATIONS, BlockWeights
from .quantize import Int8Linear


class KVCache:
    """Pre-allocated keys and values of every layer, for incremental decoding, each row at its own
    length (a batch of independent conversations: see serve/engine.py).

    Buffers are allocated once at (batch, n_heads, capacity, head_dim) per layer, so decoding
    writes into place instead of concatenating a growing tensor at every step. `lengths` says how
    many positions of each row are filled; a row's next tokens go at its own length. Positions past
    a row's length may hold stale keys from an earlier use: attention never looks at them.
    """

    def __init__(self, config: GPTConfig, batch_size: int, device=None, dtype=torch.float32,
                 capacity: int | None = None):
        # capacity: the positions each row can hold, the context length unless a caller knows it
        # needs fewer (a short generation: a smaller buffer is quicker to allocate)
        capacity = min(capacity or config.context_length, config.context_length)
        shape = (batch_size, config.n_heads, capacity, config.head_dim)
        if torch.device(device or "cpu").type == "cpu":  # one block in huge pages: a step reads every layer's
            size = math.prod(shape)
            # written now (zeros), so no decoding step pays for mapping its pages later
            memory = huge_page_memory(2 * config.n_layers * size * dtype.itemsize).zero_().view(dtype)
            # stored (B, capacity, nh, hs): a position's heads side by side, so attend_last reads a
            # row's keys as one stream; seen (B, nh, capacity, hs) like the other devices' buffers
            stored = (shape[0], shape[2], shape[1], shape[3])
            buffers = [memory[i * size:(i + 1) * size].view(stored).transpose(1, 2) for i in range(2 * config.n_layers)]
        else:
            buffers = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(2 * config.n_layers)]
        self.keys, self.values = buffers[:config.n_layers], buffers[config.n_layers:]
        self.lengths = [0] * batch_size  # positions filled in each row, kept on the host
        self.capacity = capacity
        # Each layer's block and its weights as decode_block reads them (block_weights): built at
        # the first step, kept for this cache's life
        self.plans: dict[int, tuple[nn.Module, bool, BlockWeights | None]] = {}

    @property
    def pos(self) -> int:
        """The length every row shares (a batch decoded in lock step)."""
        if len(set(self.lengths)) != 1:
            raise ValueError(f"the rows of this cache have different lengths: {self.lengths}")
        return self.lengths[0]

    def reset(self) -> None:
        self.lengths = [0] * len(self.lengths)

    def rows(self, start: int, stop: int, lengths: list[int]) -> KVCache:
        """Rows start..stop-1 as a cache of their own with the given lengths, sharing this one's
        memory: a forward pass on it writes into these rows."""
        view = object.__new__(KVCache)
        view.keys = [k[start:stop] for k in self.keys]
        view.values = [v[start:stop] for v in self.values]
        view.lengths = list(lengths)
        view.capacity = self.capacity
        view.plans = self.plans
        return view

    def copy_row(self, src: int, dst: int, length: int) -> None:
        """Move row src's first `length` positions into row dst (to keep the live rows together)."""
        for buffers in (self.keys, self.values):
            for b in buffers:
                b[dst, :, :length] = b[src, :, :length]

    def write(self, layer: int, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor,
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v (B, nh, T, hs) at their positions (B, T) and return every row's keys and
        values up to the longest row's new end, (B, nh, end, hs)."""
        T = k.size(2)
        end = max(self.lengths) + T
        if len(set(self.lengths)) == 1:  # lock step: one slice per layer
            start = self.lengths[0]
            self.keys[layer][:, :, start:end] = k
            self.values[layer][:, :, start:end] = v
        else:  # (B, T) index pairs into the (B, ctx) grid of positions, heads carried along
            rows = torch.arange(k.size(0), device=k.device)[:, None]
            self.keys[layer].transpose(1, 2)[rows, positions] = k.transpose(1, 2)
            self.values[layer].transpose(1, 2)[rows, positions] = v.transpose(1, 2)
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]

    def attend_last(self, layer: int, qkv: torch.Tensor, lib, q_norm: RMSNorm | None = None,
                    k_norm: RMSNorm | None = None, rope: tuple | None = None) -> torch.Tensor:
        """One new token per row, through the compiled kernel `lib` (cpu_decoding.float_kernels),
        from the rows' qkv projections (B, 1, 3C): q and k normed by q_norm and k_norm (QK-norm,
        where given) and rotated by rope's (cos, sin) (where given), the key and value stored at
        the row's length, and the query's attention over the row's own keys returned, (B, 1, C),
        heads side by side. Each row's sums run in one fixed order over its own keys, so its
        numbers never depend on the other rows."""
        qkv = qkv.contiguous()
        B, C = qkv.shape[0], qkv.shape[2] // 3
        keys, values, lengths, cos, sin = self._kernel_args(layer, qkv, 3, rope)
        gains = [None if norm is None else norm.weight.contiguous() for norm in (q_norm, k_norm)]  # float32, as q
        eps = q_norm.epsilon if q_norm is not None else 0.0  # (both norms are built with the config's eps)
        y = torch.empty(B, 1, C, dtype=torch.float32)
        if lib.attend_last(qkv.data_ptr(), *map(pointer, gains), eps, pointer(cos), pointer(sin), keys.data_ptr(),
                           values.data_ptr(), lengths.data_ptr(), B, keys.shape[1], keys.shape[3], self.capacity,
                           y.data_ptr(), torch.get_num_threads()) != 0:
            raise MemoryError("no memory for the attention scores")
        return y

    def block_weights(self, layer: int, block: Block) -> BlockWeights | None:
        """block.decoding_weights(), built at layer `layer`'s first step and kept: a step then costs
        one Python call per block, not ~100 us of checks per block. A cache serves one model whose
        weights are not moved or replaced while it decodes (prepare_for_decoding, quantize_model,
        pack_for_batches, add_lora come first): the kernel reads the tensors it was given, which
        the struct keeps alive."""
        plan = self.plans.get(layer)
        if plan is None or plan[0] is not block or plan[1] != block.training:
            plan = self.plans[layer] = (block, block.training, block.decoding_weights())
        return plan[2]

    def decode_block(self, layer: int, x: torch.Tensor, lib, weights: BlockWeights, rope: tuple | None = None) -> torch.Tensor:
        """A whole block's decoding step for the rows x (B, 1, C) in one call of the compiled
        kernel `lib.decode_block`, from the block's `weights` (Block.decoding_weights): the work of
        its modules, attention as attend_last. Returns the block's output, (B, 1, C)."""
        x = x.contiguous()
        keys, values, lengths, cos, sin = self._kernel_args(layer, x, 1, rope)
        y = torch.empty_like(x)
        if lib.decode_block(weights, x.data_ptr(), x.shape[0], keys.data_ptr(), values.data_ptr(), lengths.data_ptr(),
                            self.capacity, pointer(cos), pointer(sin), y.data_ptr(), torch.get_num_threads()) != 0:
            raise MemoryError("no memory for a decoding step")
        return y

    def _kernel_args(self, layer: int, rows: torch.Tensor, widths: int, rope: tuple | None) -> tuple:
        """Layer `layer`'s keys and values, the rows' lengths (int64) and their rotary cos and sin
        (B, D) (None without rope), for a kernel given `rows` (B, 1, widths * C) float32 (a block's
        input: 1; qkv: 3), once it is checked that this cache can take them."""
        B, H, D = rows.shape[0], self.keys[layer].shape[1], self.keys[layer].shape[3]
        keys, values = self.keys[layer], self.values[layer]  # (B, nh, capacity, hs), stored (B, capacity, nh, hs)
        stored = (self.capacity * H * D, D, H * D, 1)
        if (keys.shape[0] != B or rows.shape != (B, 1, widths * H * D) or keys.dtype != rows.dtype
                or keys.stride() != stored or values.stride() != stored or max(self.lengths) >= self.capacity):
            raise ValueError(f"a cache of {tuple(keys.shape)} {keys.dtype} at lengths {self.lengths} cannot take "
                             f"a step of {tuple(rows.shape)} {rows.dtype}")
        cos, sin = (None, None) if rope is None else (t.float().expand(B, 1, 1, D).contiguous() for t in rope)
        return keys, values, torch.tensor(self.lengths, dtype=torch.int64), cos, sin

    def advance(self, n: int) -> None:
        self.lengths = [length + n for length in self.lengths]


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.n_heads = config.n_heads
        self.qkv = Linear(config.emb_dim, 3 * config.emb_dim, bias=config.qkv_bias)
        self.out_proj = Linear(config.emb_dim, config.emb_dim, bias=config.bias)
        # QK-norm: one gain per head dimension, shared by the heads (as Qwen3)
        self.q_norm = RMSNorm(config.head_dim, eps=config.norm_eps) if config.qk_norm else None
        self.k_norm = RMSNorm(config.head_dim, eps=config.norm_eps) if config.qk_norm else None
        self.dropout = config.dropout
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, positions: torch.Tensor, rope: tuple | None = None,
                cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:
        B, T, C = x.shape
        if cache is not None and T == 1 and (lib := decoding_kernels(x)) is not None:
            # a decoding step: norms, rotary, the cache write and attention in one call
            y = cache.attend_last(layer, self.qkv(x), lib, self.q_norm, self.k_norm, rope)  # (B, 1, C)
            return self.resid_dropout(self.out_proj(y))
        q, k, v = (t.view(B, T, self.n_heads, C // self.n_heads) for t in self.qkv(x).split(C, dim=2))
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, T, nh, hs) -> (B, nh, T, hs)
        if rope is not None:  # keys are cached rotated: a key's angle is fixed by its position
            q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)

        mask, is_causal = None, True
        if cache is not None:
            k, v = cache.write(layer, k, v, positions)  # (B, nh, end, hs)
            start = cache.lengths[0]
            if len(set(cache.lengths)) > 1:
                # Rows at different lengths: query t of row b sees the keys at positions up to its
                # own, which also hides whatever a shorter row has past its end.
                is_causal = False
                mask = (torch.arange(k.size(2), device=x.device) <= positions[:, :, None])[:, None]
            elif T == 1:
                is_causal = False  # one new query may look at every cached key
            elif start > 0:
                # SDPA's is_causal aligns the mask to the top-left corner, which is wrong when the
                # queries are the last T of `end` keys; spell the mask out instead.
                is_causal = False
                mask = torch.ones(T, k.size(2), dtype=torch.bool, device=x.device).tril(diagonal=start)

        if cache is not None and T == 1 and mask is not None:
            # One new query per row, the rows at different lengths: each row attends over its own
            # keys exactly as it does alone (a mask over the longest row's keys sums the softmax
            # in another order), so a row's numbers never depend on its neighbours'.
            y = torch.cat([F.scaled_dot_product_attention(q[b:b + 1], k[b:b + 1, :, :n + 1], v[b:b + 1, :, :n + 1])
                           for b, n in enumerate(cache.lengths)])  # (B, nh, 1, hs)
        else:
            y = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, is_causal=is_causal,
                dropout_p=self.dropout if self.training else 0.0,
            )  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.out_proj(y))


class Block(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln1 = make_norm(config, config.emb_dim)
        self.attn = CausalSelfAttention(config)
        self.ln2 = make_norm(config, config.emb_dim)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, positions: torch.Tensor, rope: tuple | None = None,
                cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:
        if (cache is not None and x.shape[1] == 1 and (lib := decoding_kernels(x)) is not None
                and (weights := cache.block_weights(layer, self)) is not None):
            return cache.decode_block(layer, x, lib, weights, rope)  # a decoding step: the whole block in one call
        x = x + self.attn(self.ln1(x), positions, rope, cache, layer)
        return x + self.mlp(self.ln2(x))

    def decoding_weights(self) -> BlockWeights | None:
        """This block's weights as the compiled decode_block reads them, or None where a part of it
        is not one that kernel computes: training (dropout), a LoRA adapter, another kind of norm or
        MLP, a weight's dtype or layout (cpu_decoding.linear_weights)."""
        attn, mlp, norms = self.attn, self.mlp, (self.ln1, self.ln2)
        kinds = (RMSNorm, nn.LayerNorm)
        if (self.training or not isinstance(self.ln1, kinds) or type(self.ln2) is not type(self.ln1)
                or not all(n is None or isinstance(n, RMSNorm) for n in (attn.q_norm, attn.k_norm))
                or (attn.q_norm is None) != (attn.k_norm is None) or mlp.kind not in ACTIVATIONS):
            return None
        linears = [linear_weights(m) for m in (attn.qkv, attn.out_proj, mlp.fc, mlp.out_proj)]
        rms = isinstance(self.ln1, RMSNorm)
        eps = [norm.epsilon if rms else norm.eps for norm in norms]
        gains = [t for norm in (*norms, attn.q_norm, attn.k_norm) if norm is not None
                 for t in (norm.weight, getattr(norm, "bias", None)) if t is not None]
        if (None in linears or eps[0] != eps[1] or any(norm.weight is None for norm in norms)
                or not all(t.dtype == torch.float32 and t.device.type == "cpu" and t.is_contiguous() for t in gains)):
            return None
        (qkv, out, fc, down), C, H = [w for w, _ in linears], self.ln1.weight.shape[0], attn.n_heads
        width = fc.N // 2 if mlp.kind == "swiglu" else fc.N
        if (C % H or (qkv.K, qkv.N, out.K, out.N, fc.K, down.K, down.N) != (C, 3 * C, C, C, C, width, C)
                or attn.q_norm is not None and attn.q_norm.weight.shape != (C // H,)):
            return None  # (the shapes decode_block's buffers are sized for)
        qk = attn.q_norm is not None
        weights = BlockWeights(self.ln1.weight.data_ptr(), pointer(getattr(self.ln1, "bias", None)),
                               self.ln2.weight.data_ptr(), pointer(getattr(self.ln2, "bias", None)), rms, eps[0],
                               qkv, out, fc, down, pointer(attn.q_norm.weight) if qk else None,
                               pointer(attn.k_norm.weight) if qk else None, attn.q_norm.epsilon if qk else 0.0,
                               ACTIVATIONS[mlp.kind], H, C // H)
        weights.tensors = (*gains, *(t for _, tensors in linears for t in tensors))
        return weights


class GPT(nn.Module):
    """Decoder-only GPT. forward: (B, T) int64 ids -> (B, T, vocab_size) logits, or with
    targets (B, T) the mean cross-entropy; with head=False the last block's output (B, T, emb_dim)
    (a prefix run only to fill a KV cache skips the LM head, its costliest matmul); with last=True
    the logits of the last position alone, (B, 1, vocab_size) (a prompt's other positions need none).

    The token embedding and LM head have config.padded_vocab_size rows (a multiple of 64). The
    padding rows stay zero, get no logits outside the training loss (where they are masked to
    -inf, so they carry no probability and no gradient), and are left out of state_dict() and
    num_params(): checkpoints, exports and parameter counts are those of vocab_size.

    `tokenizer` is the model's own (its ids are this model's vocabulary): the loaders and training
    give one; a model built bare has None, and whatever needs text then says so (tokenizer_of).
    `lora` records the LoRA adapters add_lora gave it (None without them).
    """

    tokenizer: Tokenizer | None
    lora: dict[str, Any] | None

    def __init__(self, config: GPTConfig, tokenizer: Tokenizer | None = None):
        super().__init__()
        self.config = config
        self.tokenizer = tokenizer
        self.lora = None
        self.tok_emb = nn.Embedding(config.padded_vocab_size, config.emb_dim)
        learned = config.positions == "learned"  # else rotary, computed in attention
        self.pos_emb = nn.Embedding(config.context_length, config.emb_dim) if learned else None
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        self.final_norm = make_norm(config, config.emb_dim)
        # cpu_decoding's Linear for its `packed` field (pack_for_batches); forward slices the weight itself.
        self.lm_head = Linear(config.emb_dim, config.padded_vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.tok_emb.weight  # weight tying, as in GPT-2
        self.reset_parameters()
        self.register_state_dict_post_hook(_drop_vocab_padding)
        self.register_load_state_dict_pre_hook(_add_vocab_padding)

    def reset_parameters(self) -> None:
        """GPT-2 initialisation: N(0, 0.02) weights, zero biases, unit gains, and residual
        projections scaled by 1/sqrt(2 * n_layers) so the residual stream's variance does not grow
        with depth (or zero, with zero_init_proj: every block then starts as the identity).
        Embeddings use config.embedding_std (an untied LM head keeps 0.02)."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, mean=0.0, std=self.config.embedding_std)
            if isinstance(module, (nn.Linear, nn.LayerNorm)) and module.bias is not None:
                nn.init.zeros_(module.bias)
            if isinstance(module, (nn.LayerNorm, nn.RMSNorm)):
                nn.init.ones_(module.weight)
        residual_std = 0.02 / math.sqrt(2 * self.config.n_layers)
        for block in self.blocks:
            for proj in (block.attn.out_proj, block.mlp.out_proj):
                if self.config.zero_init_proj:
                    nn.init.zeros_(proj.weight)
                else:
                    nn.init.normal_(proj.weight, mean=0.0, std=residual_std)
        if self.config.tie_embeddings:  # the Linear loop above re-drew the shared matrix
            nn.init.normal_(self.tok_emb.weight, mean=0.0, std=self.config.embedding_std)
        with torch.no_grad():
            self.tok_emb.weight[self.config.vocab_size:] = 0.0
            self.lm_head.weight[self.config.vocab_size:] = 0.0

    def forward(self, idx: torch.Tensor, cache: KVCache | None = None,
                targets: torch.Tensor | None = None, head: bool = True, last: bool = False) -> torch.Tensor:
        if idx.dim() != 2:
            raise ValueError(f"expected token ids of shape (batch, seq), got {tuple(idx.shape)}")
        if last and targets is not None:
            raise ValueError("last=True gives logits for generation; a loss needs every position")
        B, T = idx.shape
        longest = max(cache.lengths) if cache is not None else 0
        if cache is not None and cache.capacity < self.config.context_length and longest + T > cache.capacity:
            raise ValueError(f"{longest + T} positions do not fit this KV cache of {cache.capacity}")
        if longest + T > self.config.context_length:
            raise ValueError(
                f"sequence of length {longest + T} is longer than the model's context length "
                f"({self.config.context_length}); crop the input to the last "
                f"{self.config.context_length} tokens"
            )
        positions = self.positions(B, T, cache, idx.device)  # (B, T)
        x = self.tok_emb(idx)  # (B, T, C)
        rope = None
        if self.pos_emb is not None:
            x = x + self.pos_emb(positions)
        else:  # rotary: the angles of these positions, shared by every layer
            rope = rotary_angles(positions, self.config.head_dim, self.config.rope_theta)
        x = self.drop(x)
        for layer, block in enumerate(self.blocks):
            x = block(x, positions, rope, cache, layer)
        if cache is not None:
            cache.advance(T)
        if not head:  # filling a cache whose logits nobody reads: the LM head is skipped, (B, T, C) out
            return x
        if last:  # generating: only the last position's logits are read, (B, 1, V)
            x = x[:, -1:]
        x = self.final_norm(x)
        V, cap = self.config.vocab_size, self.config.logit_softcap
        int8_head = isinstance(self.lm_head, Int8Linear)  # it holds the vocab_size rows alone
        if targets is None or int8_head:  # only the real vocabulary's rows: padded ids never get a logit
            logits = self.lm_head(x) if int8_head else linear(
                x, self.lm_head.weight[:V], packed=self.lm_head.packed)
            logits = cap * torch.tanh(logits / cap) if cap else logits  # (B, T, V)
            return logits if targets is None else F.cross_entropy(logits.flatten(0, 1), targets.flatten())
        # The matmul with aligned shapes, (B, T, padded V); a bias of -inf gives the padded ids
        # no probability, hence no gradient (inside the same addmm when nothing is capped).
        mask = x.new_zeros(self.config.padded_vocab_size)
        mask[V:] = float("-inf")
        if cap:
            logits = cap * torch.tanh(F.linear(x, self.lm_head.weight) / cap) + mask
        else:
            logits = F.linear(x, self.lm_head.weight, mask)
        return F.cross_entropy(logits.flatten(0, 1), targets.flatten())

    @staticmethod
    def positions(B: int, T: int, cache: KVCache | None, device) -> torch.Tensor:
        """(B, T) int64: the position of each input token, each row continuing from its own length
        in the cache (0 without one)."""
        steps = torch.arange(T, device=device)
        if cache is None or len(set(cache.lengths)) == 1:
            return (steps + (cache.lengths[0] if cache is not None else 0)).expand(B, T)
        return torch.tensor(cache.lengths, device=device)[:, None] + steps

    def num_params(self, include_embeddings: bool = True) -> int:
        """Parameter count, tied weights counted once. Without embeddings it leaves out the token
        and learned position tables (the count scaling laws use)."""
        c = self.config
        padding = (c.padded_vocab_size - c.vocab_size) * c.emb_dim  # per padded matrix
        n = sum(p.numel() for p in self.parameters())  # parameters() yields a tied tensor once
        n -= padding * (1 if c.tie_embeddings else 2)
        if not include_embeddings:
            n -= c.vocab_size * c.emb_dim + (c.context_length * c.emb_dim if c.positions == "learned" else 0)
        return n

    def flops_per_token(self, seq_len: int | None = None) -> float:
        """Training FLOPs per token (forward + backward): 6 * N for the matmuls with the weights,
        N counting the LM head but not the embedding lookups, plus 12 * n_layers * seq_len * emb_dim
        for the attention scores and their weighted sum (the PaLM paper's appendix B formula)."""
        c = self.config
        t = seq_len or c.context_length
        n = self.num_params(include_embeddings=False)
        if self.config.tie_embeddings:  # the shared matrix is still a matmul in the LM head
            n += c.vocab_size * c.emb_dim
        return 6 * n + 12 * c.n_layers * t * c.emb_dim

    def new_cache(self, batch_size: int, capacity: int | None = None) -> KVCache:
        """An empty KV cache for `batch_size` rows of up to `capacity` positions (the context length)."""
        weight = self.tok_emb.weight
        return KVCache(self.config, batch_size, device=weight.device, dtype=weight.dtype, capacity=capacity)


VOCAB_ROW_PARAMS = ("tok_emb.weight", "lm_head.weight")  # the matrices with padded rows


def vocab_rows(t, config: GPTConfig, padded: bool):
    """`t`, one of the padded matrices or one of its optimizer moments, with padded_vocab_size rows
    (padded=True: zero rows added) or vocab_size rows (False). Anything else comes back unchanged,
    and so does a sharded FSDP2 tensor: slicing it would make this rank alone all-gather it."""
    if not torch.is_tensor(t) or t.dim() != 2 or hasattr(t, "full_tensor"):
        return t
    V, P = config.vocab_size, config.padded_vocab_size
    if padded and t.shape[0] == V < P:
        return torch.cat([t, t.new_zeros(P - V, t.shape[1])])
    if not padded and t.shape[0] == P > V:
        return t[:V]
    return t


def _drop_vocab_padding(model: GPT, state: dict, prefix: str, local_metadata) -> None:
    """state_dict() holds vocab_size rows: the padding is an internal detail, not a weight."""
    for name in VOCAB_ROW_PARAMS:
        if prefix + name in state:
            state[prefix + name] = vocab_rows(state[prefix + name], model.config, padded=False)


def _add_vocab_padding(model: GPT, state: dict, prefix: str, *args) -> None:
    """load_state_dict() takes vocab_size rows and adds the zero padding rows back."""
    for name in VOCAB_ROW_PARAMS:
        if prefix + name in state:
            state[prefix + name] = vocab_rows(state[prefix + name], model.config, padded=True)
