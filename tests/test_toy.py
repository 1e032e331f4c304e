"""The embedded toy world: its files load, the script that makes it is deterministic, and the shipped model
is in the regime SePT needs (right answers preferred, by small margins)."""
import filecmp
import json
import os

import pytest

import model as model_lib
import sample
from data import grading, make_toy, prompts, questions

TOY = make_toy.ToyConfig().out
needs_toy = pytest.mark.skipif(not os.path.isfile(os.path.join(TOY, "model.safetensors")), reason="no data/toy")


def test_make_toy_is_deterministic(tmp_path):
    args = ["--pretrain-steps", "3", "--n-train", "50", "--n-test", "10", "--hidden-size", "32",
            "--num-layers", "1", "--batch-size", "4"]
    make_toy.main([*args, "--out", str(tmp_path / "a")])
    make_toy.main([*args, "--out", str(tmp_path / "b")])
    names = sorted(os.listdir(tmp_path / "a"))
    assert {"config.json", "model.safetensors", "tokenizer.json", "train.jsonl", "test.jsonl"} <= set(names)
    assert names == sorted(os.listdir(tmp_path / "b"))
    for name in names:
        assert filecmp.cmp(tmp_path / "a" / name, tmp_path / "b" / name, shallow=False), name
    train = {q.problem for q in questions.load_questions(tmp_path / "a" / "train.jsonl")}
    test = {q.problem for q in questions.load_questions(tmp_path / "a" / "test.jsonl")}
    assert not train & test


def test_solutions_carry_a_wrong_step_forward():
    import random
    rng = random.Random(0)
    for _ in range(200):
        nums = make_toy.make_question(rng)
        text = make_toy.solution(nums, rng, 0.5)
        steps = text.strip().split(". ")[0].split(", ")
        acc = nums[0]
        for step, x in zip(steps, nums[1:]):
            lhs, value = step.split("=")
            assert lhs == f"{acc}+{x}"  # the next step starts from the previous value, right or wrong
            assert int(value) - (acc + x) in (0, *make_toy.WRONG_BY) or int(value) == 0  # 0: clamped
            acc = int(value)
        assert grading.extract_boxed(text) == str(acc)


@needs_toy
def test_shipped_toy_loads_and_is_small():
    m = model_lib.load_model(TOY)
    assert os.path.getsize(os.path.join(TOY, "model.safetensors")) <= 10 * 2**20
    tok = prompts.load_tokenizer(TOY)
    assert tok.stop_ids == (tok.tok.token_to_id(make_toy.EOS),)
    text = prompts.build_prompt("12+47+30", "toy") + " 12+47=59, 59+30=89. \\boxed{89}"
    assert tok.decode(tok.encode(text)) == text
    assert m.config.max_position_embeddings >= 128


@needs_toy
def test_shipped_toy_prefers_right_answers_by_small_margins():
    """On 48 test questions x 16 samples: sampling at τ=0.6 is right much more often than at τ=1, and nearly
    every question is solved by some sample (pass@16). data/README.md has the full n=32 figures."""
    m, tok = model_lib.load_model(TOY), prompts.load_tokenizer(TOY)
    qs = questions.load_questions(os.path.join(TOY, "test.jsonl"))[:48]
    ids = [tok.encode(prompts.build_prompt(q.problem, "toy")) for q in qs for _ in range(16)]
    result = {}
    for tau in (0.6, 1.0):
        outs = sample.generate(m, ids, max_new_tokens=64, temperature=tau, eos_ids=tok.stop_ids, seed=0)
        grades = grading.grade_many([tok.decode(o) for o in outs], [q.answer for q in qs for _ in range(16)])
        counts = [sum(bool(g.correct) for g in grades[i * 16:(i + 1) * 16]) for i in range(len(qs))]
        result[tau] = grading.pass_at_k_table(counts, 16, (1, 16))
    assert 15 <= result[1.0]["pass@1"] <= 65
    assert result[0.6]["pass@1"] >= result[1.0]["pass@1"] + 15
    assert result[1.0]["pass@16"] >= 90


def test_sharpening_kinds_and_an_untrained_model_against_itself(capsys):
    from data import sharpening
    kinds = sharpening.position_kinds(" 58+47=105, 105+2=107. \\boxed{107}$")
    assert kinds[7:10] == ["result hundreds digit, carry into hundreds", "result tens digit, carry into hundreds",
                           "result units digit, carry into hundreds"]  # 58+47: a units carry into the hundreds
    assert kinds[1:3] == ["copied operand"] * 2 and kinds[3] == "format" and kinds[-3] == "boxed answer"
    assert kinds[18:21] == ["result hundreds digit, other steps", "result tens digit, other steps",
                            "result units digit, other steps"]
    sharpening.main(["--trained", TOY, "--questions", "8"])  # the same model twice: no sharpening, no moved argmax
    rows = json.loads(capsys.readouterr().out.splitlines()[-1])["rows"]
    assert all(abs(r["logit_scale"] - 1) < 1e-3 and r["argmax_changed"] == 0 for r in rows)
