"""Shared helpers for benchmarks: machine facts and writing one section of docs/BENCHMARKS.md."""

from __future__ import annotations

import datetime as dt
import os
import platform
import re
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent.parent / "docs" / "BENCHMARKS.md"
HEADER = """# Benchmarks

Every figure here was written by a script in `bench/`; each section names the command that
reproduces it, the date and the machine. Shared machines are noisy, so each section also gives a
ratio against a baseline measured in the same run.
"""


def machine() -> str:
    """One line describing this machine."""
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        import torch

        gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
        torch_v = torch.__version__
    except ImportError:
        gpu, torch_v = "unknown", "not installed"
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (f"{cpu}, {os.cpu_count()} cores, {mem:.0f} GiB RAM, {gpu}; "
            f"Python {platform.python_version()}, torch {torch_v}")


def today() -> str:
    """The date and time of the run, UTC."""
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def write_section(name: str, title: str, command: str, body: str) -> None:
    """Replace (or add) the section `name` of docs/BENCHMARKS.md, keeping every other section."""
    BENCHMARKS.parent.mkdir(parents=True, exist_ok=True)
    text = BENCHMARKS.read_text() if BENCHMARKS.exists() else HEADER
    block = (
        f"<!-- bench:{name} -->\n## {title}\n\n"
        f"- Command: `{command}`\n- Date: {today()}\n- Machine: {machine()}\n\n{body.strip()}\n"
        f"<!-- /bench:{name} -->"
    )
    pattern = re.compile(rf"<!-- bench:{re.escape(name)} -->.*?<!-- /bench:{re.escape(name)} -->", re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
    BENCHMARKS.write_text(text)
