"""`tb-weightdiff`: the command line.

`tb-weightdiff report --logdir DIR` judges the logdir with `tb_weightdiff.judge`
and prints every run's verdicts (worst first) as a table, `--json` or `--csv`
(the contract and the CSV schema of `tb_weightdiff.verdicts`). Its threshold
flags are made from `verdicts.Thresholds`.

Exit status: 0 when the report was printed; 1 when `--fail-on` matched a
variable's or a layer's verdict (for training pipelines); 2 for errors (a
missing or empty logdir, no weight data, an unknown `--run`, bad flags). Errors
are one line on stderr; nothing prints a traceback.
"""

import argparse
import io
import math
import sys
import types

from tb_weightdiff import judge
from tb_weightdiff import reader
from tb_weightdiff import verdicts
from tb_weightdiff.version import __version__

# These import little (numpy and TensorBoard's protobufs); the data providers
# themselves (grpc, the event loaders) load only when `report` opens a logdir.
_VERDICTS = verdicts.VERDICTS


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        # argparse prints usage plus the message; one line is enough for a pipeline log.
        self.exit(2, "%s: error: %s\n" % (self.prog, message))


class _CommandError(Exception):
    """An error worth one line on stderr and exit status 2."""


def _threshold(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError("%r is not a number" % text) from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError("%r must be a finite number >= 0" % text)
    return value


def _verdict_list(text):
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in _VERDICTS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            "%r: verdicts are %s" % (", ".join(unknown) or text, ", ".join(_VERDICTS))
        )
    return names


def _add_report_parser(subparsers):
    report = subparsers.add_parser(
        "report",
        help="print every layer's verdict (learning, not_learning, frozen, diverged, unknown)",
        description=(
            "Judge how far every weight tensor moved across the logged steps and print "
            "the verdicts, worst first. Reads tb_weightdiff summaries, or plain weight "
            "histograms (keras.callbacks.TensorBoard(histogram_freq=1), tf.summary / "
            "torch histograms) where a run has no tb_weightdiff summaries."
        ),
    )
    report.add_argument("--logdir", required=True, help="the directory given to tensorboard --logdir")
    report.add_argument(
        "--run",
        action="append",
        dest="runs",
        metavar="RUN",
        help="only this run, as TensorBoard names it (repeat for several)",
    )
    output = report.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="print JSON (strict: null, never NaN)")
    output.add_argument("--csv", action="store_true", help="print CSV, one row per variable")
    for threshold in verdicts.Thresholds.describe():
        report.add_argument(
            "--" + threshold["name"].replace("_", "-"),
            dest=threshold["name"],
            type=_threshold,
            metavar="X",
            help="%s (default %g)" % (threshold["help"], threshold["default"]),
        )
    report.add_argument(
        "--fail-on",
        type=_verdict_list,
        metavar="VERDICTS",
        help="exit 1 when a layer or variable gets one of these comma-separated verdicts, "
        "e.g. frozen,not_learning,diverged",
    )
    report.add_argument(
        "--source",
        choices=verdicts.SOURCES,
        default="auto",
        help="judge from tb_weightdiff summaries, plain histograms, or auto: ours where "
        "a run has them (default auto)",
    )
    report.add_argument(
        "--loader",
        choices=reader.LOADERS,
        default="auto",
        help="TensorBoard's Rust data server, its Python loader, or auto: rust where "
        "installed (default auto)",
    )


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
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_report_parser(subparsers)
    return parser


# -- output -------------------------------------------------------------------


def _printable(name):
    """A name from a log, safe to print on a terminal (control characters escaped)."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(name))


def _number(value):
    if value is None:
        return "-"
    if value == 0:
        return "0"
    if 1e-3 <= abs(value) < 1e4:
        return "%.4g" % value
    return "%.2e" % value


def _row(entry, name):
    kind = entry.get("movement_kind")
    movement = _number(entry.get("movement"))
    if kind and entry.get("movement") is not None:
        movement += " (%s)" % ("rel" if kind == "relative_change" else "shift")
    ratio = entry.get("ratio_to_median")
    trainable = entry.get("trainable")
    return [
        entry["verdict"],
        name,
        movement,
        _number(ratio) if ratio is not None else "-",
        _number(entry.get("shift")),
        _number(entry.get("relative_change")),
        _number(entry.get("cosine_distance")),
        "-" if entry.get("diverged_step") is None else str(entry["diverged_step"]),
        "-" if entry.get("settled_step") is None else str(entry["settled_step"]),
        {True: "yes", False: "no", None: "?"}[trainable],
        "-" if entry.get("margin") is None else "%.2g" % entry["margin"],
    ]


_HEADER = [
    "VERDICT", "LAYER / variable", "MOVEMENT", "x PEERS", "SHIFT", "REL.CHANGE", "COS.DIST", "DIVERGED@",
    "SETTLED@", "TRAINABLE", "MARGIN",
]


def _format_table(result):
    out = io.StringIO()
    thresholds = result["thresholds"]
    out.write("thresholds: %s\n" % "  ".join("%s=%g" % (name, thresholds[name]) for name in thresholds))
    out.write(
        "MOVEMENT: largest relative change ||W - W0|| / ||W0|| (rel) or histogram shift "
        "W1 / baseline std (shift) from the baseline; x PEERS: movement / the median of the run's "
        "other layers of its kind; MARGIN: decades from the threshold that would flip the verdict\n"
    )
    for run in result["runs"]:
        steps = run["steps"]
        span = "%d..%d, %d logged" % (steps[0], steps[-1], len(steps)) if steps else "none"
        out.write(
            "\nrun %s  (source %s; steps %s; baseline step %s)\n"
            % (_printable(run["run"]), run["source"], span, run["baseline_step"])
        )
        for finding in run.get("findings", []):
            out.write("  finding: %s\n" % _printable(finding["message"]))
        for warning in run["warnings"]:
            out.write("  warning: %s\n" % _printable(warning))
        check = run.get("reset_check")
        if check:
            out.write(
                "  reset check at step %d: loss %s as trained, %s with every layer reset (before training); "
                "%d batches, %d examples; RESET: loss increase with the layer reset, and the share of what "
                "training gained that it undoes\n"
                % (check["step"], _number(check["loss"]), _number(check["loss_initial"]), check["batches"],
                   check["examples"])
            )
        header = _HEADER + (["RESET"] if check else [])
        rows = [header]
        for layer in run["layers"]:
            rows.append(_row(layer, _printable(layer["name"])) + ([_reset_cell(layer.get("reset"))] if check else []))
            if len(layer["variables"]) > 1 or layer["variables"][0]["name"] != layer["name"]:
                for variable in layer["variables"]:
                    rows.append(_row(variable, "  " + _printable(variable["name"])) + ([""] if check else []))
        if len(rows) == 1:
            out.write("  (no weight series)\n")
            continue
        widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
        for row in rows:
            cells = [cell.ljust(width) for cell, width in zip(row, widths)]
            out.write("  " + "  ".join(cells).rstrip() + "\n")
        counts = ", ".join(
            "%d %s" % (run["verdict_counts"][v], v) for v in _VERDICTS if run["verdict_counts"][v]
        )
        out.write("  layers: %s\n" % counts)
        for layer in run["layers"]:
            if layer.get("hint"):
                out.write("  hint for %s (%s): %s\n" % (_printable(layer["name"]), layer["verdict"], layer["hint"]))
            if layer.get("reset_note"):
                out.write("  reset of %s (%s, %s): %s\n" % (
                    _printable(layer["name"]), layer["verdict"], layer["reset"]["impact"], layer["reset_note"]))
    return out.getvalue()


def _reset_cell(reset):
    if not reset:
        return "-"
    undone, increase = reset.get("undone"), reset["increase"]
    share = "" if undone is None else " (%.0f%%%s)" % (100 * undone, ", " + reset["impact"] if reset["impact"] else "")
    sign = "+" if increase is not None and increase >= 0 else ""
    return sign + _number(increase) + share


# -- the command ----------------------------------------------------------------


def _report(args):
    given = {name: getattr(args, name) for name in verdicts.Thresholds.names()}
    try:
        thresholds = verdicts.Thresholds(**{k: v for k, v in given.items() if v is not None})
    except ValueError as error:
        raise _CommandError(str(error)) from None
    if "tensorflow" not in sys.modules:
        # TensorBoard's Python loader imports TensorFlow where it is installed,
        # only for file access it can do without: hundreds of MB of memory and
        # seconds of start-up for nothing (README, "Command line"). This marker makes TensorBoard use its stub.
        sys.modules.setdefault("tensorboard.compat.notf", types.ModuleType("tensorboard.compat.notf"))
    try:
        with reader.open_logdir(args.logdir, loader=args.loader) as opened:
            # One judging: no distance memo (its digests would serve no next judging).
            result = judge.analyze_logdir(opened, runs=args.runs, thresholds=thresholds, source=args.source, memo=False)
    except (reader.LogdirError, judge.AnalysisError) as error:
        raise _CommandError(str(error)) from None
    if not result["runs"]:
        what = {
            "auto": "no tb_weightdiff summaries and no weight histograms",
            "tb_weightdiff": "no tb_weightdiff summaries",
            "histograms": "no weight histograms",
        }[args.source]
        raise _CommandError(
            "logdir %s holds %s; log them with tb_weightdiff.keras.WeightDiffCallback "
            "or keras.callbacks.TensorBoard(histogram_freq=1)" % (args.logdir, what)
        )
    if args.json:
        text = verdicts.to_json(result, indent=1) + "\n"
    elif args.csv:
        text = verdicts.to_csv(result)
    else:
        text = _format_table(result)
    sys.stdout.write(text)
    sys.stdout.flush()
    if args.fail_on:
        matched = verdicts.verdicts_of(result) & set(args.fail_on)
        if matched:
            sys.stderr.write(
                "tb-weightdiff: --fail-on matched: %s\n" % ", ".join(v for v in _VERDICTS if v in matched)
            )
            return 1
    return 0


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return _report(args)
    except _CommandError as error:
        sys.stderr.write("%s %s: error: %s\n" % (parser.prog, args.command, error))
        return 2
    except BrokenPipeError:
        # `tb-weightdiff report ... | head`: the reader left; that is not an error.
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        sys.stderr.write("%s: interrupted\n" % parser.prog)
        return 130
    except Exception as error:  # pylint: disable=broad-except
        # Never a traceback: one line a pipeline log can show.
        sys.stderr.write(
            "%s %s: error: %s: %s\n" % (parser.prog, args.command, type(error).__name__, error)
        )
        return 2


if __name__ == "__main__":
    sys.exit(main())
