"""cli.py: dataclass fields as flags, and the device and dtype that "auto" and a bad name mean."""
from dataclasses import dataclass
from typing import Literal

import pytest
import torch

import cli


def test_dataclass_flags():
    @dataclass
    class Demo:
        max_new_tokens: int = 8     # tokens per answer
        top_p: float | None = None  # nucleus mass
        fast: bool = True           # take the fast path
        mode: Literal["a", "b"] = "a"  # which one
    parser = cli.config_parser(Demo)
    assert cli.config_from_argv(Demo, []) == Demo()
    argv = ["--max-new-tokens", "3", "--top-p", "0.9", "--no-fast", "--mode", "b"]
    got = cli.config_from_argv(Demo, argv)
    assert got == Demo(3, 0.9, False, "b")
    assert parser.parse_args(["--top-p", "none"]).top_p is None
    assert "tokens per answer" in parser.format_help()
    with pytest.raises(SystemExit):
        parser.parse_args(["--mode", "c"])


def test_device_and_dtype():
    assert cli.pick_device("cpu") == torch.device("cpu")
    assert cli.pick_dtype("auto", torch.device("cpu")) == torch.float32
    assert cli.pick_dtype("auto", torch.device("cuda")) == torch.bfloat16
    with pytest.raises(ValueError, match="'fp8': choose auto, float32"):
        cli.pick_dtype("fp8", torch.device("cpu"))
    with pytest.raises(ValueError, match="'gpu'"):
        cli.pick_device("gpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device"):
            cli.pick_device("cuda")
