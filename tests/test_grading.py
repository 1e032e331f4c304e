"""Tests for data/grading.py: answer extraction, equivalence (pinned on every benchmark answer when ../shared
is present), hard time limits from any thread, and pass@k against brute force.

    python -m pytest tests/test_grading.py -q -s     # -s prints the self- and cross-match rates
"""
import importlib.util
import itertools
import multiprocessing
import random
import threading
import time
from pathlib import Path

import pytest

from data import grading
from data.grading import (Grade, avg_pass, extract_boxed, grade, grade_many, is_equivalent, mean_over_benchmarks,
                          normalize_answer, pass_at_k, pass_at_k_table)
from data.questions import load_questions

BENCHMARKS = Path(__file__).resolve().parents[2] / "shared" / "benchmarks"  # beside the repo; absent in a clone
BENCHMARK_NAMES = ["math500", "aime", "aime25", "amc23", "minerva", "olympiadbench"]
needs_math_verify = pytest.mark.skipif(importlib.util.find_spec("math_verify") is None,
                                       reason="math-verify not installed")

# (reference as the data sets write it, a rewrite a model might box): all must grade equal, both ways
REWRITES = [
    ("\\frac{14}{3}", "14/3"), ("90^\\circ", "90"), ("90^{\\circ}", "90"), ("\\text{Evelyn}", "Evelyn"),
    ("\\frac12", "0.5"), ("\\dfrac{33}{100}", "\\frac{33}{100}"), ("\\tfrac{1}{2}", "\\frac{1}{2}"),
    ("1,000", "1000"), ("58,500", "58500"), ("11,\\! 111,\\! 111,\\! 100", "11111111100"), ("2.50", "2.5"),
    ("3.0", "3"), ("x=3", "3"), ("k = 3", "3"), ("\\left( 3, \\frac{\\pi}{2} \\right)", "(3,\\frac{\\pi}{2})"),
    ("10\\%", "10"), ("5.4 \\text{ cents}", "5.4"), ("\\$18.90", "18.9"), ("$\\frac{1}{10}$", "\\frac{1}{10}"),
    ("\\frac{1}{2}", "\\frac{1}{2}."), ("\\sqrt2", "\\sqrt{2}"), ("-\\frac{1}{2}", "\\frac{-1}{2}"),
    (".5", "0.5"), ("2.75e11", "2.75 \\times 10^{11}"), ("20 \\mathrm{~cm}", "20"), ("90 degrees", "90"),
    ("\\text{Evelyn}", "evelyn"), ("\\textbf{(C)}", "C"), ("{5}", "5"), ("x \\in [1, 2]", "[1,2]"),
    ("\\{1, 2\\}", "\\left\\{1,2\\right\\}"),
]
NOT_EQUAL = [("3", "4"), ("\\frac{1}{2}", "\\frac{1}{3}"), ("2.05", "2.5"), ("(1,2)", "(2,1)"), ("", "0"),
             ("1e999999999", "1"), ("\\sqrt{2}", "2"), ("2k+2", "2k"), ("1,001", "1,000"), ("n+1", "5"),
             ("e^{2}", "7.389"), ("2271380", "2271381"), ("\\frac{14}{3}", "4.6667"), ("\\frac13", "0.333"),
             ("9.1e-31", "9.11e-31")]


def test_extract_boxed():
    assert extract_boxed("so \\boxed{42}.") == "42"
    assert extract_boxed("\\boxed{\\frac{1}{2}} then \\boxed{\\frac{\\sqrt{3}}{2}}") == "\\frac{\\sqrt{3}}{2}"
    assert extract_boxed("$\\boxed{\\{1, 2\\}}$") == "\\{1, 2\\}"  # escaped braces do not count
    assert extract_boxed("\\fbox{7}") == "7" and extract_boxed("\\boxed 5$.") == "5"
    assert extract_boxed("\\boxed {x+1}") == "x+1" and extract_boxed("\\boxed{}") == ""
    assert extract_boxed("no box, the answer is 3") is None
    assert extract_boxed("\\boxed{\\frac{1}{2}") is None  # cut off mid-box by the token limit
    assert extract_boxed("\\boxed{1} and finally \\boxed{2") is None  # the last box decides
    assert extract_boxed("\\boxedanswer{3}") is None  # not the \boxed command


def test_rewrites_are_equivalent():
    for truth, pred in REWRITES:
        assert is_equivalent(pred, truth), (pred, truth)
        assert is_equivalent(truth, pred), (truth, pred)


def test_rewrites_need_no_math_verify(monkeypatch):
    """The string/number path alone catches the usual rewrites: fast, and right even without math-verify."""
    def refuse(*args):
        raise AssertionError(f"math-verify was asked about {args}")
    monkeypatch.setattr(grading, "_math_verify", refuse)
    for truth, pred in REWRITES:
        assert grading._equivalent.__wrapped__(pred, truth, 5.0), (pred, truth)


def test_not_equivalent():
    for a, b in NOT_EQUAL:
        assert not is_equivalent(a, b), (a, b)


def test_long_degenerate_answers_normalize_in_linear_time():
    """normalize_answer runs in the caller with no time limit, so no regex may backtrack quadratically."""
    n = 20_000
    t0 = time.perf_counter()
    for s in ["1" * n + " cm x", "1." + "0" * n + "1", "{" * n + "}" * n, "1." * n, "\\text{" * n, "5 " + "ab " * n]:
        grading._to_number(normalize_answer(s))
        extract_boxed("\\boxed{" + s)
    assert time.perf_counter() - t0 < 2.0  # each took 5-9 s with the quadratic patterns


@needs_math_verify
def test_math_verify_path():
    assert is_equivalent("x+1", "1+x")
    assert is_equivalent("\\frac{\\sqrt{2}}{2}", "\\frac{1}{\\sqrt{2}}")
    assert is_equivalent("2^{10}", "1024") and is_equivalent("e^{0}", "1")  # numbers in disguise reach sympy
    assert not is_equivalent("x+2", "1+x")


def test_missing_math_verify_warns_once_and_falls_back(monkeypatch):
    monkeypatch.setattr(grading.importlib.util, "find_spec", lambda name: None)
    monkeypatch.setattr(grading, "_warned_missing", False)
    with pytest.warns(UserWarning, match="pip install math-verify"):
        assert grading._equivalent.__wrapped__("y+1", "1+y", 5.0) is False
    assert grading._equivalent.__wrapped__("0.5", "\\frac12", 5.0) is True  # the string path still works


def _benchmark_answers() -> list[str]:
    if not BENCHMARKS.is_dir():
        pytest.skip(f"no benchmark files at {BENCHMARKS}")
    return [q.answer for name in BENCHMARK_NAMES for q in load_questions(BENCHMARKS / f"{name}.jsonl")]


def test_every_benchmark_answer_grades_correct_against_itself():
    answers = _benchmark_answers()
    t0 = time.perf_counter()
    grades = grade_many([f"Thus the answer is $\\boxed{{{a}}}$." for a in answers], answers)
    wrong = [(a, g.extracted) for a, g in zip(answers, grades) if not g.correct]
    print(f"\nself-match: {len(answers) - len(wrong)}/{len(answers)} in {time.perf_counter() - t0:.2f}s")
    assert not wrong, wrong[:5]
    assert [g.extracted for g in grades] == [a.strip() for a in answers]


@needs_math_verify
def test_other_problems_answers_grade_wrong():
    """Each distinct answer against the next one in a shuffled list: at most 1% may grade equal."""
    distinct = list({normalize_answer(a): a for a in _benchmark_answers()}.values())
    random.Random(0).shuffle(distinct)
    pairs = list(zip(distinct, distinct[1:] + distinct[:1]))
    t0 = time.perf_counter()
    grades = grade_many([f"\\boxed{{{a}}}" for a, _ in pairs], [b for _, b in pairs], workers=2)
    false_pos = [pair for pair, g in zip(pairs, grades) if g.correct]
    print(f"\ncross-match false positives: {len(false_pos)}/{len(pairs)} in {time.perf_counter() - t0:.1f}s "
          f"{false_pos[:5]}")
    assert len(false_pos) <= 0.01 * len(pairs)


def _timed_check(pred: str, truth: str, timeout: float) -> tuple[bool, float]:
    t0 = time.perf_counter()
    verdict = grading._equivalent.__wrapped__(pred, truth, timeout)  # bypass the cache: really run it
    return verdict, time.perf_counter() - t0


@needs_math_verify
def test_pathological_answer_times_out_in_main_and_other_threads():
    assert is_equivalent("y^2+1", "1+y^2")  # start a helper, so start-up is not timed below
    verdict, seconds = _timed_check("9^{9^{9}}", "5", timeout=1.0)  # sympy would build a 370M-digit integer
    assert verdict is False and seconds < 1.0 + 1.5, seconds
    result = {}
    thread = threading.Thread(target=lambda: result.update(out=_timed_check("9^{9^{9}}", "7", timeout=1.0)))
    thread.start()
    thread.join(60)
    verdict, seconds = result["out"]
    assert verdict is False and seconds < 1.0 + 1.5 + 5.0, seconds  # + 5 s: this call starts a fresh helper
    assert _timed_check("2y+2", "2(y+1)", timeout=5.0)[0]  # and a later check works again


@needs_math_verify
def test_a_helper_killed_from_outside_is_replaced():
    assert is_equivalent("z+1", "1+z")
    for helper in list(grading._idle):
        helper.proc.kill()
        helper.proc.wait()
    assert _timed_check("z+2", "2+z", timeout=5.0)[0]


def _check_in_forked_child(_) -> tuple[int, bool]:
    return len(grading._idle), grading._equivalent.__wrapped__("w+1", "1+w", 30.0)


@needs_math_verify
def test_forked_worker_starts_its_own_helper():
    """A fork (multiprocessing worker) must not talk into the parent's helper pipes."""
    assert is_equivalent("v+1", "1+v") and grading._idle
    with multiprocessing.get_context("fork").Pool(1) as pool:
        assert pool.map(_check_in_forked_child, [0]) == [(0, True)]
    assert is_equivalent("v+2", "2+v")  # the parent's helper still answers


def test_grade_and_grade_many():
    assert grade("so \\boxed{4}", "4") == Grade("4", True)
    assert grade("so 4", "4") == Grade(None, False)
    assert grade("so \\boxed{4}", None) == Grade("4", None)
    responses = ["\\boxed{1/2}", "\\boxed{0.5}", "no box", "\\boxed{3}", "\\boxed{0.5}", "\\boxed{7}"]
    truths = ["\\frac12", "\\frac12", "\\frac12", "\\frac12", "\\frac12", None]
    assert grade_many(responses, truths) == [grade(r, t) for r, t in zip(responses, truths)]
    assert [g.correct for g in grade_many(responses, truths, workers=1)] == [True, True, False, False, True, None]
    with pytest.raises(ValueError):
        grade_many(["a"], [])


def _brute_pass_at_k(n: int, c: int, k: int) -> float:
    samples = [True] * c + [False] * (n - c)
    subsets = list(itertools.combinations(samples, k))
    return sum(any(s) for s in subsets) / len(subsets)


def test_pass_at_k_matches_brute_force():
    for n in range(1, 8):
        for c in range(n + 1):
            for k in range(1, n + 1):
                assert abs(pass_at_k(n, c, k) - _brute_pass_at_k(n, c, k)) < 1e-12, (n, c, k)


def test_pass_at_k_edges():
    assert pass_at_k(32, 0, 8) == 0.0 and pass_at_k(32, 32, 1) == 1.0 and pass_at_k(32, 1, 32) == 1.0
    assert abs(pass_at_k(32, 5, 1) - 5 / 32) < 1e-12
    assert 0.0 < pass_at_k(1000, 1, 1) < 1e-2  # large n stays finite (no giant binomials)
    for bad in [(8, 1, 9), (8, 9, 1), (8, -1, 1), (8, 1, 0)]:
        with pytest.raises(ValueError):
            pass_at_k(*bad)


def test_pass_at_k_table_and_averages():
    table = pass_at_k_table([0, 32, 16], n=32)
    assert set(table) == {"pass@1", "pass@8", "pass@32"}
    assert abs(table["pass@1"] - 50.0) < 1e-9 and abs(table["pass@32"] - 200 / 3) < 1e-9
    assert set(pass_at_k_table([1, 2], n=8)) == {"pass@1", "pass@8"}  # k > n left out
    assert abs(avg_pass({"pass@1": 10.0, "pass@8": 20.0, "pass@32": 60.0}) - 30.0) < 1e-12
    with pytest.raises(KeyError, match="pass@32"):
        avg_pass({"pass@1": 1.0, "pass@8": 2.0})
    mean = mean_over_benchmarks({"a": {"pass@1": 10.0, "pass@8": 30.0}, "b": {"pass@1": 20.0}})
    assert mean == {"pass@1": 15.0}
