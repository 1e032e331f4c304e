"""bench.py — how fast: sampler, attention kernels, training step and SePT round, against peers and the hardware.

    python bench.py --quick --threads 1           # smoke test: tiny sizes, seconds on a CPU
    python bench.py --threads 1                   # CPU: the toy and a SmolLM-135M shape, ~4 minutes on 2 cores
    python bench.py --only kernels,sampling --gpu-sizes 1,128,256 --decode-context 2048    # one GPU
    bash tests/gpu.sh                             # the GPU tests, then this bench at GPU sizes

Sections (--only) as headed below. Candidates run interleaved, medians reported; each row is printed and --out
(JSON) rewritten after it, a failing row keeps its error. Random weights: std 0.02. On a CPU shared with other
jobs use --threads 1 (two threads that wait for each other's time slices make every op ~100x slower).
"""
import contextlib
import functools
import gc
import importlib
import json
import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

import cli
import model as model_lib
import runs
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
    reps: int = 3                       # interleaved runs per candidate on the CPU, medians reported (1 on CUDA)
    toy: str = os.path.join(HERE, "data", "toy")  # the toy checkpoint
    gpu_sizes: str = "1,64,256"         # batch sizes of the Qwen2.5-1.5B-shape sampling rows (CUDA)
    gpu_prompt_tokens: int = 512        # prompt length of those rows
    gpu_new_tokens: int = 1024          # tokens generated per row
    decode_context: int = 0             # cached tokens for the 1.5B decode-step timing (0 = the rows' mean context)
    ragged_cap: int = 3072              # answer cap of the 1.5B lengths row (the paper's max response length)
    peak_tflops: float = 0.0            # dense bf16 peak for MFU, TFLOP/s (0 = from the GPU's name)
    budget_s: float = 0.0               # start no new row after this many seconds (0 = no limit)


# Architectures with random weights (the toy is read from its checkpoint), ModelConfig's first fields in order:
# model_type, vocab_size, hidden_size, intermediate_size, layers, attention heads, key/value heads, head_dim.
SHAPES = {"tiny": model_lib.ModelConfig("llama", 512, 64, 128, 2, 4, 2, 16, tie_word_embeddings=True),
          "smollm-135m": model_lib.ModelConfig("llama", 49152, 576, 1536, 30, 9, 3, 64, rms_norm_eps=1e-5,
                                               tie_word_embeddings=True),
          "qwen2.5-1.5b": model_lib.ModelConfig("qwen2", 151936, 1536, 8960, 28, 12, 2, 128, rope_theta=1e6,
                                                attention_bias=True, max_position_embeddings=32768,
                                                tie_word_embeddings=True)}
# Dense bf16 tensor-core peaks (no sparsity), TFLOP/s, matched against the device name in this order.
PEAK_BF16 = (("H200", 989.0), ("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.0), ("A100", 312.0))


# Timing, models, and the report. --------------------------------------------------------------------------

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
def load_net(cfg: BenchConfig, dev, name: str, dtype=None) -> model_lib.Transformer:
    """The toy from its checkpoint, a SHAPES entry with random weights; in the sampling dtype unless given."""
    dtype = dtype or cli.pick_dtype("auto", dev)
    if name == "toy":
        return model_lib.load_model(cfg.toy, dev, dtype)
    net, g = model_lib.empty_model(SHAPES[name], dev, dtype), torch.Generator(device=dev).manual_seed(0)
    for key, p in net.named_parameters():  # matrices N(0, 0.02), norm gains 1, biases 0
        p.normal_(0.0, 0.02, generator=g) if p.dim() > 1 else p.fill_(0.0 if key.endswith("bias") else 1.0)
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


def random_prompts(n: int, length: int, vocab: int) -> list[list[int]]:
    return torch.randint(3, vocab, (n, length), generator=torch.Generator().manual_seed(0)).tolist()


def toy_prompts(path: str, n: int, per_question: int = 1, split: str = "test") -> list[list[int]]:
    """The first n questions of the toy's split in its template, each per_question times."""
    from data import prompts as prompt_lib, questions
    tok, qs = prompt_lib.load_tokenizer(path), questions.load_questions(os.path.join(path, f"{split}.jsonl"))
    return [tok.encode(prompt_lib.build_prompt(qs[i % len(qs)].problem, "toy")) for i in range(n)
            for _ in range(per_question)]


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
    runs.write_file(cfg.out, json.dumps(report, indent=1))


# 1. Sampling: tokens/s against transformers, and the decode step against the bandwidth limit. -------------

@torch.inference_mode()
def decode_seconds(net, batch: int, context: int, steps: int, warm: int = 3) -> tuple[float, float]:
    """(seconds per decode step, mean cached tokens) of generate's decode step and sampler on a cache of `context`
    tokens (zeros: the values do not change the work). bench's one use of sample's internals."""
    dev = net.head_weight.device
    graph = dev.type == "cuda" and model_lib.attention_backend(dev) == "triton"
    cache = model_lib.new_kv_cache(net.config, batch, context + warm + steps + 1, net.head_weight.dtype, dev)
    cache.lens = torch.full((batch,), context, dtype=torch.int32, device=dev)
    cache.filled = cache.k.shape[3] if graph else context
    decode, running = sample.decode_function(net, cache, graph), torch.zeros(batch, dtype=torch.bool, device=dev)
    tokens, g = torch.zeros(batch, dtype=torch.long, device=dev), torch.Generator(device=dev).manual_seed(0)

    def step():
        nonlocal tokens
        tokens = sample.sample_next(sample.decode_step(decode, cache, tokens, running), 1.0, 1.0, g)

    for _ in range(warm):
        step()
    return seconds(lambda: [step() for _ in range(steps)], dev) / steps, context + warm + (steps + 1) / 2


def sampling_row(cfg: BenchConfig, dev, copy: float, name: str, B: int, P: int, new_tokens: int,
                 context: int = 0) -> dict:
    """B prompts of P random tokens (the toy: its first B questions) through both samplers, then the decode step."""
    net = load_net(cfg, dev, name)
    twin, c, cuda = hf_twin(net), net.config, dev.type == "cuda"
    prompts = toy_prompts(cfg.toy, B) if name == "toy" else random_prompts(B, P, c.vocab_size)
    P = max(map(len, prompts))
    # transformers' generate as ours runs: EOS off (exactly n new tokens), plain sampling at temperature 1
    # (top_k=0 switches off its default top-50); left-padded, as it wants
    ids = torch.tensor([[0] * (P - len(p)) + p for p in prompts], device=dev)
    mask = torch.tensor([[0] * (P - len(p)) + [1] * len(p) for p in prompts], device=dev)
    gens = {"sept": lambda n: sample.generate(net, prompts, max_new_tokens=n, temperature=1.0, seed=0),
            "hf": lambda n: twin.generate(input_ids=ids, attention_mask=mask, do_sample=True, temperature=1.0, top_k=0,
                                          max_new_tokens=n, min_new_tokens=n, eos_token_id=None, pad_token_id=0)}
    for gen in gens.values():
        gen(2)  # warm-up: kernels compiled, allocator and thread pool primed
    t = interleaved({k: functools.partial(gen, new_tokens) for k, gen in gens.items()}, 1 if cuda else cfg.reps, dev)
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


def sampling_rows(cfg: BenchConfig, dev, report: dict) -> list:
    row = functools.partial(sampling_row, cfg, dev, report["machine"]["copy_gb_s"])
    # name, batch, prompt tokens (the toy: its questions'), new tokens
    cases = [("toy", 8, 0, 8), ("tiny", 2, 8, 8)] if cfg.quick else [("toy", 64, 0, 48), ("smollm-135m", 16, 32, 64)]
    rows = [(case[0], functools.partial(row, *case)) for case in cases]
    if dev.type == "cuda" and not cfg.quick:
        qwen = (cfg.gpu_prompt_tokens, cfg.gpu_new_tokens, cfg.decode_context)
        rows += [(f"qwen2.5-1.5b b{B}", functools.partial(row, "qwen2.5-1.5b", int(B), *qwen))
                 for B in cfg.gpu_sizes.split(",") if B]
    return rows


# 2. Lengths: throughput at SePT's answer lengths, and the toy's evaluation. -------------------------------

def ragged_row(cfg: BenchConfig, dev, reps: int, name: str, n: int, rows: int, prompt_tokens: int, cap: int) -> dict:
    """Useful tokens/s of n answers of SePT-like lengths (per-prompt budgets: random weights never stop) in static
    batches of `rows` prompts, each running until its longest answer ends, and in one stream through `rows` rows;
    each as a share of `rows` answers all of the mean length."""
    # a base math model's at τ = 1, as issue #14 estimates them (no published histogram was at hand): 8% run into
    # the cap (it repeats itself, or writes code after its answer), the rest log-normal, median cap/6, σ 0.6
    g, net = torch.Generator().manual_seed(0), load_net(cfg, dev, name)
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


def toy_eval_row(cfg: BenchConfig, dev) -> dict:
    """The toy's evaluation as sept_loop.evaluate samples it (the toy preset): each of the 200 test questions 32
    times at τ = 1, up to 64 tokens, one stream of 2,048 rows."""
    import sept_loop
    from data import prompts as prompt_lib
    scfg = sept_loop.SePTConfig(**sept_loop.PRESETS["toy"])
    ids = toy_prompts(cfg.toy, 8 if cfg.quick else 200, scfg.eval_n)
    draw = functools.partial(sept_loop.draw_answers, load_net(cfg, dev, "toy"), ids, tau=scfg.eval_temperature,
                             max_new_tokens=scfg.max_response_tokens, top_p=1.0, batch=scfg.sample_batch, seed=0,
                             stop_ids=prompt_lib.load_tokenizer(cfg.toy).stop_ids)
    times = []
    for _ in range(1 if cfg.quick else cfg.reps):
        t0 = time.perf_counter()
        answers, _ = draw()  # host lists: synchronized
        times.append(time.perf_counter() - t0)
    tokens, s = sum(map(len, answers)), statistics.median(times)
    return dict(answers=len(ids), tokens=tokens, seconds=s, tok_s=tokens / s)


def lengths_rows(cfg: BenchConfig, dev, report: dict) -> list:
    cuda = dev.type == "cuda"
    if cfg.quick:  # name, prompts, rows (on CUDA the paper preset's), prompt tokens, answer cap
        cases = [("tiny", 16, 4, 8, 16)]
    elif cuda:
        cases = [("qwen2.5-1.5b", 1024, 256, 160, cfg.ragged_cap)]
    else:  # budgets scaled down: 3,072 / 32 fits the toy's context of 128, / 48 the 135M shape's row
        cases = [("toy", 1024, 256, 16, 96), ("smollm-135m", 32, 8, 32, 64)]
    reps = 1 if cuda or cfg.quick else cfg.reps
    rows = [(f"ragged {case[0]}", functools.partial(ragged_row, cfg, dev, reps, *case)) for case in cases]
    return rows + [("toy-eval", functools.partial(toy_eval_row, cfg, dev))]


# 3. Kernels: Triton attention against torch SDPA (its flash backend); GQA 6:1, head_dim 128. ----------------

def sdpa(q, k, v, causal: bool):
    """torch SDPA as model.attention calls it ([B, H, T, D] views of [B, T, H, D]); the flash backend on CUDA."""
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION) if q.is_cuda else contextlib.nullcontext():
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=True)


def kernel_rows(cfg: BenchConfig, dev, report: dict) -> list:
    cuda, copy, reps = dev.type == "cuda", report["machine"]["copy_gb_s"], 2 if cfg.quick else 5
    dtype, Hq, Hkv, D = (torch.bfloat16 if cuda else torch.float32), 12, 2, 128
    lens = [32] if cfg.quick else [512, 1024, 2048, 4096, 8192] if cuda else [128, 256]  # prompt or cache
    batches = [1] if cfg.quick else [1, 16, 64] if cuda else [1, 4]
    note = dict(sdpa_backend="flash") if cuda else dict(sdpa_backend="default backend",
                                                        note="CPU: the Triton wrappers run their PyTorch references")
    randn = functools.partial(torch.randn, device=dev, dtype=dtype)

    def prefill(T):
        B = max(1, 16384 // T) if cuda else 1  # ~16k tokens per call at every length
        q, k, v = randn(B, T, Hq, D), randn(B, T, Hkv, D), randn(B, T, Hkv, D)
        ours = kernel_ms(functools.partial(tk.attention_prefill, q, k, v), dev, reps)
        theirs = kernel_ms(functools.partial(sdpa, *(x.transpose(1, 2) for x in (q, k, v)), True), dev, reps)
        flops = 4 * B * Hq * T * T * D / 2  # QKᵀ and PV, halved by causality
        return dict(kind="prefill", batch=B, seq=T, triton_ms=ours, sdpa_ms=theirs, speedup_vs_sdpa=theirs / ours,
                    tflops=flops / ours / 1e9, **note)

    def decode(B, S):
        q, kc, vc = randn(B, Hq, D), randn(B, S, Hkv, D), randn(B, S, Hkv, D)
        ours = functools.partial(tk.attention_decode, q, kc, vc, torch.full((B,), S, dtype=torch.int32, device=dev))
        row = dict(kind="decode", batch=B, seq=S, triton_ms=kernel_ms(ours, dev, reps))
        if cuda:  # one split per (row, kv head): what flash-decoding's splits buy at small batch, long cache
            row["triton_1split_ms"] = kernel_ms(functools.partial(ours, num_splits=1), dev)
        theirs = functools.partial(sdpa, q[:, :, None], kc.transpose(1, 2), vc.transpose(1, 2), False)
        row["sdpa_ms"] = kernel_ms(theirs, dev, reps)
        gb_s = 2 * kc.nbytes / row["triton_ms"] / 1e6  # K and V, each read once
        return dict(row, speedup_vs_sdpa=row["sdpa_ms"] / row["triton_ms"], kv_gb_s=gb_s,
                    kv_frac_of_copy=gb_s / copy, **note)

    rows = [(f"prefill {Hq}:{Hkv}x{D} T{T}", functools.partial(prefill, T)) for T in lens]
    for B in batches:
        rows += [(f"decode {Hq}:{Hkv}x{D} b{B} S{S}", functools.partial(decode, B, S)) for S in lens]
    return rows


# 4. Training: one AdamW update of train.train_step against a plain transformers step. ---------------------

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
        return functools.partial(train.train_step, net, train.make_optimizer(net, tcfg), pairs, 0, tcfg)
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


def train_rows(cfg: BenchConfig, dev, peak, reps: int, impls: list[str], name: str, n: int, P: int, R: int,
               ckpt: bool) -> list[dict]:
    """A row per impl: one update on n pairs of P prompt and R response tokens (random)."""
    nets = {k: load_net(cfg, dev, name, torch.float32) for k in impls}
    net = nets[impls[0]]
    pairs = [(a[:P], a[P:]) for a in random_prompts(n, P + R, net.config.vocab_size)]
    steps = {k: trainer(k, nets[k], pairs, ckpt) for k in impls}
    for step in steps.values():
        step()  # warm-up: AdamW state allocated, kernels compiled
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t, tokens = interleaved(steps, reps, dev), n * (P + R)
    flops = train_flops(net.config, sum(p.numel() for p in net.parameters()), [P + R - 1] * n)
    return [dict(impl=k, ckpt=ckpt, pairs=n, seq_tokens=tokens, step_s=s, tok_s=tokens / s,
                 tflops=flops / s / 1e12, mfu=flops / s / 1e12 / peak if peak else None,
                 peak_gb=torch.cuda.max_memory_allocated() / 1e9 if dev.type == "cuda" else None) for k, s in t.items()]


def training_rows(cfg: BenchConfig, dev, report: dict) -> list:
    cuda, impls = dev.type == "cuda", ["sept", "transformers"]
    if cuda and not cfg.quick:  # name, pairs, prompt and response tokens (the paper's), activation checkpointing
        cases = [("qwen2.5-1.5b", 4, 1024, 3072, ckpt) for ckpt in (True, False)]
    else:
        cases = [("toy", 2, 8, 8, False) if cfg.quick else ("toy", 16, 16, 48, False)]
    # on CUDA one at a time (two 1.5B models with their AdamW state crowd one GPU), on the CPU interleaved
    groups = [[k] for k in impls] if cuda else [impls]
    reps = 2 if cuda else 1 if cfg.quick else cfg.reps
    row = functools.partial(train_rows, cfg, dev, report["machine"]["peak_tflops"], reps)
    return [(f"{case[0]} ckpt={'on' if case[-1] else 'off'} {'+'.join(group)}", functools.partial(row, group, *case))
            for case in cases for group in groups]


# 5. A whole SePT round, through the steps sept_loop.main takes: draw_answers, train_on_answers, refresh_sampler.

def round_row(cfg: BenchConfig, dev, name: str) -> dict:
    """The toy preset's round 1 on the toy, or the paper preset's on the 1.5B shape with random prompts."""
    import sept_loop
    from data import prompts as prompt_lib
    if name == "toy":
        quick = dict(batch_prompts=8, max_response_tokens=8) if cfg.quick else {}
        scfg = sept_loop.SePTConfig(**dict(sept_loop.PRESETS["toy"], **quick))
        prompts = toy_prompts(cfg.toy, scfg.batch_prompts, split="train")
        stop_ids = prompt_lib.load_tokenizer(cfg.toy).stop_ids
        note = "the toy preset's round 1 (evaluation: lengths toy-eval)"
    else:  # prompts of 160 random tokens (about a templated question); random weights never stop
        scfg = sept_loop.SePTConfig(**dict(sept_loop.PRESETS["paper"], max_response_tokens=780))
        prompts = random_prompts(scfg.batch_prompts * scfg.rollouts, 160, SHAPES[name].vocab_size)
        stop_ids, note = (), ("prompts of 160 random tokens, every answer 780 tokens (random weights never stop); "
                              "evaluation and checkpoint every 50 / 10 rounds, not timed")
    master, tau_s = load_net(cfg, dev, name, torch.float32), sept_loop.tau_s_at(1, scfg)
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


def round_rows(cfg: BenchConfig, dev, report: dict) -> list:
    rows = [("toy", functools.partial(round_row, cfg, dev, "toy"))]
    if dev.type == "cuda" and not cfg.quick:
        rows.append(("qwen2.5-1.5b paper preset", functools.partial(round_row, cfg, dev, "qwen2.5-1.5b")))
    return rows


# Each section's rows: (name, a function of no arguments that measures the row).
SECTIONS = {"sampling": sampling_rows, "lengths": lengths_rows, "kernels": kernel_rows, "training": training_rows,
            "round": round_rows}


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
    if cfg.threads:  # only when asked: on this 2-core CPU, setting even the default count (2) slowed transformers'
        torch.set_num_threads(cfg.threads)  # CPU SDPA up to 2x, which would flatter our ratios against it
    dev = cli.pick_device(cfg.device)
    print("config " + json.dumps(asdict(cfg)))
    report = dict(machine=machine(cfg, dev), config=asdict(cfg), **{s: [] for s in sections})
    print("machine " + json.dumps(report["machine"]), flush=True)
    for s in sections:
        for name, fn in SECTIONS[s](cfg, dev, report):
            run_row(report, cfg, s, name, fn)
    runs.write_file(cfg.out, json.dumps(report, indent=1))
    print(f"wrote {cfg.out}")


if __name__ == "__main__":
    main()
