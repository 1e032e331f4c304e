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
import sys
import time
import zlib
from dataclasses import asdict, dataclass
from typing import Literal

import torch
from tqdm import tqdm

import cli
import model as model_lib
import runs
import sample
import train
from data import grading, prompts, questions

HERE = os.path.dirname(os.path.abspath(__file__))
TOY, FORK = (os.path.join(HERE, "data", name) for name in ("toy", "toy-fork"))  # toy-fork: data/README.md
TAU_EFF_ANSWERS = 32  # answers a round's τ_eff is measured on: enough positions for one number, 2 short forwards


@dataclass
class SePTConfig(train.TrainConfig):
    """The loop's settings; the trainer's (lr, warmup_steps, tau_t, loss, ...) come from train.TrainConfig.
    Defaults are the official recipe (ElementQi/SePT, sept_1e7_dsr.sh); a preset changes some (PRESETS)."""
    preset: str = "toy"                 # starting values (PRESETS): toy, paper, and their -grpo, -em, -offline
    algo: Literal["sept", "grpo"] = "sept"  # sept: train on own answers, no reward; grpo: the RLVR baseline
    model: str = ""                     # base checkpoint folder (HF format)
    train_questions: str = ""           # questions the rounds draw from (jsonl / parquet)
    test_questions: str = ""            # held-out sets, comma-separated, for pass@k
    template: Literal[tuple(prompts.TEMPLATE_NAMES)] = "qwen-math"  # prompt template (data/prompts.py)
    stop: Literal[prompts.STOP_RULES] = "checkpoint"  # answers end at: checkpoint = its EOS ids (the official run's
    #                                     vLLM); turn = also at any end-of-turn token (<|im_end|>, <|eot_id|> ...)
    out: str = "runs/sept"              # output folder (a new run refuses one that holds a run: see --overwrite)
    overwrite: bool = False             # a new run deletes the run in --out: its config, metrics, samples, checkpoints
    resume: str = ""                    # continue the run in this folder from its last finished round
    rounds: int = 0                     # R: training rounds (the lr steps once a round); 0 = --epochs passes
    epochs: int = 3                     # E: when --rounds is 0, R = E·⌊N/B⌋ for N questions (verl drops the rest)
    batch_prompts: int = 128            # B: fresh questions per round
    rollouts: int = 1                   # G: answers sampled per question
    updates_per_round: int = 2          # µ: optimizer updates per round, on mini-batches of B·G/µ answers
    tau_s_start: float = 0.6            # τs at round 1
    tau_s_end: float = 1.0              # τs after the ramp
    tau_s_schedule: Literal["constant", "linear", "cosine"] = "linear"  # from tau_s_start to tau_s_end
    tau_s_ramp: float = 2 / 3           # fraction of the rounds over which τs moves, then held
    couple: bool = False                # ablation: τt = τs every round
    offline: bool = False               # ablation: all answers drawn once from the initial model at tau_s_start
    offline_eos: bool = False           # --offline: every answer ends with the tokenizer's EOS (verl's SFT data)
    top_p: float = 1.0                  # nucleus mass when sampling training answers
    max_prompt_tokens: int = 1024       # longer prompts are an error
    max_response_tokens: int = 3072     # answers are cut here (and kept whole for training)
    eval_every: int = 50                # K: evaluate before training, every K rounds and at the end (0 = ends only)
    eval_n: int = 32                    # n: answers per test question
    eval_temperature: float = 1.0       # τ_eval
    eval_max_questions: int = 0         # use the first N questions of each test file (0 = all)
    sweep: str = ""                     # e.g. 0.0,0.2,0.4: evaluate the initial model at these τ, then stop
    compare: str = ""                   # run folders, comma-separated: plot them together into --out (a .png)
    sample_batch: int = 256             # rows of the sampling stream (its KV cache); 0 = what fits in free GPU memory
    checkpoint_every: int = 10          # write checkpoints/last every this many rounds (resume point)
    save_every: int = 50                # also keep checkpoints/round_NNNN every this many rounds (0 = never)
    seed: int = 0                       # every random choice is a pure function of (seed, round)
    device: str = "auto"                # auto = cuda when available, else cpu
    sample_dtype: Literal[("auto", *model_lib.DTYPES)] = "auto"  # auto = bfloat16 on cuda, float32 on cpu
    export_verl: str = ""               # write DIR/run.sh + DIR/data/ for the official verl recipe (8 GPUs), then stop


# The official scripts run 3 epochs (the default), average the loss over micro-batches of 4 answers per GPU
PAPER = dict(warmup_steps=10, activation_checkpointing=True, micro_batch_tokens=32768, save_every=300, loss_group=4,
             sample_batch=0)
TOY_WORLD = dict(model=TOY, train_questions=os.path.join(TOY, "train.jsonl"), template="toy",
                 test_questions=os.path.join(TOY, "test.jsonl"), max_response_tokens=64, eval_every=2,
                 sample_batch=2048, checkpoint_every=1, save_every=0, lr=1e-4, warmup_steps=3, rounds=10)
COUPLED_1 = dict(tau_s_start=1.0, tau_s_end=1.0, tau_s_schedule="constant")  # sample (and train) at τ = 1
# offline_train.sh: verl's SFT trainer, one update per B answers, cosine to 0 after a 1% warmup, β2 0.95, EOS appended
SFT = dict(offline=True, offline_eos=True, updates_per_round=1, tau_s_schedule="constant", lr_schedule="cosine",
           warmup_steps=0, warmup_ratio=0.01, beta2=0.95, loss_group=4)
TOY_SEPT = dict(TOY_WORLD, batch_prompts=256, updates_per_round=8, tau_s_end=0.6, tau_s_schedule="constant")
PRESETS = {
    # the official scripts (ElementQi/SePT, sept/examples/): the defaults above plus their trainer settings
    "paper": PAPER,                                                                    # sept_1e7_dsr.sh
    "paper-grpo": dict(PAPER, algo="grpo", lr=5e-7, rollouts=8, **COUPLED_1),         # grpo_5e7_dsr.sh
    "paper-em": dict(PAPER, loss="em", couple=True, tau_s_start=1.0, save_every=50),  # em_1e7_dsr.sh
    "paper-offline": dict(PAPER, **SFT, lr=1e-5, save_every=50),  # generate_solutions.sh + offline_train.sh
    # the embedded toy world, on 2 CPU cores in minutes (README: "Results on the toy")
    "toy": TOY_SEPT,
    "toy-grpo": dict(TOY_WORLD, algo="grpo", batch_prompts=32, rollouts=8, updates_per_round=2, **COUPLED_1),
    "toy-em": dict(TOY_SEPT, loss="em", couple=True, **COUPLED_1),
    "toy-offline": dict(dict(TOY_SEPT, **SFT), updates_per_round=8),  # the SFT recipe in the toy's mini-batches
    "toy-fork": dict(TOY_SEPT, model=FORK, train_questions=os.path.join(FORK, "train.jsonl"),
                     test_questions=os.path.join(FORK, "test.jsonl")),  # README: "A world with headroom"
}


# ----------------------------------------------------------------------------------------------------------
# The schedules and the round's choices: pure functions of the round r = 1..R.

def tau_s_at(r: int, cfg: SePTConfig) -> float:
    """τs(r): constant, or from tau_s_start to tau_s_end over the first tau_s_ramp·R rounds, then held."""
    if cfg.tau_s_schedule == "constant":
        return cfg.tau_s_start
    progress = min(1.0, (r - 1) / max(1.0, cfg.tau_s_ramp * cfg.rounds))
    if cfg.tau_s_schedule == "cosine":
        progress = (1 - math.cos(math.pi * progress)) / 2
    return cfg.tau_s_start + (cfg.tau_s_end - cfg.tau_s_start) * progress


def round_config(cfg: SePTConfig, tau_s: float) -> SePTConfig:
    """The trainer's settings for a round at τs: τt (= τs when coupled), a cosine lr schedule over the rounds."""
    return dataclasses.replace(cfg, tau_t=tau_s if cfg.couple else cfg.tau_t, total_steps=cfg.total_steps or cfg.rounds)


def questions_for_round(r: int, n_questions: int, cfg: SePTConfig) -> list[int]:
    """B question indices for round r: passes (epochs) over the set, each in a new order, of ⌊N/B⌋ rounds; the
    questions left over at the end of a pass wait for the next (verl's dataloader drops that partial batch)."""
    epoch, i = divmod(r - 1, n_questions // cfg.batch_prompts)
    generator = torch.Generator().manual_seed(seed_for(cfg, "questions", epoch))
    order = torch.randperm(n_questions, generator=generator).tolist()
    return order[i * cfg.batch_prompts:(i + 1) * cfg.batch_prompts]


def seed_for(cfg: SePTConfig, purpose: str, r: int) -> int:
    """The seed of one random choice, a pure function of (--seed, what it is for, its round or pass): runs are
    reproducible, a resumed run draws what the uninterrupted one would, and no two choices share a stream."""
    return zlib.crc32(f"{cfg.seed}:{purpose}:{r}".encode())


# ----------------------------------------------------------------------------------------------------------
# The steps of a round: answer, train, evaluate.

def draw_answers(sampler: model_lib.Transformer, prompts_ids: list[list[int]], *, tau: float, max_new_tokens: int,
                 top_p: float, stop_ids, batch: int, seed: int, desc: str = "",
                 entropy: bool = True) -> tuple[list[list[int]], list[float] | None, int]:
    """An answer (token ids) to each prompt at temperature τ, with entropy=True the mean entropy of the model's
    next-token distribution over it, and the rows that went on (fewer than `batch` if memory ran out)."""
    stats = {}
    with tqdm(total=len(prompts_ids), desc=desc, leave=False, disable=len(prompts_ids) <= batch) as bar:
        responses = sample.generate(sampler, prompts_ids, max_new_tokens=max_new_tokens, temperature=tau, top_p=top_p,
                                    eos_ids=stop_ids, seed=seed, stats=stats, entropy=entropy, max_batch=batch,
                                    progress=bar.update)
    return responses, stats["entropy"], stats["rows"]


def train_on_answers(master: model_lib.Transformer, optimizer, pairs: list[train.Pair], step: int,
                     tcfg: train.TrainConfig, updates: int, seed: int, desc: str = "",
                     advantages: list[float] | None = None) -> tuple[list[dict], dict]:
    """µ AdamW updates on the round's (prompt, answer) pairs, shuffled and split into µ mini-batches. Stops at
    the first update whose loss or gradient is not finite (train_step then leaves the weights untouched).
    With `advantages` (GRPO) each mini-batch first gets the log-probabilities of the model that sampled it,
    all before the first update: that update's ratio p / p_old is then exactly 1.
    Returns the updates' stats, and how far they sharpened the model: the factor on its logits (train.logit_scale)
    at the first TAU_EFF_ANSWERS answers, before against after, and the seconds that measuring took."""
    t0 = time.time()
    probe = pairs[:TAU_EFF_ANSWERS]
    before = train.top_logits(master, probe, tcfg)
    seconds = time.time() - t0
    order = torch.randperm(len(pairs), generator=torch.Generator().manual_seed(seed)).tolist()
    size = math.ceil(len(pairs) / updates)
    batches = [order[u * size:(u + 1) * size] for u in range(updates)]
    policies = [None] * updates if advantages is None else [
        train.PolicyTargets([advantages[i] for i in b],
                            [-t for t in train.response_token_losses(master, [pairs[i] for i in b], tcfg)])
        for b in batches]
    steps = []
    for batch, policy in tqdm(list(zip(batches, policies)), desc=desc, leave=False):
        steps.append(train.train_step(master, optimizer, [pairs[i] for i in batch], step, tcfg, policy))
        if steps[-1]["skipped"]:
            break
    t0 = time.time()
    scale = train.logit_scale(before[0], train.top_logits(master, probe, tcfg, ids=before[1])[0])
    return steps, dict(logit_scale=scale, seconds_tau_eff=round(seconds + time.time() - t0, 2))


def evaluate(sampler: model_lib.Transformer, tokenizer: prompts.Tokenizer, test_sets: dict, *, n: int, tau: float,
             max_new_tokens: int, batch: int, seed: int) -> dict:
    """n answers per test question at τ, graded: pass@k (percent) per set and averaged over sets. Every set's
    answers go through one stream of `batch` rows."""
    t0, tables = time.time(), {}
    ks = [k for k in (1, 2, 4, 8, 16, 32, 64, 128, 256) if k <= n]
    asked = [(name, q, p) for name, (qs, prompt_ids) in test_sets.items() for q, p in zip(qs, prompt_ids)
             for _ in range(n)]
    responses, _, rows = draw_answers(sampler, [p for _, _, p in asked], tau=tau, top_p=1.0,
                                      max_new_tokens=max_new_tokens, stop_ids=tokenizer.stop_ids, batch=batch,
                                      seed=seed, desc=f"eval τ={tau}", entropy=False)  # entropy: not needed
    grades = grading.grade_many([tokenizer.decode(r) for r in responses], [q.answer for _, q, _ in asked])
    for name, (qs, _) in test_sets.items():
        mine = [g for (set_name, _, _), g in zip(asked, grades) if set_name == name]  # n per question, in order
        counts = [sum(bool(g.correct) for g in mine[i * n:(i + 1) * n]) for i in range(len(qs))]
        tables[name] = grading.pass_at_k_table(counts, n, ks)
    result = grading.mean_over_benchmarks(tables) if len(tables) > 1 else dict(next(iter(tables.values())))
    if len(tables) > 1:
        result["benchmarks"] = tables
    if rows < batch:  # memory ran out
        result["sample_rows"] = rows
    return dict(result, eval_temperature=tau, seconds_eval=round(time.time() - t0, 2))


def evaluate_at(cfg: SePTConfig, sampler, tokenizer, test_sets: dict, tau: float, seed: int) -> dict:
    result = evaluate(sampler, tokenizer, test_sets, n=cfg.eval_n, tau=tau, max_new_tokens=cfg.max_response_tokens,
                      batch=cfg.sample_batch, seed=seed)
    runs.keep_smaller(cfg, sample_batch=result.get("sample_rows", cfg.sample_batch))
    return result


def offline_answers(cfg: SePTConfig, sampler, train_ids: list[list[int]], stop_ids) -> dict:
    """--offline: G answers per question the run will use, drawn once by the initial model at tau_s_start, kept
    in offline.jsonl (a resumed run trains on the same ones). Returns {question index: [(response, entropy)]}."""
    if not os.path.isfile(os.path.join(cfg.out, "offline.jsonl")):
        used = sorted({i for r in range(1, cfg.rounds + 1) for i in questions_for_round(r, len(train_ids), cfg)})
        used = [i for i in used for _ in range(cfg.rollouts)]
        responses, entropies, rows = draw_answers(sampler, [train_ids[i] for i in used], tau=cfg.tau_s_start,
                                                  max_new_tokens=cfg.max_response_tokens, top_p=cfg.top_p,
                                                  stop_ids=stop_ids, batch=cfg.sample_batch,
                                                  seed=seed_for(cfg, "train", 0), desc="offline answers")
        runs.keep_smaller(cfg, sample_batch=rows)
        runs.write_offline(cfg.out, used, responses, entropies)
    return runs.read_offline(cfg.out)


def offline_round(offline: dict, fresh: list[int], cfg: SePTConfig, tokenizer) -> tuple[list[list[int]], list[float]]:
    """The stored answers of this round's questions, G per question, in the order of `picked`. With --offline-eos
    each ends with the tokenizer's EOS (a stop token it ended at replaced, a cut-off one extended), as verl's SFT
    data does: the answer's text, then the EOS."""
    answers = [a for i in fresh for a in offline[i]]
    responses = [response for response, _ in answers]
    if cfg.offline_eos:
        stop = set(tokenizer.stop_ids)
        responses = [(r[:-1] if r and r[-1] in stop else r) + [tokenizer.eos_id] for r in responses]
    return responses, [entropy for _, entropy in answers]


# ----------------------------------------------------------------------------------------------------------
# Set-up: configuration, questions, the no-training baseline.

def resolve_config(argv: list[str] | None = None) -> SePTConfig:
    """The dataclass defaults (the official recipe), then the preset's values (toy unless --preset names
    another), then the flags given; --help shows the values so resolved. --resume starts instead from the run's
    own config.json and continues the run as it was set up: in its folder (--preset, --out, --overwrite are
    errors), and over its rounds unless its τs and lr schedules do not depend on them."""
    argv = sys.argv[1:] if argv is None else list(argv)
    first = argparse.ArgumentParser(add_help=False)
    for flag in ("--preset", "--resume", "--out", "--overwrite", "--rounds", "--epochs"):
        first.add_argument(flag, nargs="?", const="given")
    known, _ = first.parse_known_args(argv)
    if known.resume:
        if given := [f"--{k}" for k in ("preset", "out", "overwrite") if getattr(known, k)]:
            raise ValueError(f"--resume {known.resume} continues that run as it was set up: drop {', '.join(given)}")
        base = runs.read_run_config(known.resume, {f.name for f in dataclasses.fields(SePTConfig)})
    elif (known.preset or "toy") not in PRESETS:
        raise ValueError(f"--preset {known.preset!r}: choose one of {', '.join(PRESETS)}")
    else:
        base = {**asdict(SePTConfig()), **PRESETS[known.preset or "toy"], "preset": known.preset or "toy"}
    parser = cli.config_parser(SePTConfig, __doc__.split("\n")[0], aliases={"warmup_steps": "--warmup-rounds"})
    parser.set_defaults(**base)
    cfg = SePTConfig(**vars(parser.parse_args(argv)))
    cfg.out = cfg.resume or cfg.out
    if known.epochs and not known.rounds:  # --epochs given: it decides the rounds, not the preset's --rounds
        cfg.rounds = 0
    if cfg.resume and cfg.rounds != base["rounds"] and (cfg.tau_s_schedule != "constant" or (
            cfg.lr_schedule == "cosine" and not cfg.total_steps)):
        raise ValueError(f"--rounds {cfg.rounds}: the run's τs / lr schedules span its --rounds {base['rounds']}; "
                         f"resume it with those (only constant schedules can be extended)")
    for key in ("model", "train_questions", "test_questions"):
        if not getattr(cfg, key) and not (key == "train_questions" and cfg.sweep):
            raise ValueError(f"--preset {cfg.preset} needs --{key.replace('_', '-')}")
    return cfg


# What each setting may be, checked before anything is loaded (check_config): {field: (holds, allowed values)}.
RULES = {**train.RULES, **dict.fromkeys("epochs batch_prompts rollouts updates_per_round eval_n checkpoint_every "
                                        "max_prompt_tokens max_response_tokens".split(), cli.AT_LEAST_1),
         **dict.fromkeys(("rounds", "eval_every", "save_every", "eval_max_questions", "sample_batch"), cli.AT_LEAST_0),
         "tau_s_start": cli.POSITIVE, "tau_s_end": cli.POSITIVE, "eval_temperature": cli.NON_NEGATIVE,
         "tau_s_ramp": cli.FRACTION, "top_p": cli.PROBABILITY,
         "sweep": (lambda v: not v or all(t.strip().replace(".", "", 1).isdigit() for t in v.split(",")),
                   "temperatures >= 0, comma-separated (e.g. 0,0.6,1.0)")}


def check_config(cfg: SePTConfig) -> None:
    """Every setting against its meaning (RULES), in the first second: one line naming the flag."""
    cli.check_settings(cfg, RULES)
    if (cfg.batch_prompts * cfg.rollouts) % cfg.updates_per_round:
        raise ValueError(f"B·G = {cfg.batch_prompts * cfg.rollouts} answers do not split into "
                         f"{cfg.updates_per_round} equal mini-batches (--updates-per-round)")
    if cfg.offline_eos and not cfg.offline:
        raise ValueError("--offline-eos ends the stored answers of --offline: add --offline, or drop it")


def resolve_rounds(cfg: SePTConfig, n_questions: int) -> None:
    """--rounds 0: --epochs passes over the N training questions, ⌊N/B⌋ rounds each (as the official runs)."""
    if n_questions < cfg.batch_prompts:
        raise ValueError(f"{cfg.train_questions}: {n_questions} questions, fewer than --batch-prompts "
                         f"{cfg.batch_prompts}: not one round's worth")
    cfg.rounds = cfg.rounds or cfg.epochs * (n_questions // cfg.batch_prompts)


def sweep(cfg: SePTConfig, sampler, tokenizer, test_sets: dict) -> None:
    """The no-training baseline: the initial model at each τ of --sweep; the best by AVG(pass@1, @8, @32)."""
    results = []
    for tau in (float(t) for t in cfg.sweep.split(",")):
        results.append(evaluate_at(cfg, sampler, tokenizer, test_sets, tau, seed_for(cfg, "sweep", 0)))
        runs.append_metrics(cfg.out, dict(round=0, sweep=True, **results[-1]))
        print(f"sweep τ={tau:.2f} | " + runs.metric_text(results[-1]))
    best = max(results, key=lambda m: grading.avg_pass(m) if "pass@32" in m else m["pass@1"])
    print(f"best temperature {best['eval_temperature']} ({runs.metric_text(best)}); plot: {cfg.out}/sweep.png")
    runs.write_sweep_plot(cfg.out, results)


# ----------------------------------------------------------------------------------------------------------
# Algorithm 1.

def main(argv=None):
    cfg = resolve_config(argv)
    if cfg.compare:  # no run: several finished ones laid on one plot
        return runs.write_comparison(cfg.compare.split(","), cfg.out)
    check_config(cfg)
    if cfg.export_verl:  # the official verl recipe's launch and data instead of a run (data/verl.py)
        from data import verl
        return verl.export(cfg, cfg.export_verl)
    runs.check_out(cfg.out, bool(cfg.resume), cfg.overwrite)
    device = cli.pick_device(cfg.device)
    sample_dtype = cli.pick_dtype(cfg.sample_dtype, device)

    # 0. the questions, the model (fp32 master weights + a sampling copy), the optimizer, resumed if asked; --out
    #    is written only once all of them have loaded
    tokenizer = prompts.load_tokenizer(cfg.model, cfg.stop)
    if cfg.offline_eos and tokenizer.eos_id is None:
        raise ValueError(f"--offline-eos: {cfg.model}/tokenizer_config.json declares no eos_token to append")
    context = model_lib.read_config(cfg.model).max_position_embeddings
    test_sets, train_qs, train_ids = questions.load_question_sets(cfg, tokenizer, context)
    if not cfg.sweep:
        resolve_rounds(cfg, len(train_qs))
    ckpt, start = runs.resume_point(cfg.out, min(cfg.checkpoint_every, cfg.rounds)) if cfg.resume else (None, 0)
    master = model_lib.load_model(ckpt or cfg.model, device, torch.float32)
    sampler = sample.make_sampler(master, sample_dtype)
    optimizer = train.make_optimizer(master, round_config(cfg, cfg.tau_s_start))
    if ckpt:
        runs.load_optimizer(optimizer, os.path.join(ckpt, "optimizer.safetensors"))
        print(f"resuming {cfg.out} after round {start} ({ckpt})")
    # --sample-batch 0: the rows of KV cache that fit in free memory, leaving training its gradients and moments
    longest = max(len(p) for ids in [train_ids, *(ids for _, ids in test_sets.values())] for p in ids)
    rows = cfg.sample_batch or sample.rows_that_fit(sampler, longest + cfg.max_response_tokens,
                                                    train.memory_to_come(optimizer))
    resolved = dict(stop_ids={tokenizer.decode([i]): i for i in tokenizer.stop_ids}, sample_batch=rows)
    print("config " + json.dumps(asdict(cfg)))
    print(f"answers end at {resolved['stop_ids']} (--stop {cfg.stop}); {rows} rows of sampling")
    runs.start_run(cfg.out, dict(asdict(cfg), resolved=resolved), start if ckpt else -1)
    cfg.sample_batch = rows
    if cfg.sweep:
        return sweep(cfg, sampler, tokenizer, test_sets)
    if start == 0:
        runs.report_eval(cfg, 0, evaluate_at(cfg, sampler, tokenizer, test_sets, cfg.eval_temperature,
                                             seed_for(cfg, "eval", 0)))
    offline = offline_answers(cfg, sampler, train_ids, tokenizer.stop_ids) if cfg.offline else None
    tau_eff, tau_theorem1 = runs.temperatures_after(cfg.out, start)  # 1, 1 before any training

    for r in range(start + 1, cfg.rounds + 1):
        # 1. B fresh questions, G answers each, and this round's temperatures (τt = 1 > τs sharpens)
        fresh = questions_for_round(r, len(train_qs), cfg)
        picked = [i for i in fresh for _ in range(cfg.rollouts)]
        tau_s = tau_s_at(r, cfg)
        rcfg = round_config(cfg, tau_s)
        # 2. the current model answers them at τs (offline: the initial model's answers, drawn once)
        t0 = time.time()
        rows = cfg.sample_batch  # the rows sampling went on with: fewer if memory ran out
        if cfg.offline:
            responses, entropies = offline_round(offline, fresh, cfg, tokenizer)
        else:
            responses, entropies, rows = draw_answers(
                sampler, [train_ids[i] for i in picked], tau=tau_s, max_new_tokens=cfg.max_response_tokens,
                top_p=cfg.top_p, stop_ids=tokenizer.stop_ids, batch=cfg.sample_batch,
                seed=seed_for(cfg, "train", r), desc=f"round {r} sample")
        t1 = time.time()
        texts = [tokenizer.decode(resp) for resp in responses]
        grades = grading.grade_many(texts, [train_qs[i].answer for i in picked])
        rewards = [float(bool(g.correct)) for g in grades]
        # 3. µ updates on its own answers at τt: plain cross-entropy (SePT: the grades are logged, never used),
        #    or the clipped surrogate of each answer's group-normalized reward (--algo grpo, the RLVR baseline)
        kept = [k for k, resp in enumerate(responses) if resp]
        pairs = [(train_ids[picked[k]], responses[k]) for k in kept]
        advantages = grading.group_advantages(rewards, cfg.rollouts) if cfg.algo == "grpo" else None
        t2 = time.time()
        steps, sharpening = train_on_answers(master, optimizer, pairs, r - 1, rcfg, cfg.updates_per_round,
                                             seed_for(cfg, "shuffle", r), f"round {r} train",
                                             None if advantages is None else [advantages[k] for k in kept])
        runs.stop_if_not_finite(steps, r, cfg)
        smaller = runs.keep_smaller(cfg, sample_batch=rows, micro_batch_tokens=rcfg.micro_batch_tokens)
        # 4. refresh the sampling copy: the next round samples from the updated model
        sample.refresh_sampler(master, sampler)
        t3 = time.time()
        # 5. how far the rounds have sharpened the model: the base model's temperature it now matches (τ_eff, each
        #    round's 1/factor multiplied), beside Theorem 1's prediction at convergence, the product of τs/τt
        tau_eff /= sharpening["logit_scale"]
        tau_theorem1 *= tau_s / rcfg.tau_t
        # 6. log, evaluate every K rounds, and keep the checkpoint `last` (the resume point)
        line = dict(runs.round_metrics(r, tau_s, rcfg.tau_t, steps, responses, entropies, grades, tokenizer),
                    **(runs.reward_metrics(rewards, cfg.rollouts) if cfg.algo == "grpo" else {}),
                    tau_eff=tau_eff, tau_theorem1=tau_theorem1, **sharpening, **smaller,
                    seconds_sampling=round(t1 - t0, 2),
                    seconds_training=round(t3 - t2 - sharpening["seconds_tau_eff"], 2))
        runs.log_round(cfg.out, line, [train_qs[i] for i in picked], responses, texts, grades)
        if r == cfg.rounds or (cfg.eval_every and r % cfg.eval_every == 0):
            runs.report_eval(cfg, r, evaluate_at(cfg, sampler, tokenizer, test_sets, cfg.eval_temperature,
                                                 seed_for(cfg, "eval", r)))
        if r == cfg.rounds or r % cfg.checkpoint_every == 0:
            runs.save_checkpoint(cfg.out, "last", master, optimizer, r, cfg.model)
        if cfg.save_every and r % cfg.save_every == 0:
            runs.save_checkpoint(cfg.out, f"round_{r:04d}", master, optimizer, r, cfg.model)
    print(runs.summary(cfg.out, cfg.eval_temperature))
    print(f"done: {cfg.out}/metrics.jsonl, {cfg.out}/plot.png, {cfg.out}/checkpoints/last")


if __name__ == "__main__":
    try:
        main()
    except (ValueError, OSError, ImportError) as e:  # bad flags, files, checkpoints, question lines: one line
        raise SystemExit(f"error: {e}") from None
    except KeyboardInterrupt:  # Ctrl-C: what the run keeps and the command that continues it, not a traceback
        print("\n" + runs.interrupted(resolve_config().out, f"python {sys.argv[0]}"), file=sys.stderr)
        sys.exit(130)
    except train.AnswerTooLong as e:  # memory: the same, with what to lower
        sys.exit(f"error: {e}\n" + runs.interrupted(resolve_config().out, f"python {sys.argv[0]}"))
