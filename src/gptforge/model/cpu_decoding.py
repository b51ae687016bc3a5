"""Fast decoding on CPUs: a linear layer whose decoding steps (a few rows) run the compiled
float32 kernel (native.py) or, without one, split the matrix-vector product across the CPU threads;
`prepare_for_decoding`, which readies the weights for it; and `pack_for_batches`, oneDNN's blocked
copies for batches of rows and prompts in the server.

Decoding one token multiplies a vector by every weight matrix: memory-bound work that MKL runs
on a single thread. Training and GPUs never take these paths.
"""

from __future__ import annotations

import functools
import math
import mmap
import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F

from .native import ACTIVATIONS, LINEAR_INT8, LINEAR_PANELS, LINEAR_ROWS, BlockWeights, LinearWeights, library
from .quantize import PANEL, Int8Linear, native_kernel, quantize_model

FLOAT_ROWS = 8  # up to this many rows take the compiled float32 kernel on the weights as trained
HUGE_PAGE = 2 << 20  # the size of a transparent huge page on x86-64 and most arm64 Linux systems


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
           packed: torch.Tensor | None = None) -> torch.Tensor:
    """F.linear, with faster paths for decoding on CPUs.

    Up to FLOAT_ROWS rows of float32 x against a large row-major weight, with gradients off, go to
    the compiled kernel (float_kernels): each weight row streams from memory once for all the rows,
    on every thread, at close to the machine's read bandwidth, and each row's numbers are its own.
    Without the kernel, for a few rows of x against a column-major weight (see prepare_for_decoding), MKL's
    matrix-vector product runs on one thread. Splitting K across the threads as a batched matmul,
    (s, M, K/s) @ (s, K/s, N) summed over s, puts every core on streaming the weight: 1.7x the
    memory bandwidth for a 768 x 3072 weight on 2 cores (benchmarks/README.md). Below 2^17
    elements a weight sits in the caches and the split costs more than it gains (0.4x at 128 x 512,
    1.3x at 256 x 1024); in bfloat16 oneDNN's batched matmul loses to its plain one. Everything
    else (training, autocast, GPUs, larger batches) is plain F.linear, decided before anything that
    would break a torch.compile graph.

    `packed`, the weight's copy for batches (pack_for_batches), serves every row count when
    gradients are off, a batch of decoding rows or a prompt being prefilled: the compiled kernel on
    panels (float_panels) where it built, else oneDNN's blocked layout from two rows on.
    """
    K, N = weight.shape[1], weight.shape[0]
    plain_bias = _plain(bias)
    if (packed is not None and not packed.is_mkldnn and packed.dtype == torch.float32 and 0 < x.numel()
            and x.shape[-1] == K and plain_bias and (lib := decoding_kernels(x)) is not None):
        return _compiled(lib.float_panel_linear, x, packed, bias, N)
    if (packed is None and 0 < x.numel() <= FLOAT_ROWS * K and x.shape[-1] == K
            and weight.numel() >= 2**17 and weight.dtype == torch.float32 and weight.device.type == "cpu"
            and weight.is_contiguous() and plain_bias and (lib := decoding_kernels(x)) is not None):
        return _compiled(lib.float_linear, x, weight, bias, N)
    if (packed is not None and packed.is_mkldnn and not torch.is_grad_enabled() and x.shape[-1] == K
            and x.numel() > K):
        rows = x.reshape(-1, K).contiguous()
        return torch.ops.mkldnn._linear_pointwise(rows, packed, bias, "none", [], "").view(*x.shape[:-1], N)
    if (torch.is_grad_enabled() or weight.stride(0) != 1 or x.device.type != "cpu"
            or weight.dtype != torch.float32 or torch.is_autocast_enabled("cpu")
            or weight.numel() < 2**17 or x.shape[-1] != K or not 0 < x.numel() <= 4 * K):
        return F.linear(x, weight, bias)
    splits = math.gcd(K, torch.get_num_threads())
    if splits < 2:
        return F.linear(x, weight, bias)
    rows = x.reshape(-1, K)  # (M, K), M <= 4
    parts = torch.bmm(rows.view(rows.shape[0], splits, K // splits).transpose(0, 1),
                      weight.t().view(splits, K // splits, N))  # (splits, M, N)
    y = parts.sum(0)
    if bias is not None:
        y += bias
    return y.view(*x.shape[:-1], N)


def _compiled(function, x: torch.Tensor, weights: torch.Tensor, bias: torch.Tensor | None, N: int) -> torch.Tensor:
    """x (..., K) times `weights` (in the layout `function` reads: float_linear's or
    float_panel_linear's) plus bias, through the compiled kernel: (..., N) float32."""
    K = x.shape[-1]
    rows = x.reshape(-1, K).contiguous()  # (M, K)
    y = torch.empty(rows.shape[0], N, dtype=torch.float32)
    function(rows.data_ptr(), rows.shape[0], K, weights.data_ptr(), pointer(bias), N, y.data_ptr(),
             torch.get_num_threads())
    return y.view(*x.shape[:-1], N)


def pointer(t: torch.Tensor | None) -> int | None:
    """t's address for a kernel, None for no tensor."""
    return None if t is None else t.data_ptr()


def _plain(bias: torch.Tensor | None) -> bool:
    """Whether the kernels can add `bias`: none, or contiguous float32 on a CPU."""
    return bias is None or (bias.dtype == torch.float32 and bias.device.type == "cpu" and bias.is_contiguous())


def linear_weights(module: nn.Module) -> tuple[LinearWeights, tuple[torch.Tensor, ...]] | None:
    """`module`'s weights as decode_block's kernels read them, for any number of rows of float32
    input: an Int8Linear's panels, a Linear's panels (pack_for_batches) or else its row-major
    weight; with the tensors they point into (keep them while the kernel may read them). None for
    anything else (a LoRA adapter, another dtype, device or layout)."""
    if not isinstance(module, (Int8Linear, Linear)) or not _plain(module.bias):
        return None
    bias, address = () if module.bias is None else (module.bias,), pointer(module.bias)
    if isinstance(module, Int8Linear):
        if module.panels is None or native_kernel() is None:
            return None
        tensors = (module.panels, module.panel_sums, module.scale, *bias)
        return LinearWeights(LINEAR_INT8, module.out_features, module.in_features, module.panels.data_ptr(),
                             module.panel_sums.data_ptr(), module.scale.data_ptr(), address), tensors
    if type(module) is not Linear:  # (a LoRALinear adds its adapter's product)
        return None
    weight, packed = module.weight, module.packed
    if packed is not None and not packed.is_mkldnn and packed.dtype == torch.float32:
        return LinearWeights(LINEAR_PANELS, *weight.shape, packed.data_ptr(), None, None, address), (packed, *bias)
    if packed is None and weight.dtype == torch.float32 and weight.device.type == "cpu" and weight.is_contiguous():
        return LinearWeights(LINEAR_ROWS, *weight.shape, weight.data_ptr(), None, None, address), (weight, *bias)
    return None


class Linear(nn.Linear):
    """nn.Linear (same parameters and names) computed by `linear` above."""

    packed: torch.Tensor | None = None  # set by pack_for_batches

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias, self.packed)



def prepare_for_decoding(model: nn.Module, dtype: torch.dtype | None = None,
                         quantize: str | None = None) -> nn.Module:
    """Ready a model for fast generation, in place, and return it: eval mode, the weights cast to
    `dtype` if given, quantized if `quantize` says how (model.quantize), and on a CPU its large
    tensors moved into huge pages (hold_in_huge_pages) and, without the compiled float32 kernel
    (which reads the weights as trained, row-major), every linear weight re-stored column-major.

    The column-major layout keeps each weight's shape, values and name; only its strides change.
    Decoding one token multiplies a vector by every weight: MKL streams a column-major weight
    1.6x faster than a row-major one, and `linear` then splits that product across the CPU
    threads (MKL would run it on one), 1.7x more: about 2.2x the tokens/s of the model as trained,
    on the 2-core machine measured (benchmarks/README.md). The tied embedding is the LM head's
    matrix, so it becomes column-major too (a lookup then reads one strided row, still cheap).
    Keep such a model for inference: training it works but is not tuned for it.
    """
    model.eval()
    if dtype is not None:
        model.to(dtype)
    weight = next(model.parameters())
    if weight.device.type == "cpu" and (weight.dtype != torch.float32 or float_kernels() is None):
        with torch.no_grad():
            for module in model.modules():
                if isinstance(module, nn.Linear):  # the tied LM head is the embedding's Parameter
                    module.weight.data = module.weight.data.t().contiguous().t()
    quantize_model(model, quantize)
    if weight.device.type == "cpu":
        hold_in_huge_pages(model)
    return model


def huge_page_memory(nbytes: int) -> torch.Tensor:
    """`nbytes` of zeroed CPU memory (uint8) starting on a huge-page boundary, advised for
    transparent huge pages where Linux offers them (see hold_in_huge_pages; elsewhere ordinary
    memory). Pages are mapped as first touched, so memory never written costs nothing."""
    private = getattr(mmap, "MAP_PRIVATE", 0) | getattr(mmap, "MAP_ANONYMOUS", 0)
    block = mmap.mmap(-1, nbytes + HUGE_PAGE, **({"flags": private} if private else {}))  # (shared memory gets no THP)
    if hasattr(mmap, "MADV_HUGEPAGE"):  # before the first write: pages are chosen when first touched
        try:
            block.madvise(mmap.MADV_HUGEPAGE)
        except OSError:  # a kernel built without transparent huge pages: ordinary memory
            pass
    memory = torch.frombuffer(block, dtype=torch.uint8)  # holds the mmap while any view of it lives
    start = -memory.data_ptr() % HUGE_PAGE
    return memory[start:start + nbytes]


def huge_page_tensors(specs: list[tuple[tuple[int, ...], tuple[int, ...] | None, torch.dtype]]) -> list[torch.Tensor]:
    """Zeroed CPU tensors of the given (shape, strides or None for contiguous, dtype), each's elements
    dense, side by side in one block of huge_page_memory, which lives as long as any of them."""
    sizes = [math.prod(shape) * dtype.itemsize for shape, _, dtype in specs]
    starts = [sum(-(-n // 64) * 64 for n in sizes[:i]) for i in range(len(sizes))]  # each on a cache line
    memory = huge_page_memory(starts[-1] + sizes[-1] if specs else 0)
    return [memory[start:start + n].view(dtype).as_strided(shape, stride) if stride else
            memory[start:start + n].view(dtype).view(shape)
            for start, n, (shape, stride, dtype) in zip(starts, sizes, specs)]


def hold_in_huge_pages(model: nn.Module, smallest: int = 1 << 16) -> nn.Module:
    """Move every CPU parameter and buffer of `model` of at least `smallest` bytes (its weights) into
    one block of memory that Linux backs with transparent huge pages (2 MB instead of 4 KB), in
    place (same values, shapes, strides and sharing), and return the model.

    Why: a decoding step streams every weight from memory, and through 4 KB pages that costs a
    TLB miss per page; torch's allocator asks for huge pages only when THP_MEM_ALLOC_ENABLE=1 is
    set before it starts, and most systems give them only when asked ("madvise"). Measured on the
    2-core machine: the float32 kernel read gpt2-124m's weights at 38 GB/s from huge pages against
    30 from torch's own memory (benchmarks/README.md). Where the system offers none (THP "never")
    the block is ordinary memory and nothing changes but the addresses; off Linux nothing moves.
    The model's memory grows by less than one huge page, the tensors' old memory freed as each
    moves; the block is freed when none of the moved tensors is left (a weight replaced later, by
    quantizing, say, stays until then: prepare_for_decoding quantizes first).
    """
    if not hasattr(mmap, "MADV_HUGEPAGE"):  # not Linux: nothing to gain
        return model
    # Each tensor once (a tied weight is one Parameter), and the module slots that hold it.
    slots: dict[int, list[tuple[nn.Module, str, bool]]] = {}
    specs: dict[int, tuple] = {}
    for module in model.modules():
        for is_parameter, table in ((True, module._parameters), (False, module._buffers)):
            for name, tensor in table.items():
                if (tensor is not None and tensor.device.type == "cpu"
                        and tensor.numel() * tensor.element_size() >= smallest
                        and (tensor.is_contiguous() or tensor.dim() == 2 and tensor.t().is_contiguous())):
                    slots.setdefault(id(tensor), []).append((module, name, is_parameter))
                    specs[id(tensor)] = (tuple(tensor.shape), tensor.stride(), tensor.dtype)
    if not slots:
        return model
    places = dict(zip(specs, huge_page_tensors(list(specs.values()))))
    with torch.no_grad():
        for key, where in slots.items():  # one at a time: each old tensor's memory is freed as it moves
            module, name, is_parameter = where[0]
            old = (module._parameters if is_parameter else module._buffers)[name]
            place = places.pop(key).copy_(old)
            if is_parameter:
                old.data = place  # the same Parameter wherever it is held: ties and optimizers keep it
            else:
                for module, name, _ in where:
                    module._buffers[name] = place
            del old
    return model


def pack_for_batches(model: nn.Module) -> nn.Module:
    """Give every large linear weight of a float32 CPU model (the LM head included) a second copy,
    `packed`, which `linear` uses for the sequences decoded together in the server (serve/engine.py)
    and for prompts being prefilled: where the compiled kernels built, the weight as panels
    (float_panels), in huge pages, for every number of rows; else oneDNN's blocked layout, for two
    rows or more (one keeps the split product).

    On the 2-core machine measured, gpt2-124m's matmuls for 8 rows took 16 ms on panels against
    23 ms in oneDNN's layout (and 34 ms in the row-major kernel), and one row 15 ms against the
    row-major kernel's 17 (benchmarks/README.md); every row's numbers are its own, whatever rows
    run beside it. oneDNN's copy still beats MKL's small-M GEMM where there is no compiler (4.5 ms
    instead of 16 ms for the LM head at 8 rows). It costs one more copy of those weights in memory,
    and must be redone if the weights change. Weights below 2^17 elements, other dtypes and devices,
    and builds without either are left alone.
    """
    weight = next(model.parameters())
    panels = float_kernels() is not None
    if weight.device.type != "cpu" or weight.dtype != torch.float32 or not (panels or onednn_linear_works()):
        return model
    with torch.no_grad():
        # The LM head (a Linear too) is packed without its padding rows, as forward uses it.
        head, vocab = getattr(model, "lm_head", None), getattr(getattr(model, "config", None), "vocab_size", None)
        modules = [m for m in model.modules() if isinstance(m, Linear) and m.weight.numel() >= 2**17]
        weights = [m.weight.detach()[:vocab] if m is head else m.weight.detach() for m in modules]
        if panels:
            copies = huge_page_tensors([((-(-w.shape[0] // PANEL), w.shape[1], PANEL), None, w.dtype) for w in weights])
            for weight, copy in zip(weights, copies):
                float_panels(weight, out=copy)
        else:
            copies = [torch.ops.mkldnn._reorder_linear_weight(w.contiguous(), 8) for w in weights]
        for module, copy in zip(modules, copies):
            module.packed = copy
    return model


def float_panels(weight: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """The (N, K) weight as the compiled kernel's panels: 16 output rows column by column,
    (ceil(N / 16), K, 16), the rows past N zero (written into `out` if given)."""
    N, K = weight.shape
    panels = F.pad(weight, (0, 0, 0, -N % PANEL)).view(-1, PANEL, K).transpose(1, 2)  # (panels, K, 16)
    return panels.contiguous() if out is None else out.copy_(panels)


def decoding_kernels(x: torch.Tensor):
    """The compiled float32 kernels (float_kernels) if `x` may take them: float32 on a CPU, with
    gradients and autocast off and outside torch.compile (a ctypes call would break its graph);
    else None."""
    if (x.dtype != torch.float32 or x.device.type != "cpu" or torch.is_grad_enabled()
            or torch.is_autocast_enabled("cpu") or torch.compiler.is_compiling()):
        return None
    return float_kernels()


@functools.cache
def float_kernels():
    """The compiled kernels (native.library()) for float32 decoding steps, float_linear,
    float_panel_linear, attend_last and decode_block, when they built and agree with torch on a
    small probe (to float rounding; a row's attention the same bits alone as beside another), else
    None: a miscompiling toolchain costs speed, never a wrong answer."""
    lib = library()
    if lib is None:
        return None
    g = torch.Generator().manual_seed(0)
    weight, bias, rows = torch.randn(40, 200, generator=g), torch.randn(40, generator=g), torch.randn(3, 200, generator=g)
    y, on_panels = torch.empty(3, 40), torch.empty(3, 40)  # 40 rows: two panels and a part
    panels = float_panels(weight)
    lib.float_linear(rows.data_ptr(), 3, 200, weight.data_ptr(), bias.data_ptr(), 40, y.data_ptr(), 2)
    lib.float_panel_linear(rows.data_ptr(), 3, 200, panels.data_ptr(), bias.data_ptr(), 40, on_panels.data_ptr(), 2)
    B, H, D, capacity, lengths = 2, 4, 24, 10, [4, 7]
    qkv, gain = torch.randn(B, 1, 3 * H * D, generator=g), torch.rand(D, generator=g) + 0.5
    # (B, H, capacity, D) seen, stored (B, capacity, H, D) as KVCache stores them
    keys, values = (torch.randn(B, capacity, H, D, generator=g).transpose(1, 2) for _ in range(2))
    attended, alone = torch.empty(B, 1, H * D), torch.empty(1, 1, H * D)
    filled = torch.tensor(lengths)  # (held, as every tensor here: the kernel reads their memory)
    cos, sin = torch.zeros(B, 1, 1, D), torch.ones(B, 1, 1, D)  # rotary by 90 degrees: (a, b) -> (-b, a)
    for b0, b1, out in ((0, B, attended), (1, 2, alone)):  # the rows together, then row 1 alone (its heads split)
        lib.attend_last(qkv[b0:].data_ptr(), gain.data_ptr(), gain.data_ptr(), 1e-6, cos.data_ptr(), sin.data_ptr(),
                        keys[b0:].data_ptr(), values[b0:].data_ptr(), filled[b0:].data_ptr(), b1 - b0, H, D,
                        capacity, out.data_ptr(), 2)
    q, k, v = (t.transpose(1, 2) for t in qkv.view(B, 1, 3 * H, D).split(H, dim=2))  # (B, H, 1, D)
    normed = [F.rms_norm(t, (D,), gain, 1e-6) for t in (q, k)]
    q, k = (torch.cat((-t[..., D // 2:], t[..., :D // 2]), -1) for t in normed)  # turned by 90 degrees
    expected = [F.scaled_dot_product_attention(q[b:b + 1], torch.cat((keys[b:b + 1, :, :n], k[b:b + 1]), 2),
                                               torch.cat((values[b:b + 1, :, :n], v[b:b + 1]), 2))
                for b, n in enumerate(lengths)]  # (1, H, 1, D) each
    if not (torch.allclose(y, F.linear(rows, weight, bias), atol=1e-4, rtol=1e-4)
            and torch.allclose(on_panels, F.linear(rows, weight, bias), atol=1e-4, rtol=1e-4)
            and _block_agrees(lib, g)
            and torch.allclose(attended, torch.cat(expected).transpose(1, 2).reshape(B, 1, H * D), atol=1e-5, rtol=1e-4)
            and torch.equal(alone, attended[1:])
            and torch.allclose(keys[1, :, 7], k[1, :, 0], atol=1e-5, rtol=1e-4)):
        warnings.warn("the compiled float32 kernels disagree with torch on this machine; using torch",
                      stacklevel=2)
        return None
    return lib


def _block_agrees(lib, g: torch.Generator) -> bool:
    """Whether decode_block computes a GPT-2 block's step (LayerNorm, one row of x through each
    row-major weight, GELU) as torch does, for a row's first token (whose attention is its own
    value), to float rounding."""
    C, H, width = 32, 2, 64
    ln = [(torch.rand(C, generator=g) + 0.5, torch.randn(C, generator=g)) for _ in range(2)]
    shapes = ((3 * C, C), (C, C), (width, C), (C, width))
    linears = [(torch.randn(shape, generator=g) / shape[1] ** 0.5, torch.randn(shape[0], generator=g)) for shape in shapes]
    x, y = torch.randn(1, C, generator=g), torch.empty(1, C)
    keys, values = torch.zeros(4, C), torch.zeros(4, C)  # one row of 4 positions, (position, head, dim)
    filled = torch.zeros(1, dtype=torch.int64)
    weights = BlockWeights(ln[0][0].data_ptr(), ln[0][1].data_ptr(), ln[1][0].data_ptr(), ln[1][1].data_ptr(), 0, 1e-5,
                           *(LinearWeights(LINEAR_ROWS, *w.shape, w.data_ptr(), None, None, b.data_ptr()) for w, b in linears),
                           None, None, 0.0, ACTIVATIONS["gelu"], H, C // H)
    if lib.decode_block(weights, x.data_ptr(), 1, keys.data_ptr(), values.data_ptr(), filled.data_ptr(), 4, None, None,
                        y.data_ptr(), 2) != 0:
        return False
    (qkv, out, fc, down), norm = linears, lambda t, i: F.layer_norm(t, (C,), *ln[i], 1e-5)
    h = x + F.linear(F.linear(norm(x, 0), *qkv)[:, 2 * C:], *out)  # one key: attention gives its value
    expected = h + F.linear(F.gelu(F.linear(norm(h, 1), *fc), approximate="tanh"), *down)
    return torch.allclose(y, expected, atol=1e-4, rtol=1e-4)


@functools.cache
def onednn_linear_works() -> bool:
    """Whether this torch has the private oneDNN ops the packed path calls, and they compute F.linear.

    They are not public API: a release may rename, remove or change them. Without them (or if a tiny
    probe raises or disagrees with F.linear) pack_for_batches leaves the model alone and every
    matmul takes the plain path: slower batches, the same tokens.
    """
    ops = getattr(torch.ops, "mkldnn", None)
    if (not torch.backends.mkldnn.is_available() or not hasattr(ops, "_reorder_linear_weight")
            or not hasattr(ops, "_linear_pointwise")):
        return False
    try:
        generator = torch.Generator().manual_seed(0)
        weight, rows = torch.randn(24, 16, generator=generator), torch.randn(3, 16, generator=generator)
        packed = ops._reorder_linear_weight(weight, 8)
        got = ops._linear_pointwise(rows, packed, None, "none", [], "")
        return bool(torch.allclose(got, F.linear(rows, weight), atol=1e-4, rtol=1e-4))
    except Exception:  # any failure of a private op means: do not use it
        return False
