"""data/verl.py (--export-verl): the exported run.sh carries the official scripts' values key for key
(../shared/verl/*.json), as bash hands them to python3; verl parquet reads back to the same questions; a bad
configuration writes nothing."""
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

import sept_loop
from data import prompts, questions, verl

SHARED_VERL = Path(__file__).resolve().parents[2] / "shared" / "verl"
# The official scripts' own files and names: compared by structure (check_files), not by value
FILES = {"data.train_files", "data.val_files", "data.path", "data.output_dir", "actor_rollout_ref.model.path",
         "model.path", "model.partial_pretrain", "trainer.experiment_name", "trainer.default_local_dir",
         "trainer.rollout_data_dir", "trainer.validation_data_dir"}
try:
    import pyarrow  # noqa: F401
    HAVE_PYARROW = True
except ImportError:
    HAVE_PYARROW = False


@pytest.fixture
def parquet_optional(monkeypatch):
    """run.sh needs no pyarrow: without it, the parquet writer is stubbed (the parquet tests then skip)."""
    if not HAVE_PYARROW:
        monkeypatch.setattr(verl, "require_pyarrow", lambda: None)
        monkeypatch.setattr(verl, "write_parquet", lambda *args: None)


def write_questions(path, n, source=None):
    with open(path, "w") as f:
        for i in range(n):
            f.write(json.dumps({"problem": f"What is {i} + 1?", "answer": str(i + 1),
                                **({"source": source} if source else {})}) + "\n")
    return str(path)


def export(tmp_path, *flags, n_train=256, rounds=None):
    """sept_loop.main(flags --export-verl DIR) with n_train questions; no rounds: --epochs 3 (B = 128: 6 rounds)."""
    train = write_questions(tmp_path / "deepscaler.jsonl", n_train)
    tests = ",".join(write_questions(tmp_path / f"{name}.jsonl", 3) for name in ("math500", "aime"))
    out = tmp_path / "export"
    sept_loop.main(["--model", "Qwen/Qwen2.5-Math-7B", "--train-questions", train, "--test-questions", tests,
                    *(["--rounds", str(rounds)] if rounds else []), *flags, "--export-verl", str(out)])
    return out


def launches(run_sh: Path, tmp_path) -> list[dict]:
    """What bash hands to python3 and torchrun when it runs run.sh: per command, its module and its overrides."""
    bin_dir, calls = tmp_path / "bin", tmp_path / "calls"
    bin_dir.mkdir()
    calls.mkdir()
    for name in ("python3", "torchrun"):
        (bin_dir / name).write_text('#!/bin/sh\nprintf "%s\\0" "$@" > "$CALLS/$(ls "$CALLS" | wc -l | tr -d " ")"\n')
        (bin_dir / name).chmod(stat.S_IRWXU)
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", CALLS=str(calls))
    subprocess.run(["bash", str(run_sh)], env=env, check=True, stdin=subprocess.DEVNULL)
    out = []
    for i in range(len(os.listdir(calls))):
        args = (calls / str(i)).read_text().split("\0")[:-1]
        if "-m" in args:  # python3 -m module key=value ... (the pairs step, python3 - ..., is no launch)
            keys = args[args.index("-m") + 2:]
            out.append(dict(module=args[args.index("-m") + 1], overrides=dict(a.split("=", 1) for a in keys)))
    return out


def same(a: str, b: str) -> bool:
    """Equal as hydra reads them: 1 == 1.0, 1e-07 == 1e-7; anything else as text."""
    try:
        return float(a) == float(b)
    except ValueError:
        return a == b


def check_against(official: str, got: dict, extra=()):
    want = json.loads((SHARED_VERL / official).read_text())
    assert got["module"] == want["module"]
    assert set(got["overrides"]) - set(want["overrides"]) == set(extra), "keys the official script does not set"
    assert set(want["overrides"]) - set(got["overrides"]) == set(), "keys of the official script missing"
    wrong = {k: (got["overrides"][k], v) for k, v in want["overrides"].items()
             if k not in FILES and not same(got["overrides"][k], v)}
    assert not wrong, f"(exported, official) values differ from {official}"


def header(run_sh: Path) -> str:
    """run.sh's comment lines as one line: its notes unwrapped."""
    return " ".join(line.lstrip("# ") for line in run_sh.read_text().splitlines() if line.startswith("#"))


def check_files(got: dict, out: Path):
    o = got["overrides"]
    data = (out / "data").resolve()
    assert o["actor_rollout_ref.model.path"] == "Qwen/Qwen2.5-Math-7B"
    assert o["data.train_files"] == str(data / "train.parquet")
    assert o["data.val_files"] == f'["{data}/test/math500.parquet", "{data}/test/aime.parquet"]'
    assert o["trainer.rollout_data_dir"] == o["trainer.default_local_dir"] + "/rollout_data"
    assert o["trainer.validation_data_dir"] == o["trainer.default_local_dir"] + "/rollout_eval_data"
    assert o["trainer.experiment_name"]


@pytest.mark.skipif(not SHARED_VERL.is_dir(), reason="../shared/verl (the official scripts' values) is absent")
@pytest.mark.parametrize("preset, official", [("paper", "sept_1e7_dsr.json"), ("paper-em", "em_1e7_dsr.json"),
                                              ("paper-grpo", "grpo_5e7_dsr.json")])
def test_paper_presets_match_the_official_scripts(preset, official, tmp_path, parquet_optional):
    if preset not in sept_loop.PRESETS:
        pytest.skip(f"--preset {preset} has not landed")
    out = export(tmp_path, "--preset", preset)
    [got] = launches(out / "run.sh", tmp_path)
    check_against(official, got)
    check_files(got, out)


@pytest.mark.skipif(not SHARED_VERL.is_dir(), reason="../shared/verl (the official scripts' values) is absent")
def test_offline_is_the_official_pair(tmp_path, parquet_optional):
    # the preset is generate_solutions.sh + offline_train.sh: 3 passes of 100 rounds, each one update of 128
    # answers in token-means of 4, warmup_steps_ratio 0.01, lr 1e-5, β2 0.95, save every 50 updates
    out = export(tmp_path, "--preset", "paper-offline", n_train=12800)
    generate, train = launches(out / "run.sh", tmp_path)
    check_against("generate_solutions.json", generate)
    check_against("offline_train.json", train)
    assert generate["overrides"]["data.path"] == str((out / "data" / "train.parquet").resolve())
    notes = header(out / "run.sh")
    assert "SFT_DTYPE=fp32 is sept's" in notes and "tokenizes them again" in notes  # what sept cannot express
    assert "MICRO_BATCH_PER_GPU" not in (out / "run.sh").read_text()  # --loss-group 4 is the micro-batch


def test_offline_settings_verl_cannot_hold_are_notes(tmp_path, parquet_optional):
    # sept's online recipe made offline: 30 rounds of µ = 2 updates, 10 of warmup, constant lr, β2 0.999
    out = export(tmp_path, "--preset", "paper", "--offline", "--loss-group", "0", "--rollouts", "2", n_train=1280)
    generate, train = launches(out / "run.sh", tmp_path)
    o = train["overrides"]
    assert o["optim.betas"] == "[0.9,0.999]" and float(o["optim.warmup_steps_ratio"]) == 10 / 30
    assert (o["data.micro_batch_size_per_gpu"], o["data.train_batch_size"]) == ("4", "128")  # the variable; B·G/µ
    assert generate["overrides"]["data.n_samples"] == "2"
    notes = header(out / "run.sh")
    for note in ("only with --offline-eos", "shuffles the answers, not the questions", "cosine to 0",
                 "every round (of 2 updates)", "--loss-group 0 (one token-mean over each mini-batch) has no verl form"):
        assert note in notes


def test_rounds_that_are_not_whole_epochs(tmp_path, parquet_optional):
    out = export(tmp_path, "--preset", "paper", "--tau-s-ramp", "0.5", rounds=5)  # verl's epoch: 2 rounds
    o = launches(out / "run.sh", tmp_path)[0]["overrides"]
    assert (o["trainer.total_epochs"], o["trainer.total_training_steps"]) == ("3", "5")
    assert o["+actor_rollout_ref.rollout.tau_s_annealing.steps"] == "2.5"  # sept's ramp: 0.5 × 5 rounds
    text = (out / "run.sh").read_text()
    assert "verl's warmup starts at 0" in text and "not whole epochs" in text


@pytest.mark.parametrize("flags, epochs, steps", [((), "3", None), (("--epochs", "2"), "2", None),
                                                 (("--rounds", "4"), "2", None), (("--rounds", "3"), "2", "3")])
def test_length_from_epochs_or_rounds(flags, epochs, steps, tmp_path, parquet_optional):
    o = launches(export(tmp_path, "--preset", "paper", *flags) / "run.sh", tmp_path)[0]["overrides"]
    assert (o["trainer.total_epochs"], o.get("trainer.total_training_steps")) == (epochs, steps)


def test_loss_group_clip_and_stop(tmp_path, parquet_optional):
    out = export(tmp_path, "--preset", "paper-grpo", "--loss-group", "8", "--clip-ratio-c", "10", "--stop", "turn")
    o = launches(out / "run.sh", tmp_path)[0]["overrides"]
    assert o["actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu"] == "8"  # --loss-group
    assert o["actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu"] == "4"  # MICRO_BATCH_PER_GPU: speed
    assert o["actor_rollout_ref.actor.clip_ratio_c"] == "10.0"
    assert "--stop turn has no verl key" in header(out / "run.sh")


def test_loss_group_0_is_the_machines_micro_batch(tmp_path, parquet_optional):
    out = export(tmp_path, "--preset", "paper", "--loss-group", "0")
    o = launches(out / "run.sh", tmp_path)[0]["overrides"]
    assert o["actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu"] == "4"  # MICRO_BATCH_PER_GPU's default
    assert "--loss-group 0 (one token-mean over each mini-batch) has no verl form" in header(out / "run.sh")
    assert "clip_ratio_c" not in (out / "run.sh").read_text()  # SePT's script: no policy-gradient keys


def test_toy_export_and_its_notes(tmp_path, parquet_optional):
    sept_loop.main(["--export-verl", str(tmp_path / "v")])  # the docstring's CPU command: the toy world
    text, notes = (tmp_path / "v" / "run.sh").read_text(), header(tmp_path / "v" / "run.sh")
    assert "python3 -m recipe.sept.main_sept" in text and "not sept's toy prompt" in notes
    assert "knows no data_source toy-test" in notes  # verl could not grade the toy's test set
    [got] = launches(tmp_path / "v" / "run.sh", tmp_path)
    assert got["overrides"]["actor_rollout_ref.rollout.tau_s_annealing.end_tau"] == "0.6"  # constant τs


def test_toy_offline_export(tmp_path, parquet_optional):
    sept_loop.main(["--preset", "toy-offline", "--export-verl", str(tmp_path / "v")])
    generate, train = launches(tmp_path / "v" / "run.sh", tmp_path)
    o = train["overrides"]
    assert (o["data.train_batch_size"], o["data.micro_batch_size_per_gpu"]) == ("32", "4")  # B·G/µ = 256 / 8
    assert (o["trainer.total_epochs"], o["trainer.total_training_steps"]) == ("1", "80")  # 10 rounds × µ
    assert "every round (of 8 updates)" in header(tmp_path / "v" / "run.sh")


@pytest.mark.skipif(not HAVE_PYARROW, reason="needs pyarrow")
@pytest.mark.parametrize("template", ["qwen-math", "qwen-instruct"])
def test_jsonl_to_parquet_round_trip(template, tmp_path):
    src = tmp_path / "mixed.jsonl"
    src.write_text("\n".join(json.dumps(x) for x in [
        {"problem": "Find $x$ if $\\frac{x}{2} = 3$.", "answer": "6", "id": "a-1", "source": "math500"},
        {"question": "Ünïcode: what is {1, 2} ∪ {3}?", "answer": 7},  # id and source from the file
        {"problem": "No reference answer here."}]) + "\n")
    qs = questions.load_questions(src)
    verl.write_parquet(str(tmp_path / "mixed.parquet"), qs, "test", template)
    assert questions.load_questions(tmp_path / "mixed.parquet") == qs
    import pyarrow.parquet as pq
    rows = pq.read_table(tmp_path / "mixed.parquet").to_pylist()
    assert rows[0]["reward_model"] == {"style": "rule", "ground_truth": "6"}
    assert rows[1]["extra_info"] == {"index": 1, "split": "test"} and rows[1]["data_source"] == "mixed"
    content = rows[0]["prompt"][0]["content"]  # the user message verl's chat template renders
    assert content == qs[0].problem + ("" if template == "qwen-math" else " " + prompts.BOXED_INSTRUCTION)


@pytest.mark.parametrize("flags, message", [
    (["--batch-prompts", "many"], None),                                   # argparse: exits before any check
    (["--updates-per-round", "3"], "equal mini-batches"),                  # check_config, as a run
    (["--batch-prompts", "6", "--rollouts", "2", "--updates-per-round", "4"], "splits a round by questions"),
    (["--batch-prompts", "512"], "fewer than --batch-prompts"),            # verl's epoch would be empty
])
def test_bad_configuration_writes_nothing(flags, message, tmp_path, parquet_optional):
    with pytest.raises(SystemExit if message is None else ValueError, match=message):
        export(tmp_path, "--preset", "paper", *flags)
    assert not (tmp_path / "export").exists()


def test_pyarrow_missing_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "pyarrow", None)  # as if not installed
    with pytest.raises(SystemExit, match="pip install pyarrow"):
        export(tmp_path, "--preset", "paper")
    assert not (tmp_path / "export").exists()


@pytest.mark.skipif(not HAVE_PYARROW, reason="needs pyarrow")
def test_offline_pairs_step(tmp_path):
    """run.sh's step between generate_solutions and the SFT trainer: each generated answer beside its question."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    out = export(tmp_path, "--preset", "paper", "--offline", "--template", "qwen-instruct")
    text = (out / "run.sh").read_text()
    code = text.split("<<'EOF'\n")[1].split("\nEOF\n")[0]
    generated = tmp_path / "solutions_tau0s6.parquet"  # what recipe.sept.generate_solutions writes (its columns)
    train = pq.read_table(out / "data" / "train.parquet").to_pylist()
    pq.write_table(pa.Table.from_pylist([dict(id=q["id"], data_source=q["data_source"], ability="math",
                                              reward_model=q["reward_model"], solution=f"answer {i}")
                                         for i, q in enumerate(reversed(train))]), generated)
    subprocess.run([sys.executable, "-", str(out / "data" / "train.parquet"), str(generated), str(tmp_path / "sft")],
                   input=code, text=True, check=True)
    pairs = pq.read_table(tmp_path / "sft" / "train.parquet").to_pylist()
    assert len(pairs) == len(train) and pq.read_table(tmp_path / "sft" / "test.parquet").num_rows == 64
    assert pairs[0]["extra_info"] == {"question": train[-1]["prompt"][-1]["content"], "answer": "answer 0"}
    assert pairs[0]["extra_info"]["question"].endswith(prompts.BOXED_INSTRUCTION)  # the RL data's user message
    assert "solutions_tau0s6.parquet" in text
