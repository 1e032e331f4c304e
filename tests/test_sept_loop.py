"""sept_loop.py: whole SePT rounds on a tiny model, the schedules, exact resume (also after SIGKILL), errors."""
import dataclasses
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

import sept_loop
from conftest import limit_positions

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMINGS = ("seconds_sampling", "seconds_training", "seconds_eval", "seconds_tau_eff")


def write_questions(path, n=12):
    with open(path, "w") as f:
        for i in range(n):
            f.write(json.dumps({"problem": f"The sum of {i} and 30 is", "answer": str(i + 30)}) + "\n")
    return str(path)


def tiny_run_args(make_checkpoint, tmp_path, out="run", *extra):
    model = make_checkpoint("llama")
    q = write_questions(tmp_path / "q.jsonl")
    return ["--model", model, "--train-questions", q, "--test-questions", q, "--template", "raw",
            "--rounds", "3", "--batch-prompts", "4", "--updates-per-round", "2", "--eval-n", "4",
            "--eval-every", "2", "--max-response-tokens", "6", "--lr", "1e-3", "--warmup-rounds", "1",
            "--out", str(tmp_path / out), *extra]


def read_metrics(out):
    with open(os.path.join(out, "metrics.jsonl")) as f:
        return [{k: v for k, v in json.loads(line).items() if k not in TIMINGS} for line in f]


def test_whole_run_writes_every_output(make_checkpoint, tmp_path):
    sept_loop.main(tiny_run_args(make_checkpoint, tmp_path))
    out = tmp_path / "run"
    metrics = read_metrics(out)
    assert [(m["round"], "pass@1" in m) for m in metrics] == [
        (0, True), (1, False), (2, False), (2, True), (3, False), (3, True)]
    train_line = metrics[1]
    for key in ("tau_s", "tau_t", "lr", "loss", "grad_norm", "response_len_mean", "response_len_max",
                "truncation_rate", "stop_tokens", "entropy", "tau_eff", "logit_scale"):
        assert key in train_line, key
    rounds = [m for m in metrics if "tau_s" in m]  # τ_eff and Theorem 1's τ: products over the rounds so far
    assert [m["tau_theorem1"] for m in rounds] == pytest.approx([0.6, 0.6 ** 2, 0.6 ** 3])
    assert rounds[2]["tau_eff"] == pytest.approx(1 / (rounds[0]["logit_scale"] * rounds[1]["logit_scale"]
                                                       * rounds[2]["logit_scale"]))
    config = json.load(open(out / "config.json"))  # the resolved rounds and stop ids are saved with the run
    assert config["rounds"] == 3 and config["resolved"]["stop_ids"] == {"<|endoftext|>": 0}
    assert metrics[0]["eval_temperature"] == 1.0 and "pass@4" in metrics[0] and "pass@8" not in metrics[0]
    assert sorted(os.listdir(out / "samples")) == ["round_0001.jsonl", "round_0002.jsonl", "round_0003.jsonl"]
    sample = json.loads(open(out / "samples" / "round_0001.jsonl").readline())
    assert {"question", "response", "extracted", "correct"} <= set(sample)
    assert os.path.isfile(out / "plot.png") and os.path.isfile(out / "config.json")
    assert os.path.isfile(out / "checkpoints" / "last" / "model.safetensors")
    assert json.load(open(out / "checkpoints" / "last" / "sept_state.json")) == {"round": 3}


def test_resume_gives_the_same_metrics(make_checkpoint, tmp_path):
    args = tiny_run_args(make_checkpoint, tmp_path, "full")
    sept_loop.main(args)
    part = [a if a != str(tmp_path / "full") else str(tmp_path / "part") for a in args]
    # stop after round 2 (an evaluation round, like the full run's), then resume to round 3
    sept_loop.main([*part[:part.index("--rounds") + 1], "2", *part[part.index("--rounds") + 2:]])
    sept_loop.main(["--resume", str(tmp_path / "part"), "--rounds", "3"])
    assert read_metrics(tmp_path / "part") == read_metrics(tmp_path / "full")


def test_offline_and_couple_and_em(make_checkpoint, tmp_path):
    sept_loop.main(tiny_run_args(make_checkpoint, tmp_path, "off", "--offline", "--rollouts", "2"))
    assert os.path.isfile(tmp_path / "off" / "offline.jsonl")
    sept_loop.main(tiny_run_args(make_checkpoint, tmp_path, "cpl", "--couple", "--tau-s-start", "0.8"))
    assert all(m["tau_t"] == 0.8 for m in read_metrics(tmp_path / "cpl") if "tau_t" in m)
    sept_loop.main(tiny_run_args(make_checkpoint, tmp_path, "em", "--loss", "em"))


def test_tau_s_schedules():
    cfg = sept_loop.SePTConfig(rounds=30, tau_s_start=0.6, tau_s_end=1.0, tau_s_schedule="linear", tau_s_ramp=2 / 3)
    assert sept_loop.tau_s_at(1, cfg) == 0.6
    assert abs(sept_loop.tau_s_at(11, cfg) - 0.8) < 1e-9
    assert sept_loop.tau_s_at(21, cfg) == 1.0 and sept_loop.tau_s_at(30, cfg) == 1.0
    cfg.tau_s_schedule = "cosine"
    assert abs(sept_loop.tau_s_at(11, cfg) - 0.8) < 1e-9 and sept_loop.tau_s_at(6, cfg) < 0.7
    cfg.couple = True
    assert sept_loop.round_config(cfg, 0.7).tau_t == 0.7


def test_questions_are_fresh_until_the_set_is_used_up():
    cfg = sept_loop.SePTConfig(batch_prompts=4)
    picked = [i for r in range(1, 4) for i in sept_loop.questions_for_round(r, 12, cfg)]
    assert sorted(picked) == list(range(12))  # one pass: each question exactly once
    second = [i for r in range(4, 7) for i in sept_loop.questions_for_round(r, 12, cfg)]
    assert sorted(second) == list(range(12)) and second != picked  # reshuffled


def test_nan_stops_with_the_last_checkpoint_intact(make_checkpoint, tmp_path, monkeypatch):
    args = tiny_run_args(make_checkpoint, tmp_path)
    sept_loop.main(args)
    before = open(tmp_path / "run" / "checkpoints" / "last" / "model.safetensors", "rb").read()
    real = sept_loop.train.train_step

    def nan_step(*a, **kw):
        return dict(real(*a, **kw), skipped=True, loss=float("nan"))
    monkeypatch.setattr(sept_loop.train, "train_step", nan_step)
    with pytest.raises(SystemExit, match="not finite"):
        sept_loop.main(["--resume", str(tmp_path / "run"), "--rounds", "5"])
    assert open(tmp_path / "run" / "checkpoints" / "last" / "model.safetensors", "rb").read() == before


def run_cli(*args, timeout=300):
    return subprocess.run([sys.executable, os.path.join(ROOT, "sept_loop.py"), *args], capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT)


def test_cli_errors_are_one_line(make_checkpoint, tmp_path):
    r = run_cli("--no-such-flag")
    assert r.returncode != 0 and "unrecognized arguments: --no-such-flag" in r.stderr
    r = run_cli("--model", str(tmp_path / "absent"), "--out", str(tmp_path / "o"))
    assert r.returncode == 1 and r.stderr.strip().count("\n") == 0 and "absent" in r.stderr
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"problem": "1+1", "answer": "2"}\n{"problem": oops}\n')
    r = run_cli("--train-questions", str(bad), "--out", str(tmp_path / "o"), "--rounds", "1")
    assert r.returncode == 1 and "bad.jsonl line 2" in r.stderr and "Traceback" not in r.stderr
    r = run_cli("--preset", "paper", "--out", str(tmp_path / "o"))
    assert r.returncode == 1 and "needs --model" in r.stderr
    r = run_cli("--max-response-tokens", "200", "--out", str(tmp_path / "o"))  # the toy's context is 128
    assert r.returncode == 1 and "--max-response-tokens 200 that exceeds the model's context of 128" in r.stderr


@pytest.mark.skipif(not os.path.isfile(os.path.join(ROOT, "data", "toy", "model.safetensors")),
                    reason="the toy model is not built")
def test_sigkill_mid_round_then_resume(tmp_path):
    """Kill -9 during round 3 of the toy; --resume finishes with the metrics of an uninterrupted run."""
    small = ["--rounds", "4", "--eval-every", "2", "--eval-n", "4", "--eval-max-questions", "16",
             "--batch-prompts", "32"]
    full = run_cli(*small, "--out", str(tmp_path / "full"))
    assert full.returncode == 0, full.stderr
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "sept_loop.py"), *small, "--out", str(out)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    for line in proc.stdout:  # wait for round 2's checkpoint, then kill inside round 3
        if line.startswith("eval round 2"):
            time.sleep(0.3)
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    resumed = run_cli("--resume", str(out))
    assert resumed.returncode == 0, resumed.stderr
    assert read_metrics(out) == read_metrics(tmp_path / "full")


# ---- reliability: every setting checked before round 0, nothing a user owns removed, resume made explicit ----

@pytest.mark.parametrize("flag, value, message", [
    ("--batch-prompts", "0", "--batch-prompts 0: expected an integer >= 1"),
    ("--rollouts", "0", "--rollouts 0: expected an integer >= 1"),
    ("--updates-per-round", "0", "--updates-per-round 0: expected an integer >= 1"),
    ("--eval-n", "0", "--eval-n 0: expected an integer >= 1"),
    ("--checkpoint-every", "0", "--checkpoint-every 0: expected an integer >= 1"),
    ("--max-response-tokens", "0", "--max-response-tokens 0: expected an integer >= 1"),
    ("--sample-batch", "-1", "--sample-batch -1: expected an integer >= 0"),
    ("--rounds", "-1", "--rounds -1: expected an integer >= 0"),
    ("--epochs", "0", "--epochs 0: expected an integer >= 1"),
    ("--loss-group", "-2", "--loss-group -2: expected an integer >= 0"),
    ("--clip-ratio-c", "1", "--clip-ratio-c 1.0: expected a number > 1"),
    ("--warmup-ratio", "2", "--warmup-ratio 2.0: expected a number in \\[0, 1\\]"),
    ("--offline-eos", "--no-couple", "--offline-eos ends the stored answers of --offline"),
    ("--lr", "-0.001", "--lr -0.001: expected a number >= 0"),
    ("--lr", "nan", "--lr nan: expected a number >= 0"),
    ("--tau-s-start", "-0.5", "--tau-s-start -0.5: expected a number > 0"),
    ("--tau-t", "nan", "--tau-t nan: expected a number > 0"),
    ("--eval-temperature", "inf", "--eval-temperature inf: expected a number >= 0"),
    ("--top-p", "0", r"--top-p 0.0: expected a number in \(0, 1\]"),
    ("--top-p", "1.5", r"--top-p 1.5: expected a number in \(0, 1\]"),
    ("--sweep", "abc", "--sweep abc: expected temperatures >= 0"),
    ("--sweep", "0.5,-1", "--sweep 0.5,-1: expected temperatures >= 0"),
])
def test_bad_settings_fail_before_anything_is_written(tmp_path, flag, value, message):
    with pytest.raises(ValueError, match=message):
        sept_loop.main([flag, value, "--out", str(tmp_path / "o")])
    assert not (tmp_path / "o").exists()


def test_bad_choices_and_devices_are_one_line(tmp_path):
    r = run_cli("--sample-dtype", "fp8", "--out", str(tmp_path / "o"))
    assert r.returncode == 2 and "--sample-dtype: invalid choice: 'fp8'" in r.stderr and "Traceback" not in r.stderr
    if not sept_loop.torch.cuda.is_available():
        with pytest.raises(ValueError, match="--device 'cuda': this machine has no CUDA device"):
            sept_loop.main(["--device", "cuda", "--out", str(tmp_path / "o")])
    assert not (tmp_path / "o").exists()


def test_a_run_folder_is_never_overwritten_unless_asked(make_checkpoint, tmp_path):
    args = tiny_run_args(make_checkpoint, tmp_path, "run", "--rounds", "2")
    sept_loop.main(args)
    out = tmp_path / "run"
    before = {name: open(out / name, "rb").read() for name in ("config.json", "metrics.jsonl")}
    with pytest.raises(ValueError, match="holds a run already .config.json, metrics.jsonl.*--resume.*--overwrite"):
        sept_loop.main(args)
    for bad in (["--eval-n", "0"], ["--resume", str(out), "--lr", "-1"]):  # a typo, new run or resumed one
        with pytest.raises(ValueError):
            sept_loop.main(args + bad if bad[0] != "--resume" else bad)
    assert before == {name: open(out / name, "rb").read() for name in before}
    sept_loop.main(args + ["--overwrite", "--rounds", "1"])  # asked for: the old run's files are deleted
    assert [m["round"] for m in read_metrics(out)] == [0, 1, 1]
    assert os.listdir(out / "samples") == ["round_0001.jsonl"]
    assert json.load(open(out / "checkpoints" / "last" / "sept_state.json")) == {"round": 1}


def test_resume_conflicts_are_errors(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    cfg = sept_loop.SePTConfig(**dict(sept_loop.PRESETS["toy"], out=str(run), tau_s_schedule="linear"))
    (run / "config.json").write_text(json.dumps(dataclasses.asdict(cfg)))
    for extra, message in ((["--preset", "paper"], "drop --preset"), (["--out", str(tmp_path / "b")], "drop --out"),
                           (["--overwrite"], "drop --overwrite"),
                           (["--rounds", "20"], "schedules span its --rounds 10")):
        with pytest.raises(ValueError, match=message):
            sept_loop.resolve_config(["--resume", str(run), *extra])
    assert sept_loop.resolve_config(["--resume", str(run)]).out == str(run)
    cfg.tau_s_schedule = "constant"  # schedules that do not depend on R: a resumed run may be extended
    (run / "config.json").write_text(json.dumps(dataclasses.asdict(cfg)))
    assert sept_loop.resolve_config(["--resume", str(run), "--rounds", "20"]).rounds == 20


def test_resume_torn_metrics_and_lost_checkpoints(make_checkpoint, tmp_path):
    out = tmp_path / "run"
    sept_loop.main(tiny_run_args(make_checkpoint, tmp_path, "run", "--rounds", "2"))
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"round": 3, "tau_s"')  # a kill in the middle of an append
    sept_loop.main(["--resume", str(out), "--rounds", "3"])
    assert [m["round"] for m in read_metrics(out)] == [0, 1, 2, 2, 3, 3]
    shutil.rmtree(out / "checkpoints")
    with pytest.raises(ValueError, match="records round 3, but no complete checkpoint"):
        sept_loop.main(["--resume", str(out), "--rounds", "4"])
    with open(out / "metrics.jsonl") as f:  # killed before the first checkpoint: resume starts at round 0 again
        first = f.readline()
    (out / "metrics.jsonl").write_text(first)
    sept_loop.main(["--resume", str(out), "--rounds", "1"])
    assert [m["round"] for m in read_metrics(out)] == [0, 1, 1]  # one round-0 line, not two
    assert os.listdir(out / "samples") == ["round_0001.jsonl"]


def test_test_sets_are_named_apart_need_answers_and_ignore_top_p(make_checkpoint, tmp_path, monkeypatch):
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
        write_questions(tmp_path / d / "test.jsonl", 4 if d == "a" else 3)
    args = tiny_run_args(make_checkpoint, tmp_path, "run", "--sweep", "1.0", "--top-p", "0.5", "--test-questions",
                         f"{tmp_path}/a/test.jsonl,{tmp_path}/b/test.jsonl")
    seen = []
    real = sept_loop.sample.generate
    monkeypatch.setattr(sept_loop.sample, "generate", lambda *a, **kw: seen.append(kw["top_p"]) or real(*a, **kw))
    sept_loop.main(args)
    (line,) = read_metrics(tmp_path / "run")
    assert sorted(line["benchmarks"]) == [f"{tmp_path}/a/test", f"{tmp_path}/b/test"] and set(seen) == {1.0}
    (tmp_path / "a" / "test.jsonl").write_text('{"problem": "1+1"}\n')
    with pytest.raises(ValueError, match="test.jsonl: question test-1 has no answer"):
        sept_loop.main(args + ["--out", str(tmp_path / "other")])
    assert not (tmp_path / "other").exists()


def test_ctrl_c_says_what_is_kept_and_how_to_resume(make_checkpoint, tmp_path):
    out = str(tmp_path / "run")
    args = tiny_run_args(make_checkpoint, tmp_path, "run", "--rounds", "50", "--eval-every", "0")
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "sept_loop.py"), *args], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in proc.stdout:
        if line.startswith("round 2 |"):
            break
    # Python drops a KeyboardInterrupt raised inside a weakref callback ("Exception ignored in ..."): a user would
    # press Ctrl-C again, and so does the test when the first one went unheard
    for _ in range(10):
        proc.send_signal(signal.SIGINT)
        try:
            _, err = proc.communicate(timeout=12)
            break
        except subprocess.TimeoutExpired:
            continue
    else:
        proc.kill()
        pytest.fail("sept_loop.py did not exit after 10 Ctrl-C")
    # a traceback only under each dropped one's "Exception ignored in" line, none of an exception that got out
    assert proc.returncode == 130 and err.count("Traceback") == err.count("Exception ignored in"), err
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"interrupted: {out}/checkpoints/last holds round ") and last.endswith(
        f"continue with: python {os.path.join(ROOT, 'sept_loop.py')} --resume {out}"), last


def test_evaluate_streams_every_set_through_one_generate_call(monkeypatch):
    """All test sets × n answers go through one generate call of `batch` rows; each set is graded on its own."""
    from types import SimpleNamespace
    calls = []

    def fake_generate(model, prompts, **kw):  # the answer repeats the prompt's first token
        calls.append((len(prompts), kw["max_batch"]))
        kw["stats"].update(rows=min(len(prompts), kw["max_batch"]), entropy=None)  # generate's stats, not asked
        return [[p[0]] for p in prompts]
    monkeypatch.setattr(sept_loop.sample, "generate", fake_generate)
    tokenizer = SimpleNamespace(stop_ids=(), decode=lambda ids: f"so \\boxed{{{ids[0]}}}")
    truth = [SimpleNamespace(answer=a) for a in ("1", "2", "7")]
    test_sets = {"a": (truth[:2], [[1], [5]]), "b": (truth[2:], [[7]])}  # a: one of two right, b: right
    result = sept_loop.evaluate(None, tokenizer, test_sets, n=4, tau=1.0, max_new_tokens=8, batch=3, seed=0)
    assert calls == [(12, 3)]
    assert result["benchmarks"]["a"]["pass@1"] == 50 and result["benchmarks"]["b"]["pass@1"] == 100
    assert result["pass@1"] == 75


def test_epochs_set_the_rounds_and_each_pass_drops_its_partial_batch():
    cfg = sept_loop.SePTConfig(batch_prompts=4, rounds=0, epochs=2, train_questions="q.jsonl")
    sept_loop.resolve_rounds(cfg, 13)
    assert cfg.rounds == 6  # 2 passes of ⌊13 / 4⌋ = 3 rounds, as verl's total_epochs
    passes = [[q for r in range(1 + 3 * e, 4 + 3 * e) for q in sept_loop.questions_for_round(r, 13, cfg)]
              for e in (0, 1)]
    assert [len(set(p)) for p in passes] == [12, 12] and passes[0] != passes[1]  # one question left out of each
    with pytest.raises(ValueError, match="3 questions, fewer than --batch-prompts 4"):
        sept_loop.resolve_rounds(sept_loop.SePTConfig(batch_prompts=4, train_questions="q.jsonl"), 3)
    # given on the command line, --epochs decides the rounds over the preset's --rounds (the toy's 10)
    assert sept_loop.resolve_config(["--epochs", "2"]).rounds == 0 and sept_loop.resolve_config([]).rounds == 10


def test_offline_answers_end_with_the_tokenizer_eos():
    from types import SimpleNamespace
    tokenizer = SimpleNamespace(stop_ids=(7, 9), eos_id=7)
    offline = {0: [([1, 2, 9], 0.1)], 1: [([3, 4, 5], 0.2)]}  # one ended at a stop id, one cut off
    cfg = sept_loop.SePTConfig(offline=True, offline_eos=True)
    assert sept_loop.offline_round(offline, [0, 1], cfg, tokenizer) == ([[1, 2, 7], [3, 4, 5, 7]], [0.1, 0.2])
    cfg.offline_eos = False
    assert sept_loop.offline_round(offline, [1, 0], cfg, tokenizer)[0] == [[3, 4, 5], [1, 2, 9]]


def test_stop_rule_is_resolved_printed_and_saved(make_checkpoint, tmp_path, capsys):
    args = tiny_run_args(make_checkpoint, tmp_path, "turn", "--sweep", "0", "--eval-max-questions", "2")
    sept_loop.main(args + ["--stop", "turn"])
    saved = json.load(open(tmp_path / "turn" / "config.json"))["resolved"]["stop_ids"]
    assert set(saved) == {"<|endoftext|>", "<|im_end|>"} and "(--stop turn)" in capsys.readouterr().out


def test_an_answer_too_long_for_memory_keeps_the_checkpoint_and_says_how_to_resume(make_checkpoint, tmp_path):
    """From round 2 on the device holds 2 positions per training forward (simulated): the micro-batches halve down
    to one answer, which still does not fit; one line says what to lower, one how to continue."""
    out = str(tmp_path / "run")
    args = tiny_run_args(make_checkpoint, tmp_path, "run", "--eval-every", "0")
    code = f"""
import runpy, sys, torch, train
real_step = train.train_step
def train_step(model, optimizer, pairs, step, cfg, policy=None):
    if step >= 1 and "limited" not in vars(model):
        real = model.hidden_states
        def limited(ids, *a, **kw):
            if torch.is_grad_enabled() and ids.numel() > 2:
                raise torch.OutOfMemoryError("simulated")
            return real(ids, *a, **kw)
        model.hidden_states = model.limited = limited
    return real_step(model, optimizer, pairs, step, cfg, policy)
train.train_step = train_step
sys.argv = ["sept_loop.py", *{args!r}]
runpy.run_path("sept_loop.py", run_name="__main__")
"""
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    error, how = r.stderr.strip().splitlines()[-2:]
    assert error.startswith("error: out of memory with one answer per micro-batch: an answer of ") and error.endswith(
        "does not fit alone; lower --max-response-tokens")
    assert how == f"interrupted: {out}/checkpoints/last holds round 1; continue with: python sept_loop.py --resume {out}"


def test_out_of_memory_in_training_keeps_the_smaller_micro_batch(make_checkpoint, tmp_path, monkeypatch):
    limit_positions(monkeypatch, 40, lambda mode: torch.is_grad_enabled())  # 40 positions per training forward
    sept_loop.main(tiny_run_args(make_checkpoint, tmp_path, "run", "--rounds", "2", "--eval-every", "0"))
    saved = json.load(open(tmp_path / "run" / "config.json"))["micro_batch_tokens"]
    assert saved <= 40 and sept_loop.resolve_config(["--resume", str(tmp_path / "run")]).micro_batch_tokens == saved
    assert [m["round"] for m in read_metrics(tmp_path / "run")] == [0, 1, 2, 2]


def test_out_of_memory_in_sampling_keeps_fewer_rows(make_checkpoint, tmp_path, monkeypatch, capsys):
    """From round 2 on the device holds 4 rows per decode step (simulated): round 2's 8 answers go on in 4 rows,
    the round line and config.json say so, a resumed run keeps 4 rows, the final evaluation runs in them."""
    real_train, rows = sept_loop.train_on_answers, [math.inf]

    def train_then_limit(*args, **kw):  # round 1 trains, then the device shrinks
        rows[0] = 4
        return real_train(*args, **kw)
    limit_positions(monkeypatch, lambda: rows[0], lambda mode: mode == "decode")  # a decode step: 1 position a row
    monkeypatch.setattr(sept_loop, "train_on_answers", train_then_limit)
    out = tmp_path / "run"
    sept_loop.main(tiny_run_args(make_checkpoint, tmp_path, "run", "--rounds", "2", "--eval-every", "0",
                                 "--rollouts", "2", "--sample-batch", "8"))
    rounds = [m for m in read_metrics(out) if "tau_s" in m]
    assert [m.get("sample_batch") for m in rounds] == [None, 4]
    assert "sample.py: out of memory; the rows halved to 4" in capsys.readouterr().err
    config = json.load(open(out / "config.json"))
    assert config["sample_batch"] == 4 and config["resolved"]["sample_batch"] == 8
    assert sept_loop.resolve_config(["--resume", str(out)]).sample_batch == 4
    assert "sample_rows" not in read_metrics(out)[-1]  # the last evaluation: 4 rows from the start


def test_sample_batch_0_is_sized_and_saved(make_checkpoint, tmp_path, capsys):
    """--sample-batch 0 on the CPU: 256 rows, printed and saved in config.json's resolved; config.json keeps 0, so
    a resumed run sizes its rows again (on a GPU, from the memory free then)."""
    sept_loop.main(tiny_run_args(make_checkpoint, tmp_path, "run", "--rounds", "1", "--sample-batch", "0"))
    assert "; 256 rows of sampling" in capsys.readouterr().out
    config = json.load(open(tmp_path / "run" / "config.json"))
    assert config["sample_batch"] == 0 and config["resolved"]["sample_batch"] == 256
