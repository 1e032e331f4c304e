"""sept_loop.py — SePT (Self-evolving Post-Training, arXiv 2510.18814, Algorithm 1), end to end.

Each round: draw B fresh questions, let the *current* model answer them at a low sampling temperature τs,
fine-tune it with plain cross-entropy on its own answers at training temperature τt (µ AdamW updates), and
sample the next round from the updated model. No rewards, verifiers or teacher: the answers' grades are only
logged. Training at τt > τs sharpens the model's own preferences (every logit margin grows by τt/τs).

    python sept_loop.py --rounds 10                               # the embedded toy world, CPU, ~2 minutes
    python sept_loop.py --rounds 10 --couple                      # ablation: τt = τs (the paper: no gain)
    python sept_loop.py --sweep 0.0,0.2,0.4,0.6,0.8,1.0            # no-training baseline over temperatures
    python sept_loop.py --preset paper --model Qwen2.5-Math-1.5B --train-questions dsr.jsonl \\
        --test-questions math500.jsonl,aime.jsonl --rounds 300 --out runs/qwen  # one GPU
    python sept_loop.py --resume runs/qwen                        # continue after an interruption

Outputs in --out: config.json, metrics.jsonl (one JSON object per line, every line with "round"),
samples/round_NNNN.jsonl, plot.png, checkpoints/last and checkpoints/round_NNNN (HF format).
"""
import argparse
import dataclasses
import json
import math
import os
import random
import shutil
import sys
import time
from dataclasses import asdict, dataclass

import torch
from tqdm import tqdm

import model as model_lib
import sample
import train
from data import grading, prompts, questions

HERE = os.path.dirname(os.path.abspath(__file__))
TOY = os.path.join(HERE, "data", "toy")


@dataclass
class SePTConfig:
    preset: str = "toy"                 # toy (the defaults below) or paper (the official recipe, see PRESETS)
    model: str = TOY                    # base checkpoint folder (HF format)
    train_questions: str = os.path.join(TOY, "train.jsonl")  # questions the rounds draw from (jsonl / parquet)
    test_questions: str = os.path.join(TOY, "test.jsonl")    # held-out sets, comma-separated, for pass@k
    template: str = "toy"               # prompt template: toy, qwen-math, qwen-instruct, raw, chat
    out: str = "runs/sept"              # output folder
    resume: str = ""                    # continue the run in this folder from its last finished round
    rounds: int = 10                    # R: training rounds
    batch_prompts: int = 256            # B: fresh questions per round (the paper: 128)
    rollouts: int = 1                   # G: answers sampled per question
    updates_per_round: int = 8          # µ: optimizer updates per round, on mini-batches of B·G/µ answers (paper: 2)
    tau_s_start: float = 0.6            # τs at round 1
    tau_s_end: float = 0.6              # τs after the ramp
    tau_s_schedule: str = "constant"    # constant | linear | cosine, from tau_s_start to tau_s_end
    tau_s_ramp: float = 2 / 3           # fraction of the rounds over which τs moves, then held
    tau_t: float = 1.0                  # τt: training temperature
    couple: bool = False                # ablation: τt = τs every round
    offline: bool = False               # ablation: all answers drawn once from the initial model at tau_s_start
    loss: str = "ce"                    # ce (SePT) | em (EM-FT: minimize the entropy of own answers)
    loss_agg: str = "token-mean"        # token-mean | seq-mean-token-sum (the paper's Eq. 1) | seq-mean-token-mean
    lr: float = 1e-4                    # peak AdamW learning rate (the paper: 1e-7 on 7B)
    warmup_rounds: int = 3              # linear warmup over these rounds; the lr changes once a round, as in verl
    lr_schedule: str = "constant"       # constant | cosine (decays to min_lr at the last round)
    min_lr: float = 0.0                 # floor of the cosine schedule
    weight_decay: float = 0.01          # AdamW, on every parameter
    grad_clip: float = 1.0              # global gradient-norm clip
    micro_batch_tokens: int = 16384     # padded tokens per forward/backward
    activation_checkpointing: bool = False  # recompute layers in backward (long responses on a GPU)
    top_p: float = 1.0                  # nucleus mass when sampling training answers
    max_prompt_tokens: int = 1024       # longer prompts are an error
    max_response_tokens: int = 64      # answers are cut here (and kept whole for training)
    eval_every: int = 2                 # K: evaluate before training, every K rounds and at the end (0 = ends only)
    eval_n: int = 32                    # n: answers per test question
    eval_temperature: float = 1.0       # τ_eval
    eval_max_questions: int = 0         # use the first N questions of each test file (0 = all)
    sweep: str = ""                     # e.g. 0.0,0.2,0.4: evaluate the initial model at these τ, then stop
    sample_batch: int = 2048            # sequences per generate call (bounds the KV cache's memory)
    checkpoint_every: int = 1           # write checkpoints/last every this many rounds (resume point)
    save_every: int = 0                 # also keep checkpoints/round_NNNN every this many rounds (0 = never)
    seed: int = 0                       # every random choice is a pure function of (seed, round)
    device: str = "auto"                # auto = cuda when available, else cpu
    sample_dtype: str = "auto"          # auto = bfloat16 on cuda, float32 on cpu (the master is always fp32)


# The official recipe (ElementQi/SePT, sept_1e7_dsr.sh): Qwen2.5-Math-7B on DeepScaleR, one answer per question.
PRESETS = {
    "toy": {},
    "paper": dict(model="", train_questions="", test_questions="", template="qwen-math", batch_prompts=128,
                  rollouts=1, updates_per_round=2, tau_s_start=0.6, tau_s_end=1.0, tau_s_schedule="linear",
                  tau_s_ramp=2 / 3, tau_t=1.0, lr=1e-7, warmup_rounds=10, weight_decay=0.01, max_prompt_tokens=1024,
                  max_response_tokens=3072, eval_every=50, eval_n=32, eval_temperature=1.0, sample_batch=256,
                  checkpoint_every=10, save_every=50, activation_checkpointing=True, micro_batch_tokens=32768),
}


# ----------------------------------------------------------------------------------------------------------
# The schedules: pure functions of the round r = 1..R.

def tau_s_at(r: int, cfg: SePTConfig) -> float:
    """τs(r): constant, or from tau_s_start to tau_s_end over the first tau_s_ramp·R rounds, then held."""
    if cfg.tau_s_schedule == "constant":
        return cfg.tau_s_start
    progress = min(1.0, (r - 1) / max(1.0, cfg.tau_s_ramp * cfg.rounds))
    if cfg.tau_s_schedule == "cosine":
        progress = (1 - math.cos(math.pi * progress)) / 2
    return cfg.tau_s_start + (cfg.tau_s_end - cfg.tau_s_start) * progress


def tau_t_at(tau_s: float, cfg: SePTConfig) -> float:
    return tau_s if cfg.couple else cfg.tau_t


def questions_for_round(r: int, n_questions: int, cfg: SePTConfig) -> list[int]:
    """B question indices for round r: without replacement through the set, reshuffled at each pass."""
    picked, start = [], (r - 1) * cfg.batch_prompts
    for pos in range(start, start + cfg.batch_prompts):
        epoch, i = divmod(pos, n_questions)
        perm = torch.randperm(n_questions, generator=torch.Generator().manual_seed(cfg.seed * 7919 + epoch))
        picked.append(perm[i].item())
    return picked


# ----------------------------------------------------------------------------------------------------------
# Sampling and grading.

def draw_answers(sampler, prompt_ids, tau, cfg, tokenizer, seed, desc):
    """Responses (token lists) and their mean entropies for each prompt, in generate calls of sample_batch."""
    responses, entropies = [], []
    chunks = range(0, len(prompt_ids), cfg.sample_batch)
    for c in tqdm(chunks, desc=desc, leave=False, disable=len(chunks) == 1 and None):
        stats = {}
        responses += sample.generate(sampler, prompt_ids[c:c + cfg.sample_batch], max_new_tokens=cfg.max_response_tokens,
                                     temperature=tau, top_p=cfg.top_p, eos_ids=tokenizer.stop_ids,
                                     seed=seed * 1000 + c // cfg.sample_batch, stats=stats)
        entropies += stats["entropy"]
    return responses, entropies


def evaluate(sampler, test_sets, cfg, tokenizer, tau, seed) -> dict:
    """n answers per test question at τ, graded: pass@k (percent) per set and averaged over sets."""
    t0, tables = time.time(), {}
    ks = [k for k in (1, 2, 4, 8, 16, 32, 64, 128, 256) if k <= cfg.eval_n]
    for name, (qs, prompt_ids) in test_sets.items():
        ids = [p for p in prompt_ids for _ in range(cfg.eval_n)]
        responses, _ = draw_answers(sampler, ids, tau, cfg, tokenizer, seed, f"eval {name} τ={tau}")
        texts = [tokenizer.decode(r) for r in responses]
        grades = grading.grade_many(texts, [q.answer for q in qs for _ in range(cfg.eval_n)])
        counts = [sum(bool(g.correct) for g in grades[i * cfg.eval_n:(i + 1) * cfg.eval_n]) for i in range(len(qs))]
        tables[name] = grading.pass_at_k_table(counts, cfg.eval_n, ks)
    result = grading.mean_over_benchmarks(tables) if len(tables) > 1 else dict(next(iter(tables.values())))
    if len(tables) > 1:
        result["benchmarks"] = tables
    return dict(result, eval_temperature=tau, seconds_eval=round(time.time() - t0, 2))


def round_stats(responses, entropies, cfg, tokenizer) -> dict:
    lens = [len(r) for r in responses]
    stops = {}
    for r in responses:
        key = tokenizer.decode([r[-1]]) if r and r[-1] in tokenizer.stop_ids else "none (truncated)"
        stops[key] = stops.get(key, 0) + 1
    return dict(response_len_mean=sum(lens) / len(lens), response_len_max=max(lens),
                truncation_rate=sum(r == [] or r[-1] not in tokenizer.stop_ids for r in responses) / len(responses),
                stop_tokens=stops, entropy=sum(entropies) / len(entropies))


# ----------------------------------------------------------------------------------------------------------
# Checkpoints, logs and the plot: written to a temporary name, then renamed into place.

def save_checkpoint(master, optimizer, r: int, cfg: SePTConfig, name: str = "last"):
    final = os.path.join(cfg.out, "checkpoints", name)
    staging = final + ".new"
    model_lib.save_model(master, staging, copy_from=cfg.model)
    train.save_optimizer(optimizer, os.path.join(staging, "optimizer.safetensors"))
    write_json(os.path.join(staging, "sept_state.json"), {"round": r})  # written last: marks it complete
    shutil.rmtree(final + ".old", ignore_errors=True)
    if os.path.exists(final):
        os.rename(final, final + ".old")
    os.rename(staging, final)
    shutil.rmtree(final + ".old", ignore_errors=True)


def find_checkpoint(out: str) -> str | None:
    """The newest complete checkpoint: `last`, or `last.old` if a crash fell between the two renames."""
    for name in ("last", "last.old"):
        path = os.path.join(out, "checkpoints", name)
        if os.path.isfile(os.path.join(path, "sept_state.json")):
            return path
    return None


def write_json(path: str, obj):
    with open(path + ".tmp", "w") as f:
        json.dump(obj, f, indent=2)
    os.replace(path + ".tmp", path)


def append_metrics(cfg: SePTConfig, line: dict):
    with open(os.path.join(cfg.out, "metrics.jsonl"), "a") as f:
        f.write(json.dumps(line) + "\n")


def write_samples(cfg, r, qs, responses, texts, grades):
    rows = [dict(id=q.id, question=q.problem, response=t, response_tokens=len(resp), extracted=g.extracted,
                 answer=q.answer, correct=g.correct) for q, resp, t, g in zip(qs, responses, texts, grades)]
    path = os.path.join(cfg.out, "samples", f"round_{r:04d}.jsonl")
    with open(path + ".tmp", "w") as f:
        f.writelines(json.dumps(row) + "\n" for row in rows)
    os.replace(path + ".tmp", path)


def write_plot(cfg: SePTConfig):
    """plot.png: pass@k at τ_eval and τs against rounds."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("plot.png skipped: pip install matplotlib")
        return
    with open(os.path.join(cfg.out, "metrics.jsonl")) as f:
        lines = [json.loads(line) for line in f]
    evals = [m for m in lines if "pass@1" in m and m.get("eval_temperature") == cfg.eval_temperature]
    fig, ax = plt.subplots(figsize=(7, 4))
    for k in (1, 8, 32):
        pts = [(m["round"], m[f"pass@{k}"]) for m in evals if f"pass@{k}" in m]
        if pts:
            ax.plot(*zip(*pts), marker="o", label=f"pass@{k}")
    ax.set(xlabel="round", ylabel=f"pass@k (%) at τ={cfg.eval_temperature}", ylim=(0, 100))
    taus = [(m["round"], m["tau_s"]) for m in lines if "tau_s" in m]
    if taus:
        ax2 = ax.twinx()
        ax2.plot(*zip(*taus), color="gray", linestyle="--", label="τs")
        ax2.set(ylabel="τs", ylim=(0, 1.5))
        ax2.legend(loc="lower right")
    ax.legend(loc="upper left")
    ax.set_title(f"SePT on {os.path.basename(cfg.model.rstrip('/'))}" + (" (offline)" if cfg.offline else ""))
    fig.tight_layout()
    fig.savefig(os.path.join(cfg.out, "plot.tmp.png"))
    plt.close(fig)
    os.replace(os.path.join(cfg.out, "plot.tmp.png"), os.path.join(cfg.out, "plot.png"))


# ----------------------------------------------------------------------------------------------------------
# Set-up: configuration, models, questions.

def resolve_config(argv) -> SePTConfig:
    """Dataclass defaults (the toy), then the preset, then the flags given; --resume takes the run's own config."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    train.add_dataclass_args(parser, SePTConfig)
    defaults = vars(parser.parse_args([]))
    parser.set_defaults(**{k: None for k in defaults})  # so only the flags actually given come back non-None
    given = {k: v for k, v in vars(parser.parse_args(argv)).items() if v is not None}
    if given.get("resume"):
        saved = os.path.join(given["resume"], "config.json")
        if not os.path.isfile(saved):
            raise ValueError(f"--resume {given['resume']}: no config.json there (not a sept run folder)")
        with open(saved) as f:
            base = json.load(f)
        base.update(given, out=given["resume"])
        return SePTConfig(**base)
    preset = given.get("preset", "toy")
    if preset not in PRESETS:
        raise ValueError(f"--preset {preset!r}: choose one of {', '.join(PRESETS)}")
    cfg = SePTConfig(**{**defaults, **PRESETS[preset], **given})
    for key in ("model", "train_questions", "test_questions"):
        if not getattr(cfg, key) and not (key == "train_questions" and cfg.sweep):
            raise ValueError(f"--preset {preset} needs --{key.replace('_', '-')}")
    return cfg


def check_config(cfg: SePTConfig):
    choices = dict(tau_s_schedule=("constant", "linear", "cosine"), loss=("ce", "em"),
                   loss_agg=("token-mean", "seq-mean-token-sum", "seq-mean-token-mean"),
                   lr_schedule=("constant", "cosine"), template=tuple(prompts.TEMPLATE_NAMES))
    for key, allowed in choices.items():
        if getattr(cfg, key) not in allowed:
            raise ValueError(f"--{key.replace('_', '-')} {getattr(cfg, key)!r}: choose one of {', '.join(allowed)}")
    if (cfg.batch_prompts * cfg.rollouts) % cfg.updates_per_round:
        raise ValueError(f"B·G = {cfg.batch_prompts * cfg.rollouts} answers do not split into "
                         f"{cfg.updates_per_round} equal mini-batches (--updates-per-round)")
    if min(cfg.tau_s_start, cfg.tau_s_end, cfg.tau_t) <= 0:
        raise ValueError("temperatures for training rounds must be > 0")


def encode_questions(path, cfg, tokenizer, context: int, limit=0):
    qs = questions.load_questions(path)[:limit or None]
    ids = [tokenizer.encode(prompts.build_prompt(q.problem, cfg.template, model_dir=cfg.model)) for q in qs]
    for q, p in zip(qs, ids):
        if len(p) > cfg.max_prompt_tokens:
            raise ValueError(f"{path}: question {q.id} is {len(p)} tokens after the {cfg.template} template, "
                             f"over --max-prompt-tokens {cfg.max_prompt_tokens}")
        if len(p) + cfg.max_response_tokens > context:  # found now, not in the middle of a round
            raise ValueError(f"{path}: question {q.id} is {len(p)} tokens after the {cfg.template} template; with "
                             f"--max-response-tokens {cfg.max_response_tokens} that exceeds the model's context "
                             f"of {context} tokens")
    return qs, ids


def train_config(cfg: SePTConfig) -> train.TrainConfig:
    return train.TrainConfig(lr=cfg.lr, warmup_steps=cfg.warmup_rounds, lr_schedule=cfg.lr_schedule,
                             min_lr=cfg.min_lr, total_steps=cfg.rounds, weight_decay=cfg.weight_decay,
                             grad_clip=cfg.grad_clip, tau_t=cfg.tau_t, loss=cfg.loss, loss_agg=cfg.loss_agg,
                             micro_batch_tokens=cfg.micro_batch_tokens,
                             activation_checkpointing=cfg.activation_checkpointing)


def round_seed(cfg, r, purpose):  # distinct, reproducible seeds for each round's sampling and evaluation
    return (cfg.seed * 1_000_003 + r) * 4 + {"train": 0, "eval": 1, "shuffle": 2, "sweep": 3}[purpose]


# ----------------------------------------------------------------------------------------------------------
# Algorithm 1.

def main(argv=None):
    cfg = resolve_config(argv)
    check_config(cfg)
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device)
    sample_dtype = model_lib.DTYPES[cfg.sample_dtype] if cfg.sample_dtype != "auto" else (
        torch.bfloat16 if device.type == "cuda" else torch.float32)
    os.makedirs(os.path.join(cfg.out, "samples"), exist_ok=True)
    print("config " + json.dumps(asdict(cfg)))
    write_json(os.path.join(cfg.out, "config.json"), asdict(cfg))

    # 0. the model (fp32 master weights + a sampling copy), optimizer, questions; resume if asked
    tokenizer = model_lib.load_tokenizer(cfg.model)
    ckpt = find_checkpoint(cfg.out) if cfg.resume else None
    master = model_lib.load_model(ckpt or cfg.model, device, torch.float32)
    sampler = train.make_sampler(master, sample_dtype)
    tcfg = train_config(cfg)
    optimizer = train.make_optimizer(master, tcfg)
    start = 0
    if ckpt:
        train.load_optimizer(optimizer, os.path.join(ckpt, "optimizer.safetensors"))
        with open(os.path.join(ckpt, "sept_state.json")) as f:
            start = json.load(f)["round"]
        print(f"resuming {cfg.out} after round {start} ({ckpt})")
    keep_metrics_until(cfg, start if cfg.resume else -1)
    context = master.config.max_position_embeddings
    test_sets = {os.path.splitext(os.path.basename(p))[0]:
                 encode_questions(p, cfg, tokenizer, context, cfg.eval_max_questions)
                 for p in cfg.test_questions.split(",") if p}

    if cfg.sweep:  # the no-training baseline: the initial model at each temperature, best by AVG(pass@1,8,32)
        results = [evaluate(sampler, test_sets, cfg, tokenizer, float(t), round_seed(cfg, 0, "sweep"))
                   for t in cfg.sweep.split(",")]
        for res in results:
            append_metrics(cfg, dict(round=0, sweep=True, **res))
            print(f"sweep τ={res['eval_temperature']:.2f} | " + metric_text(res))
        best = max(results, key=lambda m: grading.avg_pass(m) if "pass@32" in m else m["pass@1"])
        print(f"best temperature {best['eval_temperature']} ({metric_text(best)})")
        return

    train_qs, train_ids = encode_questions(cfg.train_questions, cfg, tokenizer, context)
    if start == 0:
        report_eval(cfg, 0, evaluate(sampler, test_sets, cfg, tokenizer, cfg.eval_temperature,
                                     round_seed(cfg, 0, "eval")))
    offline = offline_answers(cfg, sampler, train_ids, tokenizer) if cfg.offline else None

    for r in range(start + 1, cfg.rounds + 1):
        # 1. fresh questions and the temperatures of this round
        fresh = questions_for_round(r, len(train_qs), cfg)
        picked = [i for i in fresh for _ in range(cfg.rollouts)]
        tau_s = tau_s_at(r, cfg)
        tau_t = tau_t_at(tau_s, cfg)
        # 2. the current model answers them at τs (offline: the initial model's answers, drawn once)
        t0 = time.time()
        if cfg.offline:
            responses, entropies = map(list, zip(*[a for i in fresh for a in offline[i]]))
        else:
            responses, entropies = draw_answers(sampler, [train_ids[i] for i in picked], tau_s, cfg, tokenizer,
                                                round_seed(cfg, r, "train"), f"round {r} sample")
        seconds_sampling = time.time() - t0
        # 3. µ updates of plain cross-entropy on its own answers at τt (grades are logged, never used)
        t0 = time.time()
        pairs = [(train_ids[i], resp) for i, resp in zip(picked, responses) if resp]
        order = torch.randperm(len(pairs), generator=torch.Generator().manual_seed(round_seed(cfg, r, "shuffle")))
        size = math.ceil(len(pairs) / cfg.updates_per_round)
        steps = []
        for u in tqdm(range(cfg.updates_per_round), desc=f"round {r} train", leave=False):
            batch = [pairs[i] for i in order[u * size:(u + 1) * size].tolist()]
            steps.append(train.train_step(master, optimizer, batch, r - 1, tcfg, tau_t=tau_t))
            if steps[-1]["skipped"]:
                sys.exit(f"error: round {r}, update {u + 1}: the loss or gradient norm is not finite "
                         f"(loss {steps[-1]['loss']}, grad norm {steps[-1]['grad_norm']}); stopping. The weights "
                         f"are untouched; the last good checkpoint is {find_checkpoint(cfg.out) or cfg.model}")
        # 4. refresh the sampling copy: the next round samples from the updated model
        train.refresh_sampler(master, sampler)
        seconds_training = time.time() - t0
        # 5. log (the grades of the training answers are for the reader only) and evaluate every K rounds
        texts = [tokenizer.decode(resp) for resp in responses]
        grades = grading.grade_many(texts, [train_qs[i].answer for i in picked])
        known = [g.correct for g in grades if g.correct is not None]
        line = dict(round=r, tau_s=tau_s, tau_t=tau_t, lr=steps[0]["lr"],
                    loss=sum(s["loss"] for s in steps) / len(steps), grad_norm=max(s["grad_norm"] for s in steps),
                    **round_stats(responses, entropies, cfg, tokenizer),
                    train_answers_correct=sum(known) / len(known) * 100 if known else None,
                    seconds_sampling=round(seconds_sampling, 2), seconds_training=round(seconds_training, 2))
        append_metrics(cfg, line)
        write_samples(cfg, r, [train_qs[i] for i in picked], responses, texts, grades)
        print(round_summary(line))
        if r == cfg.rounds or (cfg.eval_every and r % cfg.eval_every == 0):
            report_eval(cfg, r, evaluate(sampler, test_sets, cfg, tokenizer, cfg.eval_temperature,
                                         round_seed(cfg, r, "eval")))
        # 6. checkpoints: `last` is the resume point
        if r == cfg.rounds or r % cfg.checkpoint_every == 0:
            save_checkpoint(master, optimizer, r, cfg)
        if cfg.save_every and r % cfg.save_every == 0:
            save_checkpoint(master, optimizer, r, cfg, name=f"round_{r:04d}")
    print(summary(cfg))
    print(f"done: {cfg.out}/metrics.jsonl, {cfg.out}/plot.png, {cfg.out}/checkpoints/last")


def summary(cfg: SePTConfig) -> str:
    """First and last evaluation of the run, side by side."""
    with open(os.path.join(cfg.out, "metrics.jsonl")) as f:
        evals = [m for m in map(json.loads, f) if "pass@1" in m and not m.get("sweep")]
    first, last = evals[0], evals[-1]
    return f"summary τ={cfg.eval_temperature}: " + " | ".join(
        f"{k} {first[k]:.1f} -> {last[k]:.1f} ({last[k] - first[k]:+.1f})" for k in ("pass@1", "pass@8", "pass@32")
        if k in first) + f" (round {first['round']} -> {last['round']})"


def offline_answers(cfg, sampler, train_ids, tokenizer) -> dict:
    """--offline: G answers per question the run will use, drawn once by the initial model at tau_s_start, kept
    in offline.jsonl (a resumed run trains on the same ones). Returns {question index: [(response, entropy)]}."""
    path = os.path.join(cfg.out, "offline.jsonl")
    if not os.path.isfile(path):
        used = sorted({i for r in range(1, cfg.rounds + 1) for i in questions_for_round(r, len(train_ids), cfg)})
        used = [i for i in used for _ in range(cfg.rollouts)]
        responses, entropies = draw_answers(sampler, [train_ids[i] for i in used], cfg.tau_s_start, cfg, tokenizer,
                                            round_seed(cfg, 0, "train"), "offline answers")
        with open(path + ".tmp", "w") as f:
            f.writelines(json.dumps(dict(question=i, response=resp, entropy=h)) + "\n"
                         for i, resp, h in zip(used, responses, entropies))
        os.replace(path + ".tmp", path)
    answers = {}
    with open(path) as f:
        for line in f:
            row = json.loads(line)
            answers.setdefault(row["question"], []).append((row["response"], row["entropy"]))
    return answers


def keep_metrics_until(cfg: SePTConfig, last_round: int):
    """A fresh run starts a new metrics.jsonl; a resumed one drops lines of rounds after its checkpoint."""
    path = os.path.join(cfg.out, "metrics.jsonl")
    lines = []
    if last_round >= 0 and os.path.isfile(path):
        with open(path) as f:
            lines = [line for line in f if json.loads(line)["round"] <= last_round]
    with open(path + ".tmp", "w") as f:
        f.writelines(lines)
    os.replace(path + ".tmp", path)


def metric_text(m: dict) -> str:
    return " ".join(f"{k} {m[k]:.1f}" for k in ("pass@1", "pass@8", "pass@32") if k in m)


def report_eval(cfg, r, result):
    append_metrics(cfg, dict(round=r, **result))
    print(f"eval round {r} τ={result['eval_temperature']} | {metric_text(result)} ({result['seconds_eval']:.0f}s)")
    write_plot(cfg)


def round_summary(m: dict) -> str:
    acc = m["train_answers_correct"]
    return (f"round {m['round']} | τs {m['tau_s']:.2f} τt {m['tau_t']:.2f} lr {m['lr']:.2e} | loss {m['loss']:.4f} "
            f"gnorm {m['grad_norm']:.3f} | len {m['response_len_mean']:.1f}/{m['response_len_max']} "
            f"trunc {m['truncation_rate'] * 100:.1f}% | H {m['entropy']:.3f}"
            + (f" | answers correct {acc:.1f}%" if acc is not None else "")
            + f" | sample {m['seconds_sampling']:.1f}s train {m['seconds_training']:.1f}s")


if __name__ == "__main__":
    try:
        main()
    except (ValueError, OSError) as e:  # bad flags, files, checkpoints, question lines: one line, no traceback
        raise SystemExit(f"error: {e}") from None
