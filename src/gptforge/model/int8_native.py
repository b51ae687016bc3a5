"""The compiled int8 kernel behind Int8Linear's decoding steps (int8_linear.c): built once per
machine by the system's C compiler into the user's cache, loaded with ctypes.

Why C: a decoding step is a few rows against every weight, so its speed is how fast the int8
weights stream from memory. torch._int_mm reaches a fraction of that for one row
(benchmarks/int8_kernels.py); the kernel reads each weight row once for up to 8 rows, on every
thread, and quantizes the rows itself, in one call per layer instead of a dozen torch ops.

It computes exactly what the torch path computes (the same integers, the same float operations in
the same order), so whether a machine has a compiler changes the speed, never a token. Without one
(or if the build or its check fails) `kernel()` is None, one warning says why, and Int8Linear uses
torch._int_mm. GPTFORGE_NATIVE=0 turns the kernel off.
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

SOURCE = Path(__file__).with_name("int8_linear.c")
# -march=native: the machine's own vector instructions (AVX-512 VNNI where it has them);
# -ffp-contract=off: no fused multiply-adds, so the float results equal torch's bit for bit.
FLAGS = ["-O3", "-march=native", "-ffp-contract=off", "-fopenmp", "-shared", "-fPIC"]
_POINTER, _INT = ctypes.c_void_p, ctypes.c_int


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
    target = cache_dir() / f"int8_linear-{key}.so"
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
def kernel():
    """The compiled `int8_linear` function, or None (with one warning saying why) when it cannot be
    had. Its arguments: x, M, K, w, wsum, ws, bias (or None), N, y, threads (int8_linear.c)."""
    if os.environ.get("GPTFORGE_NATIVE", "1") == "0":
        return None
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        warnings.warn("int8: no C compiler (cc) to build the fast kernel; using torch._int_mm (slower, "
                      "the same tokens)", stacklevel=2)
        return None
    try:
        function = ctypes.CDLL(str(_build(compiler))).int8_linear
    except (OSError, RuntimeError, subprocess.SubprocessError) as error:
        warnings.warn(f"int8: the fast kernel did not build ({error}); using torch._int_mm (slower, "
                      f"the same tokens)", stacklevel=2)
        return None
    function.argtypes = [_POINTER, _INT, _INT, _POINTER, _POINTER, _POINTER, _POINTER, _INT, _POINTER, _INT]
    function.restype = _INT
    return function
