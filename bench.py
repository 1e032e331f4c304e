"""bench.py — how fast: sampler, attention kernels, training step and SePT round, against peers and the hardware.

    python bench.py --quick --threads 1           # smoke test: tiny sizes, seconds on a CPU
    python bench.py --threads 1                   # CPU: the toy and a SmolLM-135M shape, ~4 minutes on 2 cores
    python bench.py --only kernels,sampling --gpu-sizes 1,128,256 --decode-context 2048    # one GPU
    bash tests/gpu.sh                             # the GPU tests, then this bench at GPU sizes

Sections (--only): sampling (generate against transformers', fixed lengths; the decode step against a copy's
bandwidth), lengths (useful tokens/s at SePT's answer lengths; the toy's evaluation), kernels (Triton attention
against torch SDPA's flash backend), training (train_step against a plain transformers step), round (one SePT
round). Candidates run interleaved, medians reported; each row is printed and --out (JSON) rewritten after it,
a failing row keeps its error. Random weights: std 0.02. On a CPU shared with other jobs use --threads 1 (two
threads that wait for each other's time slices make every op ~100x slower).
"""
import contextlib
import functools
import gc
import importlib.util
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass

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
    only: str = "sampling,lengths,kernels,training,round"  # sections to run, in this order
    quick: bool = False                 # tiny sizes everywhere (the smoke test)
    out: str = "bench.json"             # the JSON report
    device: str = "auto"                # auto = cuda when available, else cpu
    threads: int = 0                    # torch CPU threads; 0 = torch's default, as sept_loop runs (see main)
    reps: int = 3                       # interleaved repetitions per candidate on the CPU (medians reported)
    gpu_reps: int = 1                   # the same on CUDA, where runs are long and steady
    toy: str = os.path.join(HERE, "data", "toy")  # the toy checkpoint
    gpu_sizes: str = "1,64,256"         # batch sizes of the Qwen2.5-1.5B-shape sampling rows (CUDA)
    gpu_prompt_tokens: int = 512        # prompt length of those rows
    gpu_new_tokens: int = 1024          # tokens generated per row
    decode_context: int = 0             # cached tokens for the 1.5B decode-step timing (0 = the rows' mean context)
    ragged_prompts: int = 1024          # prompts of the 1.5B lengths row (CUDA), streamed through ragged_rows
    ragged_rows: int = 256              # rows of that row (the paper preset's --sample-batch)
    ragged_cap: int = 3072              # its answer-length cap (the paper's max response length)
    toy_eval_against: str = ""          # an earlier sept checkout whose sampler the toy-eval row also times
    kernel_lens: str = "512,1024,2048,4096,8192"  # prompt / cache lengths of the kernel rows (CUDA)
    kernel_batches: str = "1,16,64"     # batch sizes of the decode-kernel rows (CUDA)
    train_pairs: int = 4                # pairs per update in the 1.5B training rows (CUDA)
    train_prompt_tokens: int = 1024     # per pair (the paper's prompt budget)
    train_response_tokens: int = 3072   # per pair (the paper's response budget)
    round_prompt_tokens: int = 160      # prompt length in the 1.5B round (random tokens, ~ a templated question)
    round_response_tokens: int = 780    # every answer of the 1.5B round is this long: random weights never stop
    peak_tflops: float = 0.0            # dense bf16 peak for MFU, TFLOP/s (0 = from the GPU's name)
    budget_s: float = 0.0               # start no new row after this many seconds (0 = no limit)


# Architectures with random weights (the toy is read from its checkpoint), ModelConfig's first fields in order:
# model_type, vocab_size, hidden_size, intermediate_size, layers, attention heads, key/value heads, head_dim.
SHAPES = {"tiny": model_lib.ModelConfig("llama", 512, 64, 128, 2, 4, 2, 16, tie_word_embeddings=True),
          "small": model_lib.ModelConfig("llama", 8192, 256, 768, 4, 4, 2, 64),
          "smollm-135m": model_lib.ModelConfig("llama", 49152, 576, 1536, 30, 9, 3, 64, rms_norm_eps=1e-5,
                                               tie_word_embeddings=True),
          "qwen2.5-1.5b": model_lib.ModelConfig("qwen2", 151936, 1536, 8960, 28, 12, 2, 128, rope_theta=1e6,
                                                attention_bias=True, max_position_embeddings=32768,
                                                tie_word_embeddings=True)}
QWEN = SHAPES["qwen2.5-1.5b"]
# Dense bf16 tensor-core peaks (no sparsity), TFLOP/s, matched against the device name in this order.
PEAK_BF16 = (("H200", 989.0), ("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.0), ("A100", 312.0))


# ----------------------------------------------------------------------------------------------------------
# Timing, models, and the report.

def seconds(fn, dev) -> float:
    sync = torch.cuda.synchronize if dev.type == "cuda" else lambda: None
    sync()
    t0 = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - t0


def interleaved(candidates: dict, reps: int, dev) -> dict:
    """Median seconds per candidate over reps rounds of A, B, A, B, ...: a drift in clock or load hits all alike."""
    times = {k: [] for k in candidates}
    for _ in range(reps):
        for k, fn in candidates.items():
            times[k].append(seconds(fn, dev))
    return {k: statistics.median(v) for k, v in times.items()}


def kernel_ms(fn, dev, reps: int = 5) -> float:  # median ms; on CUDA do_bench, which flushes L2 before each call
    if dev.type == "cuda":
        import triton.testing
        return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")
    fn()
    return 1e3 * statistics.median(seconds(fn, dev) for _ in range(reps))


@torch.no_grad()
def random_model(cfg: model_lib.ModelConfig, dev, dtype, seed: int = 0) -> model_lib.Transformer:
    net, g = model_lib.empty_model(cfg, dev, dtype), torch.Generator(device=dev).manual_seed(seed)
    for name, p in net.named_parameters():  # matrices N(0, 0.02), norm gains 1, biases 0
        p.normal_(0.0, 0.02, generator=g) if p.dim() > 1 else p.fill_(0.0 if name.endswith("bias") else 1.0)
    return net.eval()


def hf_twin(net: model_lib.Transformer):
    """transformers' model holding our weights: the names match, so the copy is strict (but for a tied head)."""
    import transformers
    hf = model_lib.hf_config_from(net.config)
    config = transformers.AutoConfig.for_model(hf.pop("model_type"), **hf)
    with torch.device(net.head_weight.device):  # initialized in place: no 1.5B fp32 init on the CPU
        twin = transformers.AutoModelForCausalLM.from_config(config, dtype=net.head_weight.dtype)
    missing, unexpected = twin.to(net.head_weight.device).load_state_dict(net.state_dict(), strict=False)
    if unexpected or set(missing) - {"lm_head.weight"}:
        raise RuntimeError(f"transformers twin: missing {missing[:4]}, unexpected {unexpected[:4]}")
    return twin.eval()


def random_prompts(n: int, length: int, vocab: int, seed: int = 0) -> list[list[int]]:
    return torch.randint(3, vocab, (n, length), generator=torch.Generator().manual_seed(seed)).tolist()


def toy_prompts(path: str, n: int, per_question: int = 1, split: str = "test") -> list[list[int]]:
    """The first n questions of the toy's split in its template, each per_question times."""
    from data import prompts as prompt_lib, questions
    tok, qs = prompt_lib.load_tokenizer(path), questions.load_questions(os.path.join(path, f"{split}.jsonl"))
    return [tok.encode(prompt_lib.build_prompt(qs[i % len(qs)].problem, "toy")) for i in range(n)
            for _ in range(per_question)]


def ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def run_row(report: dict, cfg: BenchConfig, section: str, name: str, fn):
    """fn() returns a row (dict) or rows, printed and saved; an exception becomes the row's error."""
    if cfg.budget_s and time.perf_counter() - STARTED > cfg.budget_s:
        rows = [dict(name=name, skipped=f"--budget-s {cfg.budget_s:g} spent")]
    else:
        try:
            out = fn()
            rows = [r if "name" in r else dict(name=name, **r) for r in (out if isinstance(out, list) else [out])]
        except (Exception, SystemExit) as e:  # reported in the JSON and the printed line, never hidden
            rows = [dict(name=name, error=f"{type(e).__name__}: {e}"[:400])]
        gc.collect()  # after the except clause, when no exception holds the failed frames' memory
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    for r in rows:
        print(f"{section:<9} " + " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                          for k, v in r.items()), flush=True)
    report[section] += rows
    model_lib.write_file(cfg.out, json.dumps(report, indent=1))


# ----------------------------------------------------------------------------------------------------------
# 1. Sampling: tokens/s against transformers, and the decode step against the bandwidth limit.

@torch.inference_mode()
def decode_seconds(net, batch: int, context: int, steps: int, warm: int = 3) -> tuple[float, float]:
    """(seconds per decode step, mean cached tokens): generate's own decode step (the static one, a CUDA graph, on
    CUDA; eagerly attention reading to the longest row, as on the CPU) and the sampler, timed alone on a cache
    holding `context` tokens (zeros: the values do not change the work)."""
    dev = net.head_weight.device
    graph = dev.type == "cuda" and model_lib.attention_backend(dev) == "triton"
    length = context + warm + steps + 1
    rows = sample.static_rows(net, batch, length) if graph else sample.empty_rows(net, batch, length)
    rows.cache.lens.fill_(context)
    rows.done.fill_(False)  # every row runs
    g = torch.Generator(device=dev).manual_seed(0)

    def step():
        logits = rows.static() if graph else sample.decode_step(net, rows, batch, int(rows.cache.lens.max()) + 1)
        rows.next_input.copy_(sample.sample_next(logits, 1.0, 1.0, g))

    for _ in range(warm):
        step()
    step_s = seconds(lambda: [step() for _ in range(steps)], dev) / steps
    sample.held_static_rows = None  # the bench's shape: no later call reuses it
    return step_s, context + warm + (steps + 1) / 2


def sampling_row(net, prompts, new_tokens: int, cfg: BenchConfig, dev, copy: float, context: int = 0,
                 twin=None) -> dict:
    cuda, B, P, c = dev.type == "cuda", len(prompts), max(map(len, prompts)), net.config
    twin = twin or hf_twin(net)
    # transformers' generate as ours runs: EOS off (exactly n new tokens), plain sampling at temperature 1
    # (top_k=0 switches off its default top-50); left-padded, as it wants
    ids = torch.tensor([[0] * (P - len(p)) + p for p in prompts], device=dev)
    mask = torch.tensor([[0] * (P - len(p)) + [1] * len(p) for p in prompts], device=dev)
    gens = {"sept": lambda n: sample.generate(net, prompts, max_new_tokens=n, temperature=1.0, seed=0),
            "hf": lambda n: twin.generate(input_ids=ids, attention_mask=mask, do_sample=True, temperature=1.0, top_k=0,
                                          max_new_tokens=n, min_new_tokens=n, eos_token_id=None, pad_token_id=0)}
    for gen in gens.values():
        gen(2)  # warm-up: kernels compiled, allocator and thread pool primed
    t = interleaved({k: functools.partial(gen, new_tokens) for k, gen in gens.items()},
                    cfg.gpu_reps if cuda else cfg.reps, dev)
    step_s, mean_context = decode_seconds(net, B, context or P + new_tokens // 2, 20 if cuda else 2 if cfg.quick else 8)
    # what a step must read: every weight once (an untied embedding is a lookup of B rows, left out; a tied one is
    # read whole as the head), and K and V of every cached token
    weights = sum(p.numel() for p in net.parameters()) - (0 if c.tie_word_embeddings else c.vocab_size * c.hidden_size)
    kv = 2 * c.num_hidden_layers * B * mean_context * c.num_key_value_heads * c.head_dim
    gb_s = net.head_weight.element_size() * (weights + kv) / step_s / 1e9
    return dict(dtype=str(net.head_weight.dtype).removeprefix("torch."), batch=B, prompt_tokens=P,
                new_tokens=new_tokens, sept_tok_s=B * new_tokens / t["sept"], hf_tok_s=B * new_tokens / t["hf"],
                speedup_vs_hf=t["hf"] / t["sept"], decode_ms=1e3 * step_s, decode_context=round(mean_context),
                decode_gb_s=gb_s, roofline_frac=gb_s / copy)


def sampling_section(cfg: BenchConfig, dev, report: dict):
    q, copy, dtype = cfg.quick, report["machine"]["copy_gb_s"], cli.pick_dtype("auto", dev)
    yield "toy", lambda: sampling_row(model_lib.load_model(cfg.toy, dev, dtype), toy_prompts(cfg.toy, 8 if q else 64),
                                      8 if q else 48, cfg, dev, copy)
    name, B, P, N = ("tiny", 2, 8, 8) if q else ("smollm-135m", 16, 32, 64)
    yield name, lambda: sampling_row(random_model(SHAPES[name], dev, dtype),
                                     random_prompts(B, P, SHAPES[name].vocab_size), N, cfg, dev, copy)
    if dev.type == "cuda" and not q:  # one 1.5B pair (ours + transformers' twin) serves every batch size
        net = random_model(QWEN, dev, dtype)
        twin = hf_twin(net)
        for B in ints(cfg.gpu_sizes):
            yield f"qwen2.5-1.5b b{B}", lambda: sampling_row(
                net, random_prompts(B, cfg.gpu_prompt_tokens, QWEN.vocab_size), cfg.gpu_new_tokens, cfg, dev, copy,
                cfg.decode_context, twin)


# ----------------------------------------------------------------------------------------------------------
# 2. Lengths: throughput at SePT's answer lengths, and the toy's evaluation.

def ragged_row(net, n: int, rows: int, prompt_tokens: int, cap: int, reps: int, dev) -> dict:
    """Useful tokens/s of n answers of SePT-like lengths (as per-prompt budgets: random weights never stop) in
    static batches of `rows` prompts, each running until its longest answer ends (sept_loop before continuous
    batching), and in one stream through `rows` rows; each as a share of `rows` answers all of the mean length.
    The lengths, like a base math model's at τ = 1: 8% run into the cap (a base model sometimes repeats itself,
    or writes code after its answer, until it is cut), the rest log-normal, median cap/6, σ 0.6: at the paper's
    cap of 3,072 a median of ~550 and a mean of ~800 tokens. Issue #14's estimates (no published length histogram
    of Qwen2.5-Math at τ = 1 was at hand): check them against a real round's metrics.jsonl."""
    g = torch.Generator().manual_seed(0)
    lens = (torch.randn(n, generator=g) * 0.6).exp() * (cap / 6)
    lens = lens.masked_fill(torch.rand(n, generator=g) < 0.08, cap).round().clamp(1, cap).long().tolist()
    prompts, starts = random_prompts(n, prompt_tokens, net.config.vocab_size), range(0, n, rows)
    mean, gen = round(statistics.mean(lens)), functools.partial(sample.generate, net, temperature=1.0, seed=0)
    gen(prompts[:2], max_new_tokens=2)  # warm-up
    t = interleaved({"fixed": lambda: gen(prompts[:rows], max_new_tokens=mean),
                     "static": lambda: [gen(prompts[c:c + rows], max_new_tokens=lens[c:c + rows]) for c in starts],
                     "stream": lambda: gen(prompts, max_new_tokens=lens, max_batch=rows)}, reps, dev)
    busy = sum(lens) / sum(rows * max(lens[c:c + rows]) for c in starts)  # static rows' busy share
    row = dict(prompts=n, rows=rows, prompt_tokens=prompt_tokens, len_median=statistics.median(lens), len_mean=mean,
               len_cap=cap, capped=sum(x == cap for x in lens) / n, static_busy=busy,
               fixed_tok_s=rows * mean / t["fixed"])
    for k in ("static", "stream"):
        row.update({f"{k}_tok_s": sum(lens) / t[k], f"{k}_share": sum(lens) / t[k] / row["fixed_tok_s"]})
    return row


def earlier_sample(folder: str):
    """(sample, model) of an earlier checkout, imported under the names its files import each other by; ours put
    back after."""
    ours = {name: sys.modules[name] for name in ("triton_kernels", "model", "sample")}
    try:
        for name in ours:  # in import order: its model then finds its triton_kernels
            spec = importlib.util.spec_from_file_location(name, os.path.join(folder, f"{name}.py"))
            sys.modules[name] = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(sys.modules[name])
        return sys.modules["sample"], sys.modules["model"]
    finally:
        sys.modules.update(ours)


def toy_eval_row(cfg: BenchConfig, dev) -> dict:
    """The toy's evaluation as sept_loop.evaluate samples it: each of the 200 test questions 32 times at τ = 1, up
    to 64 tokens, one stream of 2,048 rows (the toy preset). --toy-eval-against DIR: interleaved with the sampler
    of an earlier checkout (e.g. `git worktree add /tmp/sept-3f33853 3f33853`, before streaming), called as its
    sept_loop did: one generate call per 2,048 prompts."""
    import sept_loop
    from data import prompts as prompt_lib
    scfg = sept_loop.SePTConfig(**sept_loop.PRESETS["toy"])
    B, tau, new_tokens = scfg.sample_batch, scfg.eval_temperature, scfg.max_response_tokens
    ids, stop = toy_prompts(cfg.toy, 8 if cfg.quick else 200, scfg.eval_n), prompt_lib.load_tokenizer(cfg.toy).stop_ids
    net, tokens = model_lib.load_model(cfg.toy, dev, cli.pick_dtype("auto", dev)), {}

    def now():
        answers, _ = sept_loop.draw_answers(net, ids, tau=tau, max_new_tokens=new_tokens, top_p=1.0, stop_ids=stop,
                                            batch=B, seed=0)
        tokens["now"] = sum(map(len, answers))

    runs = {"now": now}
    if cfg.toy_eval_against:
        old, old_model = earlier_sample(cfg.toy_eval_against)
        old_net = old_model.load_model(cfg.toy, device=dev, dtype=net.head_weight.dtype)

        def before():
            tokens["before"] = sum(len(a) for c in range(0, len(ids), B) for a in old.generate(
                old_net, ids[c:c + B], max_new_tokens=new_tokens, temperature=tau, eos_ids=stop, seed=c, stats={}))
        runs["before"] = before
    t = interleaved(runs, 1 if cfg.quick else cfg.reps, dev)
    row = dict(answers=len(ids), tokens=tokens["now"], seconds=t["now"], tok_s=tokens["now"] / t["now"])
    if "before" in t:
        row.update(against=cfg.toy_eval_against, before_tokens=tokens["before"], before_seconds=t["before"],
                   before_tok_s=tokens["before"] / t["before"])
        row["speedup"] = row["tok_s"] / row["before_tok_s"]
    return row


def lengths_section(cfg: BenchConfig, dev, report: dict):
    cuda, dtype = dev.type == "cuda", cli.pick_dtype("auto", dev)
    reps = cfg.gpu_reps if cuda else 1 if cfg.quick else cfg.reps
    cases = ([("tiny", 16, 4, 8, 16)] if cfg.quick else  # name, prompts, rows, prompt tokens, answer cap
             [("qwen2.5-1.5b", cfg.ragged_prompts, cfg.ragged_rows, cfg.round_prompt_tokens, cfg.ragged_cap)]
             if cuda else  # on the CPU budgets scaled down (3,072 / 32 fits the toy's context of 128, / 48)
             [("toy", 1024, 256, 16, 96), ("smollm-135m", 32, 8, 32, 64)])
    for name, n, rows, P, cap in cases:  # the toy from its checkpoint, the others with random weights
        yield f"ragged {name}", lambda: ragged_row(model_lib.load_model(cfg.toy, dev, dtype) if name == "toy" else
                                                   random_model(SHAPES[name], dev, dtype), n, rows, P, cap, reps, dev)
    yield "toy-eval", lambda: toy_eval_row(cfg, dev)


# ----------------------------------------------------------------------------------------------------------
# 3. Kernels: Triton attention against torch SDPA (its flash backend); GQA 6:1, head_dim 128.

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
            with sdpa_kernel(backend) if backend else contextlib.nullcontext():
                return F.scaled_dot_product_attention(q, kk, vv, is_causal=causal, enable_gqa=gqa)
        try:
            fn()
            return fn, which
        except RuntimeError:  # this backend refuses these inputs: try the next
            continue
    raise RuntimeError("no SDPA backend ran")


def kernels_section(cfg: BenchConfig, dev, report: dict):
    cuda, copy, reps = dev.type == "cuda", report["machine"]["copy_gb_s"], 2 if cfg.quick else 5
    dtype, Hq, Hkv, D = (torch.bfloat16 if cuda else torch.float32), 12, 2, 128
    lens = [32] if cfg.quick else ints(cfg.kernel_lens) if cuda else [128, 256]
    batches = [1] if cfg.quick else ints(cfg.kernel_batches) if cuda else [1, 4]
    note = {} if cuda else dict(note="CPU: the Triton wrappers run their PyTorch references")
    randn = functools.partial(torch.randn, device=dev, dtype=dtype)

    def prefill(T):
        B = max(1, 16384 // T) if cuda else 1  # ~16k tokens per call at every length
        q, k, v = randn(B, T, Hq, D), randn(B, T, Hkv, D), randn(B, T, Hkv, D)
        fn, which = sdpa(q, k, v, causal=True)
        ours, theirs = kernel_ms(lambda: tk.attention_prefill(q, k, v), dev, reps), kernel_ms(fn, dev, reps)
        flops = 4 * B * Hq * T * T * D / 2  # QKᵀ and PV, halved by causality
        return dict(kind="prefill", batch=B, seq=T, triton_ms=ours, sdpa_ms=theirs, speedup_vs_sdpa=theirs / ours,
                    tflops=flops / ours / 1e9, sdpa_backend=which, **note)

    def decode(B, S):
        q, kc, vc = randn(B, Hq, D), randn(B, S, Hkv, D), randn(B, S, Hkv, D)
        lens_ = torch.full((B,), S, dtype=torch.int32, device=dev)
        fn, which = sdpa(q[:, None], kc, vc, causal=False)
        row = dict(kind="decode", batch=B, seq=S,
                   triton_ms=kernel_ms(lambda: tk.attention_decode(q, kc, vc, lens_), dev, reps))
        if cuda:  # one split per (row, kv head): what flash-decoding's splits buy at small batch, long cache
            row["triton_1split_ms"] = kernel_ms(lambda: tk.attention_decode(q, kc, vc, lens_, num_splits=1), dev)
        row["sdpa_ms"] = kernel_ms(fn, dev, reps)
        gb_s = 2 * kc.nbytes / row["triton_ms"] / 1e6  # K and V, each read once
        return dict(row, speedup_vs_sdpa=row["sdpa_ms"] / row["triton_ms"], kv_gb_s=gb_s,
                    kv_frac_of_copy=gb_s / copy, sdpa_backend=which, **note)

    for T in lens:
        yield f"prefill {Hq}:{Hkv}x{D} T{T}", functools.partial(prefill, T)
    for B in batches:
        for S in lens:
            yield f"decode {Hq}:{Hkv}x{D} b{B} S{S}", functools.partial(decode, B, S)


# ----------------------------------------------------------------------------------------------------------
# 4. Training: one AdamW update of train.train_step against a plain transformers step.

def train_flops(cfg: model_lib.ModelConfig, n_params: int, seq_lens: list[int]) -> float:
    """Model FLOPs of one update: 6·N per token (forward 2·N, backward 4·N; N counts every matrix that is
    multiplied: the head, tied or not, but not an untied embedding, which is a lookup) plus causal attention,
    6·L·Hq·D·T² per sequence (QKᵀ and PV: 2·2·T²·D per head forward, halved by causality, ×3 with backward).
    Recomputation under activation checkpointing is not counted: this is MFU, not hardware utilization."""
    matmul = n_params - (0 if cfg.tie_word_embeddings else cfg.vocab_size * cfg.hidden_size)
    attn = 6 * cfg.num_hidden_layers * cfg.num_attention_heads * cfg.head_dim * sum(T * T for T in seq_lens)
    return 6 * matmul * sum(seq_lens) + attn


def trainer(impl: str, net, pairs, ckpt: bool):
    """One update: train.train_step (one micro-batch, like transformers' one forward), or the plain transformers
    recipe at our precision (bf16 autocast on CUDA, labels -100 on the prompt, clipping at 1, AdamW)."""
    if impl == "sept":
        tcfg = train.TrainConfig(activation_checkpointing=ckpt,
                                 micro_batch_tokens=sum(len(p) + len(r) for p, r in pairs))
        optimizer = train.make_optimizer(net, tcfg)
        return lambda: train.train_step(net, optimizer, pairs, 0, tcfg)
    twin, dev = hf_twin(net).train(), net.head_weight.device
    if ckpt:  # activation_checkpointing_enable from transformers 5.2x on, its deprecated alias before
        (getattr(twin, "activation_checkpointing_enable", None) or twin.gradient_checkpointing_enable)(
            {"use_reentrant": False})
    ids = torch.tensor([p + r for p, r in pairs], device=dev)  # pairs of equal lengths: no padding
    labels = torch.tensor([[train.IGNORE] * len(p) + r for p, r in pairs], device=dev)
    optimizer = torch.optim.AdamW(twin.parameters(), lr=1e-7, weight_decay=0.01, fused=dev.type == "cuda" or None)

    def step():
        with train.autocast(dev):
            twin(input_ids=ids, labels=labels, use_cache=False).loss.backward()
        torch.nn.utils.clip_grad_norm_(twin.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return step


def train_rows(impls: list[str], make_net, pairs, ckpt: bool, reps: int, dev, peak) -> list[dict]:
    nets = {k: make_net() for k in impls}
    steps = {k: trainer(k, nets[k], pairs, ckpt) for k in impls}
    for step in steps.values():
        step()  # warm-up: AdamW state allocated, kernels compiled
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t, net = interleaved(steps, reps, dev), nets[impls[0]]
    flops = train_flops(net.config, sum(p.numel() for p in net.parameters()), [len(p) + len(r) - 1 for p, r in pairs])
    tokens = sum(len(p) + len(r) for p, r in pairs)
    return [dict(impl=k, ckpt=ckpt, pairs=len(pairs), seq_tokens=tokens, step_s=s, tok_s=tokens / s,
                 tflops=flops / s / 1e12, mfu=flops / s / 1e12 / peak if peak else None,
                 peak_gb=torch.cuda.max_memory_allocated() / 1e9 if dev.type == "cuda" else None) for k, s in t.items()]


def training_section(cfg: BenchConfig, dev, report: dict):
    cuda, q = dev.type == "cuda", cfg.quick
    if cuda and not q:  # name, net, its vocabulary, pairs, prompt and response tokens, activation checkpointing
        cases = [("qwen2.5-1.5b", functools.partial(random_model, QWEN, dev, torch.float32), QWEN.vocab_size,
                  cfg.train_pairs, cfg.train_prompt_tokens, cfg.train_response_tokens, ckpt) for ckpt in (True, False)]
    else:
        cases = [("toy", functools.partial(model_lib.load_model, cfg.toy, dev, torch.float32),
                  model_lib.read_config(cfg.toy).vocab_size, *((2, 8, 8) if q else (16, 16, 48)), False)]
    impls, reps = ["sept", "transformers"], 2 if cuda else 1 if q else cfg.reps
    for name, make_net, vocab, n, P, R, ckpt in cases:
        pairs = [(a[:P], a[P:]) for a in random_prompts(n, P + R, vocab)]
        # on CUDA one at a time (two 1.5B models with their AdamW state crowd one GPU), on the CPU interleaved
        for group in [[k] for k in impls] if cuda else [impls]:
            yield f"{name} ckpt={'on' if ckpt else 'off'} {'+'.join(group)}", lambda: train_rows(
                group, make_net, pairs, ckpt, reps, dev, report["machine"]["peak_tflops"])


# ----------------------------------------------------------------------------------------------------------
# 5. A whole SePT round, through the steps sept_loop.main takes: draw_answers, train_on_answers, refresh_sampler.

def round_row(scfg, master, prompts: list[list[int]], stop_ids, dev, note: str) -> dict:
    import sept_loop
    tau_s = sept_loop.tau_s_at(1, scfg)
    rcfg = sept_loop.round_config(scfg, tau_s)
    sampler, optimizer = train.make_sampler(master, cli.pick_dtype("auto", dev)), train.make_optimizer(master, rcfg)
    draw = functools.partial(sept_loop.draw_answers, sampler, tau=tau_s, top_p=scfg.top_p, stop_ids=stop_ids,
                             batch=scfg.sample_batch, seed=0)
    draw(prompts[:2], max_new_tokens=4)  # warm-up: kernels, AdamW state (the warmup's first lr: harmless)
    train.train_step(master, optimizer, [(prompts[0], prompts[1][:8])], 0, rcfg)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    responses, _ = draw(prompts, max_new_tokens=scfg.max_response_tokens)
    t1 = time.perf_counter()  # generate returns host lists: synchronized
    sept_loop.train_on_answers(master, optimizer, [(p, r) for p, r in zip(prompts, responses) if r], 0, rcfg,
                               scfg.updates_per_round, 0)
    train.refresh_sampler(master, sampler)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    t2 = time.perf_counter()
    return dict(answers=len(prompts), updates=scfg.updates_per_round, seconds_sampling=t1 - t0,
                seconds_training=t2 - t1, seconds_total=t2 - t0, response_len_mean=statistics.mean(map(len, responses)),
                peak_gb=torch.cuda.max_memory_allocated() / 1e9 if dev.type == "cuda" else None, note=note)


def round_section(cfg: BenchConfig, dev, report: dict):
    import sept_loop
    from data import prompts as prompt_lib
    toy = sept_loop.SePTConfig(**dict(sept_loop.PRESETS["toy"], **dict(batch_prompts=8, max_response_tokens=8)
                                      if cfg.quick else {}))
    yield "toy", lambda: round_row(
        toy, model_lib.load_model(cfg.toy, dev, torch.float32), toy_prompts(cfg.toy, toy.batch_prompts, split="train"),
        prompt_lib.load_tokenizer(cfg.toy).stop_ids, dev, "the toy preset's round 1 (evaluation: lengths toy-eval)")
    if dev.type == "cuda" and not cfg.quick:
        paper = sept_loop.SePTConfig(**dict(sept_loop.PRESETS["paper"], max_response_tokens=cfg.round_response_tokens))
        yield "qwen2.5-1.5b paper preset", lambda: round_row(
            paper, random_model(QWEN, dev, torch.float32),
            random_prompts(paper.batch_prompts * paper.rollouts, cfg.round_prompt_tokens, QWEN.vocab_size), (), dev,
            f"prompts of {cfg.round_prompt_tokens} random tokens, every answer {cfg.round_response_tokens} tokens "
            f"(random weights never stop); evaluation and checkpoint every 50 / 10 rounds, not timed")


SECTIONS = {"sampling": sampling_section, "lengths": lengths_section, "kernels": kernels_section,
            "training": training_section, "round": round_section}


def machine(cfg: BenchConfig, dev) -> dict:
    name, memory, peak = platform.processor() or platform.machine(), None, cfg.peak_tflops or None
    if dev.type == "cuda":
        props = torch.cuda.get_device_properties(dev)
        name, memory = props.name, round(props.total_memory / 2**30, 1)
        peak = peak or next((t for key, t in PEAK_BF16 if key in name), None)
    elif os.path.isfile("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            name = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), name)
    versions = dict.fromkeys(("torch", "triton", "transformers"))  # None where absent or broken
    for module in versions:
        with contextlib.suppress(Exception):
            versions[module] = importlib.import_module(module).__version__
    # one large copy's bytes read + written per second: the bandwidth a memory-bound kernel can hope for
    x = torch.ones(1 << 28 if dev.type == "cuda" else 1 << 22 if cfg.quick else 1 << 24, device=dev)  # fp32
    y = torch.empty_like(x)
    return dict(device=dev.type, name=name, memory_gib=memory, cpus=os.cpu_count(), threads=torch.get_num_threads(),
                **versions, python=platform.python_version(), date=time.strftime("%Y-%m-%dT%H:%M:%S"),
                copy_gb_s=2 * x.nbytes / kernel_ms(lambda: y.copy_(x), dev) / 1e6, peak_tflops=peak)


def main(argv=None):
    cfg = cli.config_from_argv(BenchConfig, argv, __doc__.splitlines()[0])
    sections = [s for s in cfg.only.split(",") if s]
    if set(sections) - set(SECTIONS):
        raise SystemExit(f"bench.py: error: --only {cfg.only}: choose from {', '.join(SECTIONS)}")
    if cfg.toy_eval_against and not os.path.isfile(os.path.join(cfg.toy_eval_against, "sample.py")):
        raise SystemExit(f"bench.py: error: --toy-eval-against {cfg.toy_eval_against}: no sample.py there")
    if cfg.threads:  # only when asked: on this 2-core CPU, setting even the default count (2) slowed transformers'
        torch.set_num_threads(cfg.threads)  # CPU SDPA up to 2x, which would flatter our ratios against it
    dev = cli.pick_device(cfg.device)
    print("config " + json.dumps(asdict(cfg)))
    report = dict(machine=machine(cfg, dev), config=asdict(cfg), **{s: [] for s in sections})
    print("machine " + json.dumps(report["machine"]), flush=True)
    for s in sections:
        try:
            for name, fn in SECTIONS[s](cfg, dev, report):  # each section yields its rows as (name, fn)
                run_row(report, cfg, s, name, fn)
        except Exception as e:  # a set-up failure outside any row: the section reports it, the others still run
            report[s].append(dict(name=s, error=f"{type(e).__name__}: {e}"[:400]))
            print(f"{s:<9} error={report[s][-1]['error']}")
    model_lib.write_file(cfg.out, json.dumps(report, indent=1))
    print(f"wrote {cfg.out}")


if __name__ == "__main__":
    main()
