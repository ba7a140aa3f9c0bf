"""What a run folder records besides its results: versions, git commit, device."""

from __future__ import annotations

import functools
import json
import os
import platform
import shlex
import socket
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

#: packages whose versions a run records
PACKAGES = ("prunekit", "torch", "transformers", "hydra-core", "omegaconf", "numpy")


def versions() -> dict[str, str | None]:
    """Installed versions of prunekit and the packages its results depend on."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


@functools.lru_cache(maxsize=1)
def git_commit() -> dict[str, Any]:
    """The commit of the prunekit source tree in use (``None`` outside a git checkout) and whether it has local changes."""
    root = Path(__file__).resolve().parents[2]

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(
                ["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if commit is None:
        return {"commit": None, "dirty": None}
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": bool(status) if status is not None else None}


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), or what :mod:`platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_record(device: Any) -> dict[str, Any]:
    """The device a run used: its type, its name, and the threads / GPUs available."""
    import torch

    device = torch.device(device)
    record: dict[str, Any] = {"device": str(device)}
    if device.type == "cuda":
        record["name"] = torch.cuda.get_device_name(device)
        record["cuda"] = torch.version.cuda
    else:
        record["name"] = cpu_name()
    record["torch_threads"] = torch.get_num_threads()
    return record


def machine_record(device: Any) -> dict[str, Any]:
    """The machine a benchmark ran on: CPU, cores, platform, torch version, device (and GPU name)."""
    import torch

    info: dict[str, Any] = {
        "cpu": cpu_name(),
        "cpu_cores": os.cpu_count(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "device": str(device),
    }
    if torch.device(device).type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


def environment(device: Any) -> dict[str, Any]:
    """Everything a result records about where it ran: versions, git commit, device, host, platform, command."""
    return {
        "versions": versions(),
        "git": git_commit(),
        "device": device_record(device),
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "command": os.environ.get("PRUNEKIT_COMMAND") or shlex.join(sys.argv),
    }


#: where the committed benchmark results live; :func:`reproduce_command` names it
RESULTS_DIR = "benchmarks/results"


def reproduce_command(script: str, argv: list[str]) -> str:
    """The command line that reproduces a committed result: ``python <script> <argv>`` with
    the ``--out`` folder replaced by :data:`RESULTS_DIR`, where committed results live
    (a run may write to a scratch folder first; the file a reader finds names the command
    that writes it in place).

    >>> reproduce_command("benchmarks/prefill.py", ["--grid", "issue", "--out", "/tmp/perf"])
    'python benchmarks/prefill.py --grid issue --out benchmarks/results'
    """
    args, skip = [], False
    for arg in argv:
        if skip:
            args.append(RESULTS_DIR)
            skip = False
        elif arg == "--out":
            args.append(arg)
            skip = True
        elif arg.startswith("--out="):
            args.append(f"--out={RESULTS_DIR}")
        else:
            args.append(arg)
    return shlex.join(["python", script, *args])


def write_json(path: Path, data: Any) -> None:
    """Write ``data`` as JSON atomically (a reader never sees a half-written file)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")
    os.replace(tmp, path)
