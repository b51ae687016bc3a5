"""The compiled kernels of decoding steps (decode_kernels.c): built once per machine by the system's
C compiler into the user's cache, loaded with ctypes.

Why C: a decoding step is a few rows against every weight, so its speed is how fast the weights
stream from memory, and its cost beside the matmuls is the dozen small torch ops each layer calls.
The linear kernels read each weight row once for up to 8 rows, on every thread, in one call;
attend_last does a layer's QK-norm, rotary, cache write and attention in one call, rms_norm an
RMSNorm, and decode_block a whole block's step (norms, the four linear layers, attention, the MLP's
activation, the residual sums), so a decoding step makes one call per block (its activation,
`activate`, is callable alone for its tests).

int8_linear computes exactly what Int8Linear's torch path computes. The float32 kernels sum in
their own fixed order (not MKL's nor SDPA's), so with or without a compiler a model decodes the
same tokens up to float rounding (a near-tie can go the other way, as between two CPUs; an int8
model too, since its attention, norms and activations run here), and each row's numbers from
these kernels are its own, whatever rows run beside it. Without a compiler (or if the build or a check fails)
`library()` is None, one warning says why, and torch does the work. GPTFORGE_NATIVE=0 turns the
kernels off.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

SOURCE = Path(__file__).with_name("decode_kernels.c")
# -march=native: the machine's own vector instructions (AVX-512 VNNI where it has them);
# -ffp-contract=off: no fused multiply-adds the source does not ask for, so int8's float results equal torch's
# bit for bit.
FLAGS = ["-O3", "-march=native", "-ffp-contract=off", "-fopenmp", "-shared", "-fPIC"]
_POINTER, _INT, _FLOAT = ctypes.c_void_p, ctypes.c_int, ctypes.c_float
LINEAR_ROWS, LINEAR_PANELS, LINEAR_INT8 = range(3)  # LinearWeights.kind
ACTIVATIONS = {"gelu": 0, "swiglu": 1, "relu2": 2}  # BlockWeights.act, by MLP kind


class LinearWeights(ctypes.Structure):
    """decode_kernels.c's `struct linear`: a linear layer's weights as its kernel reads them."""

    _fields_ = [("kind", _INT), ("N", _INT), ("K", _INT), ("w", _POINTER), ("wsum", _POINTER), ("ws", _POINTER),
                ("bias", _POINTER)]


class BlockWeights(ctypes.Structure):
    """decode_kernels.c's `struct block`: a transformer block's weights, for decode_block; `tensors`
    holds the tensors its addresses point into, so none is freed while it lives."""

    tensors: tuple = ()

    _fields_ = [("norm1", _POINTER), ("norm1_bias", _POINTER), ("norm2", _POINTER), ("norm2_bias", _POINTER),
                ("rms", _INT), ("eps", _FLOAT), ("qkv", LinearWeights), ("out", LinearWeights),
                ("fc", LinearWeights), ("down", LinearWeights), ("q_gain", _POINTER), ("k_gain", _POINTER),
                ("qk_eps", _FLOAT), ("act", _INT), ("H", _INT), ("D", _INT)]


def cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "gptforge" / "kernels"


def _machine() -> str:
    """What -march=native depends on: the CPU's model and flags (a cache shared by machines of
    several kinds keeps one build per kind)."""
    try:
        info = Path("/proc/cpuinfo").read_text()
        return "\n".join(sorted({line for line in info.splitlines() if line.startswith(("model name", "flags"))}))
    except OSError:
        return platform.machine() + platform.processor()


def _build(compiler: str) -> Path:
    source = SOURCE.read_bytes()
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=60, check=False).stdout
    key = hashlib.sha256(b"\0".join(s if isinstance(s, bytes) else s.encode()
                                    for s in (source, " ".join(FLAGS), version, _machine()))).hexdigest()[:16]
    target = cache_dir() / f"decode_kernels-{key}.so"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target.parent) as tmp:  # then renamed: never half a file
            built = Path(tmp) / target.name
            done = subprocess.run([compiler, *FLAGS, str(SOURCE), "-o", str(built), "-lm"],
                                  capture_output=True, text=True, timeout=300, check=False)
            if done.returncode != 0:
                raise RuntimeError(done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "failed")
            os.replace(built, target)
    return target


@functools.cache
def library():
    """The compiled kernels (a ctypes library: int8_linear, float_linear, attend_last, rms_norm, their arguments
    as in decode_kernels.c), or None, with one warning saying why, when they cannot be had."""
    if os.environ.get("GPTFORGE_NATIVE", "1") == "0":
        return None
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        warnings.warn("no C compiler (cc) to build the fast decoding kernels; using torch (slower)", stacklevel=2)
        return None
    try:
        lib = ctypes.CDLL(str(_build(compiler)))
    except (OSError, RuntimeError, subprocess.SubprocessError) as error:
        warnings.warn(f"the fast decoding kernels did not build ({error}); using torch (slower)", stacklevel=2)
        return None
    P, I, F = _POINTER, _INT, _FLOAT
    for name, argtypes in (("int8_linear", [P, I, I, P, P, P, P, I, P, I]),
                           ("float_linear", [P, I, I, P, P, I, P, I]),
                           ("float_panel_linear", [P, I, I, P, P, I, P, I]),
                           ("attend_last", [P, P, P, F, P, P, P, P, P, I, I, I, I, P, I]),
                           ("rms_norm", [P, P, F, I, I, P]),
                           ("activate", [I, P, I, I, P, I]),
                           ("decode_block", [ctypes.POINTER(BlockWeights), P, I, P, P, P, I, P, P, P, I])):
        getattr(lib, name).argtypes = argtypes
        getattr(lib, name).restype = I
    return lib
