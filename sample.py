"""sample.py — how we draw answers: batched generation with a KV cache (prefill once, then decode).

Prompts of different lengths are right-padded into one prefill; each row then decodes at its own position.
Finished rows stop costing compute, because SePT's responses range from a few dozen to thousands of tokens:
eagerly (the CPU) they leave the batch, the cache compacted at the periodic "all done?" check; on the GPU the
decode step is a replayed CUDA graph of fixed shape, so they stay and attend to a single cached position.
Sampling is one pure function with an explicit torch.Generator; temperature 0 is greedy.

    python sample.py --prompt "12+47+30" -n 4 --temperature 0.6          # the toy model in data/toy, on CPU
    python sample.py --model ~/ckpt/Qwen2.5-Math-1.5B --template qwen-math --prompt "What is 2+3?"
"""
import os
import sys
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

import cli
import model as model_lib

SYNC_EVERY = 8  # decode steps between host checks of "all finished?"; each check is one host-device sync


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


def last_logits(model, h: torch.Tensor) -> torch.Tensor:
    """Head on the given rows of hidden states only (B, hidden) -> fp32 logits (B, V)."""
    return F.linear(h, model.head_weight).float()


def decode_function(model, cache: model_lib.KVCache, cuda_graph: bool):
    """step(tokens (B,), positions (B,)) -> fp32 logits (B, V): one decode forward through the cache.

    With cuda_graph on a CUDA device the forward is captured once and replayed: one launch instead of ~70 per
    layer, the difference between launch-bound and bandwidth-bound decoding. Capture needs static shapes and
    addresses, so the batch keeps its size (finished rows park at position 0 instead of leaving) and attention
    reads the whole cache (the Triton kernel stops at each row's length). On the CPU the same static path runs
    without capture, which is how the tests check it."""
    def forward(tokens, positions):
        h = model.hidden_states(tokens[:, None], cache, positions[:, None])
        return last_logits(model, h[:, 0])
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


@torch.inference_mode()
def generate(model, prompts: list[list[int]], *, max_new_tokens: int, temperature: float = 1.0,
             top_p: float = 1.0, eos_ids=(), seed: int | None = None, stats: dict | None = None,
             cuda_graph: bool | None = None) -> list[list[int]]:
    """New token ids for each prompt, ending with the first EOS when one was produced.

    stats: if a dict is given, stats["entropy"] gets each row's mean entropy of the model's own next-token
    distribution (at temperature 1) over its generated tokens — a direct read of how sharp the model is.
    cuda_graph: replay the decode step as a CUDA graph (see decode_function); None = on CUDA with the Triton
    backend, where SEPT_CUDA_GRAPH=0 switches it off."""
    check_sampling(temperature, top_p)  # before the prefill, not at the first token
    if not prompts:
        return []
    cfg, device = model.config, model.head_weight.device
    lengths = [len(p) for p in prompts]
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens is {max_new_tokens}; it must be 0 or more")
    if min(lengths) == 0:
        raise ValueError(f"prompt {lengths.index(0)} is empty")
    if max(lengths) + max_new_tokens > cfg.max_position_embeddings:
        raise ValueError(f"longest prompt ({max(lengths)} tokens) + max_new_tokens ({max_new_tokens}) exceeds the "
                         f"model's context of {cfg.max_position_embeddings} tokens")
    if max_new_tokens <= 0:
        return [[] for _ in prompts]
    if cuda_graph is None:
        cuda_graph = (device.type == "cuda" and model_lib.attention_backend(device) == "triton"
                      and os.environ.get("SEPT_CUDA_GRAPH", "1") != "0")
    B, T = len(prompts), max(lengths)
    generator = torch.Generator(device=device)
    generator.manual_seed(seed if seed is not None else torch.seed())
    eos = torch.tensor(sorted(set(eos_ids)), dtype=torch.long, device=device)

    # 1. prefill: all prompts right-padded in one forward; logits only at each row's last prompt token
    cache = model_lib.new_kv_cache(cfg, B, T + max_new_tokens, model.head_weight.dtype, device)
    cache.filled = T
    tokens = torch.tensor([list(p) + [0] * (T - len(p)) for p in prompts], device=device)
    lens = torch.tensor(lengths, dtype=torch.int32, device=device)
    cache.lens = lens  # the prompt lengths: prefill attention skips the padding after them
    h = model.hidden_states(tokens, cache, torch.arange(T, device=device).expand(B, T))
    logits = last_logits(model, h[torch.arange(B, device=device), lens.long() - 1])
    if cuda_graph:
        cache.filled = T + max_new_tokens  # static shapes: attention sees the whole cache, masked by lens
    decode = decode_function(model, cache, cuda_graph)

    # 2. decode: one token per step for the rows still running
    out = torch.full((B, max_new_tokens), -1, dtype=torch.long, device=device)  # every row's new tokens
    entropy_sum = torch.zeros(B, device=device)
    rows = torch.arange(B, device=device)      # original index of each row still in the batch
    prompt_lens = list(lengths)                # host copy for the rows still in the batch
    done = torch.zeros(B, dtype=torch.bool, device=device)
    for step in range(max_new_tokens):
        tok = sample_next(logits, temperature, top_p, generator)
        out[rows, step] = tok
        if stats is not None:  # rows already finished add nothing
            logp = torch.log_softmax(logits, dim=-1)
            entropy_sum[rows] -= torch.where(done, 0.0, (logp.exp() * logp).sum(-1))
        done |= torch.isin(tok, eos)
        if step == max_new_tokens - 1:
            break
        if (step + 1) % SYNC_EVERY == 0:  # 3. the rare host check; finished rows leave the batch
            keep = (~done).nonzero().squeeze(1)
            if len(keep) == 0:
                break
            if not cuda_graph and len(keep) <= 0.875 * len(rows):  # a compaction copies the cache: wait a bit
                keep_host = keep.tolist()
                cache = model_lib.KVCache(cache.k[:, keep], cache.v[:, keep], cache.lens[keep])
                rows, tok, done = rows[keep], tok[keep], done[keep]
                prompt_lens = [prompt_lens[i] for i in keep_host]
                decode = decode_function(model, cache, False)
        if cuda_graph:  # finished rows park at position 0: their attention reads one cached position
            positions = torch.where(done, 0, cache.lens)
        else:
            positions = cache.lens
            cache.filled = max(prompt_lens) + step + 1
        logits = decode(tok, positions.long())
        cache.lens = positions + 1

    # 4. back to the host: cut each row after its first EOS
    results, eos_set = [], set(eos_ids)
    n_generated = []
    for row in out.tolist():
        row = [t for t in row if t >= 0]
        cut = next((i + 1 for i, t in enumerate(row) if t in eos_set), len(row))
        results.append(row[:cut])
        n_generated.append(max(1, cut))
    if stats is not None:
        stats["entropy"] = [s / n for s, n in zip(entropy_sum.tolist(), n_generated)]
    return results


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
