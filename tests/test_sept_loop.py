"""sept_loop.py: whole SePT rounds on a tiny model, the schedules, exact resume (also after SIGKILL), errors."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

import sept_loop

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMINGS = ("seconds_sampling", "seconds_training", "seconds_eval")


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
                "truncation_rate", "stop_tokens", "entropy"):
        assert key in train_line, key
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
    assert sept_loop.tau_t_at(0.7, cfg) == 0.7


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
