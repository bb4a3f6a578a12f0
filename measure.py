"""measure.py: how bench.py and bench_engineering.py measure: the device and its threads, timings taken in pairs,
memory peaks in a fresh process of their own, and a record of the machine that measured them.

Absolute timings on a shared machine mean little, ratios taken in the same minutes do: each ratio is the median of
pairs run back to back (slow drifts in machine load cancel), and the CPU time of each run is kept beside its wall
time to cross-check it.
"""
import os
import platform
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

import torch

from util import check_device, pick_device

GiB = 2**30


def check_shared(cfg, positive=()):
    """A ValueError naming the first bad one of the options both benchmarks have, or of `positive` (ints > 0)."""
    check_device(cfg.device)
    for name, least in [(n, 1) for n in ("reps", *positive)] + [("warmup", 0), ("threads", 0)]:
        if getattr(cfg, name) < least:
            raise ValueError(f"--{name}={getattr(cfg, name)}: expected {least} or more")


def setup(cfg):
    """The device to run on, with torch's CPU threads set first."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    return pick_device(cfg.device)


def timed(fn, device):
    """(wall seconds, process CPU seconds, fn()). CPU time barely moves when other programs share the cores, so its
    ratios cross-check the wall-clock ones on a busy machine (it counts every thread, spin-waits included)."""
    sync = torch.cuda.synchronize if device.startswith("cuda") else lambda device: None  # a GPU runs behind Python
    sync(device)
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    sync(device)
    return time.perf_counter() - t0, time.process_time() - c0, out


def paired_median(num, den):
    """The median of num[i] / den[i]: each pair ran back to back, so slow drifts in machine load cancel."""
    return statistics.median(n / d for n, d in zip(num, den))


def in_fresh_process(fn, *args):
    """fn(*args) in a new Python process, so that the peak memory it reports is its own alone.

    The process's glibc malloc gets a fixed mmap threshold: every block over 64 KiB is mapped when allocated and
    unmapped when freed, so the resident set follows the live tensors (by default the threshold climbs to 32 MiB
    and freed blocks linger in the heap, which adds noise of the size of the activations being measured)."""
    os.environ["MALLOC_MMAP_THRESHOLD_"] = str(64 * 1024)  # read when the new process starts; this one is not affected
    with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()


def machine(device):
    """What measured a result: the processor, torch (and transformers where a benchmark imported it), the load."""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):  # not Linux
        cpu = platform.processor()
    m = {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
         "transformers": getattr(sys.modules.get("transformers"), "__version__", None), "device": device,
         "load_avg_1min": os.getloadavg()[0]}
    return m | ({"gpu": torch.cuda.get_device_name(device)} if device.startswith("cuda") else {})


def header(p):
    """One sentence on how a part was measured: its command, machine and repetitions."""
    m, o = p["machine"], p["options"]
    return (f"Measured by `{p['command']}` on {m['cpu']}, {m['cores']} cores, torch {m['torch']} "
            f"({m['torch_threads']} threads)" + (f", transformers {m['transformers']}" if m["transformers"] else "")
            + f", device {m['device']}" + (f" ({m['gpu']})" if "gpu" in m else "")
            + f"; 1-minute load average {m['load_avg_1min']:.1f}; median of {o['reps']} interleaved repetitions "
            f"after {o['warmup']} warm-up.")
