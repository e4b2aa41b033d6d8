"""The ``linger`` command line: a thin layer over the public API.

Each subcommand is one function decorated with :func:`command`, which registers it with its help
text and arguments; :func:`main` builds the parser from the registry. Adding a subcommand::

    @command("check", "check an ONNX model against a target chip",
             arg("model", help="path to the .onnx file"), arg("--target", default="venus"))
    def check(args) -> int:
        ...
        return 0

A subcommand returns the process exit status. A :class:`~linger.errors.LingerError` is printed
as ``linger <cmd>: error: ...`` (no traceback) and gives status 2.

>>> main(["demo", "--help"])  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
SystemExit: 0
"""

from __future__ import annotations

import argparse
import inspect
import sys

from .errors import LingerError

#: subcommand name -> (function, help, arguments); filled by :func:`command`, in definition order.
COMMANDS: dict = {}


def arg(*flags, **kwargs):
    """One ``add_argument`` call, written as its arguments: ``arg("--epochs", type=int)``."""
    return flags, kwargs


def command(name: str, help: str, *arguments):
    """Register the decorated ``fn(args) -> int`` as subcommand ``name``."""
    def register(fn):
        COMMANDS[name] = (fn, help, arguments)
        return fn
    return register


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="linger", description="Quantization-aware training for int8 MCU NPUs: "
        "export, pack and run models bit-exactly.")
    parser.add_argument("--version", action="version", version=f"linger {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (fn, help_text, arguments) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text,
                           description=inspect.cleandoc(fn.__doc__ or help_text),
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        for flags, kwargs in arguments:
            p.add_argument(*flags, **kwargs)
        p.set_defaults(_run=fn)
    return parser


def main(argv=None) -> int:
    """Entry point of the ``linger`` console script; ``argv`` defaults to ``sys.argv[1:]``."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "_run", None) is None:
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except LingerError as e:
        print(f"linger {args.command}: error: {e}", file=sys.stderr)
        return 2


# ------------------------------------------------------------------------------------------------
# Subcommands

@command("demo", "train a small CNN on the digits, quantize it with QAT, compare accuracies",
         arg("--epochs", type=int, default=20, help="float training epochs (default 20)"),
         arg("--qat-epochs", type=int, default=None,
             help="QAT fine-tuning epochs (default: half of --epochs)"),
         arg("--out-dir", default=None,
             help="where checkpoints go (default: a new temporary directory)"),
         arg("--seed", type=int, default=0, help="random seed (default 0)"),
         arg("--threads", type=int, default=1,
             help="torch CPU threads (default 1: on a model this small more threads only add"
                  " synchronisation, and on a busy machine they make it many times slower;"
                  " 0 keeps torch's default)"),
         arg("--quiet", action="store_true", help="no progress bars and no table"))
def demo(args) -> int:
    """Train a small CNN on scikit-learn's 8x8 digits in float, turn it into a quantized model
    with linger.init, fine-tune it (QAT), and print float vs int8 accuracy and the time of each
    stage. Needs scikit-learn (pip install 'linger[demo]')."""
    import torch

    from .demo import run_demo

    if args.threads:
        torch.set_num_threads(args.threads)
    run_demo(out_dir=args.out_dir, epochs=args.epochs, qat_epochs=args.qat_epochs,
             quiet=args.quiet, seed=args.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
