"""bench.py — how fast: sampler, attention kernels, training step and SePT round, against peers and the hardware.

Each is timed beside a peer (transformers, torch SDPA, flash-attn where installed) and the hardware's own limit.

    python bench.py --quick --threads 1           # smoke test: tiny sizes, seconds on a CPU
    python bench.py                               # CPU: the toy and a SmolLM-135M shape, ~1.5 minutes on 2 cores
    python bench.py --only kernels,sampling --gpu-sizes 1,128,256 --decode-context 2048    # one GPU
    bash tests/gpu.sh                             # the GPU tests, then this bench at GPU sizes (~5 minutes)

Sections (--only picks them, in the order given):
  sampling  tokens/s of sample.generate and of transformers' generate on the same weights, interleaved, medians;
            the decode step's bytes per second as a fraction of a measured copy's (the bandwidth roofline)
  kernels   Triton prefill / decode attention against torch SDPA (flash backend) and flash-attn: time, speed-up,
            TFLOP/s of prefill, GB/s of K and V read by decode
  training  tokens/s, MFU and peak memory of train.train_step against a plain transformers step
  round     one whole SePT round: seconds in sampling, training and evaluation
Prints a table per section and writes --out (JSON: machine, config, a list of rows per section), rewritten after
every row so that a run cut short keeps what it measured. A failing row (OOM, a missing package) records its
error and the bench goes on. Random weights are drawn with std 0.02, so bf16 activations stay finite.
CPU figures need an otherwise idle machine: with other jobs running, use --threads 1 (two threads that wait for
each other's time slices make every op ~100x slower).
"""
import functools
import gc
import importlib
import io
import json
import math
import os
import platform
import statistics
import tempfile
import time
from contextlib import nullcontext, redirect_stderr, redirect_stdout
from dataclasses import asdict, dataclass
from datetime import datetime
from types import SimpleNamespace

import torch
import torch.nn.functional as F

import cli
import model as model_lib
import sample
import train
import triton_kernels as tk

HERE = os.path.dirname(os.path.abspath(__file__))
STARTED = time.perf_counter()


@dataclass
class BenchConfig:
    only: str = "sampling,kernels,training,round"  # sections to run, in this order
    quick: bool = False                 # tiny sizes everywhere (the smoke test)
    out: str = "bench.json"             # the JSON report
    device: str = "auto"                # auto = cuda when available, else cpu
    threads: int = 2                    # torch CPU threads, pinned so that CPU figures compare across runs
    reps: int = 3                       # interleaved repetitions per candidate on the CPU (medians reported)
    gpu_reps: int = 1                   # the same on CUDA, where runs are long and steady
    peers: bool = True                  # also time transformers on the same weights and shapes
    toy: str = os.path.join(HERE, "data", "toy")  # the toy checkpoint; its rows are skipped when it is absent
    gpu_sizes: str = "1,64,256"         # batch sizes of the Qwen2.5-1.5B-shape sampling rows (CUDA)
    gpu_prompt_tokens: int = 512        # prompt length of those rows
    gpu_new_tokens: int = 1024          # tokens generated per row
    decode_context: int = 0             # cached tokens for the 1.5B decode-step timing (0 = the rows' mean context)
    kernel_lens: str = "512,1024,2048,4096,8192"  # prompt / cache lengths of the kernel rows (CUDA)
    kernel_batches: str = "1,16,64"     # batch sizes of the decode-kernel rows (CUDA)
    train_pairs: int = 4                # pairs per update in the 1.5B training rows (CUDA)
    train_prompt_tokens: int = 1024     # per pair (the paper's prompt budget)
    train_response_tokens: int = 3072   # per pair (the paper's response budget)
    round_prompt_tokens: int = 160      # prompt length in the 1.5B round (random tokens, ~ a templated question)
    round_response_tokens: int = 780    # every answer of the 1.5B round is this long: random weights never stop
    peak_tflops: float = 0.0            # dense bf16 peak for MFU, TFLOP/s (0 = from the GPU's name)
    budget_s: float = 0.0               # start no new row after this many seconds (0 = no limit)


def shape(model_type, vocab, hidden, inner, layers, heads, kv_heads, head_dim, **kw) -> model_lib.ModelConfig:
    return model_lib.ModelConfig(model_type=model_type, vocab_size=vocab, hidden_size=hidden, intermediate_size=inner,
                                 num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                                 head_dim=head_dim, **kw)


# Architectures with random weights (the toy is read from its checkpoint).
SHAPES = {"tiny": shape("llama", 512, 64, 128, 2, 4, 2, 16, tie_word_embeddings=True),
          "small": shape("llama", 8192, 256, 768, 4, 4, 2, 64),
          "smollm-135m": shape("llama", 49152, 576, 1536, 30, 9, 3, 64, rms_norm_eps=1e-5, tie_word_embeddings=True),
          "qwen2.5-1.5b": shape("qwen2", 151936, 1536, 8960, 28, 12, 2, 128, rope_theta=1e6, attention_bias=True,
                                max_position_embeddings=32768, tie_word_embeddings=True)}
QWEN = SHAPES["qwen2.5-1.5b"]
# Dense bf16 tensor-core peaks (no sparsity), TFLOP/s, matched against the device name in this order.
PEAK_BF16 = (("H200", 989.0), ("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.0), ("A100", 312.0))


# ----------------------------------------------------------------------------------------------------------
# Timing, models, and the report.

def seconds(fn, dev) -> float:
    if dev.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def interleaved(candidates: dict, reps: int, dev) -> dict:
    """Median seconds per candidate over reps rounds of A, B, A, B, ...: a drift in clock speed or in a
    neighbour's load hits every candidate alike."""
    times = {k: [] for k in candidates}
    for _ in range(reps):
        for k, fn in candidates.items():
            times[k].append(seconds(fn, dev))
    return {k: statistics.median(v) for k, v in times.items()}


def kernel_ms(fn, dev, reps: int = 5) -> float:
    """Median ms; on CUDA triton's do_bench, which flushes L2 before each call, so small caches are not read
    from L2 at impossible bandwidths."""
    if dev.type == "cuda":
        import triton.testing
        return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")
    fn()
    return 1e3 * statistics.median(seconds(fn, dev) for _ in range(reps))


def copy_gb_s(dev, quick: bool) -> float:
    """Bytes read + written per second by one large copy: the bandwidth a memory-bound kernel can hope for."""
    x = torch.ones(1 << 28 if dev.type == "cuda" else 1 << 22 if quick else 1 << 24, device=dev)  # fp32
    y = torch.empty_like(x)
    return 2 * x.nbytes / kernel_ms(lambda: y.copy_(x), dev) / 1e6


def random_model(cfg: model_lib.ModelConfig, dev, dtype, seed: int = 0) -> model_lib.Transformer:
    with torch.device("meta"):
        net = model_lib.Transformer(cfg)
    net = net.to(dtype).to_empty(device=dev)
    g = torch.Generator(device=dev).manual_seed(seed)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if p.dim() > 1:
                p.normal_(0.0, 0.02, generator=g)
            else:  # norm gains 1, biases 0
                p.fill_(0.0 if name.endswith("bias") else 1.0)
    return net.eval()


def hf_twin(net: model_lib.Transformer):
    """transformers' model of the same architecture holding the same weights: the names match, so the copy is
    strict (a tied head is the one tensor transformers holds and we do not)."""
    import transformers
    hf = model_lib.hf_config_from(net.config)
    config = transformers.AutoConfig.for_model(hf.pop("model_type"), **hf)
    with torch.device(net.head_weight.device):  # initialized in place: no 1.5B fp32 init on the CPU
        twin = transformers.AutoModelForCausalLM.from_config(config, dtype=net.head_weight.dtype)
    twin = twin.to(net.head_weight.device)  # a no-op, unless this transformers ignores the device context
    missing, unexpected = twin.load_state_dict(net.state_dict(), strict=False)
    if unexpected or set(missing) - {"lm_head.weight"}:
        raise RuntimeError(f"transformers twin: missing {missing[:4]}, unexpected {unexpected[:4]}")
    return twin.eval()


@torch.no_grad()
def max_logit_diff(net, twin) -> float:  # proof that the twin holds our weights: 0 in fp32, ~1e-2 in bf16
    ids = torch.arange(1, 17, device=net.head_weight.device)[None] % net.config.vocab_size
    return (net(ids).float() - twin(ids).logits.float()).abs().max().item()


def random_prompts(n: int, length: int, vocab: int, seed: int = 0) -> list[list[int]]:
    return torch.randint(3, vocab, (n, length), generator=torch.Generator().manual_seed(seed)).tolist()


def fmt(v) -> str:
    return "-" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)


def run_row(report: dict, cfg: BenchConfig, section: str, name: str, fn):
    """One measurement: fn() returns a row (dict) or rows, which are printed, appended to report[section] and
    saved. An exception (OOM, a missing package) becomes the row's error, a spent --budget-s its `skipped`.
    Memory is released after the except clause, when the exception no longer holds the failed frames."""
    if cfg.budget_s and time.perf_counter() - STARTED > cfg.budget_s:
        rows = [dict(name=name, skipped=f"--budget-s {cfg.budget_s:g} spent")]
    else:
        try:
            out = fn()
            rows = [r if "name" in r else dict(name=name, **r) for r in (out if isinstance(out, list) else [out])]
        except (Exception, SystemExit) as e:  # reported in the table and the JSON, never hidden
            rows = [dict(name=name, error=f"{type(e).__name__}: {e}"[:400])]
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    for r in rows:
        print(f"{section:<9} " + " ".join(f"{k}={fmt(v)}" for k, v in r.items()), flush=True)
    report[section] += rows
    model_lib.write_file(cfg.out, json.dumps(report, indent=1))


def print_table(section: str, rows: list[dict]):
    cols = sorted(dict.fromkeys(k for r in rows for k in r), key=lambda c: c in ("note", "error", "skipped"))
    cells = [cols] + [[fmt(r.get(c)) for c in cols] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(cols))]
    print(f"\n== {section}")
    for row in cells:
        print("  ".join(x.ljust(w) for x, w in zip(row, widths)).rstrip())


def ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def toy_present(cfg: BenchConfig) -> bool:
    return os.path.isfile(os.path.join(cfg.toy, "model.safetensors"))


# ----------------------------------------------------------------------------------------------------------
# 1. Sampling: tokens/s against transformers, and the decode step against the bandwidth limit.

def hf_generate(twin, prompts: list[list[int]], n: int, seed: int = 0):
    """transformers' generate as our sampler runs: left-padded batch, EOS off (exactly n new tokens), plain
    sampling at temperature 1 (top_k=0 switches off its default top-50; top_p=1 the nucleus)."""
    T, dev = max(map(len, prompts)), twin.device
    ids = torch.tensor([[0] * (T - len(p)) + p for p in prompts], device=dev)
    mask = torch.tensor([[0] * (T - len(p)) + [1] * len(p) for p in prompts], device=dev)
    torch.manual_seed(seed)
    out = twin.generate(input_ids=ids, attention_mask=mask, do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                        max_new_tokens=n, min_new_tokens=n, eos_token_id=None, pad_token_id=0)
    assert out.shape[1] == T + n, f"transformers generated {out.shape[1] - T} tokens, not {n}"


@torch.inference_mode()
def decode_step(net, batch: int, context: int, steps: int, warm: int = 3) -> tuple[float, float]:
    """(seconds per decode step, mean cached tokens), the step timed in isolation: a cache holding `context`
    tokens (zeros: the values do not change the work), then generate's own step — sample.decode_function (a
    replayed CUDA graph on CUDA, as generate uses it) and the sampler — `steps` times after `warm`. Differencing
    two whole generate runs would measure the same, at the price of a second run, with the prefill's noise in both."""
    cfg, dev = net.config, net.head_weight.device
    graph = dev.type == "cuda" and model_lib.attention_backend(dev) == "triton"
    cache = model_lib.new_kv_cache(cfg, batch, context + warm + steps + 1, net.head_weight.dtype, dev)
    cache.lens = torch.full((batch,), context, dtype=torch.int32, device=dev)
    cache.filled = cache.k.shape[2] if graph else context
    decode = sample.decode_function(net, cache, graph)
    tok = torch.zeros(batch, dtype=torch.long, device=dev)
    g = torch.Generator(device=dev).manual_seed(0)

    def step():
        nonlocal tok
        if not graph:
            cache.filled += 1  # every row sits at position cache.lens; attention reads [0, position]
        logits = decode(tok, cache.lens.long())
        cache.lens = cache.lens + 1
        tok = sample.sample_next(logits, 1.0, 1.0, g)

    for _ in range(warm):
        step()
    return seconds(lambda: [step() for _ in range(steps)], dev) / steps, context + warm + (steps + 1) / 2


def step_bytes(net, batch: int, context: float) -> float:
    """Bytes one decode step must read: every weight once (an untied embedding is a lookup of `batch` rows and is
    left out; a tied one is read whole as the head) plus K and V of every cached token."""
    cfg, el = net.config, net.head_weight.element_size()
    weights = sum(p.numel() for p in net.parameters()) - (0 if cfg.tie_word_embeddings else
                                                          cfg.vocab_size * cfg.hidden_size)
    return el * (weights + 2 * cfg.num_hidden_layers * batch * context * cfg.num_key_value_heads * cfg.head_dim)


def sampling_row(net, prompts, new_tokens: int, cfg: BenchConfig, dev, copy: float, context: int = 0,
                 twin=None) -> dict:
    cuda, B, P = dev.type == "cuda", len(prompts), max(map(len, prompts))
    twin = twin if twin is not None or not cfg.peers else hf_twin(net)
    gens = {"sept": lambda n: sample.generate(net, prompts, max_new_tokens=n, temperature=1.0, top_p=1.0,
                                              eos_ids=(), seed=0)}
    if twin is not None:
        gens["hf"] = lambda n: hf_generate(twin, prompts, n)
    for gen in gens.values():
        gen(2)  # warm-up: kernels compiled, allocator and thread pool primed
    t = interleaved({k: functools.partial(gen, new_tokens) for k, gen in gens.items()},
                    cfg.gpu_reps if cuda else cfg.reps, dev)
    row = dict(dtype=str(net.head_weight.dtype).removeprefix("torch."), batch=B, prompt_tokens=P,
               new_tokens=new_tokens, sept_tok_s=B * new_tokens / t["sept"])
    if twin is not None:
        row.update(hf_tok_s=B * new_tokens / t["hf"], speedup_vs_hf=t["hf"] / t["sept"],
                   logits_max_diff=max_logit_diff(net, twin))
    step_s, mean_context = decode_step(net, B, context or P + new_tokens // 2, 20 if cuda else 2 if cfg.quick else 8)
    gb_s = step_bytes(net, B, mean_context) / step_s / 1e9
    return dict(row, decode_ms=1e3 * step_s, decode_context=round(mean_context), decode_gb_s=gb_s,
                roofline_frac=gb_s / copy)


def toy_prompts(path: str, n: int) -> list[list[int]]:
    from data import prompts as prompt_lib, questions
    tok = prompt_lib.load_tokenizer(path)
    qs = questions.load_questions(os.path.join(path, "test.jsonl"))
    return [tok.encode(prompt_lib.build_prompt(qs[i % len(qs)].problem, "toy")) for i in range(n)]


def sampling_section(cfg: BenchConfig, dev, report: dict):
    q, copy = cfg.quick, report["machine"]["copy_gb_s"]
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    if toy_present(cfg):
        run_row(report, cfg, "sampling", "toy", lambda: sampling_row(model_lib.load_model(cfg.toy, dev, dtype),
                                                                      toy_prompts(cfg.toy, 8 if q else 64),
                                                                      8 if q else 48, cfg, dev, copy))
    else:
        run_row(report, cfg, "sampling", "toy", lambda: dict(skipped=f"no toy checkpoint in {cfg.toy}"))
    name, B, P, N = ("tiny", 2, 8, 8) if q else ("smollm-135m", 16, 32, 64)
    run_row(report, cfg, "sampling", name, lambda: sampling_row(
        random_model(SHAPES[name], dev, dtype), random_prompts(B, P, SHAPES[name].vocab_size), N, cfg, dev, copy))
    if dev.type == "cuda" and not q:  # one 1.5B pair (ours + transformers' twin) serves every batch size
        pair = {}

        def qwen(B):
            if not pair:
                pair["net"] = random_model(QWEN, dev, dtype)
                pair["twin"] = hf_twin(pair["net"]) if cfg.peers else None
            return sampling_row(pair["net"], random_prompts(B, cfg.gpu_prompt_tokens, QWEN.vocab_size),
                                cfg.gpu_new_tokens, cfg, dev, copy, cfg.decode_context, pair["twin"])
        for B in ints(cfg.gpu_sizes):
            run_row(report, cfg, "sampling", f"qwen2.5-1.5b b{B}", functools.partial(qwen, B))
        pair.clear()


# ----------------------------------------------------------------------------------------------------------
# 2. Kernels: Triton attention against torch SDPA and flash-attn; GQA 6:1, head_dim 128.

def sdpa(q, k, v, causal: bool):
    """(fn, which) for torch SDPA on the [B, H, T, D] views that model.attention passes, flash backend first:
    with enable_gqa if this torch's flash takes it, else with K/V repeated to the query heads beforehand."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    q, k, v = (x.transpose(1, 2) for x in (q, k, v))
    G = q.shape[1] // k.shape[1]
    flash = [("flash", SDPBackend.FLASH_ATTENTION, 1), ("flash, K/V repeated", SDPBackend.FLASH_ATTENTION, G)]
    for which, backend, rep in (flash if q.is_cuda else []) + [("default backend", None, 1)]:
        kk, vv = (k, v) if rep == 1 else (k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1))

        def fn(backend=backend, kk=kk, vv=vv, gqa=rep == 1):
            with sdpa_kernel(backend) if backend else nullcontext():
                return F.scaled_dot_product_attention(q, kk, vv, is_causal=causal, enable_gqa=gqa)
        try:
            fn()
            return fn, which
        except RuntimeError:  # this backend refuses these inputs: try the next
            continue
    raise RuntimeError("no SDPA backend ran")


def peer_ms(name: str, fn, dev) -> dict:
    """{name_ms} or {name_error}: a broken optional peer (flash-attn built for another torch) costs its column only."""
    try:
        return {f"{name}_ms": kernel_ms(fn, dev)}
    except Exception as e:
        return {f"{name}_error": f"{type(e).__name__}: {e}"[:200]}


def kernels_section(cfg: BenchConfig, dev, report: dict):
    cuda, copy, reps = dev.type == "cuda", report["machine"]["copy_gb_s"], 2 if cfg.quick else 5
    try:  # an optional peer: absent, or built for another torch (which raises more than ImportError)
        import flash_attn as fa
    except Exception:
        fa = None
    fa = fa if cuda else None
    dtype, Hq, Hkv, D = (torch.bfloat16 if cuda else torch.float32), 12, 2, 128
    lens = [32] if cfg.quick else ints(cfg.kernel_lens) if cuda else [128, 256]
    batches = [1] if cfg.quick else ints(cfg.kernel_batches) if cuda else [1, 4]
    note = {} if cuda else dict(note="CPU: the Triton wrappers run their PyTorch references")
    randn = functools.partial(torch.randn, device=dev, dtype=dtype)

    def prefill(T):
        B = max(1, 16384 // T) if cuda else 1  # ~16k tokens per call at every length
        q, k, v = randn(B, T, Hq, D), randn(B, T, Hkv, D), randn(B, T, Hkv, D)
        fn, which = sdpa(q, k, v, causal=True)
        row = dict(kind="prefill", batch=B, seq=T, triton_ms=kernel_ms(lambda: tk.attention_prefill(q, k, v), dev,
                                                                       reps), sdpa_ms=kernel_ms(fn, dev, reps))
        if fa:
            row.update(peer_ms("flash_attn", lambda: fa.flash_attn_func(q, k, v, causal=True), dev))
        flops = 4 * B * Hq * T * T * D / 2  # QKᵀ and PV, halved by causality
        return dict(row, speedup_vs_sdpa=row["sdpa_ms"] / row["triton_ms"], tflops=flops / row["triton_ms"] / 1e9,
                    sdpa_backend=which, **note)

    def decode(B, S):
        q, kc, vc = randn(B, Hq, D), randn(B, S, Hkv, D), randn(B, S, Hkv, D)
        lens_ = torch.full((B,), S, dtype=torch.int32, device=dev)
        fn, which = sdpa(q[:, None], kc, vc, causal=False)
        row = dict(kind="decode", batch=B, seq=S,
                   triton_ms=kernel_ms(lambda: tk.attention_decode(q, kc, vc, lens_), dev, reps))
        if cuda:  # one split per (row, kv head): what flash-decoding's splits buy at small batch, long cache
            row["triton_1split_ms"] = kernel_ms(lambda: tk.attention_decode(q, kc, vc, lens_, num_splits=1), dev)
        row["sdpa_ms"] = kernel_ms(fn, dev, reps)
        if fa:
            row.update(peer_ms("flash_attn", lambda: fa.flash_attn_with_kvcache(q[:, None], kc, vc,
                                                                                 cache_seqlens=lens_), dev))
        gb_s = 2 * kc.nbytes / row["triton_ms"] / 1e6  # K and V, each read once
        return dict(row, speedup_vs_sdpa=row["sdpa_ms"] / row["triton_ms"], kv_gb_s=gb_s,
                    kv_frac_of_copy=gb_s / copy, sdpa_backend=which, **note)

    for T in lens:
        run_row(report, cfg, "kernels", f"prefill {Hq}:{Hkv}x{D} T{T}", functools.partial(prefill, T))
    for B in batches:
        for S in lens:
            run_row(report, cfg, "kernels", f"decode {Hq}:{Hkv}x{D} b{B} S{S}", functools.partial(decode, B, S))


# ----------------------------------------------------------------------------------------------------------
# 3. Training: one AdamW update of train.train_step against a plain transformers step.

def train_flops(cfg: model_lib.ModelConfig, n_params: int, seq_lens: list[int]) -> float:
    """Model FLOPs of one update: 6·N per token (forward 2·N, backward 4·N; N counts every matrix that is
    multiplied: the head, tied or not, but not an untied embedding, which is a lookup) plus causal attention,
    6·L·Hq·D·T² per sequence (QKᵀ and PV: 2·2·T²·D per head forward, halved by causality, ×3 with backward).
    Recomputation under activation checkpointing is not counted: this is MFU, not hardware utilization."""
    matmul = n_params - (0 if cfg.tie_word_embeddings else cfg.vocab_size * cfg.hidden_size)
    attn = 6 * cfg.num_hidden_layers * cfg.num_attention_heads * cfg.head_dim * sum(T * T for T in seq_lens)
    return 6 * matmul * sum(seq_lens) + attn


def sept_trainer(make_net, pairs, ckpt: bool):
    net = make_net()
    tcfg = train.TrainConfig(activation_checkpointing=ckpt,  # one micro-batch, like transformers' one forward
                             micro_batch_tokens=sum(len(p) + len(r) for p, r in pairs))
    optimizer = train.make_optimizer(net, tcfg)
    return net, lambda: train.train_step(net, optimizer, pairs, 0, tcfg)


def hf_trainer(make_net, pairs, ckpt: bool):
    """The plain transformers recipe at our precision: fp32 weights, bf16 autocast on CUDA, labels -100 on the
    prompt, gradient clipping at 1, AdamW (fused on CUDA)."""
    twin = hf_twin(make_net()).train()
    if ckpt:  # activation_checkpointing_enable from transformers 5.2x on, its deprecated alias before
        enable = getattr(twin, "activation_checkpointing_enable", None) or twin.gradient_checkpointing_enable
        enable({"use_reentrant": False})
    dev = twin.device
    ids = torch.tensor([p + r for p, r in pairs], device=dev)  # pairs of equal lengths: no padding
    labels = torch.tensor([[train.IGNORE] * len(p) + r for p, r in pairs], device=dev)
    optimizer = torch.optim.AdamW(twin.parameters(), lr=1e-7, weight_decay=0.01, fused=dev.type == "cuda" or None)

    def step():
        with train.autocast(dev):
            loss = twin(input_ids=ids, labels=labels, use_cache=False).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(twin.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return twin, step


def train_rows(builders: dict, pairs, reps: int, dev, mcfg, peak) -> list[dict]:
    built = {k: build() for k, build in builders.items()}  # impl -> (model, step)
    for _, step in built.values():
        step()  # warm-up: AdamW state allocated, kernels compiled
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t = interleaved({k: step for k, (_, step) in built.items()}, reps, dev)
    n_params = sum(p.numel() for p in next(iter(built.values()))[0].parameters())
    flops = train_flops(mcfg, n_params, [len(p) + len(r) - 1 for p, r in pairs])
    tokens = sum(len(p) + len(r) for p, r in pairs)
    return [dict(impl=k, pairs=len(pairs), seq_tokens=tokens, step_s=s, tok_s=tokens / s, tflops=flops / s / 1e12,
                 mfu=flops / s / 1e12 / peak if peak else None,
                 peak_gb=torch.cuda.max_memory_allocated() / 1e9 if dev.type == "cuda" else None)
            for k, s in t.items()]


def training_section(cfg: BenchConfig, dev, report: dict):
    cuda, q, peak = dev.type == "cuda", cfg.quick, report["machine"]["peak_tflops"]
    cases = []  # (name, architecture, pairs, prompt tokens, response tokens, activation checkpointing modes)
    if cuda and not q:
        cases.append(("qwen2.5-1.5b", QWEN, cfg.train_pairs, cfg.train_prompt_tokens, cfg.train_response_tokens,
                      (True, False)))
    else:
        if toy_present(cfg):
            cases.append(("toy", model_lib.read_config(cfg.toy), *((2, 8, 8) if q else (16, 16, 48)), (False,)))
        cases.append(("tiny", SHAPES["tiny"], 2, 8, 24, (False,)) if q else
                     ("small", SHAPES["small"], 4, 64, 192, (False,)))
    for name, mcfg, n, P, R, modes in cases:
        make_net = functools.partial(model_lib.load_model, cfg.toy, dev, torch.float32) if name == "toy" else \
            functools.partial(random_model, mcfg, dev, torch.float32)
        pairs = [(a[:P], a[P:]) for a in random_prompts(n, P + R, mcfg.vocab_size)]
        for ckpt in modes:
            builders = {"sept": functools.partial(sept_trainer, make_net, pairs, ckpt)}
            if cfg.peers:
                builders["transformers"] = functools.partial(hf_trainer, make_net, pairs, ckpt)
            label, reps = f"{name} ckpt={'on' if ckpt else 'off'}", 2 if cuda else 1 if q else cfg.reps
            if cuda:  # one at a time: two 1.5B models with their AdamW state (~25 GB each) crowd one GPU
                for impl, build in builders.items():
                    run_row(report, cfg, "training", f"{label} {impl}",
                            functools.partial(train_rows, {impl: build}, pairs, reps, dev, mcfg, peak))
            else:  # together, interleaved
                run_row(report, cfg, "training", label,
                        functools.partial(train_rows, builders, pairs, reps, dev, mcfg, peak))


# ----------------------------------------------------------------------------------------------------------
# 4. A whole SePT round.

def toy_round(cfg: BenchConfig, dev) -> dict:
    """sept_loop.main, one round of the toy with its defaults (evaluation on fewer questions), timed from the
    run's own metrics.jsonl."""
    import sept_loop  # imported here: only this section needs the loop and data/
    small = ["--batch-prompts", "8", "--max-response-tokens", "8", "--eval-max-questions", "2", "--eval-n", "2"] \
        if cfg.quick else ["--eval-max-questions", "32", "--eval-n", "8"]
    with tempfile.TemporaryDirectory() as out:
        args = ["--model", cfg.toy, "--train-questions", os.path.join(cfg.toy, "train.jsonl"), "--test-questions",
                os.path.join(cfg.toy, "test.jsonl"), "--rounds", "1", "--device", dev.type, "--out", out, *small]
        t0 = time.perf_counter()
        with redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()):  # its log and progress bars would
            sept_loop.main(args)                                                # break up the table
        total = time.perf_counter() - t0
        with open(os.path.join(out, "metrics.jsonl")) as f:
            lines = [json.loads(line) for line in f]
    trained, evals = next(m for m in lines if "seconds_sampling" in m), [m for m in lines if "seconds_eval" in m]
    return dict(seconds_sampling=trained["seconds_sampling"], seconds_training=trained["seconds_training"],
                seconds_eval=statistics.mean(m["seconds_eval"] for m in evals), evals=len(evals), seconds_total=total,
                response_len_mean=trained["response_len_mean"],
                note=f"sept_loop.main, 1 round{' at quick sizes' if cfg.quick else ''}; each evaluation: "
                     f"{small[-3]} questions x {small[-1]} answers; the total adds loading, plot and checkpoint")


def paper_round(cfg: BenchConfig, dev) -> dict:
    """One round of the paper preset on the 1.5B shape with random weights, through the pieces sept_loop.main
    calls, in its order (draw_answers, train_step, refresh_sampler). main() itself would also write the last
    round's checkpoint (fp32 weights + AdamW state, ~18 GB) and evaluate twice; the preset does those every 10
    and every 50 rounds, so neither is a per-round cost."""
    import sept_loop
    scfg = sept_loop.SePTConfig(**dict(sept_loop.PRESETS["paper"], max_response_tokens=cfg.round_response_tokens))
    tcfg = sept_loop.train_config(scfg)
    master = random_model(QWEN, dev, torch.float32)
    sampler = train.make_sampler(master, torch.bfloat16)
    optimizer = train.make_optimizer(master, tcfg)
    prompts = random_prompts(scfg.batch_prompts * scfg.rollouts, cfg.round_prompt_tokens, QWEN.vocab_size)
    no_stop = SimpleNamespace(stop_ids=())  # random weights never emit EOS; naming none makes that explicit
    sample.generate(sampler, prompts[:2], max_new_tokens=4)  # warm-up: kernels, AdamW state (lr 1e-8: harmless)
    train.train_step(master, optimizer, [(prompts[0], prompts[1][:8])], 0, tcfg)
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    responses, _ = sept_loop.draw_answers(sampler, prompts, sept_loop.tau_s_at(1, scfg), scfg, no_stop, 1, "round")
    t1 = time.perf_counter()  # generate returns host lists: synchronized
    pairs, size = list(zip(prompts, responses)), math.ceil(len(prompts) / scfg.updates_per_round)
    for u in range(scfg.updates_per_round):
        train.train_step(master, optimizer, pairs[u * size:(u + 1) * size], 0, tcfg, tau_t=scfg.tau_t)
    train.refresh_sampler(master, sampler)
    torch.cuda.synchronize()
    t2 = time.perf_counter()
    return dict(seconds_sampling=t1 - t0, seconds_training=t2 - t1, seconds_eval=None, seconds_total=t2 - t0,
                response_len_mean=statistics.mean(map(len, responses)), peak_gb=torch.cuda.max_memory_allocated() / 1e9,
                note=f"{len(prompts)} prompts of {cfg.round_prompt_tokens} random tokens, every answer "
                     f"{cfg.round_response_tokens} tokens (random weights never stop), {scfg.updates_per_round} "
                     f"updates; evaluation and checkpoint not timed (every 50 / 10 rounds in the preset)")


def round_section(cfg: BenchConfig, dev, report: dict):
    run_row(report, cfg, "round", "toy", (lambda: toy_round(cfg, dev)) if toy_present(cfg) else
            (lambda: dict(skipped=f"no toy checkpoint in {cfg.toy}")))
    if dev.type == "cuda" and not cfg.quick:
        run_row(report, cfg, "round", "qwen2.5-1.5b paper preset", lambda: paper_round(cfg, dev))


SECTIONS = {"sampling": sampling_section, "kernels": kernels_section, "training": training_section,
            "round": round_section}


def machine(cfg: BenchConfig, dev) -> dict:
    def version(module):
        try:
            return importlib.import_module(module).__version__
        except Exception:  # absent or broken: reported as None
            return None
    name, memory, peak = platform.processor() or platform.machine(), None, cfg.peak_tflops or None
    if dev.type == "cuda":
        props = torch.cuda.get_device_properties(dev)
        name, memory = props.name, round(props.total_memory / 2**30, 1)
        peak = peak or next((t for key, t in PEAK_BF16 if key in name), None)
    elif os.path.isfile("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            name = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), name)
    return dict(device=dev.type, name=name, memory_gib=memory, cpus=os.cpu_count(), threads=torch.get_num_threads(),
                torch=torch.__version__, triton=version("triton"), transformers=version("transformers"),
                flash_attn=version("flash_attn"), python=platform.python_version(),
                date=datetime.now().isoformat(timespec="seconds"), copy_gb_s=copy_gb_s(dev, cfg.quick),
                peak_tflops=peak)


def main(argv=None):
    cfg = cli.config_from_argv(BenchConfig, argv, __doc__.splitlines()[0])
    sections = [s for s in cfg.only.split(",") if s]
    if set(sections) - set(SECTIONS):
        raise SystemExit(f"bench.py: error: --only {cfg.only}: choose from {', '.join(SECTIONS)}")
    torch.set_num_threads(cfg.threads)
    dev = cli.pick_device(cfg.device)
    print("config " + json.dumps(asdict(cfg)))
    report = dict(machine=machine(cfg, dev), config=asdict(cfg), **{s: [] for s in sections})
    print("machine " + json.dumps(report["machine"]), flush=True)
    model_lib.write_file(cfg.out, json.dumps(report, indent=1))
    for s in sections:
        try:
            SECTIONS[s](cfg, dev, report)
        except Exception as e:  # a set-up failure outside any row: the section reports it, the others still run
            report[s].append(dict(name=s, error=f"{type(e).__name__}: {e}"[:400]))
            print(f"{s:<9} error={report[s][-1]['error']}")
            model_lib.write_file(cfg.out, json.dumps(report, indent=1))
    for s in sections:
        print_table(s, report[s])
    print(f"\nwrote {cfg.out}")


if __name__ == "__main__":
    main()
