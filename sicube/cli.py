"""`python -m sicube …`: parses arguments and calls the API; nothing else lives here.

Every command is one `_add_<name>` function that declares its arguments and the
function to run. Bad input (`BadInput`) ends in one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

from sicube.errors import BadInput


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are a single line and exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")


Command = Callable[[argparse.ArgumentParser], None]
COMMANDS: list[tuple[str, str, Command]] = []


def command(name: str, help: str) -> Callable[[Command], Command]:
    """Register `_add_<name>(parser)` as the sub-command `name`."""

    def register(add: Command) -> Command:
        COMMANDS.append((name, help, add))
        return add

    return register


def build_parser() -> argparse.ArgumentParser:
    """The full `sicube` argument parser with every registered command."""
    parser = _Parser(prog="sicube", description="AMSR2 sea-ice data to ML-ready cubes")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name, help_text, add in COMMANDS:
        cmd = sub.add_parser(name, help=help_text, description=help_text)
        _add_common(cmd)
        add(cmd)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one sicube command; return its exit code."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.run(args) or 0)
    except BadInput as err:
        print(f"sicube {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"sicube {args.command}: interrupted", file=sys.stderr)
        return 130


# --- commands ---------------------------------------------------------------------------------


@command("sample", "write a realistic synthetic AMSR2 archive (offline test data)")
def _add_sample(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--start", required=True, help="first day (YYYYMMDD or YYYY-MM-DD)")
    parser.add_argument("--end", required=True, help="last day")
    parser.add_argument("--out", required=True, help="archive folder (year sub-folders inside)")
    parser.add_argument("--step", type=int, default=8,
                        help="coarsen the 3.125 km grid by this factor (1 = full 3584 x 2432)")
    parser.add_argument("--missing-days", nargs="*", default=None, metavar="DAY",
                        help="days to leave out (default: about 5%% at random)")
    parser.add_argument("--seed", type=int, default=0)
    parser.set_defaults(run=_run_sample)


def _run_sample(args: argparse.Namespace) -> int:
    from sicube.sample import write_archive

    archive = write_archive(args.out, args.start, args.end, step=args.step,
                            missing_days=args.missing_days, seed=args.seed,
                            progress=not args.quiet)
    ny, nx = archive.shape
    print(f"wrote {len(archive.files)} daily files ({ny} x {nx}) under {archive.root}")
    if archive.missing:
        print("missing days: " + ", ".join(f"{d:%Y%m%d}" for d in archive.missing))
    return 0
