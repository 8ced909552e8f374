"""How much memory this process uses, and how much it may use (Linux /proc and cgroups)."""

from __future__ import annotations

import os
from pathlib import Path

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".onnx", ".onnx_data", ".h5", ".msgpack")


def resident_bytes() -> int | None:
    """This process's resident memory, or None where that can't be read."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def usable_memory_bytes() -> int | None:
    """What this process may use: its cgroup's limit (a container's), else physical memory."""
    for limit_file in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(limit_file).read_text().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < 1 << 60:  # "max" or a huge number: no limit
            return int(text)
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (OSError, ValueError):
        return None


def weights_on_disk(folder: Path) -> int:
    """Bytes of weight files in a model folder: a lower bound on what loading it will take."""
    total = 0
    try:
        for path in folder.rglob("*"):
            if path.suffix in WEIGHT_SUFFIXES and path.is_file():
                total += path.stat().st_size
    except OSError:
        pass
    return total
