"""Question sets: math questions and, where known, their reference final answers.

    python -m data.questions ../shared/benchmarks/math500.jsonl   # from the repo root: count and first question

Two formats (see data/README.md):
  * jsonl, one object per line: "problem" (or "question"), "answer" (string or number; absent when unknown),
    optional "id" (default "<file stem>-<line>") and "source" (default the file stem). Blank lines are skipped.
  * the verl-style parquet the official SePT code ships: "prompt" (chat messages; the last user message is the
    problem, less a trailing boxed instruction), "reward_model" {"ground_truth", "style"}, "data_source", "id"
    (or verl's extra_info.index). Needs pyarrow.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from data.prompts import BOXED_INSTRUCTION, build_prompt


@dataclass
class Question:
    problem: str  # the question text, without any prompt template around it
    answer: str | None  # reference final answer (what \boxed{} should hold); None when unknown
    id: str  # stable id, unique within its file
    source: str  # benchmark or data set it came from


def load_questions(path: str | Path) -> list[Question]:
    """All questions in a .jsonl or .parquet file; errors name the file and line (or row)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"question file {path} does not exist")
    questions = _load_parquet(path) if path.suffix == ".parquet" else _load_jsonl(path)
    if not questions:  # an empty set would fail much later (no batch to draw, pass@k over nothing)
        raise ValueError(f"{path}: no questions in the file")
    return questions


def _load_jsonl(path: Path) -> list[Question]:
    questions = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path} line {lineno}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(obj, dict):
                raise ValueError(f"{where}: expected a JSON object, got {type(obj).__name__}")
            problem = obj.get("problem", obj.get("question"))
            if not isinstance(problem, str) or not problem.strip():
                raise ValueError(f"{where}: no 'problem' (or 'question') text")
            questions.append(Question(
                problem=problem,
                answer=_answer_text(obj.get("answer"), where),
                id=str(obj["id"]) if obj.get("id") is not None else f"{path.stem}-{lineno}",
                source=str(obj.get("source") or obj.get("data_source") or path.stem),
            ))
    return questions


def _load_parquet(path: Path) -> list[Question]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ImportError(f"reading {path} needs pyarrow: pip install pyarrow") from None
    questions = []
    for i, row in enumerate(pq.read_table(path).to_pylist()):
        where = f"{path} row {i}"
        prompt = row.get("prompt")
        if isinstance(prompt, str):
            problem = prompt
        else:  # verl: [{"role": "system", ...}, {"role": "user", "content": question}]
            users = [m.get("content") for m in prompt or [] if isinstance(m, dict) and m.get("role") == "user"]
            problem = users[-1] if users else None
        if not isinstance(problem, str) or not problem.strip():
            raise ValueError(f"{where}: 'prompt' holds no user message")
        # the official data_user_reasoning/ files (and --export-verl for the qwen-instruct and chat templates) end
        # each question with the boxed instruction; sept's templates add it themselves
        problem = problem.removesuffix(" " + BOXED_INSTRUCTION)
        # the official files carry an "id" column; stock verl preprocessing writes extra_info.index instead
        row_id = row.get("id") if row.get("id") is not None else (row.get("extra_info") or {}).get("index")
        questions.append(Question(
            problem=problem,
            answer=_answer_text((row.get("reward_model") or {}).get("ground_truth"), where),
            id=str(row_id) if row_id is not None else f"{path.stem}-{i}",
            source=str(row.get("data_source") or path.stem),
        ))
    return questions


def _answer_text(value, where: str) -> str | None:
    """Answers are compared as text; numbers (AIME answers are often stored as ints) become strings."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    raise ValueError(f"{where}: answer must be a string or a number, got {type(value).__name__}")


def encode_questions(path: str, cfg, tokenizer, context: int, limit: int = 0, answers: str = ""):
    """The questions of a file and their prompts' token ids, in the run's template (`cfg`: sept_loop's settings); a
    prompt that cannot fit, or a question without an answer where one is needed (`answers` says why), is an error
    now, not in the middle of a round."""
    qs = load_questions(path)[:limit or None]
    if answers and (q := next((q for q in qs if q.answer is None), None)):
        raise ValueError(f"{path}: question {q.id} has no answer ({answers})")
    ids = [tokenizer.encode(build_prompt(q.problem, cfg.template, model_dir=cfg.model)) for q in qs]
    for q, p in zip(qs, ids):
        if len(p) > cfg.max_prompt_tokens:
            raise ValueError(f"{path}: question {q.id} is {len(p)} tokens after the {cfg.template} template, "
                             f"over --max-prompt-tokens {cfg.max_prompt_tokens}")
        if len(p) + cfg.max_response_tokens > context:
            raise ValueError(f"{path}: question {q.id} is {len(p)} tokens after the {cfg.template} template; with "
                             f"--max-response-tokens {cfg.max_response_tokens} that exceeds the model's context "
                             f"of {context} tokens")
    return qs, ids


def test_set_names(test_questions: str) -> dict[str, str]:
    """--test-questions (comma-separated files) as {the name of each set: its file}: the file's stem, or its path
    without the extension when two files share a stem; a file listed twice counts once."""
    paths = list(dict.fromkeys(p for p in test_questions.split(",") if p))
    stems = [Path(p).stem for p in paths]
    return {stem if stems.count(stem) == 1 else os.path.splitext(p)[0]: p for stem, p in zip(stems, paths)}


def load_question_sets(cfg, tokenizer, context: int) -> tuple[dict, list, list]:
    """A run's questions (`cfg`: sept_loop's settings): the test sets ({name: (questions, prompt ids)}, named by
    test_set_names), and the training questions and their prompt ids (none for --sweep)."""
    test_sets = {name: encode_questions(path, cfg, tokenizer, context, cfg.eval_max_questions, "pass@k needs it")
                 for name, path in test_set_names(cfg.test_questions).items()}
    if cfg.sweep:
        return test_sets, [], []
    why = "--algo grpo rewards each answer by its grade" if cfg.algo == "grpo" else ""
    return (test_sets, *encode_questions(cfg.train_questions, cfg, tokenizer, context, answers=why))


def load_pairs(path: str, tokenizer, eos_ids: list[int], max_len: int) -> list[tuple[list[int], list[int]]]:
    """train.py's SFT data: one {"prompt": ..., "response": ...} object per line, each side tokenized separately
    (the prompt with the tokenizer's BOS, as transformers would; the response, then `eos_ids`), text as written, no
    chat template; errors name the file and line. A pair longer than the context is an error, never cut."""
    pairs = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{n}: not valid JSON ({e.msg})") from None
            row = row if isinstance(row, dict) else {}
            missing = [k for k in ("prompt", "response") if not isinstance(row.get(k), str)]
            if missing:
                raise ValueError(f"{path}:{n}: missing or non-string field {', '.join(missing)}")
            if not row["response"] or not row["prompt"]:
                raise ValueError(f"{path}:{n}: empty {'response' if not row['response'] else 'prompt'}")
            prompt, response = tokenizer.encode(row["prompt"]), tokenizer.encode(row["response"], bos=False) + eos_ids
            if len(prompt) + len(response) > max_len:
                raise ValueError(f"{path}:{n}: {len(prompt)} prompt + {len(response)} response tokens exceed the "
                                 f"model's context of {max_len} tokens")
            pairs.append((prompt, response))
    if not pairs:
        raise ValueError(f"{path}: no pairs")
    return pairs


if __name__ == "__main__":
    qs = load_questions(sys.argv[1])
    print(f"{len(qs)} questions; the first ({qs[0].id}, source {qs[0].source}, answer {qs[0].answer!r}):")
    print(qs[0].problem)
