"""device_query prints what `caffe device_query` prints (Caffe's labels and column), read
from torch.cuda; without a GPU it says so plainly and exits 1."""
from types import SimpleNamespace

import pytest
import torch

from runner.tools import device_query

PROPS = SimpleNamespace(major=9, minor=0, name="NVIDIA H200", total_memory=150_000_000_000,
                        shared_memory_per_block=49152, warp_size=32, multi_processor_count=132)


def test_lines_use_caffes_labels_in_caffes_order():
    lines = device_query.device_lines(1, PROPS)
    assert lines == [
        "Device id:                     1",
        "Major revision number:         9",
        "Minor revision number:         0",
        "Name:                          NVIDIA H200",
        "Total global memory:           150000000000",
        "Total shared memory per block: 49152",
        "Warp size:                     32",
        "Number of multiprocessors:     132",
    ]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown without a GPU")
def test_without_a_gpu_it_says_so(capsys):
    assert device_query.main([]) == 2
    err = capsys.readouterr().err
    assert err.startswith("No cuda device present") and "Traceback" not in err


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_every_gpu_is_described(capsys):
    assert device_query.main(["-gpu", "all"]) == 0
    err = capsys.readouterr().err
    for i in range(torch.cuda.device_count()):
        assert f"Device id:                     {i}" in err
        assert torch.cuda.get_device_properties(i).name in err
    assert device_query.main(["-gpu", str(torch.cuda.device_count())]) == 2
