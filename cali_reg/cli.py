"""The ``cali-reg`` command: one subcommand per use of a trained model.

Each subcommand's module is imported only when it runs, so ``cali-reg predict``
starts with numpy and the standard library alone.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from cali_reg import __version__
from cali_reg.errors import UserError, run

# name: (module with add_arguments(parser) and main(args), one-line help)
SUBCOMMANDS = {
    "predict": ("cali_reg.predict", "predict house values for CSV or JSON rows"),
    "serve": (
        "cali_reg.serve",
        "serve predictions over HTTP (MLflow's scoring protocol and KServe's V2)",
    ),
    "plots": ("cali_reg.plots", "render the DVC plots to images (docs/plots/)"),
}


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, like every other user mistake
        raise UserError(f"{message} (see --help)")


def build_parser(argv: list[str]) -> tuple[argparse.ArgumentParser, str | None]:
    """The parser; only the chosen subcommand's module is imported to add its arguments."""
    parser = _Parser(
        prog="cali-reg",
        description="Serve the cali-reg linear model of California house values ($100k).",
    )
    parser.add_argument("--version", action="version", version=f"cali-reg {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    chosen = next((a for a in argv if a in SUBCOMMANDS), None)
    for name, (module, help_) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        if name == chosen:
            importlib.import_module(module).add_arguments(p)
    return parser, chosen


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``cali-reg`` console script."""
    argv = sys.argv[1:] if argv is None else list(argv)

    def command() -> None:
        parser, _ = build_parser(argv)
        args = parser.parse_args(argv)
        if args.command is None:
            raise UserError("give a command: " + ", ".join(SUBCOMMANDS) + " (see --help)")
        importlib.import_module(SUBCOMMANDS[args.command][0]).main(args)

    run(command)
