"""train.py — how we fit answers: fine-tuning on (prompt, response) token pairs, loss on the response only.

SePT's inner step (arXiv 2510.18814, Eq. 1) is plain cross-entropy on the model's own answers with the logits
divided by the training temperature τt. `train_step` is ONE AdamW update on a list of pairs (micro-batched
inside); sept_loop.py calls it µ times per round. The CLI runs plain SFT on {"prompt": ..., "response": ...}
lines and writes an HF-format checkpoint.

    python train.py --model data/toy --data pairs.jsonl --out out/sft --lr 1e-3 --epochs 2       # CPU, seconds
    python train.py --model Qwen2.5-Math-1.5B --data pairs.jsonl --out out/sft --lr 1e-6 \\
        --batch-size 64 --activation-checkpointing                                                # one GPU

Precision: fp32 master weights and fp32 AdamW state; forward and backward under bf16 autocast on CUDA, plain
fp32 on the CPU; sampling from a bf16 copy refreshed in place after training (sample.make_sampler).
The paper's lr 1e-7 is why: measured on CPU, AdamW at lr 1e-7 on bf16 weights moved 0.12 % of them in 10
steps, on fp32 weights 99.9 % (bf16 keeps 8 significant bits: a step below ~0.2 % of a weight rounds away).
"""
import contextlib
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass
from typing import Literal

import torch
from tqdm import tqdm

import cli
from data.prompts import load_tokenizer
from data.questions import load_pairs
import runs
from model import Transformer, load_model, save_model

IGNORE = -100  # target of prompt and padding positions: no loss there (the same value as HF's labels)
Pair = tuple[list[int], list[int]]  # (prompt ids, response ids): EOS last when generated; cut-off ones kept whole


@dataclass
class TrainConfig:
    lr: float = 1e-7                    # peak learning rate (the paper's SePT; each preset sets its own)
    warmup_steps: int = 0               # lr steps of linear warmup from lr/warmup_steps up to lr (sept_loop: rounds)
    warmup_ratio: float = 0.0           # warmup as a share of total_steps when warmup_steps is 0 (verl SFT's ratio)
    lr_schedule: Literal["constant", "cosine"] = "constant"  # after warmup; cosine decays to min_lr at total_steps
    min_lr: float = 0.0                 # floor of the cosine decay
    total_steps: int = 0                # length of the cosine schedule (0: the caller's count, batches or rounds)
    weight_decay: float = 0.01          # AdamW's decoupled decay, on every parameter
    beta1: float = 0.9                  # AdamW β1
    beta2: float = 0.999                # AdamW β2
    eps: float = 1e-8                   # AdamW ε
    grad_clip: float = 1.0              # global gradient-norm clip (0 = no clipping; the norm is still reported)
    tau_t: float = 1.0                  # τt: training temperature, logits / τt before the softmax
    loss: Literal["ce", "em"] = "ce"    # ce: SePT, cross-entropy on own answers; em: EM-FT, minimize entropy
    loss_agg: Literal["token-mean", "seq-mean-token-sum", "seq-mean-token-mean"] = "token-mean"  # see loss_weights
    loss_group: int = 0                 # answers per loss_agg group, alike in weight (verl: a micro-batch); 0 = all
    clip_ratio: float = 0.2             # ε of GRPO's clipped surrogate (verl's default clip_ratio)
    clip_ratio_c: float = 3.0           # GRPO's dual clip: a negative advantage's loss stops at c·|A| (verl's default)
    micro_batch_tokens: int = 16384     # padded tokens per micro-batch (forward + backward at once)
    loss_chunk_rows: int = 4096         # token rows per chunk of the vocabulary-sized logits in the loss
    activation_checkpointing: bool = False  # recompute layers in backward: less memory, ~1/3 more compute

    def __post_init__(self):  # API callers get the CLI's checks on the Literal fields too
        cli.check_choices(self)


# What each trainer setting may be, checked by both CLIs before any work (cli.check_settings).
RULES = {**dict.fromkeys(("micro_batch_tokens", "loss_chunk_rows"), cli.AT_LEAST_1),
         **dict.fromkeys(("warmup_steps", "total_steps", "loss_group"), cli.AT_LEAST_0),
         "warmup_ratio": cli.FRACTION, "clip_ratio_c": (lambda v: 1 < v < math.inf, "a number > 1"),
         **dict.fromkeys(("lr", "min_lr", "weight_decay", "grad_clip"), cli.NON_NEGATIVE),
         **dict.fromkeys(("beta1", "beta2"), (lambda v: 0 <= v < 1, "a number in [0, 1)")),
         "eps": cli.POSITIVE, "tau_t": cli.POSITIVE, "clip_ratio": cli.FRACTION}


# ----------------------------------------------------------------------------------------------------------
# The learning rate: a pure function of the update index, written into the optimizer each step.

def lr_at(step: int, cfg: TrainConfig) -> float:
    """step 0, 1, ...: lr·(step+1)/warmup during warmup, then lr (constant) or a cosine from lr at step = warmup
    down to min_lr at step >= total_steps. warmup: warmup_steps, or else warmup_ratio of total_steps (rounded down,
    as verl's SFT trainer does)."""
    warmup = cfg.warmup_steps or int(cfg.warmup_ratio * cfg.total_steps)
    if step < warmup:
        return cfg.lr * (step + 1) / warmup
    if cfg.lr_schedule == "constant":
        return cfg.lr
    if cfg.total_steps <= warmup:
        raise ValueError(f"cosine schedule needs total_steps > warmup_steps, got {cfg.total_steps}")
    progress = min(1.0, (step - warmup) / (cfg.total_steps - warmup))
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * progress))


# ----------------------------------------------------------------------------------------------------------
# The loss head: per-token CE or entropy of softmax(hidden @ W.T / τ) without (tokens, vocab) logits.

def chunk_logits(h, w, tau: float):  # (n, H) @ (V, H).T -> (n, V): matmul in w's dtype, the rest in fp32
    return (h.to(w.dtype) @ w.T).float().div_(tau)


class HeadLoss(torch.autograd.Function):
    """Per-row loss, CE against `targets` ("ce") or the entropy ("em"), over chunks of `chunk_rows` rows.

    Forward keeps only per-row stats (logsumexp, and the loss itself for "em"); backward recomputes each
    chunk's logits. Under autocast the two matmuls run in the autocast dtype (bf16), the softmax math in fp32,
    and the weight's gradient is accumulated over chunks in fp32."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, tau: float, kind: str, chunk_rows: int):
        dev = hidden.device.type  # hidden (N, H) and targets (N,): only rows that have a target
        ctx.dtype = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else weight.dtype
        w, N = weight.to(ctx.dtype), hidden.shape[0]
        loss, lse = (torch.empty(N, device=hidden.device) for _ in range(2))
        with torch.autocast(dev, enabled=False):
            for s in range(0, N, chunk_rows):
                z = chunk_logits(hidden[s:s + chunk_rows], w, tau)                      # (n, V) fp32
                lse[s:s + chunk_rows] = m = z.logsumexp(-1)
                if kind == "ce":    # -log p(target) = lse - z_target
                    loss[s:s + chunk_rows] = m - z.gather(1, targets[s:s + chunk_rows, None])[:, 0]
                else:               # entropy = -Σ p log p = lse - Σ p z
                    loss[s:s + chunk_rows] = m - (z.sub(m[:, None]).exp_() * z).sum(-1)
        ctx.save_for_backward(hidden, weight, targets, lse, loss)
        ctx.tau, ctx.kind, ctx.chunk_rows = tau, kind, chunk_rows
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        hidden, weight, targets, lse, loss = ctx.saved_tensors
        C, dev, w = ctx.chunk_rows, hidden.device.type, weight.to(ctx.dtype)
        grad_h = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        grad_w = torch.zeros_like(weight, dtype=torch.float32) if ctx.needs_input_grad[1] else None
        with torch.autocast(dev, enabled=False):
            for s in range(0, hidden.shape[0], C):
                h = hidden[s:s + C].to(ctx.dtype)
                logp = chunk_logits(h, w, ctx.tau).sub_(lse[s:s + C, None])             # (n, V) fp32
                if ctx.kind == "ce":  # d(-log p_t)/dz = p - onehot(t), built in place: one (n, V) buffer
                    g = logp.exp_().scatter_add_(1, targets[s:s + C, None], torch.full_like(logp[:, :1], -1.0))
                else:                 # dH/dz_j = -p_j (log p_j + H)
                    g = logp.add(loss[s:s + C, None]).mul_(logp.exp()).neg_()
                g = g.mul_((grad_loss[s:s + C] / ctx.tau)[:, None]).to(ctx.dtype)      # chain rule through z/τ
                if grad_h is not None:
                    grad_h[s:s + C] = g @ w
                if grad_w is not None:
                    grad_w += (g.T @ h).float()
        return grad_h, grad_w if grad_w is None else grad_w.to(weight.dtype), None, None, None, None


def token_losses(model: Transformer, inputs, targets, tau: float, kind: str, chunk_rows: int) -> torch.Tensor:
    """(N,) per-token loss for the N positions with a target != IGNORE, in row-major order."""
    hidden = model.hidden_states(inputs)                                                # (B, T, H)
    mask = targets != IGNORE  # select first: prompt and padding rows never go through the head
    return HeadLoss.apply(hidden[mask], model.head_weight, targets[mask], tau, kind, chunk_rows)


# ----------------------------------------------------------------------------------------------------------
# Data path: pairs -> micro-batches of right-padded (inputs, targets), and the per-token weights.

def check_pairs(pairs: list[Pair], max_len: int) -> None:
    for i, (prompt, response) in enumerate(pairs):
        if not prompt or not response:
            raise ValueError(f"pair {i}: empty prompt or response ({len(prompt)} + {len(response)} tokens)")
        if len(prompt) + len(response) > max_len:
            raise ValueError(f"pair {i}: {len(prompt)} prompt + {len(response)} response tokens exceed the "
                             f"context of {max_len} (max_position_embeddings)")


def loss_weights(response_lens: list[int], agg: str, group: int = 0) -> list[float]:
    """THE aggregation choice: the weight of every response token of pair i in one update's loss.

    token-mean:          Σ_i Σ_t ℓ_it / Σ_i |y_i|  (the gradient does not depend on the micro-batch split)
    seq-mean-token-sum:  Σ_i Σ_t ℓ_it / B          (the paper's Eq. 1)
    seq-mean-token-mean: Σ_i (Σ_t ℓ_it / |y_i|) / B
    group > 0: the aggregate of each run of `group` pairs, then their mean. verl aggregates each micro-batch (4
    answers per GPU in the official scripts) and averages those, so an answer beside a long cut-off one weighs less."""
    if group and group < len(response_lens):
        groups = [response_lens[g:g + group] for g in range(0, len(response_lens), group)]
        return [w / len(groups) for lens in groups for w in loss_weights(lens, agg)]
    B, n = len(response_lens), sum(response_lens)
    if agg == "token-mean":
        return [1.0 / n] * B
    if agg == "seq-mean-token-sum":
        return [1.0 / B] * B
    if agg == "seq-mean-token-mean":
        return [1.0 / (B * k) for k in response_lens]
    raise ValueError(f"loss_agg={agg!r}: expected token-mean, seq-mean-token-sum or seq-mean-token-mean")


def micro_batches(lens: list[int], max_tokens: int) -> list[list[int]]:
    """Indices grouped longest first so that count × longest <= max_tokens (a longer sequence goes alone):
    like lengths share a micro-batch, which keeps padding small."""
    groups = []
    for i in sorted(range(len(lens)), key=lambda i: -lens[i]):
        if groups and (len(groups[-1]) + 1) * lens[groups[-1][0]] <= max_tokens:
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


def make_batch(pairs: list[Pair], device) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded inputs = seq[:-1] and targets = seq[1:], each (B, T), with IGNORE on the prompt and padding
    targets: the loss sees exactly the response tokens, its EOS included when it was generated."""
    T = max(len(p) + len(r) for p, r in pairs) - 1
    inputs = torch.zeros(len(pairs), T, dtype=torch.long)  # pad id 0: causal, so padding never reaches a target
    targets = torch.full((len(pairs), T), IGNORE, dtype=torch.long)
    for i, (prompt, response) in enumerate(pairs):
        seq = torch.tensor(prompt + response)
        inputs[i, :len(seq) - 1] = seq[:-1]
        targets[i, len(prompt) - 1:len(seq) - 1] = seq[len(prompt):]
    return inputs.to(device), targets.to(device)


def autocast(device):  # bf16 on CUDA; fp32 on the CPU, where bf16 matmuls are slow and tests want exactness
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()


def micro_batch_losses(model: Transformer, pairs: list[Pair], cfg: TrainConfig):
    """For each micro-batch: (its pair indices, the per-token losses (N,) of its response tokens at τt in
    row-major order, the pair index of each of those tokens (N,)). The one forward loop of training."""
    if not cfg.tau_t > 0:
        raise ValueError(f"tau_t must be > 0, got {cfg.tau_t}")
    check_pairs(pairs, model.config.max_position_embeddings)
    device = model.head_weight.device
    model.checkpoint_layers = cfg.activation_checkpointing
    for group in micro_batches([len(p) + len(r) - 1 for p, r in pairs], cfg.micro_batch_tokens):
        inputs, targets = make_batch([pairs[i] for i in group], device)
        with autocast(device):
            losses = token_losses(model, inputs, targets, cfg.tau_t, cfg.loss, cfg.loss_chunk_rows)
        rows = torch.tensor(group, device=device)[(targets != IGNORE).nonzero()[:, 0]]
        yield group, losses, rows


@dataclass
class PolicyTargets:
    """What GRPO adds to each (prompt, response) pair: its advantage, and the log-probability that the model
    which sampled it gave to each of its tokens."""
    advantages: list[float]             # one per pair, spread over its response tokens
    old_logp: list[torch.Tensor]        # per pair, (response tokens,): log p_old, computed before the first update


def clipped_surrogate(logp, old_logp, advantages, eps: float, c: float = 3.0) -> torch.Tensor:
    """PPO's per-token loss -min(ρ·A, clip(ρ, 1-ε, 1+ε)·A) with ρ = p / p_old: a step of policy gradient that
    stops pushing a token's probability once it has moved by ε (no KL term, as in the official GRPO script).
    As verl's compute_policy_loss: log ρ clamped to ±20, and the dual clip: with A < 0 the loss stops at c·|A|, so a
    token whose probability grew c-fold since sampling no longer drags the update."""
    ratio = torch.exp((logp - old_logp).clamp(-20.0, 20.0))
    loss = -torch.minimum(ratio * advantages, ratio.clamp(1 - eps, 1 + eps) * advantages)
    return torch.where(advantages < 0, torch.minimum(loss, -c * advantages), loss)


def loss_and_grad(model: Transformer, pairs: list[Pair], cfg: TrainConfig,
                  policy: PolicyTargets | None = None) -> torch.Tensor:
    """Forward + backward over `pairs` in micro-batches, adding into .grad; returns the aggregated loss (0-dim).
    The per-token loss is cfg.loss ("ce": -log p, "em": entropy), or with `policy` (GRPO) the clipped surrogate
    of log p = -CE. Either way the tokens are weighted by loss_weights: the one place a gradient is made."""
    device = model.head_weight.device
    weights = torch.tensor(loss_weights([len(r) for _, r in pairs], cfg.loss_agg, cfg.loss_group), device=device)
    if policy is not None:
        if cfg.loss != "ce":
            raise ValueError(f"the clipped surrogate needs loss='ce' (log-probabilities), got {cfg.loss!r}")
        advantages = torch.tensor(policy.advantages, device=device)
    total = torch.zeros((), device=device)
    for group, losses, rows in micro_batch_losses(model, pairs, cfg):
        if policy is not None:
            old = torch.cat([policy.old_logp[i] for i in group])
            losses = clipped_surrogate(-losses, old, advantages[rows], cfg.clip_ratio, cfg.clip_ratio_c)
        part = (losses * weights[rows]).sum()
        part.backward()
        total += part.detach()
    return total


@torch.no_grad()
def response_token_losses(model: Transformer, pairs: list[Pair], cfg: TrainConfig) -> list[torch.Tensor]:
    """Per pair, the per-token losses of its response at τt, no gradients: -log p(token) for "ce" (their sum is
    -log p(response | prompt)), the entropy for "em"."""
    out = [None] * len(pairs)
    for group, losses, _ in micro_batch_losses(model, pairs, cfg):
        for i, part in zip(group, losses.split([len(pairs[i][1]) for i in group])):
            out[i] = part
    return out


# ----------------------------------------------------------------------------------------------------------
# How far an update sharpened the model: the one factor on its logits that best explains the change (τ_eff).

@torch.no_grad()
def top_logits(model: Transformer, pairs: list[Pair], cfg: TrainConfig, k: int = 32, ids=None):
    """(logits, ids), each (N, k): at the N response positions of `pairs` (in micro_batches' order), the model's k
    largest next-token logits (fp32, τ = 1) and their ids; with `ids` (N, k) from an earlier call on the same pairs
    and cfg, its logits at those ids.
    k logits per position are all that is kept: no copy of the model, no (N, vocabulary) tensor."""
    device, values, chosen, n = model.head_weight.device, [], [], 0
    for group in micro_batches([len(p) + len(r) - 1 for p, r in pairs], cfg.micro_batch_tokens):
        inputs, targets = make_batch([pairs[i] for i in group], device)
        with autocast(device):
            hidden = model.hidden_states(inputs)[targets != IGNORE]                   # (m, H)
        for h in hidden.split(cfg.loss_chunk_rows):
            z = chunk_logits(h, model.head_weight, 1.0)                                 # (c, V)
            i = z.topk(min(k, z.shape[1]), dim=-1).indices if ids is None else ids[n:n + len(z)]
            values.append(z.gather(1, i))
            chosen.append(i)
            n += len(z)
    return torch.cat(values), torch.cat(chosen)


def logit_scale(before: torch.Tensor, after: torch.Tensor) -> float:
    """The factor s for which softmax(s · before) comes closest to softmax(after), over N positions (N, k) of the
    same token ids: argmin_s mean_n KL(p_after || softmax(s · before)).

    Why this one: Theorem 1 says a round trained to convergence multiplies every logit margin by τt/τs, i.e.
    after = s · before + const; then the KL is 0 at exactly that s. Otherwise s is the single temperature change
    (1/s) that best imitates the new model, in the sense it is used: the tempered old model that loses the least
    log-likelihood on the new one's choices. The KL is convex in s (its derivative, E_{p_s}[z] - E_{p_after}[z],
    grows with s), so a bisection on the derivative's sign finds the minimum. On the top-k ids only, renormalized:
    the rest of a 152k vocabulary holds almost no mass at a model's own answer positions."""
    z = before.double()
    target = (after.double().softmax(-1) * z).sum(-1)                                   # E_{p_after}[z]
    lo, hi = math.log(1e-3), math.log(1e3)
    for _ in range(60):
        mid = (lo + hi) / 2
        slope = ((z * math.exp(mid)).softmax(-1) * z).sum(-1) - target                # d KL / d s, per position
        lo, hi = (lo, mid) if slope.mean() > 0 else (mid, hi)
    return math.exp((lo + hi) / 2)


# ----------------------------------------------------------------------------------------------------------
# Optimizer and one update (the optimizer state on disk: runs.py).

def make_optimizer(model: Transformer, cfg: TrainConfig) -> torch.optim.AdamW:
    params = list(model.parameters())
    if any(p.dtype != torch.float32 for p in params):  # lr 1e-7 updates vanish in bf16 weights (see top)
        raise ValueError("training needs fp32 master weights: load_model(path, device, torch.float32); "
                         "sample from sample.make_sampler(model, torch.bfloat16)")
    return torch.optim.AdamW(params, lr=lr_at(0, cfg), betas=(cfg.beta1, cfg.beta2), eps=cfg.eps,
                             weight_decay=cfg.weight_decay, fused=params[0].device.type == "cuda" or None)


def memory_to_come(optimizer: torch.optim.AdamW) -> int:
    """Bytes an update has yet to allocate: a gradient per weight (freed after each update), and AdamW's two
    moments before its first step (a resumed run has them). What --sample-batch 0 leaves free for training."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    return (1 if optimizer.state else 3) * sum(p.numel() * p.element_size() for p in params)


class AnswerTooLong(RuntimeError):
    """One answer alone does not fit in the device's memory: training cannot go on at this length."""


def train_step(model: Transformer, optimizer: torch.optim.AdamW, pairs: list[Pair], step: int,
               cfg: TrainConfig, policy: PolicyTargets | None = None) -> dict:
    """ONE optimizer update on `pairs` (`step`: the index of the lr schedule, 0, 1, ...; `policy`: GRPO's).
    Returns {loss, grad_norm (before clipping), lr, tokens (response), seq_tokens, skipped, seconds, tok_per_s,
    micro_batch_tokens}. Out of memory, it halves cfg.micro_batch_tokens (in place: the caller keeps the smaller
    size) and redoes the update from scratch, down to one answer per micro-batch (then AnswerTooLong)."""
    t0 = time.perf_counter()
    # 1. the lr of this step, written into the optimizer
    lr = lr_at(step, cfg)
    for group in optimizer.param_groups:
        group["lr"] = lr
    # 2. forward + backward over micro-batches; each token's weight comes from the whole update's batch
    model.train()
    while True:
        optimizer.zero_grad(set_to_none=True)  # a failed try's partial gradients go
        try:
            loss = loss_and_grad(model, pairs, cfg, policy)
            break
        except torch.OutOfMemoryError:
            fit_less(pairs, cfg)
    # 3. global-norm clipping (returns the norm before clipping)
    params = [p for p in model.parameters() if p.grad is not None]
    grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip if cfg.grad_clip > 0 else math.inf)
    # 4. a non-finite loss or gradient never reaches the weights (nor AdamW's moments): skip the update
    loss, grad_norm = loss.item(), grad_norm.item()
    skipped = not (math.isfinite(loss) and math.isfinite(grad_norm))
    if not skipped:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    if params and params[0].device.type == "cuda":
        torch.cuda.synchronize()  # honest seconds: the optimizer step ran asynchronously
    seconds = time.perf_counter() - t0
    seq_tokens = sum(len(p) + len(r) for p, r in pairs)
    return dict(loss=loss, grad_norm=grad_norm, lr=lr, tokens=sum(len(r) for _, r in pairs), seq_tokens=seq_tokens,
                skipped=skipped, seconds=seconds, tok_per_s=seq_tokens / seconds,
                micro_batch_tokens=cfg.micro_batch_tokens)


def fit_less(pairs: list[Pair], cfg: TrainConfig) -> None:
    """After an out-of-memory error: half the micro-batch (the same update, summed in more pieces: equal up to
    rounding). When each micro-batch already holds one answer, the longest cannot fit: AnswerTooLong."""
    lens = [len(p) + len(r) - 1 for p, r in pairs]
    if all(len(group) == 1 for group in micro_batches(lens, cfg.micro_batch_tokens)):
        raise AnswerTooLong(f"out of memory with one answer per micro-batch: an answer of {max(lens) + 1} tokens "
                            f"(prompt + response) does not fit alone; lower --max-response-tokens")
    cfg.micro_batch_tokens = max(1, cfg.micro_batch_tokens // 2)
    if torch.cuda.is_available():
        torch.cuda.empty_cache()  # the failed try's blocks back to the device before the smaller one
    print(f"train: out of memory; micro-batches of at most {cfg.micro_batch_tokens} tokens from now on",
          file=sys.stderr)


# ----------------------------------------------------------------------------------------------------------
# CLI: plain SFT on a jsonl of {"prompt": ..., "response": ...}.

@dataclass
class SFTConfig(TrainConfig):
    model: str = "data/toy"             # checkpoint folder (HF format) to start from
    data: str = "pairs.jsonl"           # one {"prompt": "...", "response": "..."} object per line
    out: str = "out/sft"                # output checkpoint folder (replaced atomically if a checkpoint, else an error)
    eos: bool = True                    # append the tokenizer's EOS to each response: the model learns to stop
    epochs: int = 1                     # passes over the data
    batch_size: int = 16                # pairs per optimizer update
    device: str = "auto"                # auto = cuda when available, else cpu
    seed: int = 0                       # order of the pairs in each epoch


def main(argv: list[str] | None = None) -> None:
    cfg = cli.config_from_argv(SFTConfig, argv, __doc__.splitlines()[0])
    cli.check_settings(cfg, {**RULES, "epochs": cli.AT_LEAST_1, "batch_size": cli.AT_LEAST_1})
    runs.refuse_unless_ours(cfg.out)  # --out is replaced at the end: a folder that is not a checkpoint fails now
    device = cli.pick_device(cfg.device)
    tokenizer = load_tokenizer(cfg.model)
    net = load_model(cfg.model, device, torch.float32)  # fp32 master weights
    if cfg.eos and tokenizer.eos_id is None:
        raise ValueError(f"{cfg.model}: tokenizer_config.json declares no eos_token to append; pass --no-eos")
    pairs = load_pairs(cfg.data, tokenizer, [tokenizer.eos_id] if cfg.eos else [],
                       net.config.max_position_embeddings)
    gen = torch.Generator().manual_seed(cfg.seed)
    batches = [[pairs[i] for i in order[s:s + cfg.batch_size]]
               for order in (torch.randperm(len(pairs), generator=gen).tolist() for _ in range(cfg.epochs))
               for s in range(0, len(pairs), cfg.batch_size)]
    cfg.total_steps = cfg.total_steps or len(batches)
    print(json.dumps(asdict(cfg)))
    optimizer = make_optimizer(net, cfg)
    for step, batch in enumerate(tqdm(batches, desc="train")):
        st = train_step(net, optimizer, batch, step, cfg)
        tqdm.write(f"step {step} loss {st['loss']:.4f} grad_norm {st['grad_norm']:.4f} lr {st['lr']:.3e} "
                   f"tok/s {st['tok_per_s']:.0f}" + (" skipped (non-finite)" if st["skipped"] else ""))

    def fill(folder):  # the checkpoint and how it was trained, swapped in whole
        save_model(net, folder, copy_from=cfg.model)
        runs.write_json(os.path.join(folder, "train_config.json"), asdict(cfg))
    runs.write_folder(cfg.out, fill)
    print(f"saved {cfg.out}")


if __name__ == "__main__":
    try:
        main()
    except (ValueError, OSError) as e:  # bad data, paths, checkpoints: one line, no traceback
        raise SystemExit(f"error: {e}") from None
