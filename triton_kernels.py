"""Fused attention kernels for sampling: prefill over right-padded prompts, and decode over the KV cache.

Both kernels come with a plain-PyTorch reference of the same math beside them; tests pin one to the other.

attention_prefill  causal attention for a batch of right-padded prompts, flash-attention style: one program per
                   (query block, batch*head) walks the key blocks at or below the diagonal, keeping a running max
                   and sum of the softmax (online softmax) so the [T, T] score matrix is never stored.
attention_decode   one new query per sequence against its cache (flash-decoding): one program per
                   (batch, kv head, split) loads each K/V block once for all G = Hq/Hkv query heads of its group
                   (a [G_pad, D] x [D, BLOCK_N] tile), and when B*Hkv programs cannot fill the GPU the cached
                   length is split across programs whose partial results a second kernel merges by log-sum-exp.

Scores are accumulated in fp32 and exponentiated with exp2, log2(e) folded into the softmax scale.
On CPU tensors the wrappers call the references, unless TRITON_INTERPRET=1 was set before this module (and
triton) were imported, in which case the kernels themselves run on the CPU in Triton's interpreter:

    TRITON_INTERPRET=1 python -m pytest -q tests/test_kernels.py      # seconds on 2 CPU cores
"""
import functools
import os

import torch

try:  # triton is optional: without it (e.g. macOS) the references serve CPU tensors
    import triton
    import triton.language as tl
except ImportError:
    triton = None

LOG2E = 1.4426950408889634  # exp(x) = exp2(x * log2(e))
MAX_SPLITS = 64  # flash-decoding splits per (sequence, kv head)


# ----------------------------------------------------------------------------- references

def attention_prefill_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                                lens: torch.Tensor | None = None, scale: float | None = None) -> torch.Tensor:
    """Causal attention, fp32 math. q: [B, T, Hq, D], k/v: [B, T, Hkv, D], lens: [B] -> [B, T, Hq, D]."""
    B, T, Hq, D = q.shape
    G = Hq // k.shape[2]
    scale = D ** -0.5 if scale is None else scale
    qf = q.float().transpose(1, 2)                                   # [B, Hq, T, D]
    kf = k.float().repeat_interleave(G, dim=2).transpose(1, 2)       # [B, Hq, T, D]
    vf = v.float().repeat_interleave(G, dim=2).transpose(1, 2)
    scores = qf @ kf.transpose(-1, -2) * scale                       # [B, Hq, T, T]
    pos = torch.arange(T, device=q.device)
    mask = pos[None, :] <= pos[:, None]                              # [T, T] key <= query
    if lens is not None:
        mask = mask & (pos[None, None, :] < lens.view(B, 1, 1))      # [B, T, T] keys of the prompt only
        mask = mask[:, None]                                         # [B, 1, T, T]
    out = scores.masked_fill(~mask, float("-inf")).softmax(-1) @ vf  # [B, Hq, T, D]
    if lens is not None:  # padding positions are written as zeros, as the kernel does
        out = out * (pos[None, None, :, None] < lens.view(B, 1, 1, 1))
    return out.transpose(1, 2).to(q.dtype)


def attention_decode_reference(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                               lens: torch.Tensor, scale: float | None = None) -> torch.Tensor:
    """One query per row over cache positions [0, lens[b]). q: [B, Hq, D], caches: [B, S, Hkv, D] -> [B, Hq, D].
    Two batched matmuls per (row, kv head), each kv head's G query heads acting as its G queries, all in fp32 (as
    the prefill reference), the output in q's dtype. It is also the CPU's decode attention (torch's CPU SDPA ran up
    to 2x slower once torch.set_num_threads was called): with fp32 inputs and model.py's head-major cache,
    [B, Hkv, S, D] handed over transposed, the casts and reshapes below are views, so no key or value is copied."""
    dtype = q.dtype
    q, k_cache, v_cache = q.float(), k_cache.float(), v_cache.float()  # fp32 inputs: the same tensors
    B, Hq, D = q.shape
    S, Hkv = k_cache.shape[1], k_cache.shape[2]
    scale = D ** -0.5 if scale is None else scale
    K = k_cache.transpose(1, 2).reshape(B * Hkv, S, D)                   # [B*Hkv, S, D]
    V = v_cache.transpose(1, 2).reshape(B * Hkv, S, D)
    scores = torch.bmm(q.reshape(B * Hkv, Hq // Hkv, D), K.transpose(1, 2)) * scale  # [B*Hkv, G, S]
    valid = torch.arange(S, device=q.device) < lens.view(B, 1)          # [B, S]
    scores = scores.view(B, Hkv, Hq // Hkv, S).masked_fill(~valid[:, None, None], float("-inf"))
    probs = scores.softmax(-1).view(B * Hkv, Hq // Hkv, S)
    return torch.bmm(probs, V).view(B, Hq, D).to(dtype)


# ----------------------------------------------------------------------------- kernels

if triton is not None:
    @triton.jit
    def _dot(a, b, FP32_DOT: tl.constexpr):
        # fp32 inputs must not be rounded to tf32; bf16 is upcast in the interpreter, whose dot multiplies the
        # raw uint16 bits of bf16 (triton 3.9). Both are exact products accumulated in fp32, like the MMA.
        if FP32_DOT:
            c = tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
        else:
            c = tl.dot(a, b)
        return c

    @triton.jit
    def _online_softmax_step(q, kt, v, m_i, l_i, acc, qk_scale, keep, FP32_DOT: tl.constexpr):
        # one key block of the online softmax, log2 domain: scores s = q K^T, a new running max m, the old sum l
        # and output acc rescaled by alpha = 2^(m_old - m_new), this block's p = 2^(s - m) added. keep: None (no
        # mask) or a [rows, BLOCK_N] mask of the keys this block may attend to. Returns the new (m_i, l_i, acc).
        s = _dot(q, kt, FP32_DOT) * qk_scale                                               # [rows, BLOCK_N]
        if keep is not None:
            s = tl.where(keep, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        p = tl.exp2(s - m_new[:, None])
        alpha = tl.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + _dot(p.to(v.dtype), v, FP32_DOT)
        return m_new, l_i, acc

    @triton.jit
    def _prefill_kernel(Q, K, V, O, LENS, qk_scale, T, Hq, G,
                        sqb, sqt, sqh, skb, skt, skh, svb, svt, svh, sob, sot, soh,
                        D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, FP32_DOT: tl.constexpr):
        # 1. which rows: the last query blocks (longest causal rows) are launched first for better load balance
        start_m = (tl.num_programs(0) - 1 - tl.program_id(0)) * BLOCK_M
        bh = tl.program_id(1)
        b, h = bh // Hq, bh % Hq
        kvh = h // G  # the G heads of a group are neighbours in the grid: their K/V blocks come from L2
        L = tl.minimum(tl.load(LENS + b).to(tl.int32), T)
        offs_m = start_m + tl.arange(0, BLOCK_M)
        offs_n = tl.arange(0, BLOCK_N)
        offs_d = tl.arange(0, D)
        b64 = b.to(tl.int64)  # batch offsets of big tensors can pass 2**31 elements
        q_ptrs = Q + b64 * sqb + h * sqh + offs_m[:, None] * sqt + offs_d[None, :]
        kt_ptrs = K + b64 * skb + kvh * skh + offs_n[None, :] * skt + offs_d[:, None]  # K^T block: [D, BLOCK_N]
        v_ptrs = V + b64 * svb + kvh * svh + offs_n[:, None] * svt + offs_d[None, :]   # [BLOCK_N, D]
        q = tl.load(q_ptrs, mask=offs_m[:, None] < T, other=0.0)                         # [BLOCK_M, D]

        # 2. online-softmax state: running max m_i, running sum l_i (log2 domain), unnormalized output acc
        m_i = tl.full([BLOCK_M], -1e30, tl.float32)  # finite, so a row that has seen no key gives exp2(0) not NaN
        l_i = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, D], tl.float32)

        # 3. key blocks wholly below the diagonal: every key < start_m < L is valid, so no mask at all.
        #    A block of padding rows (start_m >= L) skips steps 3 and 4 and writes zeros.
        for start_n in range(0, tl.where(start_m < L, start_m, 0), BLOCK_N):
            kt, v = tl.load(kt_ptrs + start_n * skt), tl.load(v_ptrs + start_n * svt)
            m_i, l_i, acc = _online_softmax_step(q, kt, v, m_i, l_i, acc, qk_scale, None, FP32_DOT)

        # 4. blocks on the diagonal: mask keys after the query and keys past the prompt (none if start_m >= L)
        hi = tl.where(start_m < L, tl.minimum(start_m + BLOCK_M, L), start_m)
        for start_n in range(start_m, hi, BLOCK_N):
            cols = start_n + offs_n
            kt = tl.load(kt_ptrs + start_n * skt, mask=cols[None, :] < L, other=0.0)
            v = tl.load(v_ptrs + start_n * svt, mask=cols[:, None] < L, other=0.0)
            keep = (cols[None, :] <= offs_m[:, None]) & (cols[None, :] < L)
            m_i, l_i, acc = _online_softmax_step(q, kt, v, m_i, l_i, acc, qk_scale, keep, FP32_DOT)

        # 5. normalize; padding rows (>= L) are written as zeros
        out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
        out = tl.where(offs_m[:, None] < L, out, 0.0)
        o_ptrs = O + b64 * sob + h * soh + offs_m[:, None] * sot + offs_d[None, :]
        tl.store(o_ptrs, out.to(O.dtype.element_ty), mask=offs_m[:, None] < T)

    @triton.jit
    def _decode_kernel(Q, K, V, O, LSE, LENS, qk_scale, S, Hkv, G, num_splits,
                       sqb, sqh, skb, sks, skh, svb, svs, svh, sob, soh, sos, slb, slh,
                       D: tl.constexpr, G_PAD: tl.constexpr, BLOCK_N: tl.constexpr,
                       STORE_LSE: tl.constexpr, FP32_DOT: tl.constexpr):
        # 1. which work: batch row b, kv head kvh, and split `split` of this row's valid length L
        bh, split = tl.program_id(0), tl.program_id(1)
        b, kvh = bh // Hkv, bh % Hkv
        L = tl.minimum(tl.load(LENS + b).to(tl.int32), S)
        split_len = tl.cdiv(tl.cdiv(L, num_splits), BLOCK_N) * BLOCK_N  # per-row, so short rows split finely too
        lo = split * split_len
        hi = tl.minimum(lo + split_len, L)  # lo >= hi: an empty split, which writes lse = -inf

        # 2. the G query heads of this kv group as the rows of one tile, padded to G_PAD >= 16 for tl.dot
        offs_g = tl.arange(0, G_PAD)
        offs_n = tl.arange(0, BLOCK_N)
        offs_d = tl.arange(0, D)
        b64 = b.to(tl.int64)
        heads = kvh * G + offs_g
        q = tl.load(Q + b64 * sqb + heads[:, None] * sqh + offs_d[None, :],
                    mask=offs_g[:, None] < G, other=0.0)                                  # [G_PAD, D]
        kt_ptrs = K + b64 * skb + kvh * skh + offs_n[None, :] * sks + offs_d[:, None]    # [D, BLOCK_N]
        v_ptrs = V + b64 * svb + kvh * svh + offs_n[:, None] * svs + offs_d[None, :]     # [BLOCK_N, D]

        # 3. online softmax over this split's cache blocks, as in the prefill kernel
        m_i = tl.full([G_PAD], -1e30, tl.float32)
        l_i = tl.zeros([G_PAD], tl.float32)
        acc = tl.zeros([G_PAD, D], tl.float32)
        for start_n in range(lo, hi, BLOCK_N):
            cols = start_n + offs_n
            kt = tl.load(kt_ptrs + start_n * sks, mask=cols[None, :] < hi, other=0.0)
            v = tl.load(v_ptrs + start_n * svs, mask=cols[:, None] < hi, other=0.0)
            m_i, l_i, acc = _online_softmax_step(q, kt, v, m_i, l_i, acc, qk_scale, cols[None, :] < hi, FP32_DOT)

        # 4. normalized partial output, and its log2-sum-exp2 weight for the merge
        out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
        o_ptrs = O + b64 * sob + heads[:, None] * soh + split * sos + offs_d[None, :]
        tl.store(o_ptrs, out.to(O.dtype.element_ty), mask=offs_g[:, None] < G)
        if STORE_LSE:
            lse = tl.where(l_i > 0, m_i + tl.log2(tl.maximum(l_i, 1e-30)), float("-inf"))
            tl.store(LSE + b64 * slb + heads * slh + split, lse, mask=offs_g < G)

    @triton.jit
    def _merge_kernel(PO, LSE, O, Hq, num_splits, spb, sph, sps, slb, slh, sob, soh,
                      D: tl.constexpr, SPLITS_PAD: tl.constexpr):
        # out = sum_s w_s * out_s / sum_s w_s, with w_s = 2^(lse_s - max lse); empty splits have w_s = 0
        bh = tl.program_id(0)
        b, h = bh // Hq, bh % Hq
        offs_s = tl.arange(0, SPLITS_PAD)
        offs_d = tl.arange(0, D)
        lse = tl.load(LSE + b * slb + h * slh + offs_s, mask=offs_s < num_splits, other=float("-inf"))
        m = tl.max(lse, 0)
        m = tl.where(m == float("-inf"), 0.0, m)  # every split empty: weights 0, output 0, no NaN
        w = tl.exp2(lse - m)                                                               # [SPLITS_PAD]
        po = tl.load(PO + b * spb + h * sph + offs_s[:, None] * sps + offs_d[None, :],
                     mask=offs_s[:, None] < num_splits, other=0.0)                        # [SPLITS_PAD, D]
        den = tl.sum(w, 0)
        out = tl.sum(w[:, None] * po, 0) / tl.where(den > 0, den, 1.0)                   # [D]
        tl.store(O + b * sob + h * soh + offs_d, out.to(O.dtype.element_ty))


# ----------------------------------------------------------------------------- wrappers

def _use_kernel(x: torch.Tensor) -> bool:
    """Kernel on CUDA; on CPU only when the kernels were built by Triton's interpreter (TRITON_INTERPRET=1)."""
    interpreted = triton is not None and type(_prefill_kernel).__name__ == "InterpretedFunction"
    if x.is_cuda:
        if triton is None:
            raise RuntimeError("triton_kernels: CUDA tensors need the `triton` package, which failed to import")
        return True
    if os.environ.get("TRITON_INTERPRET") == "1" and not interpreted:
        raise RuntimeError("triton_kernels: TRITON_INTERPRET=1 must be set before triton is first imported")
    return interpreted and os.environ.get("TRITON_INTERPRET") == "1"


def _check(name: str, x: torch.Tensor, ndim: int, ref: torch.Tensor) -> None:
    if x.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dims, got shape {tuple(x.shape)}")
    if x.dtype not in (torch.float16, torch.bfloat16, torch.float32) or x.dtype != ref.dtype:
        raise ValueError(f"{name} must be fp16/bf16/fp32 and match q's dtype {ref.dtype}, got {x.dtype}")
    if x.device != ref.device:
        raise ValueError(f"{name} is on {x.device} but q is on {ref.device}")
    if x.stride(-1) != 1:
        raise ValueError(f"{name} must be contiguous in its last (head) dim, got strides {x.stride()}")


def _check_heads(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lens: torch.Tensor | None, B: int) -> None:
    D, Hq, Hkv = q.shape[-1], q.shape[-2], k.shape[-2]
    if v.shape != k.shape:
        raise ValueError(f"v shape {tuple(v.shape)} must equal k shape {tuple(k.shape)}")
    if k.shape[0] != B or k.shape[-1] != D:
        raise ValueError(f"k shape {tuple(k.shape)} does not fit q shape {tuple(q.shape)} (batch, head dim)")
    if D < 16 or D > 256 or D & (D - 1):
        raise ValueError(f"head dim D must be a power of two in [16, 256], got {D}")
    if Hq % Hkv:
        raise ValueError(f"q heads ({Hq}) must be a multiple of k/v heads ({Hkv})")
    if lens is not None:
        if lens.dtype not in (torch.int32, torch.int64) or lens.shape != (B,):
            raise ValueError(f"lens must be int32/int64 of shape ({B},), got {lens.dtype} {tuple(lens.shape)}")
        if lens.device != q.device:
            raise ValueError(f"lens is on {lens.device} but q is on {q.device}")


def _fp32_dot(q: torch.Tensor) -> bool:
    """Multiply in fp32 for fp32 inputs, and for bf16 in the interpreter (see `_dot`)."""
    return q.dtype == torch.float32 or (q.dtype == torch.bfloat16 and not q.is_cuda)


def attention_prefill(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                      lens: torch.Tensor | None = None, scale: float | None = None) -> torch.Tensor:
    """Causal attention over right-padded prompts. q: [B, T, Hq, D]; k, v: [B, T, Hkv, D]; lens: [B] valid
    lengths (None = all T). Returns [B, T, Hq, D] in q's dtype; positions >= lens[b] are zeros."""
    for name, x in (("q", q), ("k", k), ("v", v)):
        _check(name, x, 4, q)
    B, T, Hq, D = q.shape
    if k.shape[1] != T:
        raise ValueError(f"k length {k.shape[1]} must equal q length {T}")
    _check_heads(q, k, v, lens, B)
    scale = D ** -0.5 if scale is None else scale
    if not _use_kernel(q):
        return attention_prefill_reference(q, k, v, lens, scale)
    if lens is None:
        lens = torch.full((B,), T, dtype=torch.int32, device=q.device)
    o = torch.empty(B, T, Hq, D, dtype=q.dtype, device=q.device)
    block_m, block_n, warps, stages = _prefill_config(D, q.dtype, q.is_cuda)
    grid = (triton.cdiv(T, block_m), B * Hq)
    _prefill_kernel[grid](q, k, v, o, lens, scale * LOG2E, T, Hq, Hq // k.shape[2],
                          *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *o.stride()[:3],
                          D=D, BLOCK_M=block_m, BLOCK_N=block_n, FP32_DOT=_fp32_dot(q),
                          num_warps=warps, num_stages=stages)
    return o


def _prefill_config(D: int, dtype: torch.dtype, cuda: bool) -> tuple[int, int, int, int]:
    """(BLOCK_M, BLOCK_N, num_warps, num_stages). BLOCK_M must be a multiple of BLOCK_N (step 3 of the kernel)."""
    if not cuda:
        return 32, 16, 4, 1  # small blocks, so that tiny test prompts still cross several block boundaries
    if dtype == torch.float32 or D > 128:  # keep q, two K/V stages within shared memory
        return 64, 32, 4 if D <= 64 else 8, 2
    return 128, 64, 4 if D <= 64 else 8, 3


def _decode_config(D: int, dtype: torch.dtype, cuda: bool) -> tuple[int, int, int]:
    """(BLOCK_N, num_warps, num_stages). Decode is bandwidth bound: deep enough pipelines keep loads in flight."""
    if not cuda:
        return 16, 4, 1
    big = D * (4 if dtype == torch.float32 else 2) > 256  # bytes per cached row
    # measured on an H200 (bf16, D=128, GQA 6:1): 128-row blocks, 4 warps, 3 stages read K/V at 92% of a copy's
    # bandwidth at batch 256 and 2K context, against 86% for 64-row blocks; fp32 / D=256 rows need smaller blocks
    return (32 if big else 128), 4, 3


@functools.lru_cache(maxsize=None)
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def _auto_splits(programs: int, S: int, block_n: int, cuda: bool, device: torch.device) -> int:
    """Enough splits that programs * splits is ~3 per SM, each split at least 4 blocks of the cache long. Once
    B * Hkv programs fill half the SMs, splitting only adds the merge (H200: batch 64, 2K: 45 µs unsplit, 54 split)."""
    if not cuda or programs >= _sm_count(device.index or 0) // 2:
        return 1
    want = triton.cdiv(3 * _sm_count(device.index or 0), programs)
    return max(1, min(want, triton.cdiv(S, 4 * block_n), MAX_SPLITS))


def attention_decode(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, lens: torch.Tensor,
                     scale: float | None = None, num_splits: int | None = None) -> torch.Tensor:
    """One query per row against its cache. q: [B, Hq, D]; k_cache, v_cache: [B, S, Hkv, D] (any strides but
    the last); lens: [B] valid cache positions per row (>= 1). num_splits: KV splits per row (None = auto)."""
    _check("q", q, 3, q)
    _check("k_cache", k_cache, 4, q)
    _check("v_cache", v_cache, 4, q)
    B, Hq, D = q.shape
    if lens is None:
        raise ValueError("lens is required for attention_decode")
    _check_heads(q, k_cache, v_cache, lens, B)
    if num_splits is not None and not 1 <= num_splits <= MAX_SPLITS:
        raise ValueError(f"num_splits must be in [1, {MAX_SPLITS}], got {num_splits}")
    scale = D ** -0.5 if scale is None else scale
    if not _use_kernel(q):
        return attention_decode_reference(q, k_cache, v_cache, lens, scale)
    S, Hkv = k_cache.shape[1], k_cache.shape[2]
    G = Hq // Hkv
    block_n, warps, stages = _decode_config(D, q.dtype, q.is_cuda)
    if num_splits is None:
        num_splits = _auto_splits(B * Hkv, S, block_n, q.is_cuda, q.device)
    o = torch.empty(B, Hq, D, dtype=q.dtype, device=q.device)
    if num_splits == 1:  # write straight into the output; no partials, no merge
        po, lse, po_strides, lse_strides = o, o, (*o.stride()[:2], 0), (0, 0)
    else:
        po = torch.empty(B, Hq, num_splits, D, dtype=torch.float32, device=q.device)
        lse = torch.empty(B, Hq, num_splits, dtype=torch.float32, device=q.device)
        po_strides, lse_strides = po.stride()[:3], lse.stride()[:2]
    _decode_kernel[(B * Hkv, num_splits)](
        q, k_cache, v_cache, po, lse, lens, scale * LOG2E, S, Hkv, G, num_splits,
        *q.stride()[:2], *k_cache.stride()[:3], *v_cache.stride()[:3], *po_strides, *lse_strides,
        D=D, G_PAD=max(16, triton.next_power_of_2(G)), BLOCK_N=block_n, STORE_LSE=num_splits > 1,
        FP32_DOT=_fp32_dot(q), num_warps=warps, num_stages=stages)
    if num_splits > 1:
        _merge_kernel[(B * Hq,)](po, lse, o, Hq, num_splits, *po.stride()[:3], *lse.stride()[:2],
                                 *o.stride()[:2], D=D, SPLITS_PAD=triton.next_power_of_2(num_splits))
    return o
