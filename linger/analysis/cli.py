"""``linger analyse``: weight statistics, per-layer SQNR and sensitivity ranking from the shell.

Wired into ``linger.cli`` with :func:`add_parser`; :func:`main` runs it alone (tests,
``python -m linger.analysis.cli``). Only the public analysis API is called.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import os
import sys

from ..errors import ConfigError, LingerError, ModelFileError

HELP = "rank layers by quantization error (weights, per-layer SQNR, sensitivity)"

DESCRIPTION = """\
Print, worst first: the weight range table (tensors whose max is over 10x their 99% range are
flagged), each quantized layer's SQNR (its integer output against its float op on the same
input), and the sensitivity ranking (the model with only that layer quantized).

A user model is a Python file exposing a factory (--factory, default build_model) that
returns the float nn.Module, and optionally calibration_batches() returning a list of
batches (input tensors or (input, target) pairs); without it, --input-shape gives random
normal inputs. A checkpoint saved from a linger.init model (it has quantization statistics) is
analysed as that quantized model; a float checkpoint is calibrated first (post-training
quantization) for the SQNR. --demo trains the digits CNN of `linger demo` for a few epochs.
"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register the ``analyse`` subcommand on ``subparsers`` (from ``add_subparsers``)."""
    p = subparsers.add_parser("analyse", help=HELP, description=DESCRIPTION,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--demo", action="store_true",
                     help="analyse the built-in digits CNN, trained briefly (needs scikit-learn)")
    src.add_argument("--model", metavar="FILE.py", help="Python file exposing the model factory")
    p.add_argument("--factory", default="build_model",
                   help="name of the factory function in --model (default build_model)")
    p.add_argument("--checkpoint", help="state dict to load into the factory's model")
    p.add_argument("--input-shape", metavar="N,C,H,W",
                   help="random calibration inputs of this shape, when --model has no"
                        " calibration_batches()")
    p.add_argument("--metric", choices=("auto", "accuracy", "output-sqnr"), default="auto",
                   help="sensitivity metric (auto: accuracy when batches carry labels)")
    p.add_argument("--no-sensitivity", action="store_true", help="skip the sensitivity ranking")
    p.add_argument("--log", default="wb_analyse.log",
                   help="where the weight table is written (default wb_analyse.log)")
    p.add_argument("--report", metavar="OUT.html", help="also write an HTML report with plots")
    p.add_argument("--epochs", type=int, default=3, help="--demo: float training epochs")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.set_defaults(_run=run)
    return p


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="linger")
    add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["analyse"] + list(sys.argv[1:] if argv is None else argv))
    try:
        return run(args)
    except LingerError as e:
        print(f"linger analyse: error: {e}", file=sys.stderr)
        return 2


def run(args) -> int:
    """Handler of ``linger analyse``: print the three analyses, worst layers first."""
    import linger.analysis as A

    model, calib, batches = _demo(args) if args.demo else _user_model(args)
    A.wb_analyse(model, args.log)
    if A.quantized_layers(model):
        qmodel = model
    else:
        from ..quant.api import init
        qmodel = A.calibrate(init(copy.deepcopy(model)), calib)
    sqnr = A.layer_sqnr(qmodel, batches)
    print("\nPer-layer SQNR, worst first (integer output vs float op on the same input)")
    print(_table(["rank", "layer", "type", "SQNR dB"],
                 [[i + 1, r.name, r.type, f"{r.sqnr_db:.2f}"] for i, r in enumerate(sqnr)]))
    sens = None
    if not args.no_sensitivity:
        labelled = all(isinstance(b, (tuple, list)) and len(b) > 1 for b in batches)
        use_acc = args.metric == "accuracy" or (args.metric == "auto" and labelled)
        if use_acc and not labelled:
            raise ConfigError("--metric accuracy needs (input, target) batches; return them from"
                              " calibration_batches() or use --metric output-sqnr")
        sens = A.sensitivity(model, batches, A.accuracy if use_acc else None)
        what = "accuracy %" if use_acc else "output SQNR dB"
        scale = 100.0 if use_acc else 1.0
        print(f"\nSensitivity: {what} with only this layer quantized, worst first"
              f" (all float: {sens[0].baseline * scale:.2f})")
        extra = ["output SQNR dB"] if use_acc else []  # the metric is the output SQNR already
        print(_table(["rank", "layer", "type", what] + extra,
                     [[i + 1, r.name, r.type, f"{r.value * scale:.2f}"]
                      + [f"{r.output_sqnr_db:.2f}"] * len(extra) for i, r in enumerate(sens)]))
    if args.report:
        path = A.write_report(args.report, qmodel, batches, sensitivity_rows=sens)
        print(f"\nreport written to {path}")
    return 0


def _demo(args):
    from ..demo import train_epochs
    from ..examples_models import DigitsCNN, load_digits_data, set_seed

    set_seed(args.seed)
    xtr, ytr, xte, yte = load_digits_data(args.seed)
    model = DigitsCNN()
    train_epochs(model, xtr, ytr, args.epochs, 1e-2, seed=args.seed, quiet=True)
    calib = [xtr[i:i + 256] for i in range(0, len(xtr), 256)]
    return model.eval(), calib, [(xte[i:i + 150], yte[i:i + 150]) for i in range(0, len(xte), 150)]


def _user_model(args):
    import torch
    import linger.analysis as A

    module = _load_file(args.model)
    factory = getattr(module, args.factory, None)
    if not callable(factory):
        raise ConfigError(f"{args.model} has no function {args.factory!r}; define it (it returns"
                          f" the float nn.Module) or name yours with --factory")
    model = factory()
    if args.checkpoint:
        state = A.load_checkpoint(args.checkpoint)
        if any(k.endswith((".input_exp", ".output_exp")) for k in state):  # saved after init
            from ..quant.api import init
            model = init(model)
        model.load_state_dict(state)
    if hasattr(module, "calibration_batches"):
        batches = list(module.calibration_batches())
    elif args.input_shape:
        shape = _shape(args.input_shape)
        gen = torch.Generator().manual_seed(args.seed)
        batches = [torch.randn(*shape, generator=gen) for _ in range(4)]
        print(random_data_warning(model, args.model), file=sys.stderr)
    else:
        raise ConfigError(f"no data to analyse with: define calibration_batches() in"
                          f" {args.model} or pass --input-shape N,C,H,W")
    if not batches:
        raise ConfigError(f"calibration_batches() in {args.model} returned no batch")
    return model.eval(), batches, batches


def random_data_warning(model, path) -> str:
    """What ``--input-shape`` (random normal inputs) means for the numbers printed."""
    import torch

    text = ("linger analyse: warning: --input-shape feeds random normal data, which is not"
            " representative of real inputs: activation ranges, SQNR and sensitivity can be far"
            " from what real data gives.")
    bns = [n for n, m in model.named_modules()
           if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if bns:
        text += (f" The model has {len(bns)} BatchNorm layer(s) ({', '.join(bns[:3])}"
                 f"{', ...' if len(bns) > 3 else ''}) whose running statistics describe the"
                 f" training data: random inputs fall outside them, so expect a low SQNR that"
                 f" says little about the quantized model.")
    return text + (f" For meaningful numbers define calibration_batches() in {path} returning"
                   f" real batches.")


def _load_file(path):
    if not os.path.isfile(path):
        raise ModelFileError(f"model file {path!r} does not exist; give a Python file that"
                             f" defines the model factory")
    spec = importlib.util.spec_from_file_location("_linger_user_model", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _shape(text):
    try:
        shape = tuple(int(s) for s in text.split(","))
    except ValueError:
        shape = ()
    if not shape or min(shape) < 1:
        raise ConfigError(f"--input-shape {text!r}: expected positive integers separated by"
                          f" commas, e.g. 8,1,28,28")
    return shape


def _table(head, rows) -> str:
    cells = [[str(c) for c in head]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells)


if __name__ == "__main__":
    sys.exit(main())
