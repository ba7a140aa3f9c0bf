"""Run the local task through lmms-eval in every process of an accelerate (or torchrun)
launch; rank 0 writes the gathered scores and answers to a JSON file.

    accelerate launch --multi_gpu --num_processes 2 run_lmms_eval.py MODEL_ARGS TASK_DIR OUT
"""

from __future__ import annotations

import json
import sys

import torch
from lmms_eval.evaluator import simple_evaluate
from lmms_eval.tasks import TaskManager
from lmms_helpers import TASK


def main(model_args: str, task_folder: str, out: str) -> None:
    manager = TaskManager(include_path=task_folder, include_defaults=False)
    results = simple_evaluate(
        model="prunekit",
        model_args=model_args,
        tasks=[TASK],
        task_manager=manager,
        batch_size=1,
        device="cpu",
        log_samples=True,
        bootstrap_iters=0,
    )
    if results is not None:  # rank 0 holds the gathered results
        samples = sorted(results["samples"][TASK], key=lambda s: s["doc_id"])
        record = {
            "world_size": torch.distributed.get_world_size(),
            "exact_match": results["results"][TASK]["exact_match,none"],
            "responses": [s["filtered_resps"][0] for s in samples],
        }
        with open(out, "w") as f:
            json.dump(record, f)


if __name__ == "__main__":
    main(*sys.argv[1:4])
