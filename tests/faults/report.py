"""Results into docs/PERFORMANCE.md, between a section's markers (other sections belong to
other commands: the benchmark's, the faults', the soak's)."""

from __future__ import annotations

import datetime
import os
from pathlib import Path
import platform

PERFORMANCE = Path(__file__).resolve().parents[2] / "docs" / "PERFORMANCE.md"
_SKELETON = "# Performance\n\n<!-- bench:begin -->\n<!-- bench:end -->\n"


def machine() -> str:
    """Where and when: the figures depend on both."""
    cpu = "unknown CPU"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    today = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return f"{today}, {platform.system()} {platform.release()}, {os.cpu_count()} x {cpu}"


def write_section(name: str, heading: str, body: str, path: Path = PERFORMANCE) -> None:
    """Replace what is between ``<!-- name:begin -->`` and ``<!-- name:end -->`` (added at
    the end, under ``heading``, if the file does not have them yet)."""
    text = path.read_text() if path.exists() else _SKELETON
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    if begin not in text or end not in text:
        text = text.rstrip("\n") + f"\n\n## {heading}\n\n{begin}\n{end}\n"
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    path.write_text(f"{head}{begin}\n{body.strip()}\n{end}{tail}")


def table(header: list[str], rows: list[list[str]]) -> str:
    """A Markdown table, also readable as printed text."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)
