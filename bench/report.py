"""Run benchmarks and write their results into docs/PERFORMANCE.md (./scripts/bench does).

    python bench/report.py [--write FILE] NAME...

Runs bench/bench_NAME.py for each name in turn, showing its output as it comes, and with
--write replaces what stands between the markers below in FILE (appended if the file has none;
everything outside them is left as it is) with: the machine and date, a table of the goals of
issue #7 and every benchmark's output. A benchmark states a goal by printing a line

    goal | what | measured | target | met      (or NOT met)

A name without its bench file is skipped and said so. Exits 1 if a benchmark failed.
"""

from __future__ import annotations

import argparse
import datetime
from pathlib import Path
import subprocess
import sys
import time

from gateway_rig import machine

BEGIN = "<!-- bench:begin -->"
END = "<!-- bench:end -->"
BENCH = Path(__file__).resolve().parent


def run(name: str) -> tuple[str, bool, float]:
    """A benchmark's output (printed as it comes), whether it succeeded, and its seconds."""
    script = BENCH / f"bench_{name}.py"
    print(f"\n\033[1m== bench/bench_{name}.py\033[0m", flush=True)
    if not script.exists():
        print("(not there: skipped)")
        return "(not there: skipped)\n", True, 0.0
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    assert process.stdout is not None
    lines = []
    for line in process.stdout:
        print(line, end="", flush=True)
        lines.append(line)
    ok = process.wait() == 0
    return "".join(lines), ok, time.perf_counter() - started


def goals(name: str, output: str) -> list[str]:
    """The goal lines of one benchmark's output as rows of a markdown table."""
    rows = []
    for line in output.splitlines():
        parts = [part.strip() for part in line.split("|")]
        if len(parts) == 5 and parts[0] == "goal":
            rows.append(f"| {name} | {' | '.join(parts[1:])} |")
    return rows


def section(results: list[tuple[str, str, bool, float]]) -> str:
    about = machine()
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        BEGIN,
        "## Benchmarks",
        "",
        "Written by `./scripts/bench` (all benchmarks; `./scripts/bench NAME` runs one without"
        " writing this file). Every figure stands next to an anchor measured in the same run;"
        " absolute numbers depend on the machine and on what else runs on it.",
        "",
        f"- machine: {about['cpu']}, {about['cores']} cores, {about['ram']} RAM",
        f"- Python {about['python']}; run finished {now}",
        "",
        "### Goals (issue #7)",
        "",
        "| bench | what | measured | goal | |",
        "|---|---|---|---|---|",
    ]
    for name, output, ok, _ in results:
        lines += goals(name, output) or ([] if ok else [f"| {name} | failed | | | |"])
    for name, output, ok, seconds in results:
        status = "" if ok else " (FAILED)"
        lines += ["", f"### bench_{name}{status}, {seconds:.0f} s", "", "```text", output.rstrip()]
        lines += ["```"]
    lines.append(END)
    return "\n".join(lines)


def write(path: Path, text: str) -> None:
    old = path.read_text() if path.exists() else "# Performance\n"
    if BEGIN in old and END in old:
        head, rest = old.split(BEGIN, 1)
        new = head + text + rest.split(END, 1)[1]
    else:
        new = old.rstrip("\n") + "\n\n" + text + "\n"
    path.write_text(new)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--write", type=Path)
    parser.add_argument("names", nargs="+")
    args = parser.parse_args()
    results = [(name, *run(name)) for name in args.names]
    if args.write is not None:
        write(args.write, section(results))
        print(f"\nwritten: {args.write}")
    return 0 if all(ok for _, _, ok, _ in results) else 1


if __name__ == "__main__":
    sys.exit(main())
