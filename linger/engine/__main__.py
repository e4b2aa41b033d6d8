"""``python -m linger.engine build`` builds the C engine (shared library and the
``linger-engine`` program) with the system C compiler and prints where they are;
``python -m linger.engine MODEL.bin INPUT OUTPUT`` (or ``linger-engine ...``) runs the program.
"""

from __future__ import annotations

import argparse
import os
import sys

from . import EngineBuildError, build, build_cli


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "build":
        p = argparse.ArgumentParser(prog="python -m linger.engine build",
                                    description="build the linger C engine with the system C"
                                                " compiler (-std=c99 -pedantic -Wall -Wextra"
                                                " -Werror)")
        p.add_argument("--sanitize", action="store_true",
                       help="AddressSanitizer + UndefinedBehaviorSanitizer build")
        p.add_argument("--native", action="store_true", help="add -march=native")
        args = p.parse_args(argv[1:])
        try:
            print(f"library: {build(args.sanitize, args.native)}")
            print(f"program: {build_cli(args.sanitize, args.native)}")
        except EngineBuildError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        return 0
    try:
        exe = build_cli()
    except EngineBuildError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    sys.stdout.flush()
    os.execv(exe, [exe] + argv)
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
