"""`make bench`: every bench/bench_*.py runs, its ratios are read from the formats the
scripts print (JSON lines, ratio-column tables, `ratio` lines), targets come from the line
or the docstring, and a crashed or silent benchmark is a failed row."""
from pathlib import Path

import pytest

from bench import run_all

REPO = Path(__file__).resolve().parents[1]


def data_table() -> str:
    """bench_data.py's header and rows, printed with its own format strings."""
    head = f"{'datums':7}{'workers':>8}{'source img/s':>14}{'bound img/s':>13}{'ratio':>7}{'ratio per CPU s':>17}"
    rows = [f"{k:7}{w:>8}{g:>14.0f}{b:>13.0f}{g / b:>7.2f}{0.95:>17.2f}"
            for k, w, g, b in (("jpeg", 1, 812, 900), ("jpeg", 2, 1500, 1700), ("raw", 1, 3000, 3100))]
    return "300 images 256x256, crop 227 + mirror, batch 32, 2 cores\n" + "\n".join([head, *rows])


def test_ratio_column_tables_and_scoped_docstring_target():
    target = run_all.docstring_target(REPO / "bench" / "bench_data.py")
    assert (target.op, target.value, target.scope) == (">=", 0.9, "JPEG")
    rows = run_all.parse_output("data", data_table(), target)
    assert [(r.case, r.ratio) for r in rows] == [
        ("datums jpeg, workers 1", 0.9), ("datums jpeg, workers 2", 0.88), ("datums raw, workers 1", 0.97)]
    assert [r.result for r in rows] == ["pass", "FAIL", "-"]     # the target is for JPEG only
    assert rows[0].figure == "source img/s 812, bound img/s 900, ratio per CPU s 0.95"


def test_ratio_lines_with_inline_or_docstring_targets():
    converter = ("torch 2.13.0, device cpu, 2 threads, median of 20\n"
                 "fashion-mnist CNDS-8   batch  64  converted   120.00 ms  hand-written   "
                 "118.00 ms  ratio 1.017  (same logits within 1.0e-07)\n"
                 "ImageNet CNDS-8        batch   2  converted   300.00 ms  hand-written   "
                 "280.00 ms  ratio 1.071  (same logits within 1.0e-07)\n")
    rows = run_all.parse_output("converter", converter,
                                run_all.docstring_target(REPO / "bench" / "bench_converter.py"))
    assert [(r.case, r.ratio, r.result) for r in rows] == [
        ("fashion-mnist CNDS-8", 1.017, "pass"), ("ImageNet CNDS-8", 1.071, "FAIL")]
    assert rows[0].figure == ("batch 64 converted 120.00 ms hand-written 118.00 ms ratio 1.017 "
                              "(same logits within 1.0e-07)")
    solver = "solver iteration: 10.00 ms (median)\nratio solver/bare: 1.010 (target <= 1.05)\n"
    (row,) = run_all.parse_output("solver", solver, None)
    assert (row.case, row.ratio, str(row.target), row.result) == ("solver/bare", 1.01, "<= 1.05", "pass")


def test_json_lines_take_precedence():
    out = 'BENCH {"case": "a", "ratio": 0.8, "figure": "80 img/s", "target": ">= 0.9"}\nratio 3.0\n'
    (row,) = run_all.parse_output("x", out, None)
    assert (row.case, row.ratio, row.figure, row.result) == ("a", 0.8, "80 img/s", "FAIL")


@pytest.fixture
def fake_bench(tmp_path, monkeypatch):
    scripts = {
        "bench_fast.py": '"""Fast thing (target >= 2)."""\nprint("ratio fast/slow: 2.5")\n',
        "bench_crash.py": 'raise SystemExit("no such device")\n',
        "bench_quiet.py": 'print("nothing to compare")\n',
        "bench_slow.py": 'import time\ntime.sleep(30)\n',
        "bench_na.py": 'print(\'BENCH {"case": "bf16 / fp32", "ratio": null, "target": "<= 0.5", '
                       '"not_applicable": "this CPU has no native bf16"}\')\n'
                       'print(\'BENCH {"case": "fp32", "ratio": 1.0, "target": "<= 1.05"}\')\n'
                       'print(\'BENCH {"case": "gap", "ratio": 5.21e-07, "target": "<= 1e-5"}\')\n',
    }
    for name, text in scripts.items():
        (tmp_path / name).write_text(text)
    monkeypatch.setattr(run_all, "BENCH", tmp_path)
    return tmp_path


def test_one_command_runs_every_benchmark_into_one_table(fake_bench, tmp_path, capsys):
    out = tmp_path / "reports" / "bench.md"
    status = run_all.main(["--out", str(out), "--timeout", "5"])
    assert status == 1                                    # crash, silence and timeout fail
    text = out.read_text()
    assert "| fast | fast/slow | 2.500 | ratio fast/slow: 2.5 | >= 2 | pass |" in text
    assert "| crash | failed | - |" in text and "no such device" in text
    assert "| quiet | printed no ratio | - |" in text
    assert "| slow | failed | - |" in text and "[stopped after 5 s]" in text
    assert "running bench_fast.py" in capsys.readouterr().out


def test_a_case_that_cannot_run_here_is_an_n_a_row_not_a_failure(fake_bench, tmp_path):
    out = tmp_path / "na.md"
    assert run_all.main(["--out", str(out), "--only", "na"]) == 0
    text = out.read_text()
    assert "| na | bf16 / fp32 | - |  | <= 0.5 | n/a: this CPU has no native bf16 |" in text
    assert "| na | fp32 | 1.000 |  | <= 1.05 | pass |" in text
    assert "| na | gap | 5.2e-07 |  | <= 1e-05 | pass |" in text    # small ratios keep their digits
    (row,) = run_all.parse_output("x", 'BENCH {"case": "a", "ratio": null}', None)
    assert row.failed and row.result == "FAIL (no result)"    # no ratio and no reason


def test_only_picks_benchmarks_by_name(fake_bench, tmp_path):
    out = tmp_path / "one.md"
    assert run_all.main(["--out", str(out), "--only", "fast"]) == 0
    assert "| fast |" in out.read_text() and "| crash |" not in out.read_text()
    with pytest.raises(SystemExit):
        run_all.main(["--out", str(out), "--only", "nope"])
