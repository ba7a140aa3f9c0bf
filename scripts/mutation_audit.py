"""Mutation audit: plant small bugs in a copy of prunekit and check that the tests catch them.

Each mutant replaces one exact snippet of one source file (selection, relevance, the
pruner contract, the VLM and encoder splicing) by a plausible bug, in a scratch copy of
the repository's tracked files; the tests named for it then run against that copy
(``PYTHONPATH`` puts the copy's ``prunekit`` first). A mutant is *killed* when the tests
fail (or time out), and *survives* when they pass: a surviving mutant is a hole in the
suite, to be closed by a test or explained. The unmutated copy must pass the same tests
first. Usage::

    python scripts/mutation_audit.py                 # every mutant, ~10 min on 2 cores
    python scripts/mutation_audit.py --list          # names and descriptions
    python scripts/mutation_audit.py --only tie_strict relevance_alpha_ignored
    tox -e mutation                                  # the same, in its own environment

Writes a markdown table to stdout (and to ``--out FILE``); exits 1 if a mutant survives
unless it is listed in :data:`EXPLAINED` with the reason no test can see it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SELECTION = (
    "tests/test_greedy_residual.py",
    "tests/test_greedy_native.py",
    "tests/test_resprune.py",
    "tests/test_batched_selection.py",
)
RELEVANCE = ("tests/test_text_relevance.py", "tests/test_resprune.py")
CORE = ("tests/test_budget.py", "tests/test_pruner_contract.py", "tests/test_resprune.py")
VLM = (
    "tests/test_llava_adapter.py",
    "tests/test_llava_next_adapter.py",
    "tests/test_adapter_contract.py",
)
ENCODER = ("tests/test_encoder_adapters.py",)
ADAPTIVE = ("tests/test_energy_budget.py",)
MERGE = ("tests/test_merge_strategies.py",)
MASS = ("tests/test_score_mass.py",)
LLM_ATTENTION = ("tests/test_llm_attention_relevance.py",)
LOGIT_LENS = ("tests/test_logit_lens_relevance.py",)


@dataclass(frozen=True)
class Mutant:
    """One planted bug: ``old`` (exactly once in ``path``) becomes ``new``; ``tests`` should fail."""

    name: str
    path: str
    old: str
    new: str
    tests: tuple[str, ...]
    description: str


GREEDY = "prunekit/strategies/selection/greedy_residual.py"
KERNEL = "prunekit/kernels/greedy_cpu.c"
KERNEL_PY = "prunekit/kernels/greedy_cpu.py"
TEXT = "prunekit/strategies/relevance/text.py"
RELEVANCE_BASE = "prunekit/strategies/relevance/base.py"
VLM_ADAPTER = "prunekit/adapters/vlm.py"
ENCODER_ADAPTER = "prunekit/adapters/encoder.py"
MERGE_PY = "prunekit/strategies/merge.py"

MUTANTS = (
    # -- greedy residual selection, the PyTorch loop
    Mutant("tie_strict", GREEDY, "near = score >= best", "near = score > best", SELECTION,
           "ties: strict comparison with the near-max threshold"),
    Mutant("scale_off", GREEDY, "picked.rsqrt(), 0.0)", "picked.rsqrt() * 0.9, 0.0)", SELECTION,
           "factor rows scaled by 0.9 / sqrt(E) instead of 1 / sqrt(E)"),
    Mutant("energy_half_update", GREEDY, "column, column, value=-1.0", "column, column, value=-0.5",
           SELECTION, "residual energies lose half the projected energy"),
    Mutant("fill_lowest_weight", GREEDY, "fill = torch.where(available, weights, neg_inf)",
           "fill = torch.where(available, -weights, neg_inf)", SELECTION,
           "past the rank, fill by the lowest weight"),
    Mutant("repick", GREEDY, "available.scatter_(1, pick, False)", "available.scatter_(1, pick, True)",
           SELECTION, "a picked token stays available"),
    Mutant("rows_wrong_sample", GREEDY, "flat_tokens.index_select(0, flat)",
           "flat_tokens.index_select(0, pick.view(batch))", SELECTION,
           "rows path: the Gram row of the pick's index in sample 0"),
    Mutant("no_rank_tol", GREEDY, "tol = energy * rank_tol", "tol = energy * rank_tol * 0", SELECTION,
           "explained residuals are never zeroed"),
    # -- the native kernel
    Mutant("c_no_explained_zero", KERNEL, "energy[i] = e <= tol[i] ? (T)0 : e;", "energy[i] = e;",
           SELECTION, "native: explained residuals are never zeroed"),
    Mutant("c_threshold_exact", KERNEL, "const T threshold = top - FABS(top) * rtol;",
           "const T threshold = top;", SELECTION, "native: ties without the tolerance"),
    Mutant("c_ignores_available", KERNEL, "if (avail[i]) {", "if (1) {", SELECTION,
           "native: picked and padded tokens compete for the best score"),
    Mutant("c_double_correction", KERNEL, "for (int64_t j = slot_step[r]; j < step; ++j)",
           "for (int64_t j = 0; j < step; ++j)", SELECTION,
           "native rows path: block rows corrected twice by the earlier factors"),
    Mutant("rows_block_uncorrected", KERNEL_PY, "slot_step.fill_(step)", "slot_step.fill_(step + 1)",
           SELECTION, "native rows path: a block row misses one factor's correction"),
    # -- text relevance
    Mutant("relevance_ignores_text_mask", TEXT, "rel = cos.masked_fill(~valid, -math.inf).amax(dim=-1)",
           "rel = cos.amax(dim=-1)", RELEVANCE, "max over padded text rows too"),
    Mutant("relevance_mean_over_padding", TEXT, "n_text = text_mask.sum(dim=1).clamp_min(1).to(tokens.dtype)",
           "n_text = torch.full_like(text_mask.sum(dim=1), text_mask.shape[1]).to(tokens.dtype)",
           RELEVANCE, "mean divides by every text row, padded ones included"),
    Mutant("relevance_dot_not_cosine", TEXT, ".clamp_min(1e-12).reciprocal()",
           ".clamp_min(1e-12).reciprocal() * 0 + 1", RELEVANCE, "dot products instead of cosines"),
    Mutant("relevance_minmax_by_max", RELEVANCE_BASE, "normed = ((relevance - r_min) / (spread + eps))",
           "normed = ((relevance - r_min) / (r_max.abs() + eps))", RELEVANCE,
           "min-max normalisation divides by max instead of max - min"),
    Mutant("relevance_alpha_ignored", RELEVANCE_BASE, "w = normed.pow(alpha)", "w = normed", RELEVANCE,
           "the guidance strength alpha is ignored"),
    # -- the pruner contract
    Mutant("weights_of_another_sample", "prunekit/pruners/composed.py",
           "weights = self.relevance.weights(inputs)",
           "weights = self.relevance.weights(inputs).roll(1, dims=0)", CORE,
           "each sample selects with the previous sample's weights"),
    Mutant("budget_rounds_down", "prunekit/core/budget.py", "kept = math.floor(budget * n_tokens + 0.5 + 1e-9)",
           "kept = math.floor(budget * n_tokens + 1e-9)", CORE, "fractional budgets round down"),
    # -- VLM splicing
    Mutant("vlm_positions_off_by_one", VLM_ADAPTER,
           "position_ids = (attention_mask.long().cumsum(dim=1) - 1).clamp_min(0)",
           "position_ids = attention_mask.long().cumsum(dim=1).clamp_min(0)", VLM,
           "original positions shifted by one while generating"),
    Mutant("vlm_original_positions_renumbered", VLM_ADAPTER,
           "new_positions[rows, new_cols] = position_ids[rows, cols]",
           "new_positions[rows, new_cols] = new_cols.to(position_ids.dtype)", VLM,
           "positions='original' numbers the kept tokens by column, closing the gaps"),
    Mutant("vlm_left_padding_ignored", VLM_ADAPTER,
           "offset = torch.zeros_like(lengths) if right_padded else width - lengths",
           "offset = torch.zeros_like(lengths)", VLM, "a left-padded batch is packed to the left"),
    Mutant("vlm_drops_unprunable", VLM_ADAPTER, "keep = result.mask | ~token_mask", "keep = result.mask",
           VLM, "tokens the pruner may not drop (e.g. row newlines) are dropped"),
    Mutant("vlm_shifted_features", VLM_ADAPTER, "[f[k.to(f.device)] for f, k in",
           "[f[k.to(f.device).roll(1)] for f, k in", VLM,
           "the features of the neighbours of the kept tokens are spliced in"),
    # -- encoder splicing
    Mutant("encoder_shifted_patches", ENCODER_ADAPTER, "patches = x[:, p:]",
           "patches = torch.cat([x[:, :p], x[:, p:-1]], dim=1) if p else x[:, p:]", ENCODER,
           "the pruner sees the prefix ([CLS]) token plus the patches shifted by one"),
    Mutant("encoder_reversed_kept", ENCODER_ADAPTER, "result.kept_tokens(patches)], dim=1)",
           "result.kept_tokens(patches).flip(1)], dim=1)", ENCODER,
           "kept tokens spliced back in reverse order"),
    # -- beyond the paper: adaptive budgets, merging, relevances
    Mutant("energy_count_one_late", GREEDY, "first = met.to(torch.uint8).argmax(dim=1) + 1",
           "first = met.to(torch.uint8).argmax(dim=1) + 2", ADAPTIVE,
           "the energy budget keeps one token more than the first step meeting it"),
    Mutant("energy_residual_sum_skips_last", KERNEL, "for (int64_t i = 0; i < n; ++i) sum += (double)weights[i] * energy[i];",
           "for (int64_t i = 0; i + 1 < n; ++i) sum += (double)weights[i] * energy[i];", ADAPTIVE,
           "the native kernel's residual sum leaves out the last token"),
    Mutant("merge_lstsq_ignores_norms", MERGE_PY, "score = coefficients.abs() * kept_norms.unsqueeze(-1)",
           "score = coefficients.abs()", MERGE,
           "lstsq merging assigns by |coefficient| alone, not by the component's size"),
    Mutant("merge_mean_without_kept", MERGE_PY,
           "merged = (kept + assign.transpose(1, 2) @ x) / (members + 1.0)",
           "merged = (kept + assign.transpose(1, 2) @ x) / (members + 2.0)", MERGE,
           "the merged mean divides by one member too many"),
    Mutant("score_mass_strict", "prunekit/pruners/score_mass.py",
           "below = ranked.cumsum(dim=1) < ((mass - MASS_RTOL) * total).unsqueeze(1)",
           "below = ranked.cumsum(dim=1) <= ((mass + MASS_RTOL) * total).unsqueeze(1)", MASS,
           "a prefix that reaches the mass exactly does not stop the count"),
    Mutant("text_attention_counts_padding", "prunekit/adapters/llm_layers.py",
           "share = text_valid.float() / text_valid.sum(dim=1, keepdim=True).clamp_min(1)",
           "share = torch.ones_like(text_valid, dtype=torch.float) / text_valid.shape[1]",
           LLM_ATTENTION, "padded text query rows count in the text tokens' mean attention"),
    Mutant("logit_lens_without_norm", "prunekit/text/embed.py",
           "states = norm(states.to(norm_device))", "states = states.to(norm_device)", LOGIT_LENS,
           "the logit lens skips the decoder's final norm"),
)  # fmt: skip

#: surviving mutants with the reason no test can tell them apart from the real code
EXPLAINED: dict[str, str] = {
    "vlm_positions_off_by_one": (
        "equivalent for rotary positions: every prompt position moves by one, and generate "
        "continues from the last, so every decoded position moves too; attention sees only "
        "differences (tiny LLaVA: every decoded step's logits within 6e-8 of the real code's)"
    ),
}


def tracked_copy(destination: Path) -> None:
    """The repository's tracked files (as in the working tree) copied to ``destination``."""
    files = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True
    ).stdout.split(b"\0")
    for name in filter(None, files):
        source = ROOT / name.decode()
        if source.is_file():
            target = destination / name.decode()
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)


def run_tests(copy: Path, tests: tuple[str, ...], timeout: float) -> tuple[str, float]:
    """``("passed" | "failed" | "timeout", seconds)`` of pytest on ``tests`` in ``copy``."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(copy), os.environ.get("PYTHONPATH")])),
        "PRUNEKIT_CACHE_DIR": str(copy / ".cache"),  # mutated C sources build apart
    }
    command = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests]
    start = time.perf_counter()
    try:
        result = subprocess.run(
            command, cwd=copy, env=env, capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        return "timeout", time.perf_counter() - start
    return ("passed" if result.returncode == 0 else "failed"), time.perf_counter() - start


def check_imports_from(copy: Path) -> None:
    """Fail loudly unless the tests would import the copy's prunekit (not the installed one)."""
    env = {**os.environ, "PYTHONPATH": str(copy)}
    where = subprocess.run(
        [sys.executable, "-c", "import prunekit; print(prunekit.__file__)"],
        cwd=copy, env=env, capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    if not Path(where).resolve().is_relative_to(copy.resolve()):
        raise SystemExit(f"the copy's prunekit is not the one imported ({where})")


def audit(mutants: list[Mutant], timeout: float) -> list[dict[str, object]]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="prunekit-mutants-") as scratch:
        copy = Path(scratch)
        tracked_copy(copy)
        check_imports_from(copy)
        for tests in sorted({m.tests for m in mutants}):
            status, seconds = run_tests(copy, tests, timeout)
            print(f"baseline {' '.join(tests)}: {status} in {seconds:.0f} s", file=sys.stderr)
            if status != "passed":
                raise SystemExit(f"the unmutated code fails {tests}: fix that first")
        for mutant in mutants:
            target = copy / mutant.path
            original = target.read_text()
            if original.count(mutant.old) != 1:
                raise SystemExit(
                    f"{mutant.name}: {mutant.old!r} is not exactly once in {mutant.path}"
                )
            target.write_text(original.replace(mutant.old, mutant.new))
            try:
                status, seconds = run_tests(copy, mutant.tests, timeout)
            finally:
                target.write_text(original)
            outcome = "survived" if status == "passed" else f"killed ({status})"
            print(f"{mutant.name}: {outcome} in {seconds:.0f} s", file=sys.stderr)
            rows.append({"mutant": mutant, "outcome": outcome, "seconds": seconds})
    return rows


def markdown(rows: list[dict[str, object]]) -> str:
    killed = sum(str(r["outcome"]).startswith("killed") for r in rows)
    lines = [
        f"Mutation audit: {killed} of {len(rows)} mutants killed.",
        "",
        "| mutant | file | bug | outcome | s |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        m: Mutant = row["mutant"]  # type: ignore[assignment]
        outcome = str(row["outcome"])
        if outcome == "survived" and m.name in EXPLAINED:
            outcome += f" (explained: {EXPLAINED[m.name]})"
        lines.append(
            f"| {m.name} | {m.path} | {m.description} | {outcome} | {row['seconds']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", metavar="NAME", help="run these mutants only")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    parser.add_argument("--timeout", type=float, default=600, help="seconds per test run")
    parser.add_argument("--out", type=Path, help="also write the markdown table here")
    args = parser.parse_args(argv)
    mutants = list(MUTANTS)
    if args.list:
        for m in mutants:
            print(f"{m.name}: {m.description} ({m.path})")
        return 0
    if args.only:
        unknown = sorted(set(args.only) - {m.name for m in mutants})
        if unknown:
            parser.error(f"--only: unknown mutants {unknown}")
        mutants = [m for m in mutants if m.name in args.only]
    rows = audit(mutants, args.timeout)
    text = markdown(rows)
    print(text)
    if args.out:
        args.out.write_text(text)
    unexplained = [
        r for r in rows if r["outcome"] == "survived" and r["mutant"].name not in EXPLAINED
    ]
    return 1 if unexplained else 0


if __name__ == "__main__":
    sys.exit(main())
