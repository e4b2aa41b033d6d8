"""``linger pack`` and ``linger check``: thin command-line wrappers over :mod:`linger.packer`.

The main CLI wires them in with :func:`add_parser` (or the two ``add_*_parser`` functions);
each subcommand stores its function in ``_run`` and returns the exit status. :func:`main` runs
them standalone (``python -m linger.packer.cli check model.onnx``), as the tests do.

>>> main(["check", "--help"])  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
SystemExit: 0
"""

from __future__ import annotations

import argparse
import os
import sys

from ..errors import ConfigError, LingerError, TargetError
from ..targets import available_targets

_TARGET_HELP = (f"target chip: {', '.join(available_targets())} or a profile file (.toml/.json);"
                f" default venus")


def _dims(items) -> dict:
    """``NAME=SIZE`` -> ``{NAME: SIZE}``; ``NAME=MIN:MAX`` -> ``{NAME: (MIN, MAX)}``."""
    dims = {}
    for item in items or ():
        name, sep, value = item.partition("=")
        lo, colon, hi = value.partition(":")
        ends = [lo, hi] if colon else [lo]
        if not sep or not name or not all(e.isdigit() and int(e) >= 1 for e in ends) \
                or int(ends[0]) > int(ends[-1]):
            raise ConfigError(f"--dim takes NAME=SIZE or NAME=MIN:MAX with 1 <= MIN <= MAX,"
                              f" got {item!r}")
        dims[name] = (int(lo), int(hi)) if colon else int(lo)
    return dims


def _common(p) -> None:
    p.add_argument("model", help="the .onnx file written by linger.onnx.export (check: or a"
                                 " model.py[:ClassName])")
    p.add_argument("--target", default="venus", help=_TARGET_HELP)
    p.add_argument("--dim", action="append", metavar="NAME=SIZE",
                   help="size to plan for a symbolic input dimension (repeatable), or a range"
                        " MIN:MAX (layers checked at both ends, memory planned for MAX); a"
                        " symbolic batch axis defaults to 1")
    p.add_argument("--params", choices=["flash", "psram"], default=None,
                   help="memory of the parameters (default: the target profile's)")
    p.add_argument("--no-lower", action="store_true",
                   help="do not rewrite layers that break a limit into exact equivalents the"
                        " target runs (output-channel split, tiling, kernel split, stride"
                        " sub-sampling...): report every limit as a violation")


def add_pack_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "pack", help="check, plan memory and write a binary model file for a target chip",
        description="Check every layer of an exported model against the target's limits, plan"
        " its memory (activations in share-memory with reuse, parameters in flash or PSRAM)"
        " and write one binary model file that linger.runtime.InferenceSession runs with the"
        " same outputs as the ONNX. Prints the memory summary and writes an HTML memory"
        " report. Exit status 0 when written, 1 when layers violate the target's limits"
        " (every violation is listed, nothing is written), 2 on a usage or file error. The"
        " output is written atomically and never over the input model.")
    _common(p)
    p.add_argument("-o", "--output", default=None,
                   help="output file (default: the model's name with .bin)")
    p.add_argument("--html", default=None,
                   help="HTML memory report (default: <output>.memory.html)")
    p.add_argument("--no-html", action="store_true", help="do not write the HTML report")
    p.add_argument("--report", action="store_true",
                   help="print the full report (per layer and per tensor) too")
    p.add_argument("--force", action="store_true",
                   help="write the file even if layers violate the target's limits")
    p.set_defaults(_run=run_pack)
    return p


def add_check_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "check", help="list every violation of a target chip's limits in an ONNX model",
        description="Check every node of an exported model against the target's supported ops"
        " and limits, plan its memory and check capacities; list every violation (layer,"
        " value, limit, fix), not only the first. MODEL may also be a PyTorch model before any"
        " training, as model.py:ClassName (built without arguments) or model.py (its"
        " build_model()): then everything linger.init, the export and the target would refuse"
        " is listed (linger.check). Exit status 0 if the model fits, 1 if not, 2 on a usage or"
        " file error.")
    _common(p)
    p.add_argument("--input-shape", action="append", metavar="D0,D1,...",
                   help="for a model.py[:Class] MODEL: the shape of an example input"
                        " (repeatable, one per input); default: the script's example_input()")
    p.add_argument("--no-memory", action="store_true", help="skip memory planning")
    p.add_argument("--report", action="store_true", help="print the memory report too")
    p.set_defaults(_run=run_check)
    return p


def _is_script(model: str) -> bool:
    path = model.rsplit(":", 1)[0] if ".py:" in model else model
    return path.endswith(".py")


def add_parser(subparsers) -> None:
    """Add both ``pack`` and ``check`` to an ``add_subparsers()`` object."""
    add_pack_parser(subparsers)
    add_check_parser(subparsers)


def run_check(args) -> int:
    from . import check

    if _is_script(args.model):  # a PyTorch model: the dry run of linger.check
        from ..modelcheck import check_script
        return check_script(args.model, args.input_shape, args.target, _dims(args.dim))

    res = check(args.model, args.target, _dims(args.dim), args.params,
                memory=not args.no_memory, lower=not args.no_lower)
    for lw in res.lowerings:
        print(f"[lowered] {lw}")
    for v in res.violations:
        print(f"[{v.severity}] {v.message}")
    if args.report and res.plan is not None:
        print(res.report(full=True), end="")
    n_err, n_warn = len(res.errors), len(res.violations) - len(res.errors)
    if n_err:
        print(f"{args.model}: {n_err} error(s), {n_warn} warning(s) on target {res.target.name}")
        return 1
    mem = "" if res.plan is None else "; " + _summary(res)
    low = f", {len(res.lowerings)} layer(s) lowered" if res.lowerings else ""
    print(f"{args.model}: fits target {res.target.name}"
          f"{f' ({n_warn} warning(s){low})' if n_warn else (f' ({low[2:]})' if low else '')}"
          f"{mem}")
    return 0


def _summary(res) -> str:
    from .report import summary_text
    return summary_text(res.plan, res.target)


def run_pack(args) -> int:
    from . import FORMAT_VERSION, pack

    output = args.output or os.path.splitext(args.model)[0] + ".bin"
    html = None if args.no_html else (args.html or os.path.splitext(output)[0] + ".memory.html")
    try:
        res = pack(args.model, output, args.target, _dims(args.dim), args.params, args.force,
                   html, lower=not args.no_lower)
    except TargetError as e:  # the model does not fit: the same status as `linger check`
        print(f"linger pack: {e}", file=sys.stderr)
        return 1
    for v in res.violations:
        print(f"[{v.severity}] {v.message}")
    print(res.report(full=args.report), end="")
    print(f"wrote {output} ({len(res.data)} bytes, format version {FORMAT_VERSION}) for target"
          f" {res.target.name} in {res.seconds:.2f} s" + (f"; memory report: {html}" if html
                                                          else ""))
    return 0


def main(argv=None) -> int:
    """Run ``pack``/``check`` standalone; ``argv`` defaults to ``sys.argv[1:]``."""
    parser = argparse.ArgumentParser(prog="linger")
    add_parser(parser.add_subparsers(dest="command", metavar="COMMAND", required=True))
    args = parser.parse_args(argv)
    try:
        return args._run(args)
    except LingerError as e:
        print(f"linger {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
