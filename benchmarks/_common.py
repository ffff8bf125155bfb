"""What the benchmark scripts share: timing, memory, the machine line, worker processes, official checkouts.

Importing it puts this checkout first on sys.path, so a script run as `python benchmarks/x.py` times the
maskml next to it, not whichever copy is installed.
"""
from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
# what maskml.runtime.keep_freed_memory() sets with mallopt, as glibc environment variables, to give the
# official code the same allocator behaviour in "official+malloc" rows
KEEP_FREED_MEMORY_ENV = {"MALLOC_MMAP_THRESHOLD_": str(1 << 30), "MALLOC_TRIM_THRESHOLD_": str(2**31 - 1)}


def synchronize(device: str = "cpu") -> None:
    """Wait for the work queued on `device` (a no-op on the CPU, where every call returns when it is done)."""
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize(device)


def check_device(device: str) -> None:
    """Exit with one line when `device` cannot be used here."""
    import torch

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(f"--device {device}: this machine has no CUDA device (torch {torch.__version__}); use --device cpu")
    if device != "cpu" and not device.startswith("cuda"):
        raise SystemExit(f"--device {device}: choose cpu, cuda or cuda:N")


def times_ms(fn, runs: int, device: str = "cpu") -> list[float]:
    """Wall time of each of `runs` calls of fn, after one warm-up call; queued GPU work is waited for inside
    each timing."""
    fn()
    synchronize(device)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(1000 * (time.perf_counter() - start))
    return times


def median_ms(fn, runs: int, device: str = "cpu") -> float:
    return statistics.median(times_ms(fn, runs, device))


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_line(threads: int, device: str = "cpu") -> str:
    import torch

    load = "/".join(f"{x:.2f}" for x in os.getloadavg())
    gpu = f", GPU: {torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda})" if device.startswith("cuda") else ""
    return (f"torch {torch.__version__}, {threads} threads, CPU: {cpu_name()} ({os.cpu_count()} cores visible), "
            f"load average {load} (1/5/15 min){gpu}")


def square_test_image(size: int = 1024):
    """examples/truck.jpg resized to size x size, H x W x 3 uint8 RGB."""
    import numpy as np
    from PIL import Image

    return np.array(Image.open(ROOT / "examples" / "truck.jpg").convert("RGB").resize((size, size), Image.BILINEAR))


def run_worker(cmd: list[str], label: str, env: dict | None = None) -> dict:
    """Run a worker process (its own peak memory) and return the JSON object it printed last."""
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise SystemExit(f"{label} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def find_checkout(src: str | Path, names: tuple[str, ...], package: str) -> Path:
    """The official checkout holding `package`: `src` itself, or one of `names` inside it."""
    src = Path(src)
    for root in (src, *(src / n for n in names)):
        if (root / package).is_dir():  # with or without __init__.py (Cutie's is a namespace package)
            return root
    raise SystemExit(f"no {package} checkout at {src} (nor {', '.join(names)} inside it)")
