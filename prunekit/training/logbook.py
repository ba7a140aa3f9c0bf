"""The live record of a training run: timestamped log lines (printed and appended to a
file) and the loss curve as a CSV file that grows by one row per step."""

from __future__ import annotations

import csv
import pathlib
import time
from typing import Any


class Logger:
    """Print ``[elapsed s] message`` and append it to ``path`` (created with its folder)."""

    def __init__(self, path: pathlib.Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.t0 = time.time()

    def __call__(self, msg: str) -> None:
        line = f"[{time.time() - self.t0:7.0f}s] {msg}"
        print(line, flush=True)
        with open(self.path, "a") as f:
            f.write(line + "\n")


def append_row(path: pathlib.Path, row: dict[str, Any]) -> None:
    """Append ``row`` to the CSV file ``path``, with a header line when the file is new."""
    write_header = not path.exists()
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(row))
        if write_header:
            writer.writeheader()
        writer.writerow(row)
