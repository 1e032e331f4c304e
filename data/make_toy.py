"""data/make_toy.py — regenerate the embedded toy worlds, data/toy/ and data/toy-fork/, deterministically from a seed.

The task: sums of 2-4 two-digit numbers, solved step by step and ended in \\boxed{answer}:

    Q: 63+15+43
    A: 63+15=78, 78+43=121. \\boxed{121}<|endoftext|>

The sum world (data/toy/). The base model is pretrained (with train.py) on solutions in which each step is right
with probability p_step_right and otherwise a plausible wrong value (off by 1, 2 or 10), the rest of the solution
continuing consistently from it. It so learns the right preference ordering with small margins — the regime in
which the paper says SePT helps: sampled at τ=1 it is often wrong, sampled at τ=0.6 it is mostly right, and
pass@32 is near 100%. But its greedy answer is right 98-99% of the time, so a low temperature alone matches SePT.

The fork world (data/toy-fork/, --world fork) adds one rule: at a slip step, where a two-digit total turns
three-digit through a units carry (58+47=105), the writer drops the carry with probability p_slip (58+47=95) and
is right only with probability p_slip_right; every other step is as in the sum world. Why: a real base model's
best temperature leaves headroom because on many questions its most likely step is a systematic slip, learned
from sloppy text in one kind of context, while it does the same step right in the neighbouring contexts and still
samples the right value sometimes. A low temperature makes the slip certain (greedy is wrong on nearly all of the
~40% of questions with a slip step), a high one spoils the other steps, so no temperature does well on both
(data/README.md has the measured sweep and what SePT does with it).

Everything (tokenizer, questions, weights) follows from the seed; the weights also from torch's number of CPU
threads (float sums in another order). data/toy-fork was made with one (OMP_NUM_THREADS=1), which on a 2-core
machine shared with other jobs also ran ~10x faster than torch's default.

    python data/make_toy.py                        # ~15 minutes on 2 CPU cores; writes data/toy/
    OMP_NUM_THREADS=1 python data/make_toy.py --world fork     # ~17-22 minutes on 2 CPU cores; writes data/toy-fork/
    python data/make_toy.py --out /tmp/toy --pretrain-steps 300   # a quick, weaker one
"""
import json
import os
import random
import sys
import time
from dataclasses import asdict, dataclass, replace
from typing import Literal

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo root

import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

import cli  # noqa: E402
import model as model_lib  # noqa: E402
import train  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
TOY = os.path.join(HERE, "toy")        # the sum world
FORK = os.path.join(HERE, "toy-fork")  # the fork world
FORK_ONLY = ("world", "p_slip", "p_slip_right")  # left out of the sum world's toy_config.json, as before they existed
EOS = "<|endoftext|>"
CHARS = "0123456789+=,.: \nQA\\boxed{}"  # one token per character: the arithmetic is visible to the model
WRONG_BY = (-10, -2, -1, 1, 2, 10)     # a wrong step's value is off by one of these


@dataclass
class ToyConfig:
    out: str = TOY                 # output folder (with --world fork and this default: data/toy-fork)
    world: Literal["sum", "fork"] = "sum"  # sum: data/toy; fork: data/toy-fork, where slip steps mostly drop a carry
    seed: int = 0                  # everything follows from it
    p_step_right: float = 0.7      # probability that a pretraining solution step is right (slip steps aside)
    p_slip: float = 0.65           # fork world: probability that a slip step drops its units carry (is 10 short)
    p_slip_right: float = 0.2      # fork world: probability that a slip step is right (else off by WRONG_BY)
    n_train: int = 5000            # questions for SePT rounds (train.jsonl)
    n_test: int = 200              # held-out questions for pass@k (test.jsonl), never seen in pretraining
    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 2
    pretrain_steps: int = 3000     # AdamW updates
    batch_size: int = 64           # solutions per update
    lr: float = 1e-3               # peak; cosine to lr/10 after a 100-step warmup


def make_tokenizer():
    from tokenizers import AddedToken, Tokenizer, decoders, models
    vocab = {t: i for i, t in enumerate([EOS, *CHARS])}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))  # no merges: one token per character
    tok.add_special_tokens([AddedToken(EOS, special=True)])
    tok.decoder = decoders.Fuse()
    return tok


def make_question(rng: random.Random) -> list[int]:
    return [rng.randint(10, 99) for _ in range(rng.choice((2, 3, 4)))]


def is_slip_step(acc: int, x: int) -> bool:
    """The fork world's slip context: a two-digit total turns three-digit through a units carry (58+47=105).
    Its neighbours are not slips: a units carry below 100 (38+45=83) or above (121+39=160), or the step to
    three digits without one (71+52=123)."""
    return acc < 100 <= acc + x and acc % 10 + x % 10 >= 10


def step_value(acc: int, x: int, rng: random.Random, p_step_right: float, p_slip: float, p_slip_right: float) -> int:
    """The value a pretraining solution writes for acc+x: right, off by one of WRONG_BY, or at a slip step
    (p_slip > 0 only) the carry dropped."""
    if p_slip > 0 and is_slip_step(acc, x):
        u = rng.random()
        if u < p_slip:
            return acc + x - 10
        if u < p_slip + p_slip_right:
            return acc + x
        return max(0, acc + x + rng.choice(WRONG_BY))
    if rng.random() < p_step_right:  # the sum world draws exactly this, so data/toy's stream is unchanged
        return acc + x
    return max(0, acc + x + rng.choice(WRONG_BY))


def solution(nums: list[int], rng: random.Random, p_step_right: float, p_slip: float = 0.0,
             p_slip_right: float = 0.0) -> str:
    """A step-by-step solution; a wrong step carries its wrong value into the following steps (where it can make
    or unmake a slip step: the context is the total as written)."""
    acc, steps = nums[0], []
    for x in nums[1:]:
        value = step_value(acc, x, rng, p_step_right, p_slip, p_slip_right)
        steps.append(f"{acc}+{x}={value}")
        acc = value
    return " " + ", ".join(steps) + f". \\boxed{{{acc}}}"


def question_text(nums: list[int]) -> str:
    return "+".join(map(str, nums))  # the prompt template "toy" wraps it as "Q: {question}\nA:"


def write_questions(cfg: ToyConfig, rng: random.Random) -> set[str]:
    """test.jsonl and train.jsonl, disjoint; returns the test questions (kept out of pretraining)."""
    prefix = "toy" if cfg.world == "sum" else "toy-fork"  # ids and sources name the world
    seen, sets = set(), {"test": [], "train": []}
    for name, n in (("test", cfg.n_test), ("train", cfg.n_train)):
        while len(sets[name]) < n:
            nums = make_question(rng)
            if question_text(nums) not in seen:
                seen.add(question_text(nums))
                sets[name].append(nums)
        with open(os.path.join(cfg.out, f"{name}.jsonl"), "w") as f:
            for i, nums in enumerate(sets[name]):
                f.write(json.dumps(dict(id=f"{prefix}-{name}-{i}", problem=question_text(nums), answer=str(sum(nums)),
                                        source=f"{prefix}-{name}")) + "\n")
    return {question_text(nums) for nums in sets["test"]}


def slip_probabilities(cfg: ToyConfig) -> tuple[float, float]:
    """(p_slip, p_slip_right): the fork world's, none in the sum world."""
    if cfg.world == "fork":
        return cfg.p_slip, cfg.p_slip_right
    return 0.0, 0.0


def written_config(cfg: ToyConfig) -> dict:
    """toy_config.json: how the world was made (the folder aside; the sum world's as before the fork existed)."""
    skip = ("out",) if cfg.world == "fork" else ("out", *FORK_ONLY)
    return {k: v for k, v in asdict(cfg).items() if k not in skip}


def pretrain(cfg: ToyConfig, tok, held_out: set[str], rng: random.Random) -> model_lib.Transformer:
    mcfg = model_lib.ModelConfig(
        model_type="llama", vocab_size=tok.get_vocab_size(), hidden_size=cfg.hidden_size,
        intermediate_size=3 * cfg.hidden_size, num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads, head_dim=cfg.hidden_size // cfg.num_heads, rms_norm_eps=1e-6,
        rope_theta=10000.0, max_position_embeddings=128, tie_word_embeddings=True)
    mcfg.hf_config = dict(model_lib.hf_config_from(mcfg), bos_token_id=None, eos_token_id=tok.token_to_id(EOS))
    torch.manual_seed(cfg.seed)
    net = model_lib.Transformer(mcfg)
    for p in net.parameters():  # small init, RMSNorm weights stay 1
        if p.dim() > 1:
            torch.nn.init.normal_(p, 0.0, 0.02)
    tcfg = train.TrainConfig(lr=cfg.lr, warmup_steps=100, lr_schedule="cosine", min_lr=cfg.lr / 10,
                             total_steps=cfg.pretrain_steps, weight_decay=0.01)
    optimizer = train.make_optimizer(net, tcfg)
    encode = lambda s: tok.encode(s, add_special_tokens=False).ids  # noqa: E731
    eos = tok.token_to_id(EOS)
    bar = tqdm(range(cfg.pretrain_steps), desc="pretrain")
    for step in bar:
        batch = []
        while len(batch) < cfg.batch_size:
            nums = make_question(rng)
            if question_text(nums) not in held_out:
                text = solution(nums, rng, cfg.p_step_right, *slip_probabilities(cfg))
                batch.append((encode(f"Q: {question_text(nums)}\nA:"), encode(text) + [eos]))
        stats = train.train_step(net, optimizer, batch, step, tcfg)
        if step % 100 == 0 or step == cfg.pretrain_steps - 1:
            tqdm.write(f"step {step} loss {stats['loss']:.4f} lr {stats['lr']:.2e}")
    return net.eval()


def config_from_argv(argv: list[str] | None) -> ToyConfig:
    cfg = cli.config_from_argv(ToyConfig, argv, __doc__.split("\n")[0])
    if cfg.world == "fork" and cfg.out == TOY:  # --world fork alone writes data/toy-fork, never over data/toy
        cfg = replace(cfg, out=FORK)
    return cfg


def main(argv=None):
    cfg = config_from_argv(argv)
    print("config " + json.dumps(asdict(cfg)))
    os.makedirs(cfg.out, exist_ok=True)
    rng = random.Random(cfg.seed)
    tok = make_tokenizer()
    held_out = write_questions(cfg, rng)
    t0 = time.time()
    net = pretrain(cfg, tok, held_out, rng)
    model_lib.save_model(net, cfg.out + ".model")
    for name in os.listdir(cfg.out + ".model"):  # the weights join the questions in cfg.out
        os.replace(os.path.join(cfg.out + ".model", name), os.path.join(cfg.out, name))
    os.rmdir(cfg.out + ".model")
    tok.save(os.path.join(cfg.out, "tokenizer.json"))
    with open(os.path.join(cfg.out, "tokenizer_config.json"), "w") as f:
        json.dump({"eos_token": EOS, "tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": 128}, f,
                  indent=2)
    with open(os.path.join(cfg.out, "toy_config.json"), "w") as f:
        json.dump(written_config(cfg), f, indent=2)
    print(f"wrote {cfg.out} in {time.time() - t0:.0f}s of pretraining")


if __name__ == "__main__":
    main()
