"""The fuzz suite on a small budget (`make fuzz` runs 10,000 inputs), and the harness's own
verdicts: a foreign exception, a hang and a crash each count as a failure."""
import os
import time

import numpy as np
import pytest

from fuzz_harness import Input, classify, fuzz, make_inputs, report
from fuzz_mutators import (alias_bomb, deep_nesting, empty, flip_bytes, huge_number,
                           message_mutator, mutate, non_utf8, truncate, wrong_type)
from fuzz_targets import FORMATS, make_seeds
from runner.proto import ProtoError, caffe_pb2


@pytest.fixture(scope="module")
def seeds(tmp_path_factory):
    folder = tmp_path_factory.mktemp("seeds")
    make_seeds(folder)
    return folder


def test_small_budget_has_no_failures(seeds, capsys):
    inputs = make_inputs(6 * len(FORMATS), seed=18, seeds=seeds)
    start = time.monotonic()
    result = fuzz(inputs, seeds, workers=1, timeout=60)
    text = report(result, time.monotonic() - start)
    with capsys.disabled():
        print("\n" + text)
    assert set(result["counts"]) == set(FORMATS)
    assert all(sum(c.values()) == 6 for c in result["counts"].values())
    assert not result["failures"], text


def test_mutants_are_reproducible_from_the_seed(seeds):
    first = make_inputs(14, seed=3, seeds=seeds)
    again = make_inputs(14, seed=3, seeds=seeds)
    other = make_inputs(14, seed=4, seeds=seeds)
    assert [i.data for i in first] == [i.data for i in again]
    assert [i.data for i in first] != [i.data for i in other]


def test_mutators_change_their_input():
    rng = np.random.default_rng(0)
    text = b'layer { name: "a" convolution_param { num_output: 4 stride: 2 } }\n'
    assert empty(text, rng) == b""
    assert len(truncate(text, rng)) <= len(text)
    assert flip_bytes(text, rng) != text
    with pytest.raises(UnicodeDecodeError):
        non_utf8(text, rng).decode("utf-8")
    assert huge_number(text, rng) != text
    assert wrong_type(text, rng) != text
    assert len(deep_nesting(text, rng)) > 200 * 2
    assert b"*a1" in alias_bomb(b"---\nname: x\n---\n", rng)
    blob = caffe_pb2.BlobProto(data=[1.0, 2.0])
    blob.shape.dim.extend([2])
    out = {message_mutator(caffe_pb2.BlobProto)(blob.SerializeToString(), rng) for _ in range(20)}
    assert len(out) > 5
    assert mutate(text, [flip_bytes], rng)[1].startswith("flip_bytes")


def test_exceptions_are_sorted_into_ours_and_foreign():
    assert classify(ProtoError("x")) == "ours"
    assert classify(ValueError("x")) == "foreign"
    assert classify(MemoryError()) == "foreign"


def misbehave(name: str, folder) -> None:
    """A stand-in entry point for the harness test: each 'format' misbehaves its own way."""
    if name == "foreign":
        raise KeyError("deep inside")
    if name == "hang":
        time.sleep(60)
    if name == "crash":
        os.abort()
    if name == "ours":
        raise ProtoError("named")


def test_foreign_hang_and_crash_are_failures(seeds):
    inputs = [Input(i, name, b"", "none")
              for i, name in enumerate(["ok", "ours", "foreign", "hang", "crash", "ok"])]
    result = fuzz(inputs, seeds, workers=1, timeout=3, target="test_fuzz:misbehave")
    verdicts = {name: dict(c) for name, c in result["counts"].items()}
    assert verdicts == {"ok": {"ok": 2}, "ours": {"ours": 1}, "foreign": {"foreign": 1},
                        "hang": {"hang": 1}, "crash": {"crash": 1}}
    assert sorted(outcome for _, outcome, _ in result["failures"]) == ["crash", "foreign", "hang"]
    assert "KeyError" in next(t for _, o, t in result["failures"] if o == "foreign")
