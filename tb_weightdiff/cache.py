"""The plugin's caches: answers and per-run verdicts, each valid for one version of the data.

The tab polls, and every open browser polls the same routes; judging a large
logdir takes a second while TensorBoard's listing of what it holds (runs,
tags, last steps, wall times) takes milliseconds. So:

- `data_version` / `run_version` say, in brief, what TensorBoard holds for
  the logdir / for one run: equal versions mean equal answers;
- `AnswerCache` keeps route answers (JSON bytes) per key and version, and
  lets concurrent identical requests compute once;
- `RunVerdicts` keeps each run's verdicts per run version and thresholds,
  so when one run of many logs an epoch only that run is judged again.

Everything here takes parsed values (thresholds, run names), never request
arguments; the routes parse. Listings come from `judge`, which reads
through TensorBoard's data provider (the plugin wraps it in a
`reader.ListingMemo` per request, so each listing is one round trip).
"""

import collections
import hashlib
import json
import threading

from tb_weightdiff import judge


def run_version(weight_listings, run, reset_listing=None):
    """What TensorBoard holds for one run, in brief: each weight series' (and
    reset check's) tag, last step and last wall time. Equal versions mean equal verdicts."""
    version = tuple(
        (plugin_name, tag, series.max_step, series.max_wall_time)
        for plugin_name in sorted(weight_listings)
        for tag, series in sorted(weight_listings[plugin_name].get(run, {}).items())
    )
    resets = tuple(
        ("reset", tag, series.max_step, series.max_wall_time)
        for tag, series in sorted((reset_listing or {}).get(run, {}).items())
    )
    return version + resets


def data_version(logdir):
    """What TensorBoard holds, in brief: every weight series' run, tag, last step
    and last wall time, and the runs it lists. Equal versions mean equal answers."""
    weight_listings = judge.listings(logdir)
    resets = judge.reset_listing(logdir)
    version = [
        (run,) + run_version(weight_listings, run, resets) for run in judge.runs_with_weights(weight_listings)
    ]
    version.append(tuple(judge.listed_runs(logdir)))
    return tuple(version)


def entity_tag(body):
    """An HTTP entity tag of an answer's bytes (128-bit BLAKE2b, hex)."""
    return hashlib.blake2b(body, digest_size=16).hexdigest()


class AnswerCache:
    """An LRU of answers (bytes, 64 MB at most by default), each valid for one data version.

    Concurrent requests for the same key wait for one computation instead of
    each judging the logdir. Errors are not cached: they propagate to every
    waiter's own call, and no lock is kept for a key that failed.
    """

    def __init__(self, max_bytes=64 << 20):
        self._max_bytes = max_bytes
        self._bytes = 0
        self._entries = collections.OrderedDict()
        self._lock = threading.Lock()
        self._key_locks = {}

    def get(self, key, version, compute):
        """The stored value of `key` at `version`, or `compute()`'s, stored."""
        with self._lock:
            key_lock = self._key_locks.setdefault(key, threading.Lock())
        with key_lock:
            hit = self.peek(key, version)
            if hit is not None:
                return hit
            try:
                value = compute()
            except BaseException:
                with self._lock:
                    if key not in self._entries:  # no lock per failed request kept
                        self._key_locks.pop(key, None)
                raise
            self.put(key, version, value)
            return value

    def peek(self, key, version):
        """The stored value of `key` if it is of `version`, else None (no computing)."""
        with self._lock:
            hit = self._entries.get(key)
            if hit is not None and hit[0] == version:
                self._entries.move_to_end(key)
                return hit[1]
        return None

    def put(self, key, version, value):
        with self._lock:
            previous = self._entries.pop(key, None)
            if previous is not None:
                self._bytes -= len(previous[1])
            self._entries[key] = (version, value)
            self._bytes += len(value)
            while self._bytes > self._max_bytes and len(self._entries) > 1:
                evicted, (_, evicted_value) = self._entries.popitem(last=False)
                self._bytes -= len(evicted_value)
                self._key_locks.pop(evicted, None)

    def __len__(self):
        return len(self._entries)


class RunVerdicts:
    """Each run's verdicts, computed once per run version and thresholds.

    Entries are stored as JSON bytes in an `AnswerCache`, so a whole answer is
    put together without judging or parsing again.
    """

    def __init__(self, cache=None):
        self._cache = cache if cache is not None else AnswerCache()
        # One judging at a time: a request that arrives while another (or the
        # plugin's warm-up) judges the same runs waits and takes its answers
        # instead of judging them again on the same cores.
        self._judging = threading.Lock()

    @staticmethod
    def _key(logdir, run, thresholds):
        return ("run verdicts", logdir.experiment_id, run, tuple(sorted(thresholds.to_json().items())))

    def encoded(self, logdir, runs, thresholds):
        """`{run: JSON bytes of its entry, or None (no weight data)}` for `runs`.

        Raises:
          judge.UnknownRunError: a run has no weight data.
        """
        weight_listings = judge.listings(logdir)
        resets = judge.reset_listing(logdir)
        versions = {run: run_version(weight_listings, run, resets) for run in runs}
        found = {}
        missing = self._look_up(logdir, runs, thresholds, versions, found)
        if missing:
            with self._judging:
                missing = self._look_up(logdir, missing, thresholds, versions, found)
                if missing:
                    result = judge.analyze_logdir(logdir, runs=missing, thresholds=thresholds)
                    computed = {entry["run"]: entry for entry in result["runs"]}
                    for run in missing:
                        entry = computed.get(run)
                        value = b"null" if entry is None else json.dumps(entry, allow_nan=False).encode("utf-8")
                        self._cache.put(self._key(logdir, run, thresholds), versions[run], value)
                        found[run] = value
        return {run: (None if value == b"null" else value) for run, value in found.items()}

    def _look_up(self, logdir, runs, thresholds, versions, found):
        """Puts the cached entries of `runs` into `found`; returns the runs not cached."""
        missing = []
        for run in runs:
            hit = self._cache.peek(self._key(logdir, run, thresholds), versions[run])
            if hit is None:
                missing.append(run)
            else:
                found[run] = hit
        return missing

    def entry(self, logdir, run, thresholds):
        """One run's entry as a dict (with no weight data: one without layers).

        Raises:
          judge.UnknownRunError: the run has no weight data.
        """
        value = self.encoded(logdir, [run], thresholds)[run]
        return json.loads(value) if value is not None else {"warnings": [], "layers": []}
