#!/usr/bin/env python
"""Train MiniLLaVA: the projector (v1), or the projector with LoRA on SmolLM2 (v2).

The command line of :func:`prunekit.training.train`: every option is a field of
:class:`prunekit.training.TrainConfig` (``--help`` lists them with their defaults), and
the stages, the data mix, the caching and the outputs are described in
:mod:`prunekit.training.trainer`.

Examples::

    python scripts/train_minillava.py --smoke          # a few steps, < 2 minutes
    python scripts/train_minillava.py --bf16           # the v1 run (see --help)
    python scripts/train_minillava.py --lora-rank 8 --init-projector \\
        prunekit/models/assets/minillava_projector.safetensors --stage1-steps 0 ...  # v2
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

from prunekit.training import ConfigError, parse_config, train


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Parse the options, train, and print where the outputs went; return the record."""
    config = parse_config(argv, description=__doc__.split("\n\n")[0])
    try:
        record = train(config)
    except ConfigError as err:  # an option that only fails once the model is built
        raise SystemExit(str(err)) from None
    for split, results in record["final_accuracy"].items():
        accuracies = ", ".join(f"{k} {v['first_token']:.3f}" for k, v in results.items())
        print(f"{split} first-token accuracy: {accuracies}")
    print(f"outputs: {config.out_dir}")
    return record


if __name__ == "__main__":
    main(sys.argv[1:])
