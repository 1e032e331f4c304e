"""Reliability outside the loop: nothing a user owns is deleted, bad input is one line naming it, torn files and
crashed checkpoint writes are survived, sampling refuses garbage settings, and prompts carry their BOS once."""
import json
import math
import os
import subprocess
import sys

import pytest
import torch

import model as model_lib
import runs
import sample
import train
from data import prompts, questions

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def one_line_error(*args, script="train.py", env=None):
    r = subprocess.run([sys.executable, os.path.join(ROOT, script), *args], capture_output=True, text=True,
                       timeout=300, cwd=ROOT, env=env)
    assert r.returncode == 1 and "Traceback" not in r.stderr and r.stderr.strip().count("\n") == 0, r.stderr
    return r.stderr


# ---- 1. a folder that is not ours is never replaced or deleted ------------------------------------------

def test_save_model_refuses_a_folder_that_is_not_a_checkpoint(make_checkpoint, tmp_path):
    net, d = model_lib.load_model(make_checkpoint("llama")), tmp_path / "w"
    for name in ("mine", "mine.tmp", "mine.old"):  # the folder itself, or the two names replacing it uses
        os.makedirs(d / name)
        (d / name / "notes.txt").write_text("the user's")
        with pytest.raises(FileExistsError, match=f"{name} is not a checkpoint folder .notes.txt"):
            runs.save_model(net, str(d / "mine"))
        assert (d / name / "notes.txt").read_text() == "the user's"
        os.remove(d / name / "notes.txt")
        os.rmdir(d / name)
    (d / "file").write_text("x")
    with pytest.raises(FileExistsError, match="not a folder"):
        runs.save_model(net, str(d / "file"))
    # a checkpoint of ours is replaced, also when a crash left a half-removed .old beside it
    runs.save_model(net, str(d / "ckpt"))
    (d / "ckpt.old").mkdir()
    (d / "ckpt.old" / "model.safetensors").write_bytes(b"half")
    runs.save_model(net, str(d / "ckpt"))
    assert sorted(os.listdir(d)) == ["ckpt", "file"] and model_lib.load_model(str(d / "ckpt"))
    # a kill mid-save leaves safetensors' own staging file (.tmpXXXXXX) in ckpt.tmp: ours, so it is replaced
    (d / "ckpt.tmp").mkdir()
    (d / "ckpt.tmp" / ".tmp0XS7l0").write_bytes(b"half")
    runs.save_model(net, str(d / "ckpt"))
    assert sorted(os.listdir(d)) == ["ckpt", "file"]
    with pytest.raises(FileExistsError, match="ckpt: not empty"):  # model.py writes folders, never replaces one
        model_lib.save_model(net, str(d / "ckpt"))


def test_train_out_on_a_user_folder_fails_before_training(make_checkpoint, tmp_path):
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "paper.tex").write_text("months of work")
    with pytest.raises(FileExistsError, match="results is not a checkpoint folder .paper.tex"):
        train.main(["--model", make_checkpoint("llama"), "--data", str(tmp_path / "absent.jsonl"),
                    "--out", str(tmp_path / "results")])  # the data file is never reached: the check comes first
    assert (tmp_path / "results" / "paper.tex").read_text() == "months of work"
    assert "--epochs 0: expected an integer >= 1" in one_line_error("--epochs", "0", "--out", str(tmp_path / "o"))


def test_a_write_that_fails_leaves_the_old_file(tmp_path):
    """A full disk mid-write (ENOSPC) fails the write; the file keeps its previous content."""
    path = str(tmp_path / "metrics.jsonl")
    runs.write_file(path, "old\n")

    def partial(tmp):
        with open(tmp, "w") as f:
            f.write("ne")
        raise OSError(28, "No space left on device")
    with pytest.raises(OSError, match="No space left"):
        runs.write_file(path, partial)
    assert open(path).read() == "old\n"


# ---- 3 and 10. torn metrics lines, crashes while writing checkpoints -------------------------------------

def test_read_metrics_drops_a_torn_last_line_only(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"round": 0}\n\n{"round": 1}\n{"round": 2, "lo')
    assert runs.read_metrics(str(tmp_path)) == [{"round": 0}, {"round": 1}]
    (tmp_path / "metrics.jsonl").write_text('{"round": 0}\n{"round": 1}\n\n')  # a blank last line
    assert runs.read_metrics(str(tmp_path)) == [{"round": 0}, {"round": 1}]
    (tmp_path / "metrics.jsonl").write_text('{"round": 0}\n{"rou\n{"round": 2}\n')
    with pytest.raises(ValueError, match="metrics.jsonl line 2: not valid JSON"):
        runs.read_metrics(str(tmp_path))


def write_state(folder, r, complete=True):
    os.makedirs(folder, exist_ok=True)
    open(os.path.join(folder, "model.safetensors"), "wb").close()
    if complete:
        runs.write_json(os.path.join(folder, "sept_state.json"), {"round": r})


def test_find_checkpoint_after_two_crashes(make_checkpoint, tmp_path):
    out, ck = str(tmp_path), str(tmp_path / "checkpoints")
    assert runs.find_checkpoint(out) is None
    write_state(f"{ck}/last.old", 2)                   # a crash between the renames: last gone, last.old whole
    assert runs.find_checkpoint(out) == f"{ck}/last.old"
    write_state(f"{ck}/last.old", 2, complete=False)   # ... then a second one, while removing last.old,
    os.remove(f"{ck}/last.old/sept_state.json")
    write_state(f"{ck}/last.tmp", 3)                   # with the next checkpoint complete in last.tmp
    assert runs.find_checkpoint(out) == f"{ck}/last.tmp"
    write_state(f"{ck}/last", 2)
    assert runs.find_checkpoint(out) == f"{ck}/last.tmp"  # the newest round wins
    # the next save keeps round 3 as `last` before it stages round 4; nothing is left beside it
    net = model_lib.load_model(make_checkpoint("llama"))
    runs.save_checkpoint(out, "last", net, train.make_optimizer(net, train.TrainConfig()), 4, None)
    assert os.listdir(ck) == ["last"] and runs.find_checkpoint(out) == f"{ck}/last"
    assert model_lib.read_json(f"{ck}/last/sept_state.json") == {"round": 4}


# ---- 5. sampling settings that would draw garbage --------------------------------------------------------

@pytest.mark.parametrize("temperature, top_p", [(-0.1, 1.0), (math.nan, 1.0), (math.inf, 1.0), (1.0, 0.0),
                                                (1.0, -0.5), (1.0, 1.5), (1.0, math.nan)])
def test_sampling_rejects_garbage_settings(make_checkpoint, temperature, top_p):
    logits = torch.randn(2, 10)
    with pytest.raises(ValueError, match="expected temperature >= 0"):
        sample.sample_next(logits, temperature, top_p, torch.Generator())
    net = model_lib.load_model(make_checkpoint("llama"))
    with pytest.raises(ValueError, match="expected temperature >= 0"):
        sample.generate(net, [[1, 2, 3]], max_new_tokens=4, temperature=temperature, top_p=top_p)
    assert sample.sample_next(logits, 0.0, 1.0, None).tolist() == logits.argmax(-1).tolist()  # greedy still fine


# ---- 8. loading errors: one line that names the file -----------------------------------------------------

def test_bad_config_and_tokenizer_files_name_the_file(make_checkpoint, tmp_path):
    path = make_checkpoint("llama")
    cfg = os.path.join(path, "config.json")
    for text, message in (("[]", "config.json: expected a JSON object, got list"),
                          ("{oops", "config.json: not valid JSON")):
        with open(cfg, "w") as f:
            f.write(text)
        for load in (model_lib.read_config, prompts.load_tokenizer):
            with pytest.raises(ValueError, match=message):
                load(path)
    with open(os.path.join(path, "tokenizer.json"), "w") as f:
        f.write('{"version": "1.0", "model": 3}')
    with pytest.raises(ValueError, match="tokenizer.json: cannot read the tokenizer"):
        prompts.load_tokenizer(path)
    with pytest.raises(ValueError, match="nonexistent: no such checkpoint folder"):
        prompts.load_tokenizer(str(tmp_path / "nonexistent"))
    with pytest.raises(ValueError, match="or use --template qwen-math"):
        prompts.build_prompt("1+1", "chat", path)


def test_empty_question_file_and_parquet_without_pyarrow(tmp_path):
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(ValueError, match="empty.jsonl: no questions"):
        questions.load_questions(tmp_path / "empty.jsonl")
    (tmp_path / "pyarrow").mkdir()  # a pyarrow that cannot be imported, as if not installed
    (tmp_path / "pyarrow" / "__init__.py").write_text("raise ImportError('no pyarrow here')\n")
    (tmp_path / "train.parquet").write_bytes(b"PAR1")
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    msg = one_line_error("--train-questions", str(tmp_path / "train.parquet"), "--out", str(tmp_path / "o"),
                         script="sept_loop.py", env=env)
    assert "train.parquet needs pyarrow: pip install pyarrow" in msg and not (tmp_path / "o").exists()


# ---- 11. the BOS, as transformers gives it --------------------------------------------------------------

def bos_tokenizer(folder, bos):
    """A tiny byte-level BPE; with `bos`, a Llama-3 / DeepSeek-style post-processor that puts it before a text."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    specials = [bos] * bool(bos) + ["<|eot_id|>", "<|im_start|>", "<|im_end|>"]
    tok.train_from_iterator(["What is 12 + 30? The answer is 42."] * 20, trainers.BpeTrainer(
        vocab_size=300, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    if bos:
        tok.post_processor = processors.Sequence([
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                          special_tokens=[(bos, tok.token_to_id(bos))])])
    os.makedirs(folder)
    tok.save(os.path.join(folder, "tokenizer.json"))
    with open(os.path.join(folder, "tokenizer_config.json"), "w") as f:
        json.dump({"bos_token": bos or None, "eos_token": "<|eot_id|>",
                   "chat_template": "{{ bos_token }}{% for m in messages %}<|im_start|>{{ m['content'] }}<|im_end|>"
                                    "{% endfor %}<|im_start|>"}, f)
    return tok


@pytest.mark.parametrize("bos", ["<|begin_of_text|>", "<｜begin▁of▁sentence｜>", ""])  # Llama 3, DeepSeek, Qwen
def test_prompts_carry_the_bos_once_as_transformers_gives_it(tmp_path, bos):
    from transformers import PreTrainedTokenizerFast
    tok = bos_tokenizer(tmp_path / "tok", bos)
    hf = PreTrainedTokenizerFast(tokenizer_object=tok)
    ours = prompts.load_tokenizer(tmp_path / "tok")
    for template in ("raw", "qwen-math", "toy"):
        text = prompts.build_prompt("What is 12 + 30?", template)
        assert ours.encode(text) == hf(text).input_ids, template
        assert ours.encode(text).count(tok.token_to_id(bos)) == (1 if bos else 0)
    chat = prompts.build_prompt("What is 12 + 30?", "chat", tmp_path / "tok")  # renders {{ bos_token }} itself
    assert chat.startswith(bos) and ours.encode(chat) == hf(chat, add_special_tokens=False).input_ids
    assert ours.encode(chat).count(tok.token_to_id(bos)) == (1 if bos else 0)
    if bos:  # the paper's DeepSeek-Math template writes the BOS as text: still exactly one BOS id
        ds = prompts.build_prompt("What is 12 + 30?", "deepseek-math", tmp_path / "tok")
        assert ds.startswith(bos + "\n\n") and ours.encode(ds).count(tok.token_to_id(bos)) == 1
        assert ours.encode(ds) == hf(ds, add_special_tokens=False).input_ids
    assert ours.encode("The answer is 42.", bos=False) == hf("The answer is 42.", add_special_tokens=False).input_ids
