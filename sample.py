"""sample.py — how we draw answers: batched generation with a KV cache, the prompts streaming through a fixed
set of rows (continuous batching).

SePT's answers run from a few dozen tokens to the 3,072-token cap: a batch that waits for its longest answer idles
most of its rows. So generate keeps max_batch rows of KV cache, and at each host check (every 8 decode steps on
the GPU, each a sync; every step on the CPU) hands back the ended answers (a stop id, or the row's own budget)
and gives rows to the next waiting prompts, prefilled in one forward. On the GPU the decode step is one CUDA graph
over all rows, an ended row parked at position 0 until the check refills it. Eagerly (the CPU) ended rows leave
the batch at once and new prompts join it, as rows free up or once all have ended (refill_as_rows_free).
Sampling is one pure function with an explicit torch.Generator; temperature 0 is greedy.

    python sample.py --prompt "12+47+30" -n 4 --temperature 0.6          # the toy model in data/toy, on CPU
    python sample.py --model ~/ckpt/Qwen2.5-Math-1.5B --template qwen-math --prompt "What is 2+3?"
"""
import collections
import os
import sys
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

import cli
import model as model_lib

SYNC_EVERY = {"cuda": 8, "cpu": 1}  # decode steps between host checks; on CUDA each is a host-device sync


def check_sampling(temperature: float, top_p: float) -> None:
    """A NaN, negative or infinite τ, or a nucleus outside (0, 1] (top_p <= 0: always the last vocabulary id) would
    draw garbage rather than fail: an error instead."""
    if not (0 <= temperature < float("inf") and 0 < top_p <= 1):
        raise ValueError(f"temperature {temperature}, top_p {top_p}: expected temperature >= 0 (0 = greedy) and "
                         f"top_p in (0, 1]")


def sample_next(logits: torch.Tensor, temperature: float, top_p: float, generator) -> torch.Tensor:
    """Next token per row from fp32 logits (B, V): argmax if temperature == 0, else a draw from
    softmax(logits / temperature) restricted to the top-p nucleus.

    Inverse-CDF sampling: one uniform per row, located in the cumulative distribution (summed in fp64 so
    that 150k small probabilities add up exactly enough). No host sync, unlike torch.multinomial, and on the
    CPU several times faster than drawing a noise value per vocabulary entry. A token of probability 0 (outside
    the nucleus) is never picked: the uniform would have to fall in an empty interval."""
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


def decode_function(model, cache: model_lib.KVCache, cuda_graph: bool):
    """step(tokens (B,), positions (B,)) -> fp32 logits (B, V): one decode forward through the cache.

    With cuda_graph on a CUDA device the forward is captured once and replayed: one launch instead of ~70 per
    layer, the difference between launch-bound and bandwidth-bound decoding. Capture needs static shapes and
    addresses, so the batch keeps its size (finished rows park at position 0 instead of leaving) and attention
    reads the whole cache (the Triton kernel stops at each row's length). On the CPU the same static path runs
    without capture, which is how the tests check it."""
    def forward(tokens, positions):
        h = model.hidden_states(tokens[:, None], cache, positions[:, None])
        return F.linear(h[:, 0], model.head_weight).float()  # the head on the one new position only
    device = cache.k.device
    if not cuda_graph or device.type != "cuda":
        return forward
    tokens_in = torch.zeros(cache.k.shape[1], dtype=torch.long, device=device)
    positions_in = cache.lens.long()  # the current positions: warm-up and capture rewrite the same cache slots
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up off the capture: Triton compiles, cuBLAS picks its kernels
        forward(tokens_in, positions_in)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(graph):
            logits_out = forward(tokens_in, positions_in)
    except RuntimeError as e:  # a capture this torch/driver refuses: the same static path, launched eagerly
        print(f"sample.py: CUDA graph capture failed ({e}); decoding without it", file=sys.stderr)
        return forward

    def replay(tokens, positions):
        tokens_in.copy_(tokens)
        positions_in.copy_(positions)
        graph.replay()
        return logits_out
    return replay


@dataclass
class Rows:
    """The rows of the KV cache: which prompt each holds and its answer so far (eagerly the batch is the first
    len(cache.lens) of them, see rebatch). The tensors change on the device every step without a host sync; the
    lists are the host's, updated at the checks."""
    prompt: list[int]      # index of the prompt in each row; -1 = free
    ends: list[int]        # the step at which each row's budget runs out
    last: torch.Tensor     # (B,) the token each row feeds to the next decode step
    tokens: torch.Tensor   # (B, max_new + 1) the answer so far in [:n_new]; an ended row writes past it, unread
    n_new: torch.Tensor    # (B,) tokens in the answer so far
    budget: torch.Tensor   # (B,) the max_new_tokens of the row's prompt
    done: torch.Tensor     # (B,) bool: the answer ended (stop id or budget), or the row is free
    entropy: torch.Tensor  # (B,) sum over the answer of the next-token entropies (at temperature 1)


def free_rows(n: int, max_new: int, device) -> Rows:
    """n rows that hold no prompt: done, so that a decode step parks them."""
    def zeros(*shape, dtype=torch.long):
        return torch.zeros(n, *shape, dtype=dtype, device=device)
    return Rows(prompt=[-1] * n, ends=[0] * n, last=zeros(), tokens=zeros(max_new + 1), n_new=zeros(), budget=zeros(),
                done=torch.ones(n, dtype=torch.bool, device=device), entropy=torch.zeros(n, device=device))


def prefill(model, cache: model_lib.KVCache, prompts: list[list[int]], rows: torch.Tensor) -> torch.Tensor:
    """Writes the prompts into the given cache rows in one right-padded forward and returns fp32 logits (n, V) at
    each prompt's last token. Identical prompts (evaluation asks each question n times) are computed once, their
    k/v then copied to the other rows."""
    first = {}                                                    # distinct prompt -> where it first occurs
    for i, p in enumerate(prompts):
        first.setdefault(tuple(p), i)
    distinct = {p: j for j, p in enumerate(first)}
    which = torch.tensor([distinct[tuple(p)] for p in prompts], device=rows.device)  # (n,) its distinct prompt
    src = rows[list(first.values())]                              # the row that computes each distinct prompt
    lens = torch.tensor([len(p) for p in first], dtype=torch.int32, device=rows.device)
    T = max(2, *lens.tolist())  # T == 1 would read as a decode step; the cache has room for 2 (prompt + budget)
    cache.lens[src] = lens  # the prompt lengths: the Triton prefill skips the padding after them
    tokens = torch.tensor([list(p) + [0] * (T - len(p)) for p in first], device=rows.device)
    h = model.hidden_states(tokens, cache, torch.arange(T, device=rows.device).expand(len(first), T), rows=src)
    last = h[torch.arange(len(first), device=rows.device), lens.long() - 1]  # (n_distinct, hidden)
    logits = F.linear(last, model.head_weight).float()  # the head on each prompt's last token only
    if len(first) < len(prompts):
        cache.k[:, rows, :, :T] = cache.k[:, src[which], :, :T]
        cache.v[:, rows, :, :T] = cache.v[:, src[which], :, :T]
    cache.lens[rows] = lens[which]
    return logits[which]


def decode_step(decode, cache: model_lib.KVCache, tokens: torch.Tensor, done: torch.Tensor) -> torch.Tensor:
    """Feeds each row its token at its own position and returns fp32 logits (B, V); keeps the cache's lens and
    filled. An ended row parks at position 0: it rewrites a slot that only its next prefill reads, and its
    attention reads one position."""
    positions = torch.where(done, 0, cache.lens)
    cache.filled = min(cache.filled + 1, cache.k.shape[3])  # eager attention reads [0, filled); static: all
    logits = decode(tokens, positions.long())
    cache.lens = positions + 1
    return logits


def record(rows: Rows, tokens: torch.Tensor, logits: torch.Tensor, eos: torch.Tensor, entropy: bool, idx=None):
    """Appends each running row's new token (tokens and logits of rows idx only, if given); an answer ends at a
    stop id (kept) or at its budget. No host sync."""
    idx = torch.arange(len(tokens), device=tokens.device) if idx is None else idx
    running = ~rows.done[idx]
    rows.tokens[idx, rows.n_new[idx]] = tokens
    if entropy:
        logp = torch.log_softmax(logits, dim=-1)
        rows.entropy[idx] -= torch.where(running, (logp.exp() * logp).sum(-1), 0.0)
    rows.n_new[idx] += running
    rows.done[idx] |= torch.isin(tokens, eos) | (rows.n_new[idx] >= rows.budget[idx])


def hand_back(rows: Rows, answers: list, entropies: list, progress=None) -> list[int]:
    """Copies the ended answers out of their rows (one host sync), frees those rows and returns the running ones."""
    ended = [r for r, d in enumerate(rows.done.tolist()) if d and rows.prompt[r] >= 0]
    if ended:
        idx = torch.tensor(ended, device=rows.done.device)
        tokens, n_new, entropy = rows.tokens[idx].tolist(), rows.n_new[idx].tolist(), rows.entropy[idx].tolist()
        for r, toks, n, h in zip(ended, tokens, n_new, entropy):
            answers[rows.prompt[r]], entropies[rows.prompt[r]] = toks[:n], h / max(1, n)
            rows.prompt[r] = -1
        if progress:
            progress(len(ended))
    return [r for r, i in enumerate(rows.prompt) if i >= 0]


def refill(model, cache, rows: Rows, new: list[int], prompts, budgets, step: int):
    """Prompts `new` take the first free rows, prefilled in one call: returns those rows (n,) and the fp32 logits
    (n, V) of each one's first token."""
    free = [r for r, i in enumerate(rows.prompt) if i < 0][:len(new)]
    for r, i in zip(free, new):
        rows.prompt[r], rows.ends[r] = i, step + budgets[i] - 1  # the first token comes at the check itself
    idx = torch.tensor(free, device=rows.done.device)
    rows.budget[idx] = torch.tensor([budgets[i] for i in new], device=idx.device)
    rows.n_new[idx], rows.done[idx], rows.entropy[idx] = 0, False, 0.0
    return idx, prefill(model, cache, [prompts[i] for i in new], idx)


def rebatch(full: model_lib.KVCache, cache, rows: Rows, keep: list[int], grow: int) -> model_lib.KVCache:
    """Eager path: the batch becomes its running rows `keep` and then `grow` free rows, the first len(keep) + grow
    rows of the storage, so that a step costs only them. The running rows past len(keep) move into the holes
    that ended rows leave before it (their k/v [:filled] copied): one copy per ended row, not per running row."""
    n, kept, filled = len(keep), set(keep), int(cache.lens.max())
    holes, movers = [r for r in range(n) if r not in kept], [r for r in keep if r >= n]
    if holes:
        src, dst = torch.tensor(movers, device=rows.done.device), torch.tensor(holes, device=rows.done.device)
        for kv in (full.k, full.v):
            kv[:, dst, :, :filled] = kv[:, src, :, :filled]
        for x in (cache.lens, rows.last, rows.tokens, rows.n_new, rows.budget, rows.done, rows.entropy):
            x[dst] = x[src]
        for h, m in zip(holes, movers):  # the host's lists likewise
            rows.prompt[h], rows.ends[h] = rows.prompt[m], rows.ends[m]
            rows.prompt[m] = -1
        rows.done[src] = True  # the rows left behind are free
    lens = torch.cat([cache.lens[:n], cache.lens.new_zeros(grow)])  # the free rows' lens: set by their prefill
    return model_lib.KVCache(full.k[:, :n + grow], full.v[:, :n + grow], lens, filled)


def refill_as_rows_free(model, cache: model_lib.KVCache, cuda_graph: bool) -> bool:
    """When ended rows get new prompts. A decode step reads every weight once and each row's cache. On the GPU,
    or when the weights outweigh the rows, a step costs about the same however few rows run: rows are refilled
    as they free up, 1/16 of the batch at a time (a prefill costs about a decode step). Otherwise (the toy on the
    CPU) an emptying batch wastes nothing, and rows that start together stay at the same position, so attention
    reads little padding: the next prompts wait for all rows to end (or for as few as there are prompts)."""
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    return cuda_graph or cache.k.device.type == "cuda" or weights > 2 * cache.k[:, 0].nbytes * cache.k.shape[1]


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
             top_p: float = 1.0, eos_ids=(), seed: int | None = None, stats: dict | None = None,
             cuda_graph: bool | None = None, max_batch: int | None = None, progress=None) -> list[list[int]]:
    """New token ids for each prompt, ending with the first EOS when one was produced.

    max_new_tokens: one budget for all prompts, or one per prompt. max_batch: rows of the KV cache (None = one
    per prompt); more prompts stream through them, ended rows taking the next waiting prompts.
    stats: if a dict is given, stats["entropy"] gets each prompt's mean entropy of the model's own next-token
    distribution (at temperature 1) over its generated tokens — a direct read of how sharp the model is.
    cuda_graph: decode with a fixed-shape step (every row, the whole cache), replayed as a CUDA graph on CUDA
    (see decode_function); None = on CUDA with the Triton backend, where SEPT_CUDA_GRAPH=0 switches it off.
    progress: called with the number of answers handed back at each check (a tqdm bar's update)."""
    check_sampling(temperature, top_p)  # before the prefill, not at the first token
    budgets = budgets_for(model, prompts, max_new_tokens)
    answers, entropies = [[] for _ in prompts], [0.0] * len(prompts)
    if stats is not None:
        stats["entropy"] = entropies  # filled in as the answers are handed back
    # shortest prompts first: the rows of a batch then sit at nearly the same positions, and a prefill pads little
    waiting = collections.deque(sorted((i for i, n in enumerate(budgets) if n > 0), key=lambda i: len(prompts[i])))
    if not waiting:
        return answers
    device = model.head_weight.device
    if cuda_graph is None:
        cuda_graph = (device.type == "cuda" and model_lib.attention_backend(device) == "triton"
                      and os.environ.get("SEPT_CUDA_GRAPH", "1") != "0")
    B = min(len(waiting), max_batch or len(waiting))
    full = model_lib.new_kv_cache(model.config, B, max(len(prompts[i]) + budgets[i] for i in waiting),
                                  model.head_weight.dtype, device)  # once per call, for the longest sequence
    full.filled = full.k.shape[3] if cuda_graph else 0
    group = max(1, B // 16) if refill_as_rows_free(model, full, cuda_graph) else B  # free rows a refill waits for
    generator = torch.Generator(device=device)  # unseeded: a seed drawn from the global RNG, never reseeding it
    generator.manual_seed(seed if seed is not None else torch.randint(1 << 62, ()).item())
    eos = torch.tensor(sorted(set(eos_ids)), dtype=torch.long, device=device)
    cache, rows, decode, step = full, free_rows(B, max(budgets), device), None, 0
    while True:
        # 1. the host check: hand back the ended answers, give free rows to the next waiting prompts
        running = hand_back(rows, answers, entropies, progress)
        if not running and not waiting:
            return answers
        free = B - len(running)  # a refill waits for `group` free rows, or for all the waiting prompts to fit
        n = min(free, len(waiting)) if free >= min(group, len(waiting)) else 0
        # the CUDA graph keeps every row, an ended one parked until a refill; eagerly ended rows leave the batch
        if not cuda_graph and (len(running) < len(cache.lens) or n):
            cache = rebatch(full, cache, rows, running, n)
        if n:  # the new prompts' prefill gives each its first token
            idx, logits = refill(model, cache, rows, [waiting.popleft() for _ in range(n)], prompts, budgets, step)
            rows.last[idx] = sample_next(logits, temperature, top_p, generator)
            record(rows, rows.last[idx], logits, eos, stats is not None, idx)
        if not cuda_graph:  # eager attention reads up to the longest row
            cache.filled = int(cache.lens.max())
        if decode is None or not cuda_graph:  # the CUDA graph is captured once; eagerly the batch changes shape
            decode = decode_function(model, cache, cuda_graph)
        # 2. decode steps until the next check, sooner when every running row's budget runs out
        last = max(e for e, i in zip(rows.ends, rows.prompt) if i >= 0)
        steps = max(1, min(SYNC_EVERY.get(device.type, 1), last - step))
        batch = slice(0, len(cache.lens))  # every row on the CUDA graph; eagerly the running ones
        for _ in range(steps):  # feed each row its last token through the cache, sample the next one
            logits = decode_step(decode, cache, rows.last[batch], rows.done[batch])
            rows.last[batch] = sample_next(logits, temperature, top_p, generator)
            record(rows, rows.last[batch], logits, eos, stats is not None)
        step += steps


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
    seed: int = 0
    device: str = "auto"           # auto = cuda if available, else cpu
    dtype: str = "auto"            # auto = bfloat16 on cuda, float32 on cpu


def main(argv=None):
    from data import prompts as prompt_lib
    cfg = cli.config_from_argv(SampleConfig, argv, __doc__.split("\n")[0], aliases={"n": "-n"})
    device = cli.pick_device(cfg.device)
    model = model_lib.load_model(cfg.model, device=device, dtype=cli.pick_dtype(cfg.dtype, device))
    tokenizer = prompt_lib.load_tokenizer(cfg.model)
    text = prompt_lib.build_prompt(cfg.prompt, cfg.template, model_dir=cfg.model)
    ids = tokenizer.encode(text)
    # 0 = what the context leaves, at least 1 so that a prompt filling the context is generate's clear error
    max_new = cfg.max_new_tokens or max(1, min(2048, model.config.max_position_embeddings - len(ids)))
    t0 = time.time()
    completions = generate(model, [ids] * cfg.n, max_new_tokens=max_new, temperature=cfg.temperature,
                           top_p=cfg.top_p, eos_ids=tokenizer.stop_ids, seed=cfg.seed)
    seconds = time.time() - t0
    for i, c in enumerate(completions):
        print(f"--- completion {i} ({len(c)} tokens)\n{text}{tokenizer.decode(c)}")
    print(f"--- {sum(map(len, completions))} tokens in {seconds:.2f} s on {device}")


if __name__ == "__main__":
    try:
        main()
    except (ValueError, OSError) as e:  # a missing checkpoint, a prompt too long: one line, no traceback
        raise SystemExit(f"error: {e}") from None
