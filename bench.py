"""bench.py — how fast: sampler, attention kernels, training step and SePT round, against peers and the hardware.

    python bench.py --quick --threads 1           # smoke test: the toy's sizes, seconds on a CPU
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
import tempfile
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
from data import prompts, questions

HERE = os.path.dirname(os.path.abspath(__file__))
SECTIONS = ("sampling", "lengths", "kernels", "training", "round")


@dataclass
class BenchConfig:
    only: str = ",".join(SECTIONS)       # sections to run, in this order
    quick: bool = False                 # the toy's sizes everywhere (the smoke test)
    out: str = "bench.json"             # the JSON report
    device: str = "auto"                # auto = cuda when available, else cpu
    threads: int = 0                    # torch CPU threads; 0 = torch's default, as sept_loop runs (see main)
    reps: int = 3                       # interleaved runs per candidate, medians reported (CPU; each section
    #                                     sets its own on CUDA)
    toy: str = os.path.join(HERE, "data", "toy")  # the toy checkpoint
    gpu_sizes: str = "1,64,256"         # batch sizes of the Qwen2.5-1.5B-shape sampling rows (CUDA)
    gpu_prompt_tokens: int = 512        # prompt length of those rows
    gpu_new_tokens: int = 1024          # tokens generated per row
    decode_context: int = 0             # cached tokens for the 1.5B decode-step timing (0 = the rows' mean context)
    ragged_cap: int = 3072              # answer cap of the 1.5B lengths row (the paper's max response length)
    peak_tflops: float = 0.0            # dense bf16 peak for MFU, TFLOP/s (0 = from the GPU's name)


# Architectures with random weights (the toy is read from its checkpoint), ModelConfig's first fields in order:
# model_type, vocab_size, hidden_size, intermediate_size, layers, attention heads, key/value heads, head_dim.
SHAPES = {"smollm-135m": model_lib.ModelConfig("llama", 49152, 576, 1536, 30, 9, 3, 64, rms_norm_eps=1e-5,
                                               tie_word_embeddings=True),
          "qwen2.5-1.5b": model_lib.ModelConfig("qwen2", 151936, 1536, 8960, 28, 12, 2, 128, rope_theta=1e6,
                                                attention_bias=True, max_position_embeddings=32768,
                                                tie_word_embeddings=True)}
# Dense bf16 tensor-core peaks (no sparsity), TFLOP/s, matched against the device name in this order.
PEAK_BF16 = (("H200", 989.0), ("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.0), ("A100", 312.0))


# Timing, models, and the report. --------------------------------------------------------------------------

def sync(dev) -> None:  # CUDA runs asynchronously: wait for it before reading a clock
    if dev.type == "cuda":
        torch.cuda.synchronize()


def seconds(fn, dev) -> float:
    sync(dev)
    t0 = time.perf_counter()
    fn()
    sync(dev)
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


def toy_prompts(path: str, n: int, split: str = "test") -> list[list[int]]:
    """The first n questions of the toy's split in its template."""
    tok, qs = prompts.load_tokenizer(path), questions.load_questions(os.path.join(path, f"{split}.jsonl"))
    return [tok.encode(prompts.build_prompt(q.problem, "toy")) for q in qs[:n]]


def run_row(report: dict, cfg: BenchConfig, section: str, name: str, fn):
    """fn() returns a row (dict) or rows, printed and saved; an exception becomes the row's error."""
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

def decode_step_seconds(net, B: int, context: int, steps: int, reps: int, dev) -> float:
    """Seconds per decode step at `context` cached tokens, as generate runs them (host checks included): B
    prompts of `context` random tokens given 1 + steps new tokens, less the same given 1 (the prefill alone)."""
    prompts = random_prompts(B, context, net.config.vocab_size)
    gen = functools.partial(sample.generate, net, prompts, temperature=1.0, seed=0)
    gen(max_new_tokens=2)  # warm-up (on CUDA the graph's capture)
    t = interleaved({"one": lambda: gen(max_new_tokens=1), "more": lambda: gen(max_new_tokens=1 + steps)}, reps, dev)
    sample.held_static_rows = None  # the bench's shapes: no later call reuses them
    return (t["more"] - t["one"]) / steps


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
            "hf": lambda n: twin.generate(input_ids=ids, attention_mask=mask, do_sample=True, temperature=1.0,
                                          top_k=0, max_new_tokens=n, min_new_tokens=n, eos_token_id=None,
                                          pad_token_id=0)}
    for gen in gens.values():
        gen(2)  # warm-up: kernels compiled, allocator and thread pool primed
    reps = 1 if cuda else cfg.reps
    t = interleaved({k: functools.partial(gen, new_tokens) for k, gen in gens.items()}, reps, dev)
    context = context or P + new_tokens // 2
    step_s = decode_step_seconds(net, B, context, 20 if cuda else 2 if cfg.quick else 8, reps, dev)
    # what a step must read: every weight once (an untied embedding is a lookup of B rows, left out; a tied one is
    # read whole as the head), and K and V of every cached token
    weights = sum(p.numel() for p in net.parameters())
    weights -= 0 if c.tie_word_embeddings else c.vocab_size * c.hidden_size
    kv = 2 * c.num_hidden_layers * B * context * c.num_key_value_heads * c.head_dim
    gb_s = net.head_weight.element_size() * (weights + kv) / step_s / 1e9
    return dict(dtype=str(net.head_weight.dtype).removeprefix("torch."), batch=B, prompt_tokens=P,
                new_tokens=new_tokens, sept_tok_s=B * new_tokens / t["sept"], hf_tok_s=B * new_tokens / t["hf"],
                speedup_vs_hf=t["hf"] / t["sept"], decode_ms=1e3 * step_s, decode_context=context,
                decode_gb_s=gb_s, roofline_frac=gb_s / copy)


# 2. Lengths: throughput at SePT's answer lengths. ---------------------------------------------------------

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


# 3. Kernels: Triton attention against torch SDPA (its flash backend); GQA 6:1, head_dim 128. ----------------

def kernel_row(dev, copy: float, reps: int, kind: str, B: int, T: int) -> dict:
    """One prefill over B prompts of T tokens, or one decode step of B rows over a cache of T tokens."""
    cuda, Hq, Hkv, D = dev.type == "cuda", 12, 2, 128
    randn = functools.partial(torch.randn, device=dev, dtype=torch.bfloat16 if cuda else torch.float32)
    q = randn(B, T if kind == "prefill" else 1, Hq, D)  # a decode step: one new query per row
    k, v = randn(B, T, Hkv, D), randn(B, T, Hkv, D)
    if kind == "prefill":
        ours = functools.partial(tk.attention_prefill, q, k, v)
    else:
        lens = torch.full((B,), T, device=dev, dtype=torch.int32)
        ours = functools.partial(tk.attention_decode, q[:, 0], k, v, lens)
    row = dict(kind=kind, batch=B, seq=T, triton_ms=kernel_ms(ours, dev, reps))
    if cuda and kind == "decode":  # one split per (row, kv head): what flash-decoding's splits buy at small batch
        row["triton_1split_ms"] = kernel_ms(functools.partial(ours, num_splits=1), dev)

    def sdpa():  # torch's, on the [B, H, T, D] views model.attention passes it; its flash backend on CUDA
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION) if cuda else contextlib.nullcontext():
            F.scaled_dot_product_attention(*(x.transpose(1, 2) for x in (q, k, v)), is_causal=kind == "prefill",
                                           enable_gqa=True)
    row["sdpa_ms"] = kernel_ms(sdpa, dev, reps)
    row["speedup_vs_sdpa"] = row["sdpa_ms"] / row["triton_ms"]
    if kind == "prefill":  # QKᵀ and PV, halved by causality
        row["tflops"] = 4 * B * Hq * T * T * D / 2 / row["triton_ms"] / 1e9
    else:  # K and V, each read once
        row["kv_gb_s"] = 2 * k.nbytes / row["triton_ms"] / 1e6
        row["kv_frac_of_copy"] = row["kv_gb_s"] / copy
    return dict(row, sdpa_backend="flash" if cuda else "default backend",
                **{} if cuda else dict(note="CPU: the Triton wrappers run their PyTorch references"))


# 4. Training: one AdamW update of train.train_step against a plain transformers step. ---------------------

def train_flops(cfg: model_lib.ModelConfig, n_params: int, seq_lens: list[int]) -> float:
    """Model FLOPs of one update (MFU's: no recomputation): 6·N per token, N every multiplied matrix (the head,
    not an untied embedding: a lookup), plus causal attention, 6·L·Hq·D·T² per sequence (QKᵀ and PV, halved)."""
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
    steps = {}
    for k in impls:  # transformers' step keeps only its twin: our copy is not in its peak memory
        net = load_net(cfg, dev, name, torch.float32)
        pairs = [(a[:P], a[P:]) for a in random_prompts(n, P + R, net.config.vocab_size)]
        flops = train_flops(net.config, sum(p.numel() for p in net.parameters()), [P + R - 1] * n)
        steps[k] = trainer(k, net, pairs, ckpt)
        del net
    for step in steps.values():
        step()  # warm-up: AdamW state allocated, kernels compiled
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t, tokens = interleaved(steps, reps, dev), n * (P + R)
    peak_gb = torch.cuda.max_memory_allocated() / 1e9 if dev.type == "cuda" else None
    return [dict(impl=k, ckpt=ckpt, pairs=n, seq_tokens=tokens, step_s=s, tok_s=tokens / s, tflops=flops / s / 1e12,
                 mfu=flops / s / 1e12 / peak if peak else None, peak_gb=peak_gb) for k, s in t.items()]


# 5. A whole SePT round: sept_loop's own, on the toy (its metrics line times the sampling and the training).

def round_row(cfg: BenchConfig, dev) -> dict:
    """`python sept_loop.py --rounds 1`, the toy preset (with evaluations of one answer, before and after)."""
    import sept_loop
    toy = sept_loop.PRESETS["toy"]
    B, N = (8, 8) if cfg.quick else (toy["batch_prompts"], toy["max_response_tokens"])
    with tempfile.TemporaryDirectory() as out:
        sept_loop.main(["--model", cfg.toy, "--rounds", "1", "--batch-prompts", str(B), "--max-response-tokens",
                        str(N), "--eval-n", "1", "--eval-max-questions", "1", "--device", dev.type, "--out", out])
        line = next(m for m in runs.read_metrics(out) if "tau_s" in m)
    sampling, training = line["seconds_sampling"], line["seconds_training"]
    return dict(answers=B, seconds_sampling=sampling, seconds_training=training, seconds_total=sampling + training,
                response_len_mean=line["response_len_mean"])


def section_rows(section: str, cfg: BenchConfig, dev, report: dict) -> list:
    """What a section measures on this device: its rows as (name, a function of no arguments that measures it)."""
    cuda, quick, copy = dev.type == "cuda", cfg.quick, report["machine"]["copy_gb_s"]
    big = cuda and not quick  # the rows at the 1.5B shape
    if section == "sampling":  # name, batch, prompt tokens (the toy: its questions'), new tokens
        cases = [("toy", 8, 0, 8)] if quick else [("toy", 64, 0, 48), ("smollm-135m", 16, 32, 64)]
        cases += [("qwen2.5-1.5b", int(B), cfg.gpu_prompt_tokens, cfg.gpu_new_tokens, cfg.decode_context)
                  for B in cfg.gpu_sizes.split(",") if B and big]
        return [(f"{c[0]} b{c[1]}", functools.partial(sampling_row, cfg, dev, copy, *c)) for c in cases]
    if section == "lengths":  # name, prompts, rows (the paper preset's on CUDA), prompt tokens, answer cap
        cases = ([("toy", 16, 4, 8, 16)] if quick else [("qwen2.5-1.5b", 1024, 256, 160, cfg.ragged_cap)] if cuda
                 else [("toy", 1024, 256, 16, 96), ("smollm-135m", 32, 8, 32, 64)])  # CPU: 3,072 / 32 and / 48
        reps = 1 if cuda or quick else cfg.reps
        return [(f"ragged {c[0]}", functools.partial(ragged_row, cfg, dev, reps, *c)) for c in cases]
    if section == "kernels":  # prompt or cache lengths, decode batch sizes; ~16k tokens per prefill on CUDA
        lens = [32] if quick else [512, 1024, 2048, 4096, 8192] if cuda else [128, 256]
        batches = [1] if quick else [1, 16, 64] if cuda else [1, 4]
        row = functools.partial(kernel_row, dev, copy, 2 if quick else 5)
        rows = [(f"prefill T{T}", functools.partial(row, "prefill", max(1, 16384 // T) if cuda else 1, T)) for T in lens]
        return rows + [(f"decode b{B} S{S}", functools.partial(row, "decode", B, S)) for B in batches for S in lens]
    if section == "training":  # name, pairs, prompt and response tokens (the paper's on CUDA), checkpointing
        cases = [("qwen2.5-1.5b", 4, 1024, 3072, c) for c in (True, False)] if big else [
            ("toy", 2, 8, 8, False) if quick else ("toy", 16, 16, 48, False)]
        # on CUDA one at a time (two 1.5B models with their AdamW state crowd one GPU), on the CPU interleaved
        groups = [["sept"], ["transformers"]] if cuda else [["sept", "transformers"]]
        row = functools.partial(train_rows, cfg, dev, report["machine"]["peak_tflops"], 2 if cuda else cfg.reps)
        return [(f"{c[0]} ckpt={'on' if c[-1] else 'off'} {'+'.join(g)}", functools.partial(row, g, *c))
                for c in cases for g in groups]
    return [("toy round", functools.partial(round_row, cfg, dev))]


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
        for name, fn in section_rows(s, cfg, dev, report):
            run_row(report, cfg, s, name, fn)
    runs.write_file(cfg.out, json.dumps(report, indent=1))
    print(f"wrote {cfg.out}")


if __name__ == "__main__":
    main()
