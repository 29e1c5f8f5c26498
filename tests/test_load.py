"""The load test, at CI size: concurrent clients against a real TensorBoard, zero errors.

The full run (32 clients x 200 requests on 5 runs x 40 tensors x 100 steps) is
`python benchmarks/load_verdicts.py`; its figures are in the README.
"""

import os
import subprocess
import sys

import pytest

SCRIPT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks", "load_verdicts.py")


@pytest.mark.slow
@pytest.mark.parametrize("source", ["histograms", "tb_weightdiff"])
def test_concurrent_clients_get_no_errors(source):
    result = subprocess.run(
        [sys.executable, SCRIPT, "--clients", "8", "--requests", "25", "--runs", "2", "--tensors", "6",
         "--steps", "12", "--source", source],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "errors: 0" in result.stdout
    assert "8 clients x 25 requests = 200 requests" in result.stdout
    for route in ("verdicts", "variable", "compare"):
        assert "\n%s " % route in result.stdout
