"""runner/memory.py: with freed memory kept, a freed block stays in the process and the
next block that fits reuses its pages; without, it goes back to the system and the next
block faults in new pages. The solver keeps freed memory when it trains on the CPU."""
import subprocess
import sys
import textwrap

from runner.solver import loop
from solver_helpers import classifier_net, make_lmdb, make_solver

RSS_AFTER_FREE = textwrap.dedent("""
    import os, sys, torch
    from runner.memory import keep_freed_memory
    def rss_mb():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    assert keep_freed_memory(sys.argv[1] == "keep")
    block = torch.ones(200 * 2**20 // 4)       # 200 MiB, touched
    before_free = rss_mb()
    del block
    after_free = rss_mb()
    again = torch.ones(150 * 2**20 // 4)      # fits the freed block
    print(before_free - after_free, rss_mb() - after_free)
""")


def run(mode):
    out = subprocess.run([sys.executable, "-c", RSS_AFTER_FREE, mode], capture_output=True,
                         text=True, check=True, cwd=".")
    released, regrown = map(float, out.stdout.split())
    return released, regrown


def test_kept_memory_is_reused_and_returned_memory_is_released():
    released, regrown = run("keep")
    assert released < 20 and regrown < 20      # MiB: stayed resident, then reused
    released, regrown = run("return")
    assert released > 180 and regrown > 130    # unmapped on free, faulted in again


def test_the_solver_keeps_freed_memory_on_the_cpu(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(loop, "keep_freed_memory", lambda keep=True: calls.append(keep))
    db = make_lmdb(tmp_path / "db", 8)
    make_solver(classifier_net(db, batch=4), tmp_path / "s", max_iter=1)
    assert calls == [True]
