"""The `vslerp` command line: fixture, render, stats.

Each subcommand parses its arguments here and hands over to the package that does the
work. Errors a user can fix print one line and exit non-zero; --debug shows tracebacks.
"""

from __future__ import annotations

import argparse
import sys


class CLIError(Exception):
    """A problem the user can fix; printed as one line, exit code 2."""


def _cmd_fixture(args) -> int:
    from pipelines.fixtures import write_fixture

    path = write_fixture(args.kind, args.dir, layout=args.layout, seed=args.seed)
    print(f"wrote tiny {args.kind} pipeline to {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vslerp", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("fixture", help="write a tiny random-weight pipeline in the hub layout")
    p.add_argument("kind", choices=["karlo", "stable-unclip"])
    p.add_argument("dir")
    p.add_argument("--layout", choices=["hub", "current"], default="hub",
                   help="hub: model_index.json as the real repository (saved by an older "
                        "diffusers); current: as today's diffusers saves it")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_fixture)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("vslerp: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # one clear line for the user, the traceback with --debug
        if args.debug:
            raise
        print(f"vslerp {args.command}: error: {e}", file=sys.stderr)
        return 2
