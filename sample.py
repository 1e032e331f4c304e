"""sample.py — how we draw answers: batched generation with a KV cache, the prompts streaming through a fixed
set of rows (continuous batching). SePT's answers run from a few dozen tokens to the 3,072-token cap: a batch that
waits for its longest answer idles most of its rows. So generate keeps max_batch rows of KV cache and alternates a
host check (hand back the ended answers, give free rows to waiting prompts) with decode steps: one CUDA graph over
every row on the GPU; eagerly (the CPU) the running rows only. Out of memory, it goes on with half the rows.

    python sample.py --prompt "12+47+30" -n 4 --temperature 0.6          # the toy model in data/toy, on CPU
    python sample.py --model ~/ckpt/Qwen2.5-Math-1.5B --template qwen-math --prompt "What is 2+3?"
"""
import collections
import functools
import os
import sys
import time
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

import cli
import model as model_lib


def check_sampling(temperature: float, top_p: float) -> None:
    """A NaN, negative or infinite τ, or a nucleus outside (0, 1] would draw garbage: an error instead."""
    if not (0 <= temperature < float("inf") and 0 < top_p <= 1):
        raise ValueError(f"temperature {temperature}, top_p {top_p}: expected temperature >= 0 (0 = greedy) and "
                         f"top_p in (0, 1]")


def sample_next(logits: torch.Tensor, temperature: float, top_p: float, generator) -> torch.Tensor:
    """Next token per row from fp32 logits (B, V): argmax if temperature == 0, else a draw from softmax(logits /
    temperature) restricted to the top-p nucleus, by inverse-CDF sampling: one uniform per row, located in the
    cumulative distribution (summed in fp64 so that 150k small probabilities add up exactly enough). No host
    sync, unlike torch.multinomial, and on the CPU several times faster than drawing a noise value per vocabulary
    entry. A token of probability 0 (outside the nucleus) is never picked: its interval of the CDF is empty."""
    check_sampling(temperature, top_p)
    if temperature == 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits / temperature, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        outside = sorted_probs.cumsum(-1) - sorted_probs >= top_p  # mass before a token already reaches p
        probs = probs.scatter(-1, order, sorted_probs.masked_fill(outside, 0.0))
    cdf = probs.cumsum(-1, dtype=torch.float64)                                         # (B, V)
    u = torch.rand(len(cdf), 1, generator=generator, device=cdf.device, dtype=torch.float64) * cdf[:, -1:]
    return torch.searchsorted(cdf, u, right=True)[:, 0].clamp_(max=cdf.shape[1] - 1)


def prefill(model, cache: model_lib.KVCache, prompts: list[list[int]], rows: torch.Tensor) -> torch.Tensor:
    """Writes the prompts into cache rows `rows` in one right-padded forward: fp32 logits (n, V) at their last
    tokens. Identical prompts (evaluation asks each question n times) are computed once, their k/v copied."""
    first = {}                                                    # distinct prompt -> where it first occurs
    for i, p in enumerate(prompts):
        first.setdefault(tuple(p), i)
    distinct = {p: j for j, p in enumerate(first)}
    which = torch.tensor([distinct[tuple(p)] for p in prompts], device=rows.device)  # (n,) its distinct prompt
    src = rows[list(first.values())]                              # the row that computes each distinct prompt
    lengths = [len(p) for p in first]
    T, lens = max(lengths), torch.tensor(lengths, dtype=torch.int32, device=rows.device)  # no host sync for T
    cache.lens[src] = lens  # the prompt lengths: the Triton prefill skips the padding after them
    tokens = torch.tensor([list(p) + [0] * (T - len(p)) for p in first], device=rows.device)
    h = model.hidden_states(tokens, cache, rows=src, mode="prefill")  # at positions 0..T-1
    last = h[torch.arange(len(first), device=rows.device), lens.long() - 1]  # (n_distinct, hidden)
    logits = F.linear(last, model.head_weight).float()  # the head on each prompt's last token only
    if len(first) < len(prompts):
        cache.k[:, rows, :, :T] = cache.k[:, src[which], :, :T]
        cache.v[:, rows, :, :T] = cache.v[:, src[which], :, :T]
    cache.lens[rows] = lens[which]
    return logits[which]


@dataclass
class Rows:
    """The rows of the KV cache, each with a prompt and its answer so far: tensors changed in place on the device
    without a host sync (a static decode step reads them where they are), a list the host updates at the checks."""
    cache: model_lib.KVCache  # k, v (n_layers, B, n_kv_heads, max_len, head_dim); lens (B,): positions held
    prompt: list[int]         # index of the prompt in each row; -1 = free
    next_input: torch.Tensor  # (B,) each row's newest token, which the next decode step feeds
    done: torch.Tensor        # (B,) bool: the answer ended (stop id or budget), or the row is free
    tokens: torch.Tensor      # (B, max_len + 1) the answer so far in [:n_new]; an ended row writes past it, unread
    n_new: torch.Tensor       # (B,) tokens in the answer so far
    budget: torch.Tensor      # (B,) the max_new_tokens of the row's prompt
    entropy: torch.Tensor     # (B,) sum over the answer of the next-token entropies (at temperature 1)
    static: Callable[[], torch.Tensor] | None = None  # the static decode step over every row, see static_rows
    key: tuple = ()           # what that step reads at fixed addresses: the weights; and the shape


def empty_rows(model, B: int, max_len: int) -> Rows:
    """B rows over a new KV cache that hold no prompt: done, so that a decode step parks them."""
    device = model.head_weight.device
    cache = model_lib.new_kv_cache(model.config, B, max_len, model.head_weight.dtype, device)
    zeros = functools.partial(torch.zeros, B, dtype=torch.long, device=device)
    return Rows(cache, [-1] * B, next_input=zeros(), done=torch.ones(B, dtype=torch.bool, device=device),
                tokens=zeros(max_len + 1), n_new=zeros(), budget=zeros(), entropy=zeros(dtype=torch.float32))


def decode_step(model, rows: Rows, n: int, span: int) -> torch.Tensor:
    """Feeds each of the first n rows its newest token at its position, attention reading positions [0, span) only:
    fp32 logits (n, V). An ended row parks at position 0, a slot that only its next prefill reads (and rewrites)."""
    c = rows.cache
    cache = model_lib.KVCache(c.k[:, :n, :, :span], c.v[:, :n, :, :span], c.lens[:n])  # views of the first rows
    positions = torch.where(rows.done[:n], 0, cache.lens)
    h = model.hidden_states(rows.next_input[:n, None], cache, positions[:, None].long(), mode="decode")
    cache.lens.copy_(positions + 1)
    return F.linear(h[:, 0], model.head_weight).float()  # the head on the one new position only


# static_rows' last rows: their KV cache and CUDA graph stay allocated between calls until this is set to None
held_static_rows: Rows | None = None


def static_length(model, max_len: int) -> int:  # rounded up to 256s, at most the context: fewer shapes to capture
    return min(-(-max_len // 256) * 256, model.config.max_position_embeddings)


def static_rows(model, B: int, max_len: int) -> Rows:
    """Empty rows with a static decode step (every row, the whole cache, at fixed addresses): on CUDA captured once
    as a CUDA graph and replayed (one launch instead of ~70 per layer: launch-bound becomes bandwidth-bound), on
    the CPU run as it is (how tests check it). Kept for later calls of the same model (weights at the same
    addresses) and shape, a cache length rounded up to 256s (at most the context), so rounds replay one graph."""
    global held_static_rows
    device, max_len = model.head_weight.device, static_length(model, max_len)
    key = (tuple((p.data_ptr(), p.dtype, p.shape) for p in model.parameters()), B, max_len,
           model_lib.attention_backend(device))
    if held_static_rows is None or held_static_rows.key != key:
        held_static_rows = None  # released first: its memory may be needed for the new one
        rows = empty_rows(model, B, max_len)
        rows.static = functools.partial(decode_step, model, rows, B, max_len)  # every row, the whole cache
        if device.type == "cuda":  # warm-up and capture write slot 0 of each row, as parked rows do
            rows.static = capture(rows.static)
        rows.key, held_static_rows = key, rows
    held_static_rows.prompt = [-1] * B
    held_static_rows.done.fill_(True)
    return held_static_rows


def capture(step: Callable[[], torch.Tensor]) -> Callable[[], torch.Tensor]:
    """step captured as a CUDA graph, returned as its replay."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up off the capture: Triton compiles, cuBLAS picks its kernels
        step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(graph):
            logits = step()
    except torch.OutOfMemoryError:
        raise  # generate's to handle: fewer rows
    except RuntimeError as e:  # a capture this torch or driver refuses: the same static step, launched eagerly
        print(f"sample.py: CUDA graph capture failed ({e}); decoding without it", file=sys.stderr)
        return step

    def replay():
        graph.replay()
        return logits
    return replay


def record(rows: Rows, idx: torch.Tensor, logits: torch.Tensor, eos: torch.Tensor, entropy: bool) -> None:
    """Appends to each running row of rows idx its newest token (next_input; logits: those rows'), an answer ending
    at a stop id (kept) or at its budget. No host sync."""
    tokens, running = rows.next_input[idx], ~rows.done[idx]
    rows.tokens[idx, rows.n_new[idx]] = tokens
    if entropy:
        logp = torch.log_softmax(logits, dim=-1)
        rows.entropy[idx] -= torch.where(running, (logp.exp() * logp).sum(-1), 0.0)
    rows.n_new[idx] += running
    rows.done[idx] |= torch.isin(tokens, eos) | (rows.n_new[idx] >= rows.budget[idx])


def hand_back(rows: Rows, answers: list, entropies: list, progress=None, waiting=None) -> list[int]:
    """Copies the ended answers out of their rows (one host sync), frees those rows and returns the running ones.
    With `waiting` (out of memory) the running ones too, back to the queue's front: vLLM's preemption by recompute,
    the answer so far kept and prefilled again after its prompt when the row restarts."""
    done = rows.done.tolist()
    freed = [r for r, i in enumerate(rows.prompt) if i >= 0 and (done[r] or waiting is not None)]
    if freed:
        tokens, n_new, entropy = rows.tokens[freed].tolist(), rows.n_new[freed].tolist(), rows.entropy[freed].tolist()
        for r, toks, n, h in reversed(list(zip(freed, tokens, n_new, entropy))):  # appendleft keeps their order
            i = rows.prompt[r]
            before = len(answers[i])  # a preempted answer's first part, if any
            answers[i], entropies[i] = answers[i] + toks[:n], (entropies[i] * before + h) / max(1, before + n)
            if not done[r]:
                waiting.appendleft(i)
            rows.prompt[r] = -1
        if progress:
            progress(sum(done[r] for r in freed))
    return [r for r, i in enumerate(rows.prompt) if i >= 0]


def compact(rows: Rows, running: list[int]) -> None:
    """Eagerly: the running rows become the first len(running) rows, so that a step costs only them. Those past
    that move into the holes that ended rows leave before it (their k/v copied): one copy per hole, not per row."""
    n, kept = len(running), set(running)
    holes, movers = [r for r in range(n) if r not in kept], [r for r in running if r >= n]
    if holes:
        span = int(rows.cache.lens[movers].max())
        for kv in (rows.cache.k, rows.cache.v):
            kv[:, holes, :, :span] = kv[:, movers, :, :span]
        for x in (rows.cache.lens, rows.next_input, rows.tokens, rows.n_new, rows.budget, rows.done, rows.entropy):
            x[holes] = x[movers]
        for h, m in zip(holes, movers):  # the host's list likewise
            rows.prompt[h], rows.prompt[m] = rows.prompt[m], -1
        rows.done[movers] = True  # the rows left behind are free


def default_refill_group(model, B: int, max_len: int, static: bool) -> int:
    """Free rows a refill waits for. A decode step reads every weight and each row's cache: where the weights
    outweigh the cache (or on the GPU), a step costs the same however few rows run, so rows refill as they free
    up, 1/16 at a time; else (the toy on the CPU) all rows end first, then start together at the same position."""
    c, size = model.config, model.head_weight.element_size()
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    cache = 2 * c.num_hidden_layers * B * c.num_key_value_heads * max_len * c.head_dim * size
    return max(1, B // 16) if static or model.head_weight.device.type == "cuda" or weights > cache else B


def budgets_for(model, prompts: list[list[int]], max_new_tokens) -> list[int]:
    """One budget per prompt, checked: a count >= 0, a non-empty prompt, prompt + budget within the context."""
    budgets = [max_new_tokens] * len(prompts) if isinstance(max_new_tokens, int) else list(max_new_tokens)
    if len(budgets) != len(prompts):
        raise ValueError(f"max_new_tokens has {len(budgets)} entries for {len(prompts)} prompts")
    context = model.config.max_position_embeddings
    for i, (p, n) in enumerate(zip(prompts, budgets)):
        if n < 0:
            raise ValueError(f"max_new_tokens is {n}; it must be 0 or more")
        if not p:
            raise ValueError(f"prompt {i} is empty")
        if len(p) + n > context:
            raise ValueError(f"prompt {i} ({len(p)} tokens) + max_new_tokens ({n}) exceeds the model's context of "
                             f"{context} tokens")
    return budgets


@torch.inference_mode()
def generate(model, prompts: list[list[int]], *, max_new_tokens: int | list[int], temperature: float = 1.0,
             top_p: float = 1.0, eos_ids=(), seed: int | None = None, max_batch: int | None = None,
             stats: dict | None = None, entropy: bool = False, progress=None, cuda_graph: bool | None = None,
             check_every: int | None = None, refill_group: int | None = None) -> list[list[int]]:
    """New token ids for each prompt, ending with the first EOS when one was produced. max_new_tokens: one
    budget for all prompts, or one per prompt. max_batch: rows of the KV cache (None = one per prompt); more
    prompts stream through them. stats: a dict that gets "rows", max_batch or, after running out of memory, the
    fewer rows that went on, and "entropy": with entropy=True each prompt's mean next-token entropy (at
    temperature 1) over its answer (a log-softmax per token, so only when asked), else None.
    progress(n): n answers handed back (tqdm's update).
    cuda_graph: decode with static_rows (None = on CUDA with the Triton backend, unless SEPT_CUDA_GRAPH=0).
    check_every: decode steps between host checks (None = 8 on CUDA, 1 on the CPU)."""
    check_sampling(temperature, top_p)  # before the prefill, not at the first token
    budgets = budgets_for(model, prompts, max_new_tokens)
    answers, entropies = [[] for _ in prompts], [0.0] * len(prompts)
    # shortest prompts first: the rows of a batch then sit at nearly the same positions, and a prefill pads little
    waiting = collections.deque(sorted((i for i, n in enumerate(budgets) if n > 0), key=lambda i: len(prompts[i])))
    B = min(len(waiting), max_batch or len(waiting))
    stats = {} if stats is None else stats  # kept up to date: rows fewer after running out of memory
    stats.update(rows=max_batch or B, entropy=entropies if entropy else None)
    if not waiting:
        return answers
    device = model.head_weight.device
    if cuda_graph is None:
        cuda_graph = (device.type == "cuda" and model_lib.attention_backend(device) == "triton"
                      and os.environ.get("SEPT_CUDA_GRAPH", "1") != "0")
    check_every = check_every or (8 if device.type == "cuda" else 1)
    max_len = max(len(prompts[i]) + budgets[i] for i in waiting)  # the longest sequence
    generator = torch.Generator(device=device)  # unseeded: a seed drawn from the global RNG, never reseeding it
    generator.manual_seed(seed if seed is not None else torch.randint(1 << 62, ()).item())
    eos = torch.tensor(sorted(set(eos_ids)), dtype=torch.long, device=device)
    rows = None
    while True:
        try:
            if rows is None:  # B rows: at the start, and half as many after running out of memory
                rows = static_rows(model, B, max_len) if cuda_graph else empty_rows(model, B, max_len)
                group = min(B, refill_group or default_refill_group(model, B, max_len, cuda_graph))
            # 1. the host check: hand back the ended answers, give free rows to the next waiting prompts
            running = hand_back(rows, answers, entropies, progress)
            if not running and not waiting:
                break
            free = B - len(running)  # a refill waits for `group` free rows, or for all the waiting prompts to fit
            n = min(free, len(waiting)) if free >= min(group, len(waiting)) else 0
            if not rows.static:  # eagerly the running rows move to the front, the new prompts' rows next
                compact(rows, running)
            if n:  # the next prompts take free rows, a prefill (of a preempted one's answer too) giving the next tokens
                new = [waiting.popleft() for _ in range(n)]
                idx = torch.tensor([r for r, i in enumerate(rows.prompt) if i < 0][:n], device=device)
                for r, i in zip(idx.tolist(), new):
                    rows.prompt[r] = i
                rows.budget[idx] = torch.tensor([budgets[i] - len(answers[i]) for i in new], device=device)
                rows.n_new[idx], rows.done[idx], rows.entropy[idx] = 0, False, 0.0
                logits = prefill(model, rows.cache, [[*prompts[i], *answers[i]] for i in new], idx)
                rows.next_input[idx] = sample_next(logits, temperature, top_p, generator)
                record(rows, idx, logits, eos, entropy)
            # 2. decode steps until the next check; eagerly the first rows, attention reading to the longest
            batch = len(running) + n
            span = max_len if rows.static else min(int(rows.cache.lens[:batch].max()) + check_every, max_len)
            decode = rows.static or functools.partial(decode_step, model, rows, batch, span)
            idx = torch.arange(B if rows.static else batch, device=device)  # the rows each step decodes
            for _ in range(check_every):  # feed each row its newest token through the cache, sample the next one
                logits = decode()
                rows.next_input[idx] = sample_next(logits, temperature, top_p, generator)
                record(rows, idx, logits, eos, entropy)
        except torch.OutOfMemoryError as e:  # every running row back to the waiting queue, then half the rows
            if B == 1:
                raise torch.OutOfMemoryError(f"sample.py: out of memory with one row ({max_len} positions)") from e
            if rows is not None:
                hand_back(rows, answers, entropies, progress, waiting)
            rows, B = None, B // 2  # their memory freed (static rows: by static_rows) before the new ones'
            stats["rows"] = B
            print(f"sample.py: out of memory; the rows halved to {B}", file=sys.stderr)
    return answers


# ----------------------------------------------------------------------------------------------------------
# The sampling copy of a model being trained, and how many rows fit beside it.

def make_sampler(master: model_lib.Transformer, dtype: torch.dtype) -> model_lib.Transformer:
    """A copy of `master` in `dtype` for sampling. When dtype is the master's own (fp32 on the CPU) the sampler
    IS the master: one copy serves both and refresh_sampler does nothing."""
    if dtype == master.head_weight.dtype:
        return master
    sampler = model_lib.empty_model(master.config, master.head_weight.device, dtype)
    refresh_sampler(master, sampler)
    return sampler.eval()


@torch.no_grad()
def refresh_sampler(master: model_lib.Transformer, sampler: model_lib.Transformer) -> None:
    """Copy (and cast) the master weights into the sampler's existing storage: no reallocation."""
    if sampler is master:
        return
    src, dst = dict(master.named_parameters()), dict(sampler.named_parameters())
    if src.keys() != dst.keys():
        raise ValueError(f"sampler and master differ in parameters: {sorted(src.keys() ^ dst.keys())[:4]}")
    for name, p in dst.items():
        p.copy_(src[name])


def rows_that_fit(model, max_len: int, reserve: int, memory: tuple[int, int] | None = None) -> int:
    """The rows of KV cache (at max_len positions) and per-row logits that fit in the GPU's free memory, less
    `reserve` bytes (what training will still allocate) and a margin: max(4 GiB, 20% of the device), for the
    allocator's fragmentation and the activations of a prefill. vLLM sizes its cache this way
    (gpu_memory_utilization); running out anyway, generate halves the rows. memory: (free, total) bytes, by
    default the GPU's; on the CPU 256 rows."""
    if memory is None and model.head_weight.device.type != "cuda":
        return 256
    free, total = memory or torch.cuda.mem_get_info(model.head_weight.device)
    c = model.config
    kv = 2 * c.num_hidden_layers * c.num_key_value_heads * c.head_dim * model.head_weight.element_size()
    per_row = kv * static_length(model, max_len) + 16 * c.vocab_size  # a step's fp32 logits, probabilities, fp64 CDF
    return max(1, int(free - reserve - max(4 << 30, 0.2 * total)) // per_row)


# ----------------------------------------------------------------------------------------------------------
# CLI: try a checkpoint.

@dataclass
class SampleConfig:
    model: str = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "toy")  # checkpoint folder
    prompt: str = "12+47+30"       # the question (put into the template)
    template: str = "toy"          # prompt template (data/prompts.py): toy, raw, qwen-math, qwen-instruct, chat
    temperature: float = 1.0       # 0 = greedy
    top_p: float = 1.0             # nucleus mass
    max_new_tokens: int = 0        # 0 = up to the model's context, at most 2,048
    n: int = 1                     # completions to draw
    stop: str = "checkpoint"       # answers end at: checkpoint = its EOS ids (as vLLM); turn = also end-of-turn tokens
    seed: int = 0
    device: str = "auto"           # auto = cuda if available, else cpu
    dtype: str = "auto"            # auto = bfloat16 on cuda, float32 on cpu


def main(argv=None):
    from data import prompts as prompt_lib
    cfg = cli.config_from_argv(SampleConfig, argv, __doc__.split("\n")[0], aliases={"n": "-n"})
    device = cli.pick_device(cfg.device)
    tokenizer = prompt_lib.load_tokenizer(cfg.model, cfg.stop)  # a bad --stop fails before the weights load
    model = model_lib.load_model(cfg.model, device=device, dtype=cli.pick_dtype(cfg.dtype, device))
    text = prompt_lib.build_prompt(cfg.prompt, cfg.template, model_dir=cfg.model)
    ids = tokenizer.encode(text)
    # 0 = what the context leaves, at least 1 so that a prompt filling the context is generate's clear error
    max_new = cfg.max_new_tokens or max(1, min(2048, model.config.max_position_embeddings - len(ids)))
    t0 = time.time()
    completions = generate(model, [ids] * cfg.n, max_new_tokens=max_new, temperature=cfg.temperature,
                           top_p=cfg.top_p, eos_ids=tokenizer.stop_ids, seed=cfg.seed)
    for i, c in enumerate(completions):
        print(f"--- completion {i} ({len(c)} tokens)\n{text}{tokenizer.decode(c)}")
    print(f"--- {sum(map(len, completions))} tokens in {time.time() - t0:.2f} s on {device}")


if __name__ == "__main__":
    try:
        main()
    except (ValueError, OSError) as e:  # a missing checkpoint, a prompt too long: one line, no traceback
        raise SystemExit(f"error: {e}") from None
