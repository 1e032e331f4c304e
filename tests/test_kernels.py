"""Triton attention kernels = their PyTorch references = torch SDPA, over shapes that break naive kernels.

On CPU the kernels run in Triton's interpreter (TRITON_INTERPRET=1, set below before triton is imported):
    python -m pytest -q tests/test_kernels.py
The interpreter is slow, so shapes are tiny; the CPU block sizes (prefill 32x16, decode 16) still make every
length cross several blocks. test_gpu_* runs the compiled kernels at realistic sizes and skips without CUDA.
"""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # must precede the first `import triton`

import pytest
import torch
import torch.nn.functional as F

import triton_kernels as tk

TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2}


def _randn(*shape, dtype=torch.float32, device="cpu", seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g).to(device=device, dtype=dtype)


def _close(a: torch.Tensor, b: torch.Tensor, dtype: torch.dtype, tol: float | None = None) -> None:
    assert a.dtype == b.dtype == dtype and a.shape == b.shape
    err = ((a.float() - b.float()).abs() / (1 + b.float().abs())).max().item()  # absolute near 0, relative above 1
    tol = TOL[dtype] if tol is None else tol
    assert err <= tol, f"max err {err} > {tol}"


def _qkv(B, T, Hq, Hkv, D, dtype=torch.float32, seed=0):
    return (_randn(B, T, Hq, D, dtype=dtype, seed=seed), _randn(B, T, Hkv, D, dtype=dtype, seed=seed + 1),
            _randn(B, T, Hkv, D, dtype=dtype, seed=seed + 2))


def test_kernels_run_in_the_interpreter():
    # otherwise every kernel test below would silently compare the reference with itself
    if not torch.cuda.is_available():
        assert type(tk._prefill_kernel).__name__ == "InterpretedFunction"


# ----------------------------------------------------------------------------- references pinned to torch

def test_prefill_reference_matches_sdpa():
    B, T, Hq, Hkv, D = 2, 23, 6, 2, 32
    q, k, v = _qkv(B, T, Hq, Hkv, D)
    kr, vr = (x.repeat_interleave(Hq // Hkv, dim=2).transpose(1, 2) for x in (k, v))
    sdpa = F.scaled_dot_product_attention(q.transpose(1, 2), kr, vr, is_causal=True).transpose(1, 2)
    _close(tk.attention_prefill_reference(q, k, v), sdpa, torch.float32)
    # with lens, valid rows equal the unpadded prompt's attention and padding rows are zeros
    lens = torch.tensor([T, 9])
    out = tk.attention_prefill_reference(q, k, v, lens)
    _close(out[0], sdpa[0], torch.float32)
    short = F.scaled_dot_product_attention(q[1:, :9].transpose(1, 2), kr[1:, :, :9], vr[1:, :, :9], is_causal=True)
    _close(out[1, :9], short[0].transpose(0, 1), torch.float32)
    assert (out[1, 9:] == 0).all()


def test_decode_reference_matches_masked_sdpa():
    B, S, Hq, Hkv, D = 3, 19, 6, 3, 16
    q, kc, vc = _randn(B, Hq, D), _randn(B, S, Hkv, D, seed=1), _randn(B, S, Hkv, D, seed=2)
    lens = torch.tensor([1, 19, 7])
    mask = (torch.arange(S)[None, :] < lens[:, None])[:, None, None, :]          # [B, 1, 1, S]
    kr, vr = (x.repeat_interleave(Hq // Hkv, dim=2).transpose(1, 2) for x in (kc, vc))
    sdpa = F.scaled_dot_product_attention(q[:, :, None], kr, vr, attn_mask=mask)[:, :, 0]
    _close(tk.attention_decode_reference(q, kc, vc, lens, scale=None), sdpa, torch.float32)


# ----------------------------------------------------------------------------- prefill kernel

@pytest.mark.parametrize("B,T,Hq,Hkv,D,lens", [
    (1, 1, 1, 1, 16, None),            # length 1
    (3, 67, 6, 2, 32, [1, 67, 5]),     # GQA 3, very unequal rows, T not a multiple of any block
    (2, 33, 7, 1, 16, [33, 17]),       # GQA 7
    (1, 48, 6, 1, 64, None),           # GQA 6, T a multiple of the blocks
    (2, 20, 2, 2, 128, [20, 3]),       # GQA 1, D 128
])
def test_prefill_kernel_matches_reference(B, T, Hq, Hkv, D, lens):
    q, k, v = _qkv(B, T, Hq, Hkv, D)
    lens = None if lens is None else torch.tensor(lens, dtype=torch.int32)
    _close(tk.attention_prefill(q, k, v, lens), tk.attention_prefill_reference(q, k, v, lens), torch.float32)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_prefill_kernel_half_precision(dtype):
    q, k, v = _qkv(2, 37, 6, 2, 32, dtype=dtype)
    lens = torch.tensor([37, 20])
    _close(tk.attention_prefill(q, k, v, lens, scale=0.3), tk.attention_prefill_reference(q, k, v, lens, 0.3), dtype)


def test_prefill_kernel_on_views_of_a_fused_qkv():
    B, T, Hq, Hkv, D = 2, 35, 3, 1, 32
    qkv = _randn(B, T, (Hq + 2 * Hkv) * D).view(B, T, Hq + 2 * Hkv, D)             # like a fused projection
    q, k, v = qkv[:, :, :Hq], qkv[:, :, Hq:Hq + Hkv], qkv[:, :, Hq + Hkv:]
    assert not q.is_contiguous()
    lens = torch.tensor([35, 30])
    ref = tk.attention_prefill_reference(q.contiguous(), k.contiguous(), v.contiguous(), lens)
    _close(tk.attention_prefill(q, k, v, lens), ref, torch.float32)


# ----------------------------------------------------------------------------- decode kernel

@pytest.mark.parametrize("B,S,Hq,Hkv,D,lens,splits", [
    (3, 70, 6, 2, 32, [1, 67, 5], 1),      # unsplit, very unequal rows
    (3, 70, 6, 2, 32, [1, 67, 5], 4),      # split: rows 0 and 2 leave some splits empty
    (2, 40, 7, 1, 16, [40, 9], 3),         # GQA 7, splits not dividing the length
    (1, 1, 1, 1, 64, [1], 2),              # length 1, one split empty
    (2, 20, 6, 1, 128, [20, 17], 2),       # GQA 6, D 128
])
def test_decode_kernel_matches_reference(B, S, Hq, Hkv, D, lens, splits):
    q, kc, vc = _randn(B, Hq, D), _randn(B, S, Hkv, D, seed=1), _randn(B, S, Hkv, D, seed=2)
    lens = torch.tensor(lens)
    ref = tk.attention_decode_reference(q, kc, vc, lens)
    _close(tk.attention_decode(q, kc, vc, lens, num_splits=splits), ref, torch.float32)
    # the strides model.py passes: its cache is stored head-major, (B, Hkv, S, D), and handed over transposed
    kh, vh = (x.transpose(1, 2).contiguous().transpose(1, 2) for x in (kc, vc))
    _close(tk.attention_decode(q, kh, vh, lens, num_splits=splits), ref, torch.float32)
    _close(tk.attention_decode_reference(q, kh, vh, lens), ref, torch.float32)  # where its reshapes are views


@pytest.mark.parametrize("dtype,splits", [(torch.float16, 3), (torch.bfloat16, 1), (torch.bfloat16, 3)])
def test_decode_kernel_half_precision(dtype, splits):
    B, S, Hq, Hkv, D = 3, 50, 6, 2, 32
    q, kc, vc = (_randn(B, Hq, D, dtype=dtype), _randn(B, S, Hkv, D, dtype=dtype, seed=1),
                 _randn(B, S, Hkv, D, dtype=dtype, seed=2))
    lens = torch.tensor([50, 2, 33], dtype=torch.int32)
    out = tk.attention_decode(q, kc, vc, lens, scale=0.2, num_splits=splits)
    _close(out, tk.attention_decode_reference(q, kc, vc, lens, scale=0.2), dtype)


def test_decode_kernel_on_a_layer_of_a_sliced_cache():
    n_layers, B, S_max, Hq, Hkv, D = 3, 2, 64, 6, 2, 16
    cache_k, cache_v = _randn(n_layers, B, S_max, Hkv, D, seed=1), _randn(n_layers, B, S_max, Hkv, D, seed=2)
    kc, vc = cache_k[1][:, :41], cache_v[1][:, :41]                                # [B, 41, Hkv, D] views
    qkv = _randn(B, (Hq + 2 * Hkv) * D).view(B, Hq + 2 * Hkv, D)
    q = qkv[:, :Hq]
    assert not (q.is_contiguous() or kc.is_contiguous())
    lens = torch.tensor([41, 12])
    ref = tk.attention_decode_reference(q.contiguous(), kc.contiguous(), vc.contiguous(), lens)
    for splits in (1, 3, None):  # None: the automatic choice
        _close(tk.attention_decode(q, kc, vc, lens, num_splits=splits), ref, torch.float32)


def test_kernels_with_the_gpu_block_sizes(monkeypatch):
    # the CUDA launch configs (BLOCK_M 128 / BLOCK_N 64 ...), run here in the interpreter
    prefill_config, decode_config = tk._prefill_config, tk._decode_config
    monkeypatch.setattr(tk, "_prefill_config", lambda D, dtype, cuda: prefill_config(D, dtype, True))
    monkeypatch.setattr(tk, "_decode_config", lambda D, dtype, cuda: decode_config(D, dtype, True))
    q, k, v = _qkv(2, 150, 6, 1, 32)
    lens = torch.tensor([150, 70])
    _close(tk.attention_prefill(q, k, v, lens), tk.attention_prefill_reference(q, k, v, lens), torch.float32)
    q, k, v = q.bfloat16()[:, 0], k.bfloat16(), v.bfloat16()
    for splits in (1, 2):
        _close(tk.attention_decode(q, k, v, lens, num_splits=splits), tk.attention_decode_reference(q, k, v, lens),
               torch.bfloat16)


def test_auto_splits_fill_the_gpu(monkeypatch):
    monkeypatch.setattr(tk, "_sm_count", lambda index: 132)
    cuda = torch.device("cuda", 0)
    assert tk._auto_splits(3 * 2, 4096, 64, True, cuda) == 16       # few rows, long cache: split to 4-block pieces
    assert tk._auto_splits(16 * 2, 4096, 64, True, cuda) == 13      # ~3 programs per SM
    assert tk._auto_splits(64 * 2, 4096, 64, True, cuda) == 1       # half the SMs busy: no merge to pay
    assert tk._auto_splits(256 * 8, 4096, 64, True, cuda) == 1      # the batch alone fills the GPU
    assert tk._auto_splits(1, 100, 64, True, cuda) == 1             # too short to split


def test_kernels_with_huge_scores():
    # scores s = scale q.k up to ~ +-225 (+-325 in log2 units): 2^325 overflows fp32, so softmax and merge must
    # subtract their maxima. fp32 error estimate, u = 2^-24: on a 1/8 grid every q.k is exact in fp32 whatever the
    # order of summation (terms n/64, sums < 2^10); with random q, k the order alone (OpenBLAS's sgemm kernel for
    # the CPU at hand, in the interpreter's tl.dot) moved the output by 2.7e-5. What rounds then is s: once in the
    # reference (s * scale), once in the kernel (s * scale log2 e; the rounding of scale log2 e scales every s - m
    # alike), once in the split merge (m + log2 l), each off by u|s| at most, which is a relative error in a softmax
    # weight. Weights off by eps <= 3u max|s| move the output by eps max_j |v_j - out| <= eps max|v| (1 + |out|);
    # the sums over T <= 40 keys add 2Tu max|v|. Here tol = 1.7e-4; measured: 2e-6 and 1e-6.
    q, k, v = (torch.round(x * 8) / 8 for x in _qkv(2, 40, 6, 2, 32))
    lens = torch.tensor([40, 23])
    s_max = 10.0 * torch.einsum("bthd,bshd->bhts", q.double(), k.double().repeat_interleave(3, 2)).abs().max().item()
    assert s_max * tk.LOG2E > 128, s_max  # 2^128 overflows fp32: the test needs scores that large
    tol = 2**-24 * v.abs().max().item() * (3 * s_max + 2 * 40)
    _close(tk.attention_prefill(q, k, v, lens, scale=10.0), tk.attention_prefill_reference(q, k, v, lens, 10.0),
           torch.float32, tol)
    _close(tk.attention_decode(q[:, 0], k, v, lens, scale=10.0, num_splits=3),
           tk.attention_decode_reference(q[:, 0], k, v, lens, scale=10.0), torch.float32, tol)


# ----------------------------------------------------------------------------- wrappers

def test_cpu_without_interpreter_uses_the_reference(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    q, k, v = _qkv(1, 5, 2, 1, 16)
    assert torch.equal(tk.attention_prefill(q, k, v), tk.attention_prefill_reference(q, k, v))


def test_validation_errors_name_the_argument():
    q, k, v = _qkv(2, 8, 6, 2, 16)
    lens = torch.tensor([8, 3])
    cases = [
        (lambda: tk.attention_prefill(q, k.half(), v, lens), "k must be"),
        (lambda: tk.attention_prefill(q, k, v, lens.float()), "lens must be"),
        (lambda: tk.attention_prefill(q, k, v, lens[:1]), "lens must be"),
        (lambda: tk.attention_prefill(*_qkv(1, 8, 6, 4, 16)), "multiple of k/v heads"),
        (lambda: tk.attention_prefill(*_qkv(1, 8, 2, 1, 24)), "head dim"),
        (lambda: tk.attention_prefill(*_qkv(1, 8, 2, 1, 512)), "head dim"),
        (lambda: tk.attention_prefill(q[..., ::2], k[..., ::2], v[..., ::2]), "last (head) dim"),
        (lambda: tk.attention_prefill(q.int(), k, v), "q must be"),
        (lambda: tk.attention_prefill(q, k[:, :5], v[:, :5]), "k length"),
        (lambda: tk.attention_decode(q[:, 0], k, v, lens.to(torch.int16)), "lens must be"),
        (lambda: tk.attention_decode(q[:, 0], k, v[..., :1, :], lens), "v shape"),
        (lambda: tk.attention_decode(q[:, 0], k, v, lens, num_splits=0), "num_splits"),
        (lambda: tk.attention_decode(q, k, v, lens), "q must have 3 dims"),
    ]
    for call, message in cases:
        with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
            call()


# ----------------------------------------------------------------------------- GPU (compiled kernels)

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@cuda
def test_gpu_prefill_matches_reference():
    B, T, Hq, Hkv, D, dtype = 2, 1000, 12, 2, 128, torch.bfloat16
    q, k, v = (x.cuda() for x in _qkv(B, T, Hq, Hkv, D, dtype=dtype))
    lens = torch.tensor([1000, 537], device="cuda")
    _close(tk.attention_prefill(q, k, v, lens), tk.attention_prefill_reference(q, k, v, lens), dtype)
    for D, dtype in ((64, torch.float16), (128, torch.float32), (256, torch.bfloat16)):
        q, k, v = (x.cuda() for x in _qkv(1, 300, 6, 1, D, dtype=dtype))
        _close(tk.attention_prefill(q, k, v), tk.attention_prefill_reference(q, k, v), dtype)


@cuda
def test_gpu_decode_matches_reference():
    B, S, Hq, Hkv, D, dtype = 3, 4096, 12, 2, 128, torch.bfloat16
    cache_k, cache_v = (_randn(2, B, S, Hkv, D, dtype=dtype, device="cuda", seed=s) for s in (1, 2))
    q = _randn(B, Hq, D, dtype=dtype, device="cuda")
    lens = torch.tensor([4096, 1, 1500], device="cuda")
    ref = tk.attention_decode_reference(q, cache_k[1], cache_v[1], lens)
    for splits in (None, 1, 7, 64):
        _close(tk.attention_decode(q, cache_k[1], cache_v[1], lens, num_splits=splits), ref, dtype)
    kh, vh = (x.transpose(1, 2).contiguous().transpose(1, 2) for x in (cache_k[1], cache_v[1]))  # model.py's layout
    _close(tk.attention_decode(q, kh, vh, lens), ref, dtype)
    for D, dtype in ((64, torch.float16), (128, torch.float32), (256, torch.bfloat16)):
        kc, vc = (_randn(B, 700, Hkv, D, dtype=dtype, device="cuda", seed=s) for s in (1, 2))
        q = _randn(B, Hq, D, dtype=dtype, device="cuda")
        _close(tk.attention_decode(q, kc, vc, lens.clamp(max=700)),
               tk.attention_decode_reference(q, kc, vc, lens.clamp(max=700)), dtype)
