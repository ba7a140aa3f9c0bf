"""Build and load prunekit's native CPU kernels: C sources compiled on first use, then cached.

The library is compiled with the system C compiler (``$CC`` or ``cc``) for this machine
(``-O3 -march=native``; ``-ffp-contract=off`` so that every element is rounded exactly
like the PyTorch reference) into a per-user cache directory (``$PRUNEKIT_CACHE_DIR``,
else ``$XDG_CACHE_HOME/prunekit`` or ``~/.cache/prunekit``), keyed by the source, the
flags, the compiler and the CPU's feature flags, so a home directory shared by different
machines never loads a library built for another CPU. Without a compiler, or with
``PRUNEKIT_NATIVE=0``, :func:`native_library` returns ``None`` and callers use their
PyTorch path, which selects the same tokens.
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

#: the C source of the greedy residual steps
SOURCE = Path(__file__).with_name("greedy_cpu.c")
#: compiler flags; ``-ffp-contract=off`` keeps a*b+c two roundings, as in PyTorch
CFLAGS = ("-O3", "-march=native", "-ffp-contract=off", "-fPIC", "-shared")


def cache_dir() -> Path:
    """Where compiled kernels are kept (created on demand)."""
    if os.environ.get("PRUNEKIT_CACHE_DIR"):
        return Path(os.environ["PRUNEKIT_CACHE_DIR"]) / "kernels"
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "prunekit" / "kernels"


def _cpu_flags() -> str:
    """The CPU feature flags (Linux), so that a cached ``-march=native`` build is per CPU."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor()


def _compiler_version(compiler: str) -> str:
    result = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=60)
    return result.stdout


def _build(compiler: str, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    # compile to a unique name, then rename: concurrent processes never load a partial file
    fd, partial = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    try:
        command = [compiler, *CFLAGS, "-o", partial, str(SOURCE), "-lm"]
        result = subprocess.run(command, capture_output=True, text=True, timeout=300)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed:\n{result.stderr.strip()}")
        os.replace(partial, target)
    finally:
        if os.path.exists(partial):
            os.unlink(partial)


@functools.cache
def native_library() -> ctypes.CDLL | None:
    """The compiled greedy kernels, or ``None`` (no compiler, a failed build, or
    ``PRUNEKIT_NATIVE=0``); a failure warns once and is not retried in this process."""
    if os.environ.get("PRUNEKIT_NATIVE", "1") == "0":
        return None
    compiler = os.environ.get("CC", "cc")
    try:
        if shutil.which(compiler) is None:
            raise RuntimeError(f"no C compiler {compiler!r} on PATH (set $CC)")
        key = hashlib.sha256()
        for part in (
            SOURCE.read_bytes(),
            " ".join(CFLAGS).encode(),
            _compiler_version(compiler).encode(),
            _cpu_flags().encode(),
            platform.machine().encode(),
        ):
            key.update(part)
        target = cache_dir() / f"greedy_cpu-{key.hexdigest()[:16]}.so"
        if not target.exists():
            _build(compiler, target)
        library = ctypes.CDLL(str(target))
    except (OSError, RuntimeError, subprocess.SubprocessError) as error:
        warnings.warn(
            f"prunekit: the native CPU selection kernel is unavailable ({error}); "
            "using the PyTorch loop, which selects the same tokens more slowly",
            RuntimeWarning,
            stacklevel=2,
        )
        return None
    pointer, i64 = ctypes.c_void_p, ctypes.c_int64
    for name in ("prunekit_greedy_f32", "prunekit_greedy_f64"):
        function = getattr(library, name)
        function.argtypes = [i64, i64, i64] + [pointer] * 8 + [ctypes.c_double, pointer, pointer]
        function.restype = i64
    return library
