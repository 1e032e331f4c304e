"""The fork world (data/toy-fork/): its files load, its settings are what `make_toy.py --world fork` writes, the
question generator makes the slip it claims and leaves the sum world's stream alone, and the shipped model's mode
is the slip at slip steps while it still gives the right value real weight. No pretraining here (~5 s)."""
import filecmp
import json
import os
import random

import pytest
import torch

import model as model_lib
from data import grading, make_toy, prompts, questions

FORK = make_toy.FORK
needs_fork = pytest.mark.skipif(not os.path.isfile(os.path.join(FORK, "model.safetensors")), reason="no data/toy-fork")


def test_slip_steps_are_the_carry_into_the_hundreds():
    assert make_toy.is_slip_step(58, 47)       # 105: two digits to three through a units carry
    assert make_toy.is_slip_step(91, 19)       # 110
    assert not make_toy.is_slip_step(38, 45)   # 83: a units carry below 100
    assert not make_toy.is_slip_step(121, 39)  # 160: a units carry above 100
    assert not make_toy.is_slip_step(71, 52)   # 123: into the hundreds without a units carry
    assert not make_toy.is_slip_step(50, 50)   # 100: no units carry


def step_outcomes(n_solutions: int, world: str) -> dict:
    """{slip step?: [steps, right, 10 short]} over pretraining solutions drawn as make_toy draws them."""
    cfg = make_toy.ToyConfig(world=world)
    rng = random.Random(1)
    counts = {True: [0, 0, 0], False: [0, 0, 0]}
    for _ in range(n_solutions):
        nums = make_toy.make_question(rng)
        text = make_toy.solution(nums, rng, cfg.p_step_right, *make_toy.slip_probabilities(cfg))
        acc = nums[0]
        for step, x in zip(text.strip().split(". ")[0].split(", "), nums[1:]):
            lhs, value = step.split("=")
            assert lhs == f"{acc}+{x}"  # the next step starts from the value written, right or wrong
            c = counts[make_toy.is_slip_step(acc, x)]
            c[0] += 1
            c[1] += int(value) == acc + x
            c[2] += int(value) == acc + x - 10
            acc = int(value)
        assert grading.extract_boxed(text) == str(acc)
    return counts


def test_fork_solutions_mostly_drop_the_carry_at_slip_steps_only():
    cfg = make_toy.ToyConfig(world="fork")
    counts = step_outcomes(4000, "fork")
    n, right, short = counts[True]
    assert n > 1000
    assert abs(short / n - cfg.p_slip - (1 - cfg.p_slip - cfg.p_slip_right) / 6) < 0.03  # the slip, plus -10 noise
    assert abs(right / n - cfg.p_slip_right) < 0.03
    n, right, short = counts[False]
    assert abs(right / n - cfg.p_step_right) < 0.02
    assert abs(short / n - (1 - cfg.p_step_right) / 6) < 0.02  # elsewhere 10 short is only the ordinary noise
    n, right, short = step_outcomes(1000, "sum")[True]
    assert abs(right / n - 0.7) < 0.05  # the sum world has no slip steps


def old_solution(nums: list[int], rng: random.Random, p_step_right: float) -> str:
    """make_toy.solution before the fork world existed, which made data/toy."""
    acc, steps = nums[0], []
    for x in nums[1:]:
        value = acc + x if rng.random() < p_step_right else max(0, acc + x + rng.choice(make_toy.WRONG_BY))
        steps.append(f"{acc}+{x}={value}")
        acc = value
    return " " + ", ".join(steps) + f". \\boxed{{{acc}}}"


def test_sum_world_draws_as_before():
    a, b = random.Random(3), random.Random(3)
    for _ in range(500):
        nums = make_toy.make_question(a)
        assert nums == make_toy.make_question(b)
        assert make_toy.solution(nums, a, 0.7) == old_solution(nums, b, 0.7)
    with open(os.path.join(make_toy.TOY, "toy_config.json")) as f:
        assert json.load(f) == make_toy.written_config(make_toy.config_from_argv([]))


def test_make_fork_is_deterministic(tmp_path):
    args = ["--world", "fork", "--pretrain-steps", "3", "--n-train", "50", "--n-test", "10", "--hidden-size", "32",
            "--num-layers", "1", "--batch-size", "4"]
    make_toy.main([*args, "--out", str(tmp_path / "a")])
    make_toy.main([*args, "--out", str(tmp_path / "b")])
    names = sorted(os.listdir(tmp_path / "a"))
    assert names == sorted(os.listdir(tmp_path / "b"))
    for name in names:
        assert filecmp.cmp(tmp_path / "a" / name, tmp_path / "b" / name, shallow=False), name


def test_world_fork_alone_writes_data_toy_fork():
    assert make_toy.config_from_argv(["--world", "fork"]).out == FORK
    assert make_toy.config_from_argv(["--world", "fork", "--out", "/tmp/x"]).out == "/tmp/x"
    assert make_toy.config_from_argv([]).out == make_toy.TOY


@needs_fork
def test_shipped_fork_is_what_make_toy_writes():
    with open(os.path.join(FORK, "toy_config.json")) as f:
        assert json.load(f) == make_toy.written_config(make_toy.config_from_argv(["--world", "fork"]))
    size = sum(os.path.getsize(os.path.join(FORK, name)) for name in os.listdir(FORK))
    assert size <= 5 * 2**20
    cfg = make_toy.ToyConfig(world="fork")
    train = questions.load_questions(os.path.join(FORK, "train.jsonl"))
    test = questions.load_questions(os.path.join(FORK, "test.jsonl"))
    assert (len(train), len(test)) == (cfg.n_train, cfg.n_test)
    assert not {q.problem for q in train} & {q.problem for q in test}
    for q in train + test:
        nums = [int(x) for x in q.problem.split("+")]
        assert 2 <= len(nums) <= 4 and all(10 <= x <= 99 for x in nums)
        assert q.answer == str(sum(nums)) and q.id.startswith("toy-fork-")


@needs_fork
def test_shipped_fork_loads():
    m = model_lib.load_model(FORK)
    tok = prompts.load_tokenizer(FORK)
    assert tok.stop_ids == (tok.tok.token_to_id(make_toy.EOS),)
    text = prompts.build_prompt("58+47+30", "toy") + " 58+47=105, 105+30=135. \\boxed{135}"
    assert tok.decode(tok.encode(text)) == text
    assert m.config.max_position_embeddings >= 128


def value_log_probs(m, tok, contexts: list[tuple[str, str]]) -> torch.Tensor:
    """log p(text | prompt) for each (prompt, text), teacher-forced in one batch: [len(contexts)]."""
    rows = [(tok.encode(p), tok.encode(p + t)) for p, t in contexts]
    width = max(len(full) for _, full in rows)
    ids = torch.tensor([full + [0] * (width - len(full)) for _, full in rows])  # right-padded
    with torch.no_grad():
        logp = torch.log_softmax(m(ids).float(), -1)
    out = []
    for i, (head, full) in enumerate(rows):
        out.append(sum(logp[i, j - 1, full[j]] for j in range(len(head), len(full))))
    return torch.stack(out)


@needs_fork
def test_shipped_fork_prefers_the_slip_at_slip_steps_only():
    """At the first step of test questions, teacher-forced: the slip (10 short) is the mode at slip steps though
    the right value keeps real probability; elsewhere the right value is the mode."""
    m, tok = model_lib.load_model(FORK), prompts.load_tokenizer(FORK)
    firsts = {}
    for q in questions.load_questions(os.path.join(FORK, "test.jsonl")):
        a, b = [int(x) for x in q.problem.split("+")][:2]
        firsts.setdefault(make_toy.is_slip_step(a, b), []).append((q.problem, a, b))
    for slip, items in firsts.items():
        items = items[:40]
        contexts = []
        for problem, a, b in items:
            head = prompts.build_prompt(problem, "toy") + f" {a}+{b}="
            end = "." if problem.count("+") == 1 else ","
            contexts += [(head, f"{a + b}{end}"), (head, f"{a + b - 10}{end}")]
        logp = value_log_probs(m, tok, contexts).view(-1, 2)  # [questions, (right, 10 short)]
        slip_ahead = (logp[:, 1] > logp[:, 0]).float().mean().item()
        p_right = logp[:, 0].exp().mean().item()
        if slip:
            assert slip_ahead >= 0.75 and p_right >= 0.1, (slip_ahead, p_right)
        else:
            assert slip_ahead <= 0.1 and p_right >= 0.5, (slip_ahead, p_right)
