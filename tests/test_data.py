"""Tests for data/questions.py and data/prompts.py: loading (jsonl, parquet, errors that name the line), the
fixed prompt templates byte for byte, and sandboxed chat-template rendering.

    python -m pytest tests/test_data.py -q
"""
import json
from pathlib import Path

import pytest

from data.prompts import BOXED_INSTRUCTION, TEMPLATE_NAMES, TEMPLATES, build_prompt, render_chat_template
from data.questions import Question, load_questions

BENCHMARKS = Path(__file__).resolve().parents[2] / "shared" / "benchmarks"  # beside the repo; absent in a clone
BENCHMARK_SIZES = {"math500": 500, "aime": 30, "aime25": 30, "amc23": 40, "minerva": 272, "olympiadbench": 675}

# ---------------------------------------------------------------------------------------------- questions


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_load_jsonl(tmp_path):
    path = write_lines(tmp_path / "questions.jsonl", [
        json.dumps({"id": "a1", "problem": "What is 1+1?", "answer": "2", "source": "toy"}),
        "",  # blank lines are skipped, but still counted for line numbers
        json.dumps({"question": "What is 2+2?", "answer": 4}),  # `question` alias, numeric answer
        json.dumps({"problem": "Unknown answer?"}),
        "   ",
    ])
    assert load_questions(path) == [
        Question("What is 1+1?", "2", "a1", "toy"),
        Question("What is 2+2?", "4", "questions-3", "questions"),
        Question("Unknown answer?", None, "questions-4", "questions"),
    ]
    assert load_questions(str(path)) == load_questions(path)


@pytest.mark.parametrize("bad_line, message", [
    ('{"problem": "x", "answer": ', "line 7: not valid JSON"),
    ('["a list"]', "line 7: expected a JSON object, got list"),
    ('{"answer": "3"}', "line 7: no 'problem' (or 'question') text"),
    ('{"problem": "", "answer": "3"}', "line 7: no 'problem'"),
    ('{"problem": "x", "answer": true}', "line 7: answer must be a string or a number"),
])
def test_malformed_line_names_file_and_line(tmp_path, bad_line, message):
    good = json.dumps({"problem": "fine", "answer": "1"})
    path = write_lines(tmp_path / "questions.jsonl", [good] * 6 + [bad_line, good])
    with pytest.raises(ValueError, match="questions.jsonl " + message.replace("(", r"\(").replace(")", r"\)")):
        load_questions(path)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.jsonl"):
        load_questions(tmp_path / "nowhere.jsonl")


def test_parquet_needs_pyarrow(tmp_path, monkeypatch):
    path = tmp_path / "train.parquet"
    path.write_bytes(b"PAR1")
    monkeypatch.setitem(__import__("sys").modules, "pyarrow", None)  # as if not installed
    monkeypatch.setitem(__import__("sys").modules, "pyarrow.parquet", None)
    with pytest.raises(ImportError, match="pip install pyarrow"):
        load_questions(path)


def test_load_verl_parquet(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    rows = [
        {"data_source": "math", "prompt": [{"role": "system", "content": "Be brief."},
                                           {"role": "user", "content": "What is 1+1?"}],
         "reward_model": {"ground_truth": "2", "style": "rule"}, "extra_info": {"index": 7, "split": "train"}},
        {"data_source": "aime", "prompt": [{"role": "user", "content": "What is 3*3?"}],
         "reward_model": {"ground_truth": "9", "style": "rule"}, "extra_info": {"index": None, "split": "train"}},
    ]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "train.parquet")  # stock verl: extra_info.index
    assert load_questions(tmp_path / "train.parquet") == [
        Question("What is 1+1?", "2", "7", "math"), Question("What is 3*3?", "9", "train-1", "aime")]
    official = [{"prompt": [{"content": "What is 2+3?", "role": "user"}], "ability": "math", "id": "test/1.json",
                 "reward_model": {"ground_truth": "5", "style": "rule"}, "data_source": "math500"}]
    pq.write_table(pa.Table.from_pylist(official), tmp_path / "math500.parquet")  # the SePT repo's layout
    assert load_questions(tmp_path / "math500.parquet") == [Question("What is 2+3?", "5", "test/1.json", "math500")]
    rows[1]["prompt"] = [{"role": "system", "content": "no user turn"}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "bad.parquet")
    with pytest.raises(ValueError, match="bad.parquet row 1"):
        load_questions(tmp_path / "bad.parquet")


def test_benchmark_files_load():
    if not BENCHMARKS.is_dir():
        pytest.skip(f"no benchmark files at {BENCHMARKS}")
    for name, size in BENCHMARK_SIZES.items():
        questions = load_questions(BENCHMARKS / f"{name}.jsonl")
        assert len(questions) == size and len({q.id for q in questions}) == size, name
        assert all(q.problem.strip() and q.answer and q.answer.strip() and q.source == name for q in questions)


# ------------------------------------------------------------------------------------------------ prompts

QUESTION = "Find $x$ if $\\{x\\} = \\frac{1}{2}$."  # braces: templates must not use str.format


def test_fixed_templates_byte_for_byte():
    assert build_prompt(QUESTION, "qwen-math") == (
        "<|im_start|>system\nPlease reason step by step, and put your final answer within \\boxed{}.<|im_end|>\n"
        "<|im_start|>user\nFind $x$ if $\\{x\\} = \\frac{1}{2}$.<|im_end|>\n<|im_start|>assistant\n")
    assert build_prompt(QUESTION, "qwen-instruct") == (
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nFind $x$ if $\\{x\\} = \\frac{1}{2}$. Please reason step by step, and put your final "
        "answer within \\boxed{}.<|im_end|>\n<|im_start|>assistant\n")
    assert build_prompt(QUESTION, "raw") == QUESTION
    assert build_prompt("12+47+30", "toy") == "Q: 12+47+30\nA:"
    assert set(TEMPLATE_NAMES) == set(TEMPLATES) | {"chat", "deepseek-math"}


def test_unknown_template_lists_the_names():
    with pytest.raises(ValueError, match="qwen-math, qwen-instruct, raw, toy, chat"):
        build_prompt(QUESTION, "qwen")
    with pytest.raises(ValueError, match="model_dir"):
        build_prompt(QUESTION, "chat")


# A ChatML-like template with indented block tags: renders as below only with trim_blocks and lstrip_blocks
CHAT_TEMPLATE = """{{ bos_token -}}
  {% if messages[0]['role'] != 'system' %}
<|im_start|>system
Default system.<|im_end|>
  {% endif %}
  {% for message in messages %}
<|im_start|>{{ message['role'] }}
{{ message['content'] | trim }}<|im_end|>
  {% endfor %}
  {% if add_generation_prompt %}
<|im_start|>assistant
  {% endif %}"""
EXPECTED_CHAT = ("<s><|im_start|>system\nDefault system.<|im_end|>\n<|im_start|>user\n" + QUESTION + " "
                 + BOXED_INSTRUCTION + "<|im_end|>\n<|im_start|>assistant\n")


def write_model_dir(folder: Path, chat_template=None, jinja: str | None = None) -> Path:
    folder.mkdir(exist_ok=True)
    config = {"bos_token": {"content": "<s>", "special": True}, "eos_token": "<|im_end|>"}
    if chat_template is not None:
        config["chat_template"] = chat_template
    (folder / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    if jinja is not None:
        (folder / "chat_template.jinja").write_text(jinja, encoding="utf-8")
    return folder


def test_chat_template_from_tokenizer_config(tmp_path):
    folder = write_model_dir(tmp_path / "m", CHAT_TEMPLATE)
    assert build_prompt(QUESTION, "chat", folder) == EXPECTED_CHAT  # trim_blocks / lstrip_blocks as in HF


def test_chat_template_list_form_and_jinja_file(tmp_path):
    named = [{"name": "tool_use", "template": "wrong"}, {"name": "default", "template": CHAT_TEMPLATE}]
    assert build_prompt(QUESTION, "chat", write_model_dir(tmp_path / "a", named)) == EXPECTED_CHAT
    folder = write_model_dir(tmp_path / "b", "wrong", jinja=CHAT_TEMPLATE)  # the .jinja file wins
    assert build_prompt(QUESTION, "chat", str(folder)) == EXPECTED_CHAT


def test_chat_template_helpers(tmp_path):
    template = "{{ messages | tojson }}{% if messages | length > 1 %}{{ raise_exception('one turn only') }}{% endif %}"
    folder = write_model_dir(tmp_path / "m", template)
    messages = [{"role": "user", "content": "é"}]
    assert render_chat_template(folder, messages) == '[{"role": "user", "content": "é"}]'
    with pytest.raises(ValueError, match="one turn only"):
        render_chat_template(folder, messages * 2)


def test_missing_chat_template_names_the_folder(tmp_path):
    folder = write_model_dir(tmp_path / "no_template")
    with pytest.raises(ValueError, match="no chat template in .*no_template"):
        build_prompt(QUESTION, "chat", folder)
    with pytest.raises(ValueError, match="no chat template in .*empty"):
        build_prompt(QUESTION, "chat", tmp_path / "empty")  # not even a tokenizer_config.json


@pytest.mark.parametrize("unsafe", [
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",  # the classic escape to arbitrary Python
    "{{ messages.append({'role': 'system', 'content': 'x'}) }}",  # mutating the caller's data
])
def test_unsafe_chat_template_is_refused(tmp_path, unsafe):
    folder = write_model_dir(tmp_path / "m", unsafe)
    with pytest.raises(ValueError, match="Jinja sandbox forbids") as info:
        build_prompt(QUESTION, "chat", folder)
    assert type(info.value.__cause__).__name__ == "SecurityError"


def test_special_tokens_in_prompt_text_become_single_ids():
    """What prompts.py promises: the template's special tokens, written as text, encode to their own ids."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(["system user assistant reason step answer boxed"] * 10, trainer)
    start, end = tokenizer.token_to_id("<|im_start|>"), tokenizer.token_to_id("<|im_end|>")
    ids = tokenizer.encode(build_prompt(QUESTION, "qwen-math"), add_special_tokens=False).ids
    assert ids[0] == start and ids.count(start) == 3 and ids.count(end) == 2


def test_deepseek_math_template_byte_for_byte(tmp_path):
    """The paper's Figure 4 template: the checkpoint's own BOS, then the reasoning prompt and User/Assistant."""
    folder = write_model_dir(tmp_path / "ds")
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config["bos_token"] = {"content": "<｜begin▁of▁sentence｜>", "special": True}
    (folder / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    assert build_prompt(QUESTION, "deepseek-math", folder) == (
        "<｜begin▁of▁sentence｜>\n\nPlease reason step by step, and put your final answer within \\boxed{}.\n\n"
        "User: Find $x$ if $\\{x\\} = \\frac{1}{2}$.\n\nAssistant:")
    with pytest.raises(ValueError, match="no bos_token"):
        build_prompt(QUESTION, "deepseek-math", tmp_path)
