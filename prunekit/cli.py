"""The ``prunekit`` command line."""

from __future__ import annotations

import argparse
import inspect
import sys
from collections.abc import Sequence


def _budget(text: str) -> int | float:
    """Parse a budget: an int (tokens kept) or a float in (0, 1] (fraction kept)."""
    from prunekit.core.budget import check_budget

    try:
        value: int | float = int(text)
    except ValueError:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"budget must be a number, got {text!r}") from None
    try:
        return check_budget(value)
    except (TypeError, ValueError) as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _cmd_list(args: argparse.Namespace) -> int:
    from prunekit.registry import KINDS, get_registry

    registry = get_registry()
    for kind in KINDS:
        print(f"{kind}:")
        for spec in registry.specs(kind, args.pattern):
            params = ", ".join(
                k if v is inspect.Parameter.empty else f"{k}={v!r}"
                for k, v in spec.parameters().items()
            )
            print(f"  {spec.name:<18} [{spec.plugin}] ({params})")
    for name, why in registry.failed_plugins.items():
        print(f"skipped plugin {name!r}: {why}", file=sys.stderr)
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from prunekit.demo import run_demo

    report = run_demo(pruner=args.pruner, budget=args.budget, image=args.image, out=args.out)
    print(report.summary())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="prunekit", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    listing = sub.add_parser("list", help="registered pruners, strategies and noun extractors")
    listing.add_argument("pattern", nargs="?", default="*", help="wildcard filter, e.g. '*prune*'")
    listing.set_defaults(func=_cmd_list)

    demo = sub.add_parser(
        "demo", help="prune a real photo's DINOv2-S patch tokens offline and write a picture"
    )
    demo.add_argument("--pruner", default="resprune", help="registered pruner name")
    demo.add_argument("--budget", type=_budget, default=0.25, help="int tokens or fraction (0, 1]")
    demo.add_argument("--image", default="astronaut", help="scikit-image sample name")
    demo.add_argument(
        "--out", default="prunekit_demo.png", help="PNG path of the kept-patch picture"
    )
    demo.set_defaults(func=_cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (TypeError, ValueError, ModuleNotFoundError, FileNotFoundError) as exc:
        print(f"prunekit: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
