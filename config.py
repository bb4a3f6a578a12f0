"""config.py: every script's options, as a dataclass filled from .toml files and --key=value overrides, with -h.

    python train.py configs/tiny_pose.toml --lr=1e-4    # the file first, then the overrides, in order
    python train.py -h                                  # each option with its default and its comment

The comments shown by -h are the ones written beside each field in the dataclass's source, so the help can never
disagree with the code. Every mistake (a missing file, bad TOML, an unknown key, a value of the wrong type) ends
the program with one line that says what to fix.
"""
import inspect
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
        except tomllib.TOMLDecodeError as e:
            sys.exit(f"error: {arg}: not valid TOML ({e})")
    known = {f.name: f for f in fields(cls)}
    for key, val in values.items():
        if key not in known:
            sys.exit(f"error: unknown config key {key!r} (python {sys.argv[0]} -h lists them)")
        values[key] = _convert(val, type(known[key].default), key)
    return cls(**values)


def _convert(val, typ, key):
    if isinstance(val, str) and typ is not str:  # from the command line (or a quoted TOML value)
        try:
            return {"true": True, "false": False, "1": True, "0": False}[val.lower()] if typ is bool else typ(val)
        except (KeyError, ValueError):
            sys.exit(f"error: --{key}={val}: expected a {typ.__name__}")
    if typ is float and type(val) is int:
        return float(val)  # TOML's `lr = 1` is an int
    if not isinstance(val, typ) or (typ is int and isinstance(val, bool)):
        sys.exit(f"error: {key} = {val!r}: expected a {typ.__name__}")
    return val
