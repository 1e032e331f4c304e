"""cli.py — the command line of every script: a dataclass of settings as flags, and what "auto" means for the
device and the dtype. Its own file because sample.py, train.py, sept_loop.py, bench.py and data/make_toy.py all
need it and none of them may import another script for it.

    python sample.py --help        # each flag is a field of the script's config dataclass, its help the comment
"""
import argparse
import contextlib
import inspect
import math
import re
import typing
from dataclasses import MISSING, fields
from typing import Literal

import torch

from model import DTYPES


def config_parser(cls, description: str = "", aliases: dict[str, str] | None = None) -> argparse.ArgumentParser:
    """One flag per field of the dataclass `cls` (`max_new_tokens` <-> `--max-new-tokens`), its help the
    field's trailing comment, its default the field's: bool as --flag/--no-flag, Literal as choices, `X | None`
    accepting "none". aliases: extra option strings, e.g. {"n": "-n"}. A bad flag is a one-line error."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.error = lambda message: parser.exit(2, f"{parser.prog}: error: {message} (see --help)\n")
    helps = {}
    for klass in reversed(cls.__mro__):  # the trailing comment of each field line is its help
        with contextlib.suppress(OSError, TypeError):
            helps.update(re.findall(r"^\s+(\w+)\s*:[^#\n]*#\s*(.*)$", inspect.getsource(klass), re.M))
    hints = typing.get_type_hints(cls)
    for f in fields(cls):
        kind, args = hints[f.name], typing.get_args(hints[f.name])
        kw = dict(default=f.default if f.default is not MISSING else f.default_factory(),
                  help=helps.get(f.name, "").replace("%", "%%"))
        if kind is bool:
            kw["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(kind) is Literal:
            kw.update(choices=args, type=type(args[0]))
        elif type(None) in args and len(args) == 2:  # Optional[int | float | str]
            inner = args[0] if args[1] is type(None) else args[1]
            kw["type"] = lambda s, inner=inner: None if s.lower() == "none" else inner(s)
        elif kind in (int, float, str):
            kw["type"] = kind
        else:
            raise TypeError(f"{cls.__name__}.{f.name}: no command-line form for type {kind}")
        parser.add_argument("--" + f.name.replace("_", "-"), *([aliases[f.name]] if f.name in (aliases or {}) else []),
                            dest=f.name, **kw)
    return parser


def config_from_argv(cls, argv: list[str] | None, description: str = "", aliases: dict[str, str] | None = None):
    """The dataclass `cls` from the command line (see config_parser)."""
    return cls(**vars(config_parser(cls, description, aliases).parse_args(argv)))


# The usual meanings of a setting, for check_settings: (holds(value), the allowed values). Chained comparisons are
# False for NaN, and the upper bound rejects inf: neither passes any of them.
AT_LEAST_1 = (lambda v: 1 <= v < math.inf, "an integer >= 1")
AT_LEAST_0 = (lambda v: 0 <= v < math.inf, "an integer >= 0")
POSITIVE = (lambda v: 0 < v < math.inf, "a number > 0")
NON_NEGATIVE = (lambda v: 0 <= v < math.inf, "a number >= 0")
PROBABILITY = (lambda v: 0 < v <= 1, "a number in (0, 1]")
FRACTION = (lambda v: 0 <= v <= 1, "a number in [0, 1]")


def check_settings(cfg, rules: dict) -> None:
    """Each field named in `rules` ({field: (holds, allowed)}) against its meaning, before any work: a value that
    does not hold is one line naming the flag and the allowed values (`--eval-n 0: expected an integer >= 1`)."""
    for name, (holds, allowed) in rules.items():
        if not holds(value := getattr(cfg, name)):
            raise ValueError(f"--{name.replace('_', '-')} {value}: expected {allowed}")


def check_choices(cfg) -> None:
    """Each Literal field of a config dataclass against its choices: API callers get the CLI's check too."""
    hints = typing.get_type_hints(type(cfg))
    for f in fields(cfg):
        kind = hints[f.name]
        if typing.get_origin(kind) is Literal and getattr(cfg, f.name) not in typing.get_args(kind):
            raise ValueError(f"{f.name}={getattr(cfg, f.name)!r}: expected one of {typing.get_args(kind)}")


def pick_device(name: str = "auto") -> torch.device:
    """"auto": cuda when available, else cpu. Asking for cuda without one is an error, not a slow surprise."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device {name!r}: expected auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name!r}: this machine has no CUDA device (use auto or cpu)")
    return device


def pick_dtype(name: str, device: torch.device) -> torch.dtype:
    """"auto": bfloat16 on cuda (the tensor cores' format), float32 on the cpu (where bf16 matmuls are slow)."""
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if name not in DTYPES:
        raise ValueError(f"dtype {name!r}: choose auto, {', '.join(DTYPES)}")
    return DTYPES[name]
