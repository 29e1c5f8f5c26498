"""`tb-weightdiff`: the command line.

Errors are one line on stderr and exit status 2; nothing prints a traceback.
"""

import argparse
import sys

from tb_weightdiff.version import __version__


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        # argparse prints usage plus the message; one line is enough for a pipeline log.
        self.exit(2, "%s: error: %s\n" % (self.prog, message))


def build_parser():
    parser = _Parser(
        prog="tb-weightdiff",
        description=(
            "Which layers learned? Compare weight distributions across epochs "
            "in TensorBoard logdirs."
        ),
    )
    parser.add_argument(
        "--version", action="version", version="tb-weightdiff %s" % __version__
    )
    parser.add_subparsers(dest="command", metavar="COMMAND")
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
