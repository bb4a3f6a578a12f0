"""config.py: every script's options, as a dataclass filled from .toml files and --key=value overrides, with -h.

    python train.py configs/tiny_pose.toml --lr=1e-4    # the file first, then the overrides, in order
    python train.py -h                                  # each option with its default and its comment

The comments shown by -h are the ones written beside each field in the dataclass's source, so the help can never
disagree with the code. Every mistake (a missing file, bad TOML, an unknown key, a value of the wrong type, or one
the config's own check() refuses: a range, a choice) ends the program with one line that says what to fix, before
anything else is read.
"""
import inspect
import math
import os
import re
import sys
import tomllib
from dataclasses import MISSING, fields


def field_comments(cls):
    """{field: its comment} from the class source: the comment after it (continued on the lines below, where they
    line up with it), else the comment lines just above it."""
    comments, above, last, col = {}, [], None, -1
    for line in inspect.getsource(cls).splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            if line.index("#") == col:  # a trailing comment carried on to the next line
                comments[last] += " " + stripped.lstrip("# ")
            else:
                above.append(stripped.lstrip("# "))
            continue
        m = re.match(r"\s*(\w+)\s*:[^=]*=[^#]*(#\s*(.*))?$", line)
        last, col = (m.group(1), line.index("#") if m.group(2) else -1) if m else (None, -1)
        if m:
            comments[last] = m.group(3) or " ".join(above)
        above = []
    return comments


def usage(cls, doc):
    comments = field_comments(cls)
    lines = [doc.rstrip(), "", "options (--key=value, or key = value in a .toml file):"]
    for f in fields(cls):
        default = f"--{f.name}={f.default!r}" if f.default is not MISSING else f"--{f.name}"
        lines.append(f"  {default:<40} {comments.get(f.name, '')}".rstrip())
    return "\n".join(lines)


def parse_config(cls, argv, doc=""):
    """A `cls` dataclass from .toml files and --key=value overrides, applied in the order given."""
    if any(a in ("-h", "--help") for a in argv):
        print(usage(cls, doc or cls.__doc__ or ""))
        sys.exit(0)
    values = {}
    for arg in argv:
        if arg.startswith("--"):
            key, eq, val = arg[2:].partition("=")
            if not eq:
                sys.exit(f"error: {arg}: options are --key=value")
            values[key] = val
            continue
        try:
            with open(arg, "rb") as f:
                values.update(tomllib.load(f))
        except OSError as e:
            sys.exit(f"error: {arg}: {e.strerror or e} (a .toml config file, or --key=value)")
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            sys.exit(f"error: {arg}: not valid TOML ({e})")
    known = {f.name: f for f in fields(cls)}
    for key, val in values.items():
        if key not in known:
            sys.exit(f"error: unknown config key {key!r} (python {sys.argv[0]} -h lists them)")
        values[key] = _convert(val, type(known[key].default), key)
    cfg = cls(**values)
    try:  # every option checked here, before any model or data is read
        if hasattr(cfg, "check"):
            cfg.check()
    except ValueError as e:
        sys.exit(f"error: {e}")
    return cfg


def _convert(val, typ, key):
    if isinstance(val, str) and typ is not str:  # from the command line (or a quoted TOML value)
        try:
            return {"true": True, "false": False, "1": True, "0": False}[val.lower()] if typ is bool else typ(val)
        except (KeyError, ValueError):
            sys.exit(f"error: --{key}={val}: expected {_a(typ)}")
    if typ is float and type(val) is int:
        return float(val)  # TOML's `lr = 1` is an int
    if not isinstance(val, typ) or (typ is int and isinstance(val, bool)):
        sys.exit(f"error: {key} = {val!r}: expected {_a(typ)}")
    return val


def _a(typ):
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(typ, typ.__name__)


# ----------------------------------------------------------------------------- checks, for each config's check()
# Each raises a ValueError whose one line names the option, its value and what it accepts; a config's check() calls
# them for its fields, and parse_config runs check() before anything is read.
def _bad(name, value, expected):
    return ValueError(f"--{name}={value}: expected {expected}")


def _finite(v):
    return isinstance(v, int) or math.isfinite(v)  # an int is, however long (math.isfinite overflows past 1e308)


def positive(cfg, *names):
    """Counts that must be at least 1."""
    for name in names:
        if getattr(cfg, name) < 1:
            raise _bad(name, getattr(cfg, name), "a positive count")


def non_negative(cfg, *names):
    """Counts, intervals and rates that may be 0 (usually 'none' or 'off') but not negative, inf or nan."""
    for name in names:
        v = getattr(cfg, name)
        if not (_finite(v) and v >= 0):
            raise _bad(name, v, "a finite number >= 0")


def in_range(cfg, name, lo, hi, expected):
    """A finite number in [lo, hi]."""
    v = getattr(cfg, name)
    if not (_finite(v) and lo <= v <= hi):
        raise _bad(name, v, expected)


def one_of(cfg, name, choices):
    if getattr(cfg, name) not in choices:
        raise _bad(name, getattr(cfg, name), "one of " + ", ".join(map(str, choices)))


def int_list(name, value, lo=1):
    """The integers of a comma-separated option (lengths, factors), or a ValueError naming it unless each is >= lo."""
    try:
        values = [int(x) for x in value.split(",")]
    except ValueError:
        values = []
    if not values or min(values) < lo:
        raise _bad(name, value, f"comma-separated integers >= {lo}")
    return values


def heads(cfg):
    """dim, n_heads and n_kv_heads that make a model: GQA groups, and heads of an even size (RoPE rotates pairs)."""
    if cfg.n_heads % cfg.n_kv_heads or cfg.dim % cfg.n_heads or cfg.dim // cfg.n_heads % 2:
        raise ValueError(f"--n_heads={cfg.n_heads} --n_kv_heads={cfg.n_kv_heads} --dim={cfg.dim}: expected n_kv_heads "
                         "dividing n_heads, and dim a multiple of n_heads with an even quotient")


def writable(cfg, *names, file=False):
    """Output folders (files, with file=True): each path's nearest existing folder -- a file's own folder or above --
    must be one this process can write in, so that a long run does not fail at its end for want of a place to write."""
    for name in names:
        path = os.path.abspath(getattr(cfg, name))
        at = os.path.dirname(path) if file else path
        while not os.path.lexists(at):
            at = os.path.dirname(at)
        if not (os.path.isdir(at) and os.access(at, os.W_OK | os.X_OK)):
            raise _bad(name, getattr(cfg, name), f"a {'file' if file else 'folder'} that can be written ({at} is not "
                                                 "a folder this process can write in)")
