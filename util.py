"""util.py: the few things every script needs the same way: which device, how much memory, a markdown table, and
what a script does when the machine fails it -- a full disk, a signal, memory that runs out.

Each is written once here so that train.py, eval.py, reproduce.py and the benchmarks cannot drift apart. torch is
imported only where it is used, so that prepare.py, pose.py and plots.py, which write files too, do without it.
"""
import os
import re
import resource
import signal
import tempfile
from contextlib import contextmanager

DEVICES = "auto | cpu | cuda | cuda:N | mps"


def pick_device(device="auto"):
    """'auto' -> 'cuda' when a GPU is there, else 'cpu'; any other name is returned as it is (checked by torch)."""
    import torch
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def check_device(device):
    """A ValueError naming the device unless torch knows it and this machine has it (cuda:N with N GPUs or more)."""
    import torch
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
    import torch
    return torch.cuda.memory_allocated(device) if device.startswith("cuda") else proc_status("VmRSS")


def memory_peak(device):
    """This process's peak bytes: the allocator's on a GPU, the resident set's high-water mark (VmHWM) on a CPU."""
    import torch
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated(device)
    try:
        return proc_status("VmHWM")
    except (OSError, StopIteration):  # not Linux: the nearest there is
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def markdown(header, rows):
    """A markdown table: a header row, then one row per list of cells."""
    return "".join(f"| {' | '.join(map(str, r))} |\n" for r in [header, ["---"] * len(header), *rows])


# ----------------------------------------------------------------------------- when the machine fails a script
# A full disk, a signal, memory that runs out: each ends a script with one line that says what happened and what was
# kept, as a bad option does, never with a traceback or a half-written file.
class WriteError(OSError):
    """A write the disk refused, as one line naming the file and why."""


def write_failed(path, e):
    """The WriteError a failed write of `path` ends in: ENOSPC is a full disk, EFBIG a file-size limit."""
    if isinstance(e, WriteError):
        return e
    why = (e.strerror if isinstance(e, OSError) else None) or (str(e).strip().splitlines() or [type(e).__name__])[0]
    return WriteError(f"{path}: could not be written ({why})")


def umask():
    mask = os.umask(0)  # read it (the only way is to set it), then put it back
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path):
    """A temporary name beside `path` for the block to write the file to: once written it is synced to disk, given
    the mode any new file gets (mkstemp makes it private) and renamed over `path`; if the block fails it is removed.
    So `path` is the old file or the new one, never half of one, and no temporary is left; a write the disk refuses
    (any OSError) ends as one WriteError naming `path`."""
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or ".", prefix=f".{os.path.basename(path)}.")
        os.close(fd)
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)  # on disk before the rename: a power cut leaves the old file or the new one
        finally:
            os.close(fd)
        os.chmod(tmp, 0o666 & ~umask())
        os.replace(tmp, path)
    except BaseException as e:
        if tmp and os.path.lexists(tmp):
            os.unlink(tmp)
        if isinstance(e, OSError):
            raise write_failed(path, e) from e
        raise


@contextmanager
def atomic_open(path, mode="w"):
    """open(path, mode) through atomic_path: the file appears whole when the block ends, or not at all."""
    with atomic_path(path) as tmp, open(tmp, mode, encoding=None if "b" in mode else "utf-8") as f:
        yield f


SIGNALS = []  # the signals that asked this process to stop, in order


def on_signals(handler=None):
    """For a script's __main__: SIGTERM -- what kill, docker stop, timeout and every scheduler send -- is handled as
    Ctrl-C (SIGINT) is, by `handler`, or by raising KeyboardInterrupt; and a write past a file-size limit
    (RLIMIT_FSIZE) fails with an OSError (EFBIG), as one to a full disk does (ENOSPC), instead of SIGXFSZ ending the
    process without a word."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, handler or _raise_interrupt)


def _raise_interrupt(signum, frame):
    SIGNALS.append(signum)
    raise KeyboardInterrupt


def exit_status():
    """What a process a signal stopped exits with: 128 + the signal's number (130 for Ctrl-C, 143 for SIGTERM)."""
    return 128 + (SIGNALS[-1] if SIGNALS else signal.SIGINT)


def signal_name():
    """The name of the (last) signal that asked this process to stop: SIGINT (Ctrl-C) or SIGTERM."""
    return signal.Signals(SIGNALS[-1] if SIGNALS else signal.SIGINT).name


def memory_total(device):
    """The bytes this process can have on `device`: a GPU's memory; on a CPU the machine's memory and swap, or less
    where an address-space limit (RLIMIT_AS) or the container's cgroup (memory.max) allows less."""
    if device.startswith("cuda"):
        import torch
        return torch.cuda.get_device_properties(device).total_memory
    try:
        with open("/proc/meminfo") as f:
            info = {k: int(v.split()[0]) * 1024 for k, v in (line.split(":", 1) for line in f if ":" in line)}
        limits = [info["MemTotal"] + info.get("SwapTotal", 0)]
    except (OSError, KeyError, ValueError):  # not Linux
        limits = [os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")]
    if resource.getrlimit(resource.RLIMIT_AS)[0] != resource.RLIM_INFINITY:
        limits.append(resource.getrlimit(resource.RLIMIT_AS)[0])
    try:
        with open("/sys/fs/cgroup/memory.max") as f:
            limits.append(int(f.read()))
    except (OSError, ValueError):  # no cgroup v2, or "max"
        pass
    return min(limits)


class OutOfMemory(MemoryError):
    """Memory that ran out, as one line: what was being done, how much more was asked for, what to change."""


@contextmanager
def out_of_memory(doing, fix):
    """Memory that runs out in the block -- torch.OutOfMemoryError on a GPU, the CPU allocator's RuntimeError ("can't
    allocate memory: you tried to allocate N bytes"), a MemoryError -- as one OutOfMemory line, "out of memory
    <doing> (asked for X GiB more): <fix>"; any other error passes as it is."""
    try:
        yield
    except (RuntimeError, MemoryError) as e:
        text = str(e)
        if isinstance(e, OutOfMemory) or not (isinstance(e, MemoryError) or type(e).__name__ == "OutOfMemoryError"
                                               or re.search(r"can't allocate memory|out of memory|bad_alloc", text,
                                                            re.IGNORECASE)):
            raise
        units = {"bytes": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40, "PiB": 2**50}
        m = re.search(r"allocate ([\d.]+) (bytes|[KMGTP]iB)", text)
        asked = f" (asked for {float(m[1]) * units[m[2]] / 2**30:.2f} GiB more)" if m else ""
        raise OutOfMemory(f"out of memory {doing}{asked}: {fix}") from None  # and the step's tensors are freed
