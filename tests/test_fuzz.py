"""A seeded fuzz run in CI: mutated ONNX and packed files (checksums recomputed) each end in
loaded-and-ran or a LingerError, on the fast and the plain path, within a time limit per case
and under an address-space limit (each case runs in a worker process, tests/fuzzing.py). The
long campaign is ``python bench/fuzz_campaign.py`` (figures in docs/reliability.md)."""

import collections
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))
import fuzzing  # noqa: E402

CASES = 400
SEED = 2026


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses /proc and RLIMIT_AS")
def test_fuzzed_files_load_and_run_or_raise_a_linger_error():
    results = fuzzing.run_campaign(SEED, CASES, seconds=20.0)
    assert len(results) == 2 * CASES                   # every case, on both paths
    bad = fuzzing.failures(results)
    assert not bad, f"{len(bad)} failing cases (reproduce: python tests/fuzzing.py --case" \
                    f" {SEED} <case>): {bad[:5]}"
    kinds = collections.Counter(r["kind"] for r in results)
    assert set(kinds) == set(fuzzing.KINDS)           # every mutator took part
    outcomes = collections.Counter(r["outcome"] for r in results)
    assert outcomes["ran"] > 0 and sum(v for k, v in outcomes.items() if k != "ran") > 0


def test_the_runner_reports_a_raw_exception_as_a_failure(monkeypatch):
    """The harness can fail: a non-linger exception is counted."""
    from linger.runtime import KERNELS

    def broken(inputs):
        raise IndexError("raw")
    broken.pass_num_outputs = False
    monkeypatch.setitem(KERNELS, ("", "Relu"), broken)
    got = fuzzing.outcome(fuzzing.seeds()["conv"][0], fast=False)
    assert got.startswith("refused:ModelFileError")    # wrapped by run(): a LingerError
    assert fuzzing.failures([{"outcome": "raw:IndexError: x"}, {"outcome": "timeout"},
                             {"outcome": "ran"}]) == [{"outcome": "raw:IndexError: x"},
                                                       {"outcome": "timeout"}]
