"""util.py: the few things every script needs the same way: which device, how much memory, a markdown table.

Each is written once here so that train.py, eval.py, reproduce.py and the benchmarks cannot drift apart.
"""
import resource

import torch

DEVICES = "auto | cpu | cuda | cuda:N | mps"


def pick_device(device="auto"):
    """'auto' -> 'cuda' when a GPU is there, else 'cpu'; any other name is returned as it is (checked by torch)."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def check_device(device):
    """A ValueError naming the device unless torch knows it and this machine has it (cuda:N with N GPUs or more)."""
    if device == "auto":
        return
    try:
        d = torch.device(device)
    except RuntimeError:
        raise ValueError(f"--device={device}: expected {DEVICES}") from None
    if d.type == "cuda" and (not torch.cuda.is_available() or (d.index or 0) >= torch.cuda.device_count()):
        raise ValueError(f"--device={device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if d.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"--device={device}: expected {DEVICES}")
    if d.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"--device={device}: this machine has no MPS device")


def proc_status(key):
    """A /proc/self/status entry in bytes: VmRSS the resident set now, VmHWM its peak. Unlike getrusage's ru_maxrss,
    which Linux carries over from a parent across exec, VmHWM starts afresh in every process."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key + ":"))


def memory_now(device):
    """Bytes in use: the allocator's on a GPU, the process's resident set on a CPU."""
    return torch.cuda.memory_allocated(device) if device.startswith("cuda") else proc_status("VmRSS")


def memory_peak(device):
    """This process's peak bytes: the allocator's on a GPU, the resident set's high-water mark (VmHWM) on a CPU."""
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated(device)
    try:
        return proc_status("VmHWM")
    except (OSError, StopIteration):  # not Linux: the nearest there is
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def markdown(header, rows):
    """A markdown table: a header row, then one row per list of cells."""
    return "".join(f"| {' | '.join(map(str, r))} |\n" for r in [header, ["---"] * len(header), *rows])
