"""The ``linger`` command line: a thin layer over the public API.

Each subcommand is one function decorated with :func:`command`, which registers it with its help
text and arguments; :func:`main` builds the parser from the registry. Adding a subcommand::

    @command("check", "check an ONNX model against a target chip",
             arg("model", help="path to the .onnx file"), arg("--target", default="venus"))
    def check(args) -> int:
        ...
        return 0

A subcommand returns the process exit status, the same three values for every command
(docs/cli.md): ``0`` done / equal / fits, ``1`` the outputs differ or the model does not fit the
target (``validate``, ``check``, ``pack``, ``demo``), ``2`` a usage or file error. A
:class:`~linger.errors.LingerError`, an unreadable or unwritable file (``OSError``) and a missing
optional dependency (torch for the commands that train or trace) are printed as
``linger <cmd>: error: ...`` (no traceback) and give status 2; any other exception (an error in a
user's script, or a bug) prints its traceback and gives status 2 too, never 1.

torch is imported only inside the commands that train or trace (``demo``, ``analyse``,
``validate --script``), so ``linger --help``, ``pack``, ``check`` and ``run`` work on an
install without it (``pip install linger``; docs/install.md).

>>> main(["demo", "--help"])  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
SystemExit: 0
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import os
import sys
import traceback

from .errors import LingerError

#: exit statuses, the same for every subcommand
EXIT_OK, EXIT_DIFFER, EXIT_ERROR = 0, 1, 2

#: optional module -> how to install it (printed when a command needs it and it is missing)
OPTIONAL = {
    "torch": "pip install torch==2.13.0 (or pip install 'linger[train]'; see docs/install.md)",
    "tqdm": "pip install 'linger[train]'",
    "sklearn": "pip install 'linger[demo]'",
    "matplotlib": "pip install 'linger[analysis]'",
}

#: subcommand name -> (function, help, arguments); filled by :func:`command`, in definition order.
COMMANDS: dict = {}

#: (module, function) pairs whose ``function(subparsers)`` adds subcommands defined next to the
#: code they drive (each sets ``_run`` on its parser).
EXTERNAL_PARSERS = [("linger.analysis.cli", "add_parser"), ("linger.packer.cli", "add_parser")]


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
        "export, pack and run models bit-exactly.",
        epilog="exit status (every command): 0 done/equal/fits, 1 outputs differ or the model"
        " does not fit the target, 2 usage or file error")
    parser.add_argument("--version", action="version", version=f"linger {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module, func in EXTERNAL_PARSERS:
        getattr(importlib.import_module(module), func)(sub)
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
        return EXIT_ERROR
    try:
        return int(args._run(args) or 0)
    except LingerError as e:
        return _error(args.command, e)
    except OSError as e:  # a file that cannot be read or written
        return _error(args.command, e)
    except Exception as e:  # a user script's error, or a bug: status 1 means "differ", not this
        top = (getattr(e, "name", None) or "").split(".")[0]
        if isinstance(e, ModuleNotFoundError) and top in OPTIONAL:
            return _error(args.command, f"this command needs {top}, which is not installed:"
                                        f" {OPTIONAL[top]}")
        traceback.print_exc()
        return _error(args.command, f"{type(e).__name__}: {e} (traceback above)")


def _error(command, message) -> int:
    print(f"linger {command}: error: {message}", file=sys.stderr)
    return EXIT_ERROR


# ------------------------------------------------------------------------------------------------
# Subcommands

@command("demo", "train a small CNN on the digits, quantize it with QAT, compare accuracies",
         arg("--epochs", type=int, default=20, help="float training epochs (default 20)"),
         arg("--qat-epochs", type=int, default=None,
             help="QAT fine-tuning epochs (default: half of --epochs)"),
         arg("--out-dir", default=None,
             help="keep the checkpoints, ONNX and packed files there (default: a temporary"
                  " directory, removed at exit)"),
         arg("--seed", type=int, default=0, help="random seed (default 0)"),
         arg("--threads", type=int, default=1,
             help="torch CPU threads (default 1: on a model this small more threads only add"
                  " synchronisation, and on a busy machine they make it many times slower;"
                  " 0 keeps torch's default)"),
         arg("--quiet", action="store_true", help="no progress bars and no table"))
def demo(args) -> int:
    """Train a small CNN on scikit-learn's 8x8 digits in float, turn it into a quantized model
    with linger.init, fine-tune it (QAT), and print float vs int8 accuracy and the time of each
    stage. Exit status 1 if the integer runtime is not bit-exact with PyTorch eval on every
    test image. Needs torch and scikit-learn (pip install 'linger[demo]')."""
    import torch

    from .demo import run_demo

    if args.threads:
        torch.set_num_threads(args.threads)
    r = run_demo(out_dir=args.out_dir, epochs=args.epochs, qat_epochs=args.qat_epochs,
                 quiet=args.quiet, seed=args.seed)
    return EXIT_OK if r["bit_exact"] == len(r["x_test"]) else EXIT_DIFFER


@command("run", "run an exported (.onnx) or packed (.bin) model in the integer runtime",
         arg("model", help="path to the .onnx or .bin model"),
         arg("inputs", nargs="+",
             help="input arrays: X.npy (for the first input) or NAME=X.npy, or one .npz with"
                  " an array per input name"),
         arg("-o", "--output", default=None,
             help="write the outputs: .npy (first output) or .npz (all, by name)"),
         arg("--engine", choices=["numpy", "c"], default="numpy",
             help="numpy: the integer runtime (default); c: the C engine (packed .bin only,"
                  " built with the system C compiler on first use)"))
def run(args) -> int:
    """Run MODEL on the given inputs with linger's numpy integer runtime (or the C engine,
    --engine c) and print each output's name, shape, dtype and range. Both reproduce PyTorch
    eval outputs bit for bit."""
    import numpy as np

    from ._files import refuse_overwrite

    refuse_overwrite([args.model] + [s.rpartition("=")[2] for s in args.inputs],
                     {"output": args.output})
    if args.engine == "c":
        from .engine import Engine

        sess = Engine(args.model)
        feeds = _load_feeds(args.inputs, [i[0] for i in sess.get_inputs()])
        names = [o[0] for o in sess.get_outputs()]
    else:
        from .runtime import InferenceSession

        sess = InferenceSession(args.model)
        feeds = _load_feeds(args.inputs, [i.name for i in sess.get_inputs()])
        names = [o.name for o in sess.get_outputs()]
    outs = sess.run(None, feeds)
    for name, out in zip(names, outs):
        rng = f"min {out.min():g}, max {out.max():g}" if out.size else "empty"
        print(f"{name}: shape {list(out.shape)}, {out.dtype}, {rng}")
    if args.output:
        if args.output.endswith(".npz"):
            np.savez(args.output, **dict(zip(names, outs)))
        else:
            np.save(args.output, outs[0])
        print(f"wrote {args.output}")
    return 0


def _load_feeds(specs, input_names):
    import numpy as np

    from .errors import InputError

    feeds = {}
    for i, spec in enumerate(specs):
        name, _, path = spec.rpartition("=")
        if not os.path.exists(path):
            raise InputError(f"input file {path!r} does not exist")
        try:
            data = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise InputError(f"cannot read {path!r} as .npy/.npz: {e}") from None
        if isinstance(data, np.lib.npyio.NpzFile):
            feeds.update({k: data[k] for k in data.files})
            continue
        if not name:
            if i >= len(input_names):
                raise InputError(f"{len(specs)} input files for {len(input_names)} model inputs"
                                 f" {input_names}; name them NAME=FILE.npy")
            name = input_names[i]
        feeds[name] = data
    return feeds


@command("validate", "compare every intermediate tensor of PyTorch eval with the runtime",
         arg("model", nargs="?", help="exported .onnx (with REFERENCE) or omitted with --script"),
         arg("reference", nargs="?",
             help=".npz written by linger.validate.save_reference (PyTorch per-value results)"),
         arg("--script", help="python file defining build_model() -> the linger.init-ed model"
                              " and example_input() -> a tensor"),
         arg("--checkpoint", help="state_dict to load into build_model()'s model"
                                  " (loaded with weights_only=True)"))
def validate(args) -> int:
    """Report the first graph value whose integers differ between PyTorch eval and linger's
    runtime: its name, shape, number of differing elements and largest difference. Exit status
    0 when everything is bit-exact, 1 on any difference, 2 when a file is missing or unreadable
    (model, reference .npz, script, checkpoint).

    Either give an exported MODEL.onnx and the REFERENCE.npz saved next to it by
    linger.validate.save_reference(model, x, path), or --script (and --checkpoint) to export
    and compare in one go."""
    from . import validate as v
    from .errors import ConfigError

    if args.script:
        model, x = _model_from_script(args.script, args.checkpoint)
        report = v.validate_model(model, x)
    elif args.model and args.reference:
        report = v.validate_files(args.model, args.reference)
    else:
        raise ConfigError("give MODEL.onnx REFERENCE.npz, or --script FILE.py")
    print(report)
    return EXIT_OK if report.ok else EXIT_DIFFER


def _model_from_script(script, checkpoint):
    import importlib.util

    from .errors import ConfigError, ModelFileError

    spec = importlib.util.spec_from_file_location("linger_user_script", script)
    if spec is None or not os.path.exists(script):
        raise ConfigError(f"script {script!r} not found")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    for fn in ("build_model", "example_input"):
        if not hasattr(mod, fn):
            raise ConfigError(f"{script} must define {fn}()")
    model = mod.build_model()
    if checkpoint:
        import torch

        try:
            state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        except Exception as e:  # torch raises many types for a bad file
            raise ModelFileError(f"cannot load checkpoint {checkpoint!r}: {e}") from None
        model.load_state_dict(state)
    return model.eval(), mod.example_input()


if __name__ == "__main__":
    sys.exit(main())
