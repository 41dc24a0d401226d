"""Inference threads: the cores other processes leave free, from /proc/stat minus this
process's own CPU time; at least one, at most torch's count; restored after the block."""
import os

import pytest
import torch

from runner import threads
from runner.threads import AdaptiveThreads, busy_jiffies, thread_policy


def stat_text(busy_per_cpu: list[int]) -> str:
    lines = ["cpu  0 0 0 0 0 0 0 0 0 0"]
    for i, busy in enumerate(busy_per_cpu):
        # user nice system idle iowait irq softirq steal guest guest_nice
        lines.append(f"cpu{i} {busy} 0 0 1000 7 0 0 0 0 0")
    return "\n".join(lines + ["intr 1 2 3", ""])


def test_busy_jiffies_sums_the_allowed_cpus(tmp_path):
    stat = tmp_path / "stat"
    stat.write_text(stat_text([10, 20, 40]))
    assert busy_jiffies([0, 2], str(stat)) == 50
    assert busy_jiffies([1], str(stat)) == 20
    assert busy_jiffies([0], str(tmp_path / "missing")) is None
    if os.path.exists("/proc/stat"):
        assert isinstance(busy_jiffies(threads.allowed_cpus()), int)


@pytest.fixture
def two_cores(monkeypatch, tmp_path):
    """An AdaptiveThreads over two CPUs, on a fake /proc/stat and a scripted clock."""
    monkeypatch.setattr(threads, "allowed_cpus", lambda: [0, 1])
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    stat = tmp_path / "stat"
    stat.write_text(stat_text([0, 0]))
    clock = {"now": 100.0, "own": 0.0}
    monkeypatch.setattr(threads.time, "monotonic", lambda: clock["now"])
    monkeypatch.setattr(threads.os, "times",
                        lambda: os.times_result((clock["own"], 0.0, 0.0, 0.0, 0.0)))
    policy = AdaptiveThreads(interval=0.5, stat_path=str(stat))
    policy.tick = 100

    def advance(seconds: float, other_busy: float, own_busy: float, total=[0, 0]):
        """`seconds` pass; others keep `other_busy` cores busy, this process `own_busy`."""
        clock["now"] += seconds
        clock["own"] += own_busy * seconds
        jiffies = round((other_busy + own_busy) * seconds * 100)
        total[0] += jiffies
        stat.write_text(stat_text([total[0], 0]))
    return policy, advance


def test_a_busy_core_leaves_one_thread(two_cores):
    policy, advance = two_cores
    assert policy.threads() == 2                      # no interval has passed yet
    advance(1.0, other_busy=0.0, own_busy=1.9)        # only this process works: both cores
    assert policy.threads() == 2
    advance(1.0, other_busy=1.0, own_busy=0.9)        # another process spins on one core
    assert policy.threads() == 1
    advance(0.2, other_busy=0.0, own_busy=1.0)        # within the interval: no new estimate
    assert policy.threads() == 1
    advance(1.0, other_busy=0.2, own_busy=1.0)        # it stopped (a little noise left)
    assert policy.threads() == 2


def test_policies_restore_torchs_thread_count():
    before = torch.get_num_threads()
    with thread_policy(1).applied() as used:
        assert used == 1 == torch.get_num_threads()
    assert torch.get_num_threads() == before
    with thread_policy(None).applied() as used:
        assert used == before
    with thread_policy("auto").applied() as used:
        assert 1 <= used <= before
    assert torch.get_num_threads() == before
    with pytest.raises(ValueError, match="threads must be"):
        thread_policy("all")
