"""The ``prunekit`` command line.

* ``prunekit list [PATTERN]``: registered pruners, strategies, adapters (with
  their parameters and defaults) and the options of every config group;
* ``prunekit run [OVERRIDES...] --image IMG --prompt TEXT --out PNG``: one model,
  one image, one prompt; prints the answer, the tokens kept and the time, and
  writes the kept-token picture;
* ``prunekit ablate [OVERRIDES...] --out DIR``: a sweep over config values, e.g.
  ``relevance=none,text selection=greedy_residual,topk budget=0.111,0.222``; one
  folder per run and a summary (markdown, CSV, plot); a rerun skips finished runs;
* ``prunekit viz ...``: what several pruners keep on the same image, side by side;
* ``prunekit demo``: MiniLLaVA answers a question about an image, unpruned and pruned, offline.

OVERRIDES are Hydra overrides of the configs in ``prunekit/conf`` (``key=value``,
``group=option``, comma lists to sweep). A config error stops the command before
any work, with the key at fault and the closest valid one.
"""

from __future__ import annotations

import argparse
import inspect
import sys
from collections.abc import Sequence

from prunekit.arguments import (
    budget_argument,
    check_image,
    check_output_file,
    check_output_folder,
)


def check_demo_pruner(name: str, *, encoder_only: bool) -> None:
    """Raise ``ValueError`` unless the registered pruner ``name`` builds with its defaults
    and works at the demo's pruning point (before the language model, no model signals
    for the encoder-only demo)."""
    from prunekit import create_pruner

    pruner = create_pruner(name)  # an unknown name raises, with the closest registered one
    points = pruner.pruning_points
    if points is not None and "pre_llm" not in points:
        raise ValueError(
            f"--pruner {name!r} prunes only at {sorted(points)}; the demo prunes MiniLLaVA's "
            "visual tokens before the language model (pre_llm). Try it with `prunekit run "
            f"pruner={name}` and the adapter options it needs."
        )
    if encoder_only and pruner.required_signals:
        raise ValueError(
            f"--pruner {name!r} needs the model signals {sorted(pruner.required_signals)}, which "
            f"the encoder-only demo does not compute; `prunekit viz --pruners {name}` shows it "
            "on the same photo"
        )


def _preflight(args: argparse.Namespace) -> None:
    """Cheap checks of names and paths, so that a typo fails at once, not after a model loads."""
    command = args.command
    if command == "demo":
        from prunekit.models.minillava import PROJECTOR_PATH

        encoder_only = args.encoder_only or not PROJECTOR_PATH.is_file()  # see _cmd_demo
        check_demo_pruner(args.pruner, encoder_only=encoder_only)
        if args.image is not None:
            check_image(args.image)
        check_output_file(args.out)
    elif command == "run":
        check_image(args.image)
        check_output_file(args.out)
    elif command == "ablate" and args.out is not None:
        check_output_folder(args.out)


def _params(spec) -> str:
    return ", ".join(
        k if v is inspect.Parameter.empty else f"{k}={v!r}" for k, v in spec.parameters().items()
    )


def _cmd_list(args: argparse.Namespace) -> int:
    from prunekit.registry import KINDS, get_registry

    registry = get_registry()
    matched = 0
    for kind in KINDS:
        specs = registry.specs(kind, args.pattern)
        matched += len(specs)
        if specs or args.pattern == "*":
            print(f"{kind}:")
        for spec in specs:
            print(f"  {spec.name:<18} [{spec.plugin}] ({_params(spec)})")
    for name, why in registry.failed_plugins.items():
        print(f"skipped plugin {name!r}: {why}", file=sys.stderr)
    if not matched:
        print(
            f"prunekit list: no registered name matches {args.pattern!r} "
            "(shell-style wildcards, case-sensitive, e.g. '*prune*'; `prunekit list` shows all)",
            file=sys.stderr,
        )
        return 1
    if args.pattern == "*":
        from prunekit.experiments import group_options

        print("config groups (prunekit run / ablate GROUP=OPTION):")
        for group, options in group_options(args.config_dir).items():
            print(f"  {group:<18} {', '.join(options)}")
        print("  budget             a value: int tokens kept, or float fraction in (0, 1]")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from prunekit.demo import run_demo, run_encoder_demo
    from prunekit.models.minillava import PROJECTOR_PATH

    if not args.encoder_only and not PROJECTOR_PATH.is_file():
        print(
            f"MiniLLaVA's trained projector ({PROJECTOR_PATH}) is not in this checkout; "
            "running the encoder-only demo (prunekit demo --encoder-only) instead.\n",
            flush=True,
        )
        args.encoder_only = True
    if args.encoder_only:
        report = run_encoder_demo(
            pruner=args.pruner, budget=args.budget, image=args.image or "astronaut", out=args.out
        )
    else:
        report = run_demo(
            pruner=args.pruner,
            budget=args.budget,
            image=args.image,
            question=args.question,
            out=args.out,
            verbose=args.verbose,
        )
    print(report.summary())
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from prunekit.experiments import compose, run_single

    cfg = compose(args.overrides, config_dirs=args.config_dir)  # checked before any model loads
    report = run_single(cfg, image=args.image, prompt=args.prompt, out=args.out, size=args.size)
    print(report.summary())
    return 0


def _cmd_ablate(args: argparse.Namespace) -> int:
    from prunekit.experiments import ablate

    ablation = ablate(
        args.overrides,
        out=args.out,
        config_dirs=args.config_dir,
        dry_run=args.dry_run,
        baseline=args.baseline,
    )
    if args.dry_run:
        return 0
    for failure in ablation.failures:  # one line each: the run's overrides and its error
        print(
            f"prunekit: error: run failed: {' '.join(failure['overrides']) or 'default'}: "
            f"{failure['error']}",
            file=sys.stderr,
        )
    failed = {f["name"] for f in ablation.failures}
    missing = [d for d in ablation.missing if d.name not in failed]
    if missing:
        print(
            f"prunekit: error: {len(missing)} runs did not finish: "
            f"{', '.join(d.name for d in missing)}",
            file=sys.stderr,
        )
    return 1 if missing or failed else 0


def _cmd_viz(args: argparse.Namespace) -> int:  # pragma: no cover - dispatched in main()
    return _viz(args.args)


def _viz(argv: Sequence[str]) -> int:
    try:
        from prunekit.vizcmd import main as viz_main
    except ModuleNotFoundError as exc:
        if exc.name != "prunekit.vizcmd":
            raise
        print("prunekit: error: `prunekit viz` is not available in this version", file=sys.stderr)
        return 2
    return viz_main(list(argv))


def _add_config_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="OVERRIDE",
        help="Hydra overrides: key=value, group=option (e.g. pruner=resprune pruner.alpha=2 budget=64)",
    )
    parser.add_argument(
        "--config-dir",
        action="append",
        default=[],
        metavar="DIR",
        help="an extra folder of config groups (e.g. DIR/pruner/mine.yaml); repeatable",
    )


def build_parser() -> argparse.ArgumentParser:
    """The ``prunekit`` argument parser (sub-commands list, run, ablate, viz, demo)."""
    parser = argparse.ArgumentParser(
        prog="prunekit",
        description=(__doc__ or "").replace("``", "`"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)

    listing = sub.add_parser(
        "list", help="registered pruners, strategies and adapters; config group options"
    )
    listing.add_argument(
        "pattern",
        nargs="?",
        default="*",
        help="wildcard filter, e.g. '*prune*'; exit status 1 when nothing matches",
    )
    listing.add_argument("--config-dir", action="append", default=[], metavar="DIR")
    listing.set_defaults(func=_cmd_list)

    run = sub.add_parser(
        "run",
        help="one model, one image, one prompt: answer, tokens kept, time, kept-token picture",
        description="Prune one model on one image and prompt. Defaults: the offline tiny model "
        "(model=tiny), pruner=composed relevance=text selection=greedy_residual, budget=0.222.",
    )
    _add_config_options(run)
    run.add_argument(
        "--image", default="astronaut", help="image file, or a scikit-image sample name"
    )
    run.add_argument("--prompt", default="What is in the picture?", help="the question")
    run.add_argument("--out", default="prunekit_run.png", help="PNG path of the kept-token picture")
    run.add_argument("--size", type=int, default=256, help="side of the picture in pixels")
    run.set_defaults(func=_cmd_run)

    ablate = sub.add_parser(
        "ablate",
        help="a sweep over config values on a data set: one folder per run and a summary",
        description="Sweep config values (comma lists, range(), choice(), glob()) with Hydra's "
        "multirun; hydra/launcher=... sends the same sweep to a cluster. Finished runs are "
        "skipped on a rerun.",
    )
    _add_config_options(ablate)
    ablate.add_argument(
        "--out", default=None, help="sweep folder (default: hydra.sweep.dir, 'prunekit-ablation')"
    )
    ablate.add_argument(
        "--dry-run", action="store_true", help="check every run's config and list the runs only"
    )
    ablate.add_argument(
        "--baseline",
        default=None,
        help="the run the others are compared with, question by question, at each data set and "
        "budget: a label or key=value pairs, e.g. 'pruner=resprune' (default: the first run)",
    )
    ablate.set_defaults(func=_cmd_ablate)

    viz = sub.add_parser(
        "viz",
        help="what several pruners keep on the same image, side by side",
        add_help=False,
    )
    viz.add_argument("args", nargs=argparse.REMAINDER)
    viz.set_defaults(func=_cmd_viz)

    demo = sub.add_parser(
        "demo",
        help="ask MiniLLaVA a question about an image, unpruned and pruned (offline); "
        "--encoder-only: prune a photo's DINOv2-S patch tokens",
        description="Ask MiniLLaVA (DINOv2-S + prunekit's trained projector +\n"
        "SmolLM2-135M-Instruct, real weights, offline) a question about an image twice:\n"
        "with all 256 visual tokens and with the tokens a pruner keeps. Prints both\n"
        "answers, the tokens each pass gave the language model and the prefill time of\n"
        "each, and writes the kept tokens over the image (--out). The pruner, the image\n"
        "and --out are checked before the model loads.",
        epilog="examples:\n"
        "  prunekit demo                                  resprune keeps 25 % of the tokens\n"
        "  prunekit demo --pruner random --budget 32      any registered pruner, 32 tokens\n"
        "  prunekit demo --image chelsea --question 'What animal is this?'\n"
        "  prunekit demo --encoder-only --image photo.jpg DINOv2-S patch tokens only\n"
        "`prunekit list` shows the registered pruners.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    demo.add_argument("--pruner", default="resprune", help="registered pruner name")
    demo.add_argument(
        "--budget", type=budget_argument, default=0.25, help="int tokens or fraction (0, 1]"
    )
    demo.add_argument(
        "--image",
        default=None,
        help="image file or scikit-image sample name (default: an easy-VQA test image; "
        "astronaut with --encoder-only)",
    )
    demo.add_argument("--question", default=None, help="the question (MiniLLaVA demo)")
    demo.add_argument(
        "--encoder-only",
        action="store_true",
        help="prune DINOv2-S patch tokens of a photo, no language model",
    )
    demo.add_argument(
        "--out", default="prunekit_demo.png", help="PNG path of the kept-patch picture"
    )
    demo.add_argument(
        "--verbose",
        action="store_true",
        help="show the model-loading progress bars (GGUF de-quantisation, weights)",
    )
    demo.set_defaults(func=_cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``prunekit`` command line on ``argv`` (default ``sys.argv[1:]``); return the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "viz":  # its own parser (prunekit.vizcmd), options included
        return _viz(argv[1:])
    args = build_parser().parse_args(argv)
    from prunekit.experiments.config import ConfigError

    try:
        _preflight(args)
        return args.func(args)
    except ConfigError as exc:
        print(f"prunekit: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "\nprunekit: interrupted; finished runs are kept; the same command resumes",
            file=sys.stderr,
        )
        return 130
    except SystemExit as exc:  # Hydra reports a failed job and exits
        return exc.code if isinstance(exc.code, int) else 1
    except (TypeError, ValueError, ModuleNotFoundError, FileNotFoundError) as exc:
        print(f"prunekit: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
