"""Judging a logdir: pick each run's source, read it through `reader`, score it, judge it.

The one step between TensorBoard's data and the verdicts, and the only code
of the judging side that calls `tb_weightdiff.reader`. The plugin, the CLI
and the tests come here; the data walks one way:
reader (event data -> `reader.Series`) -> `scores` -> `verdicts` -> JSON.

Which source a run is judged from, decided once (`judged_source`): our own
summaries where the run has any, else its plain weight histograms (Keras's
`TensorBoard(histogram_freq=1)`, `torch.utils.tensorboard`). A run whose
summaries all fail to read falls back to its histograms.

Restarted jobs follow one rule, TensorBoard's data server's
(`reader.drop_orphaned_steps`): the reader applies it to everything it reads,
and `analyze_series` applies it to series handed over in any other order.
"""

import dataclasses
import logging

import numpy as np

from tb_weightdiff import metadata
from tb_weightdiff import reader
from tb_weightdiff import scores
from tb_weightdiff import verdicts

WEIGHT_PLUGINS = (metadata.PLUGIN_NAME, metadata.HISTOGRAM_PLUGIN_NAME)

logger = logging.getLogger(__name__)


class AnalysisError(ValueError):
    """A request the analysis cannot answer (the message says why)."""


class UnknownRunError(AnalysisError):
    """A requested run has no weight data."""


class UnknownSeriesError(AnalysisError):
    """A requested series is not logged, or cannot be read (the message says which)."""


def listings(logdir):
    """`{plugin: {run: {tag: TensorTimeSeries}}}` of both weight sources (one listing each)."""
    return {plugin_name: reader.list_tensors(logdir, plugin_name) for plugin_name in WEIGHT_PLUGINS}


def reset_listing(logdir):
    """`{run: {tag: TensorTimeSeries}}` of the reset checks (`tb_weightdiff.reset`)."""
    return reader.list_resets(logdir)


def listed_runs(logdir):
    """Every run TensorBoard lists, weight data or not."""
    return sorted(run.run_name for run in logdir.provider.list_runs(logdir.ctx, experiment_id=logdir.experiment_id))


def runs_with_weights(weight_listings):
    return sorted(set().union(*(set(listing) for listing in weight_listings.values())))


def judged_source(weight_listings, run):
    """The plugin `run` is judged from: ours where it has any, else plain histograms; None if neither."""
    for plugin_name in WEIGHT_PLUGINS:
        if weight_listings.get(plugin_name, {}).get(run):
            return plugin_name
    return None


def _check_source(source):
    if source not in verdicts.SOURCES:
        raise AnalysisError("source must be one of %s, got %r" % (", ".join(verdicts.SOURCES), source))


def _in_step_order(series, warnings):
    """`series` with strictly increasing steps, by the restart rule of the reader."""
    steps = [int(step) for step in series.steps]
    if all(a < b for a, b in zip(steps, steps[1:])):
        return series
    steps, summaries, restarts = reader.drop_orphaned_steps(steps, list(series.summaries))
    warnings.append("%s: %s" % (series.tag, reader.restart_message(restarts)))
    return dataclasses.replace(series, steps=steps, summaries=summaries, table=None)


def _judge_run(run, source, series_list, thresholds, warnings, other_source_count, optimizer, resets=None, memo=None):
    variables = scores.build_variables(series_list, warnings)
    layers = scores.score_layers(variables, thresholds.settled_fraction, memo=memo)
    if optimizer:
        scores.attach_updates(variables, optimizer["steps"], optimizer["updates"])
    medians = verdicts.judge(layers, thresholds)
    return verdicts.run_json(
        run, source, layers, medians, warnings, other_source_count, optimizer, thresholds, resets=resets
    )


# The samples TensorBoard keeps per series by default: its Rust data server
# 100; its Python loader 10 for a plugin it does not know, 500 for histograms.
_TENSORBOARD_SAMPLE_LIMITS = (10, 100, 500)


def _downsampled(series_list):
    """The series TensorBoard kept fewer steps of than were logged, as far as can be told:
    as many steps as one of its sample limits, spread wider than that many at their closest gap."""
    found = []
    for series in series_list:
        steps = np.asarray(series.steps, dtype=np.int64)
        if steps.size not in _TENSORBOARD_SAMPLE_LIMITS:
            continue
        gap = np.min(np.diff(steps))
        if gap > 0 and (steps[-1] - steps[0]) // gap + 1 > steps.size:
            found.append(series)
    return found


def _downsampling_warning(series_list):
    found = _downsampled(series_list)
    if not found:
        return None
    return (
        "TensorBoard kept %d steps of %d series here (e.g. %s), fewer than were logged: its "
        "sample limit per series. The verdicts are of the steps it kept; start TensorBoard with "
        "--samples_per_plugin tb_weightdiff=0,histograms=0 to judge every step "
        "(tb-weightdiff report always reads them all)." % (len(found[0].steps), len(found), found[0].tag)
    )


def _analyze_run(
    run, series_list, thresholds, warnings, other_source_count, optimizer, sampled=False, resets=None, memo=None,
):
    source = series_list[0].source if series_list else metadata.PLUGIN_NAME
    series_list = [_in_step_order(series, warnings) for series in series_list]
    if sampled:
        note = _downsampling_warning(series_list)
        if note:
            warnings.insert(0, note)
    try:
        return _judge_run(
            run, source, series_list, thresholds, list(warnings), other_source_count, optimizer, resets, memo
        )
    except Exception:  # pylint: disable=broad-except
        # Data the reader's checks let through still broke the run: find the
        # series that cannot be judged, one by one, and judge the run without
        # them, exactly as if they were absent. The traceback goes to the log,
        # so that a bug is seen, and the series to the run's warnings.
        logger.exception("Judging run %s failed; judging its series one by one", run)
    kept = []
    for series in series_list:
        try:
            _judge_run(run, source, [series], thresholds, [], 0, None, memo=False)
        except Exception as error:  # pylint: disable=broad-except
            warnings.append("%s: skipped, cannot be judged: %s: %s" % (series.tag, type(error).__name__, error))
            continue
        kept.append(series)
    return _judge_run(run, source, kept, thresholds, warnings, other_source_count, optimizer, resets, memo)


def _histograms_only(our_tags, histogram_tags):
    """The plain histogram tags that name a tensor none of `our_tags` names (by `scores.split_tag`)."""
    ours = {scores.split_tag(tag) for tag in our_tags}
    return sorted(tag for tag in histogram_tags if scores.split_tag(tag) not in ours)


def _histograms_only_warning(tags):
    return (
        "%d weight tensor%s of this run %s only plain histograms (e.g. %s) and %s not judged: the "
        "run is judged from its tb_weightdiff summaries. If they were logged with "
        "add_histogram(name, ...) beside WeightDiffLogger, both writers used the same tags, and in "
        "one run a tag keeps the events of one plugin only: give the histograms' tags a suffix "
        "(name + '/histogram'), or judge the run from them with tb-weightdiff report --source histograms."
        % (len(tags), "" if len(tags) == 1 else "s", "has" if len(tags) == 1 else "have", tags[0],
           "is" if len(tags) == 1 else "are")
    )


def analyze_series(
    series_list, thresholds=None, source="auto", skipped=(), other_source_counts=None, optimizers=None,
    sampled=False, histograms_only=None, resets=None, memo=None,
):
    """Scores and verdicts for series of one or more runs.

    Args:
      series_list: `reader.Series` of any runs and of either source.
      thresholds: a `verdicts.Thresholds` (default: the calibrated defaults).
      source: "auto" judges a run from our summaries where it has them and
        from plain histograms otherwise (and says so in its warnings);
        `metadata.PLUGIN_NAME` or `metadata.HISTOGRAM_PLUGIN_NAME` uses only
        that source.
      skipped: `(run, tag, message)` warnings from `reader.read_series`; they
        go into their run's `warnings`.
      other_source_counts: optional `{run: count}` of plain histogram series
        a run also holds but that were not read (`analyze_logdir` reads only
        the source a run is judged from); they are mentioned in its warnings.
      optimizers: optional `{run: reader.read_optimizer's entry}`: the
        optimizer's update count and learning rate a writer logged.
      sampled: the series are what TensorBoard kept (the plugin), not every
        logged step (the CLI): say so where it kept fewer than were logged.
      histograms_only: optional `{run: [tags]}` of plain histogram series
        that were not read and name tensors the run's summaries do not
        (`analyze_logdir` finds them in the listings); a run judged from its
        summaries says that they were left out, and why that usually happens.
      memo: the `scores.DistanceMemo` that keeps distances for the next
        judging (default `scores.DISTANCES`); False for none (one judging,
        as the CLI's).

    Returns:
      A list of run dicts (the JSON contract in the README), sorted by run.
    """
    thresholds = thresholds or verdicts.Thresholds()
    _check_source(source)
    other_source_counts = other_source_counts or {}
    optimizers = optimizers or {}
    by_run = {}
    for series in series_list:
        by_run.setdefault(series.run, {}).setdefault(series.source, []).append(series)
    extra = {}
    for run, tag, message in skipped:
        # The reader's messages say what happened ("skipped: ...", "steps went back ...").
        extra.setdefault(run, []).append("%s: %s" % (tag, message))
        by_run.setdefault(run, {})
    results = []
    for run in sorted(by_run):
        sources = by_run[run]
        ours = sources.get(metadata.PLUGIN_NAME, [])
        histograms = sources.get(metadata.HISTOGRAM_PLUGIN_NAME, [])
        other_count = 0
        if source == metadata.HISTOGRAM_PLUGIN_NAME or (source == "auto" and not ours and histograms):
            chosen = histograms
        else:
            chosen = ours
            if source == "auto":
                other_count = len(histograms) + other_source_counts.get(run, 0)
                left_out = sorted(
                    set(_histograms_only([s.tag for s in ours], [s.tag for s in histograms]))
                    | set((histograms_only or {}).get(run, ()))
                )
                if ours and left_out:
                    extra.setdefault(run, []).insert(0, _histograms_only_warning(left_out))
        if not chosen and run not in extra:
            continue
        chosen = sorted(chosen, key=lambda s: s.tag)
        optimizer = optimizers.get(run) if chosen and chosen[0].source == metadata.PLUGIN_NAME else None
        results.append(
            _analyze_run(
                run, chosen, thresholds, list(extra.get(run, [])), other_count, optimizer, sampled,
                (resets or {}).get(run), memo,
            )
        )
    return results


def analyze_logdir(logdir, runs=None, thresholds=None, source="auto", memo=None):
    """Reads every weight series of a logdir and judges it.

    Each run is read only from the source it is judged from (a run with our
    summaries and Keras's histograms is not read twice), and runs are read
    and judged in batches (`reader.iter_read_series`), each read while the
    one before is judged, so the memory a call holds is bounded by two
    batches, not by the logdir.

    Args:
      logdir: a `reader.Logdir` (from `reader.open_logdir`, or the plugin's
        wrapper around TensorBoard's data provider).
      runs: optional iterable of run names; default all runs with weight data.
      thresholds: a `verdicts.Thresholds`.
      source: as in `analyze_series`.
      memo: as in `analyze_series`.

    Returns:
      `{"thresholds": {...}, "runs": [...]}`, ready for `verdicts.to_json`.

    Raises:
      UnknownRunError: a requested run holds no weight data.
    """
    thresholds = thresholds or verdicts.Thresholds()
    _check_source(source)
    # The plugin reads what TensorBoard kept; the CLI's own data server keeps every step.
    sampled = logdir.loader == "tensorboard"
    weight_listings = listings(logdir)
    if source != "auto":
        weight_listings = {source: weight_listings[source]}
    available = set(runs_with_weights(weight_listings))
    if runs is not None:
        runs = list(dict.fromkeys(runs))
        missing = [run for run in runs if run not in available]
        if missing:
            raise UnknownRunError(
                "no weight data for run%s %s; runs with weight data: %s"
                % (
                    "s" if len(missing) > 1 else "",
                    ", ".join(repr(r) for r in missing),
                    ", ".join(repr(r) for r in sorted(available)) or "none",
                )
            )
    wanted_runs = set(available if runs is None else runs)
    histogram_listing = weight_listings.get(metadata.HISTOGRAM_PLUGIN_NAME, {})
    # A run with our summaries is judged from them; its histograms are only
    # counted (analyze_series ignores the count when none of ours was readable
    # and the run falls back to its histograms below).
    ours_runs = {
        run for run in wanted_runs if judged_source(weight_listings, run) == metadata.PLUGIN_NAME
    }
    other_counts = {run: len(histogram_listing[run]) for run in ours_runs if histogram_listing.get(run)}
    ours_listing = weight_listings.get(metadata.PLUGIN_NAME, {})
    histograms_only = {
        run: _histograms_only(ours_listing.get(run, {}), histogram_listing[run])
        for run in ours_runs if histogram_listing.get(run)
    }
    resets, reset_warnings = reader.read_resets(logdir, wanted_runs)
    results = []
    fallback = {}  # runs of ours with nothing readable, judged from histograms if they have any
    if ours_runs:
        optimizers = reader.read_optimizer(logdir, ours_runs)
        for series, warnings in reader.iter_read_series(logdir, metadata.PLUGIN_NAME, runs=ours_runs, ahead=True):
            read_runs = {s.run for s in series}
            for run, tag, message in warnings:
                if source == "auto" and run not in read_runs and histogram_listing.get(run):
                    fallback.setdefault(run, []).append((run, tag, message))
            kept = [w for w in warnings if w[0] not in fallback]
            batch_runs = read_runs | {w[0] for w in warnings}
            kept += [w for w in reset_warnings if w[0] in batch_runs]
            results.extend(
                analyze_series(
                    series, thresholds, source=source, skipped=kept, other_source_counts=other_counts,
                    optimizers=optimizers, sampled=sampled, histograms_only=histograms_only, resets=resets,
                    memo=memo,
                )
            )
    if metadata.HISTOGRAM_PLUGIN_NAME in weight_listings:
        histogram_runs = {
            run for run in histogram_listing
            if run in wanted_runs and (run not in ours_runs or run in fallback)
        }
        if histogram_runs:
            carried = [w for run in sorted(fallback) for w in fallback[run]]
            for series, warnings in reader.iter_read_series(
                logdir, metadata.HISTOGRAM_PLUGIN_NAME, runs=histogram_runs, ahead=True
            ):
                batch_runs = {s.run for s in series} | {w[0] for w in warnings}
                mine = [w for w in carried if w[0] in batch_runs]
                carried = [w for w in carried if w[0] not in batch_runs]
                results.extend(
                    analyze_series(
                        series, thresholds, source=source, skipped=mine + warnings, sampled=sampled, resets=resets,
                        memo=memo,
                    )
                )
            if carried:
                results.extend(analyze_series([], thresholds, source=source, skipped=carried))
    results.sort(key=lambda entry: entry["run"])
    return {"thresholds": thresholds.to_json(), "runs": results}


def read_variable(logdir, run, tag):
    """The series of `(run, tag)`, from the source its run is judged from (else the other).

    Raises:
      UnknownSeriesError: no such series, or it cannot be read (the message says why).
    """
    weight_listings = listings(logdir)
    first = judged_source(weight_listings, run)
    for plugin_name in sorted(WEIGHT_PLUGINS, key=lambda name: name != first):
        if tag not in weight_listings[plugin_name].get(run, {}):
            continue
        found, skipped = reader.read_series(logdir, plugin_name=plugin_name, runs=[run], tags=[tag])
        for series in found:
            if series.tag == tag:
                return series
        for _, skipped_tag, message in skipped:
            if skipped_tag == tag:
                raise UnknownSeriesError("%s in run %s cannot be read: %s" % (tag, run, message))
    raise UnknownSeriesError("no weight series %r in run %r" % (tag, run))
