"""Run every benchmark in bench/ (bench_*.py) and write one table to reports/bench.md.

    python bench/run_all.py [--out reports/bench.md] [--only converter,data] [--timeout 900]

Each script runs as its own process with its default settings. Its stdout is read in
this order of preference:
  1. lines `BENCH {"case": ..., "ratio": 1.02, "figure": "...", "target": "<= 1.05"}`
     (JSON; every key but "ratio" optional; a case that cannot run where the benchmark
     ran gives `"ratio": null, "not_applicable": "why"` instead: an n/a row, not a failure);
  2. fixed-width tables whose header has a column named `ratio` (columns separated by
     two or more spaces in the header, values by whitespace in the rows);
  3. any other line with `ratio` followed by a number, e.g.
     `ImageNet CNDS-8 batch 2 ... ratio 1.031 (...)` or `ratio solver/bare: 1.02`.
A target is taken from the same line (`target <= 1.05`) or else from the script's
docstring (`target >= 0.9 for JPEG` applies to the cases that mention JPEG). A script
that fails or prints no ratio is a failed row; the exit status is 1 when any did.
"""
from __future__ import annotations

import argparse
import ast
import json
import os
import platform
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from runner.atomic import atomic_write_text

ROOT = Path(__file__).resolve().parents[1]
BENCH = Path(__file__).resolve().parent
NUMBER = r"[-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?"
_TARGET = re.compile(rf"target\s*(<=|>=|<|>|≤|≥)\s*({NUMBER})(?:\s*x)?(?:\s+for\s+([\w-]+))?",
                     re.IGNORECASE)
_RATIO = re.compile(rf"\bratio\b([^0-9\n]*?)({NUMBER})", re.IGNORECASE)
_JSON = re.compile(r"^BENCH\s+(\{.*\})\s*$")
_OPS = {"≤": "<=", "≥": ">="}


@dataclass
class Target:
    op: str
    value: float
    scope: str | None = None      # only cases whose name mentions this word

    def applies(self, case: str) -> bool:
        return self.scope is None or self.scope.lower() in case.lower()

    def met(self, ratio: float) -> bool:
        return {"<=": ratio <= self.value, ">=": ratio >= self.value,
                "<": ratio < self.value, ">": ratio > self.value}[self.op]

    def __str__(self) -> str:
        return f"{self.op} {self.value:g}"


def parse_target(text: str) -> Target | None:
    m = _TARGET.search(text)
    if not m:
        return None
    op = _OPS.get(m.group(1), m.group(1))
    return Target(op, float(m.group(2)), m.group(3))


@dataclass
class Row:
    benchmark: str
    case: str
    ratio: float | None
    figure: str
    target: Target | None
    not_applicable: str = ""      # why the case did not run here (then no ratio)

    @property
    def failed(self) -> bool:
        """No ratio, and no reason why the case does not apply here."""
        return self.ratio is None and not self.not_applicable

    @property
    def result(self) -> str:
        if self.not_applicable:
            return f"n/a: {self.not_applicable}"
        if self.ratio is None:
            return "FAIL (no result)"
        if self.target is None or not self.target.applies(self.case):
            return "-"
        return "pass" if self.target.met(self.ratio) else "FAIL"


# what a line gives: (case, ratio, figure, target, why it does not apply here or "")
Found = tuple[str, float | None, str, Target | None, str]


def json_rows(lines: list[str]) -> list[Found]:
    out = []
    for line in lines:
        m = _JSON.match(line.strip())
        if m:
            record = json.loads(m.group(1))
            target = parse_target(f"target {record['target']}") if record.get("target") else None
            na = str(record.get("not_applicable") or "")
            ratio = None if record.get("ratio") is None else float(record["ratio"])
            out.append((str(record.get("case", "")), ratio, str(record.get("figure", "")),
                        target, na))
    return out


def _is_number(token: str) -> bool:
    return re.fullmatch(NUMBER, token) is not None


def _measured(label: str) -> bool:
    """A column label with a unit (img/s, ms, s, %) or a ratio holds a measurement."""
    return re.search(r"/|\b(ms|s|%)$|ratio", label, re.IGNORECASE) is not None


def table_rows(lines: list[str]) -> tuple[list[Found], set[int]]:
    """Rows of fixed-width tables with a `ratio` column; also the line numbers used."""
    out, used = [], set()
    for i, line in enumerate(lines):
        labels = re.split(r"\s{2,}", line.strip())
        if "ratio" not in [label.lower() for label in labels] or len(labels) < 3:
            continue
        ratio_col = [label.lower() for label in labels].index("ratio")
        used.add(i)
        for j in range(i + 1, len(lines)):
            values = lines[j].split()
            if len(values) != len(labels) or not _is_number(values[ratio_col]):
                break
            used.add(j)
            # the case: leading columns up to the first measured one (a unit, or the ratio)
            first = next(k for k, label in enumerate(labels) if _measured(label) or k == ratio_col)
            case = ", ".join(f"{labels[k]} {values[k]}" for k in range(first))
            figure = ", ".join(f"{labels[k]} {values[k]}" for k in range(first, len(values))
                               if k != ratio_col)
            out.append((case, float(values[ratio_col]), figure, parse_target(lines[j]), ""))
    return out, used


def line_rows(lines: list[str], skip: set[int]) -> list[Found]:
    out = []
    for i, line in enumerate(lines):
        if i in skip:
            continue
        m = _RATIO.search(line)
        if m:
            # the case: the line's first field (fields are 2+ spaces apart), else the
            # words between `ratio` and the number (`ratio solver/bare: 1.02`)
            prefix = line[:m.start()].strip()
            case = re.split(r"\s{2,}", prefix)[0] if prefix else m.group(1).strip(" :")
            figure = " ".join(line.strip()[len(case) if prefix else 0:].split())
            out.append((case, float(m.group(2)), figure, parse_target(line), ""))
    return out


def parse_output(benchmark: str, stdout: str, doc_target: Target | None) -> list[Row]:
    """Rows of one benchmark's stdout (see the module docstring for the formats)."""
    lines = stdout.splitlines()
    found = json_rows(lines)
    if not found:
        found, used = table_rows(lines)
        found += line_rows(lines, used)
    return [Row(benchmark, case, ratio, figure, target or doc_target, na)
            for case, ratio, figure, target, na in found]


def docstring_target(script: Path) -> Target | None:
    try:
        doc = ast.get_docstring(ast.parse(script.read_text(encoding="utf-8"))) or ""
    except SyntaxError:
        return None
    return parse_target(doc)


def run_benchmark(script: Path, timeout: float) -> tuple[list[Row], str, float]:
    """Run one script from the repository root: (rows, its output, seconds)."""
    name = script.stem.removeprefix("bench_")
    start = time.perf_counter()
    try:
        # this package's benchmarks run as its modules (they may import their siblings)
        how = ["-m", f"bench.{script.stem}"] if script.parent == Path(__file__).resolve().parent else [str(script)]
        proc = subprocess.run([sys.executable, *how], cwd=ROOT, capture_output=True,
                              text=True, timeout=timeout)
        output, failed = proc.stdout, proc.returncode != 0
        if failed:
            output += f"\n[exit status {proc.returncode}]\n{proc.stderr[-3000:]}"
    except subprocess.TimeoutExpired as exc:
        output = (exc.stdout or b"").decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        output += f"\n[stopped after {timeout:g} s]"
        failed = True
    seconds = time.perf_counter() - start
    rows = [] if failed else parse_output(name, output, docstring_target(script))
    if not rows:
        why = "failed" if failed else "printed no ratio"
        rows = [Row(name, why, None, f"see the output below ({seconds:.0f} s)", None)]
    return rows, output, seconds


def cpu_description() -> str:
    """The CPU's model name (/proc/cpuinfo) and the vector ISA torch's kernels use."""
    model = platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            model = next((line.split(":", 1)[1].strip() for line in f
                          if line.startswith("model name")), model)
    except OSError:
        pass
    return f"{model} ({torch.backends.cpu.get_cpu_capability()})"


def shown(ratio: float | None) -> str:
    """A ratio for the table: 3 decimals, 2 significant digits below 0.001, "-" for none."""
    if ratio is None:
        return "-"
    return f"{ratio:.3f}" if ratio == 0 or abs(ratio) >= 0.001 else f"{ratio:.2g}"


def load_average() -> float:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")


def markdown(rows: list[Row], outputs: list[tuple[str, str, float]], command: str = "make bench",
             load: float | None = None) -> str:
    """The report: `command` and the 1-minute load average `load` when it started."""
    load = load_average() if load is None else load
    lines = ["# Benchmarks", "",
             f"`{command}` on {time.strftime('%Y-%m-%d %H:%M')}: {os.cpu_count()} CPU cores, "
             f"{cpu_description()}, Python {platform.python_version()}; load average "
             f"{load:.1f} when it started (other work on the machine lowers the figures).", "",
             "| Benchmark | Case | Ratio | Figure | Target | Result |", "|---|---|---|---|---|---|"]
    for r in rows:
        target = str(r.target) if r.target and r.target.applies(r.case) else "-"
        lines.append(f"| {r.benchmark} | {r.case or '-'} | {shown(r.ratio)} | {r.figure} | {target} | {r.result} |")
    lines += ["", "## Output of each benchmark", ""]
    for name, output, seconds in outputs:
        lines += [f"### {name} ({seconds:.0f} s)", "", "```", output.rstrip(), "```", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(ROOT / "reports" / "bench.md"))
    ap.add_argument("--only", help="comma-separated names (bench_<name>.py) to run")
    ap.add_argument("--timeout", type=float, default=900, help="seconds per benchmark (900)")
    args = ap.parse_args(argv)
    scripts = sorted(BENCH.glob("bench_*.py"))
    if args.only:
        wanted = set(args.only.split(","))
        unknown = wanted - {s.stem.removeprefix("bench_") for s in scripts}
        if unknown:
            ap.error(f"no benchmark named {', '.join(sorted(unknown))} in {BENCH}")
        scripts = [s for s in scripts if s.stem.removeprefix("bench_") in wanted]
    rows, outputs, load = [], [], load_average()
    for script in scripts:
        print(f"running {script.name} ...", flush=True)
        found, output, seconds = run_benchmark(script, args.timeout)
        rows += found
        outputs.append((script.stem.removeprefix("bench_"), output, seconds))
        for r in found:
            print(f"  {r.case or r.benchmark}: ratio {shown(r.ratio)}, target {r.target or '-'}: {r.result}", flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    command = "make bench" if not args.only else f"python bench/run_all.py --only {args.only}"
    atomic_write_text(out, markdown(rows, outputs, command, load) + "\n")
    print(f"wrote {out}")
    return 1 if any(r.failed for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
