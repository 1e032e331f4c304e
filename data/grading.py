"""Grading: pull the final answer out of a response, decide whether it equals the reference, and pass@k.

    python -m data.grading '14/3' '\\frac{14}{3}'               # from the repo root: one check, prints True
    python -m data.grading 'so \\boxed{0.5}.' '\\frac12'          # a response: its last \\boxed{} is graded

A check runs in three steps, cheapest first (`is_equivalent`):
  1. equal after `normalize_answer` (spaces, \\left/\\right, \\dfrac, units, degrees, `x =`, `1,000`, `2.50` ...);
  2. both sides plain numbers (int, decimal, a/b, \\frac{a}{b}, a\\times10^{b}): compared as exact rationals,
     and a mismatch is final: most wrong answers are wrong numbers and never reach step 3. Likewise a plain
     number never equals an expression with a free variable (a letter other than e, i; no `=`);
  3. otherwise math-verify (sympy) decides, in a helper process with a hard time limit.

Why a helper process: math-verify's own time limit is SIGALRM, which only works in the main thread, and sympy
can spin for minutes inside one C call (`9^{9^{9}}` builds a 370-million-digit integer) where no Python-level
timeout can interrupt it. So we call math-verify with its timeouts off, in a small persistent subprocess that
speaks one JSON line per check over a pipe; the parent waits with select() and kills the process when a check
outruns `timeout` (the pair then counts as not equal; a fresh process starts on the next check). This bounds
time from any thread or worker process. Concurrent callers each get their own helper from a small pool.
Without math-verify installed, step 3 is skipped with a one-time warning.
"""

from __future__ import annotations

import argparse
import atexit
import importlib.util
import json
import math
import os
import re
import select
import statistics
import subprocess
import sys
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache

# ---------------------------------------------------------------------------------------------- extraction

_BOX = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")


def extract_boxed(text: str) -> str | None:
    """Content of the last \\boxed{...} or \\fbox{...} (nested braces kept), or of `\\boxed 5`; None if no box.
    A last box that never closes (a response cut off by the token limit) gives None."""
    starts = [m.end() for m in _BOX.finditer(text)]
    if not starts:
        return None
    i = starts[-1]
    while i < len(text) and text[i] == " ":
        i += 1
    if i == len(text) or text[i] != "{":  # `\boxed 5`: a single token up to a space or `$`
        token = re.match(r"[^\s$]*", text[i:]).group()
        return token or None
    depth, j = 0, i
    while j < len(text):
        ch = text[j]
        if ch == "\\":  # \{ \} \\ are characters, not grouping
            j += 2
            continue
        depth += (ch == "{") - (ch == "}")
        if depth == 0:
            return text[i + 1 : j].strip()
        j += 1
    return None


# ------------------------------------------------------------------------------------------- normalization

_WRAPPERS = r"text|textbf|textit|textrm|textnormal|mathrm|mathbf|mathit|mbox|boldsymbol|operatorname"
_NUM = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:e[-+]?\d+)?"  # one way to match each string: no backtracking blow-up


def normalize_answer(s: str) -> str:
    """A canonical string for a final answer, so that notational variants of the same answer compare equal.
    In the spirit of the MATH `is_equiv` / Qwen2.5-Math `strip_string` normalizers; our own rules."""
    s = s.strip().replace("\n", " ")
    # 1. math delimiters, spacing commands, presentation-only variants
    s = re.sub(r"\\[()\[\]]", "", s).replace("\\$", "").replace("$", "")
    s = re.sub(r"\\[!,;: ]|~", " ", s).replace("{,}", ",")
    s = re.sub(r"\\[dt]frac", r"\\frac", s).replace("\\displaystyle", "")
    s = re.sub(r"\\(?:left|right)(?![A-Za-z])\.?", "", s)  # \left( -> (, \right. -> nothing
    s = re.sub(r"\\(le|ge|ne)q(?![A-Za-z])", r"\\\1", s).replace("\\varnothing", "\\emptyset")
    s = re.sub(r"\\[{}]", lambda m: m.group()[1], s)  # \{1,2\} -> {1,2}
    # 2. degrees and percent signs carry no value here (the question fixed the unit)
    s = re.sub(r"\^\s*\{?\s*\\circ\s*\}?|\\circ|°|\\?%", "", s)
    # 3. units: a trailing \text{..} after something with a digit, then "20 cm" / "90 degrees" (2+ letters)
    m = re.search(rf"\\(?:{_WRAPPERS})\{{[^{{}}]*\}}(?:\^\{{?\d\}}?)?\s*\.?$", s)
    if m and re.search(r"\d", s[: m.start()]):
        s = s[: m.start()]
    for _ in range(2):  # \text{\textbf{..}} nests
        s = re.sub(rf"\\(?:{_WRAPPERS})\s*\{{([^{{}}]*)\}}", r"\1", s)
    s = re.sub(rf"^({_NUM}|[-+]?\d{{1,3}}(?:,\d{{3}})+(?:\.\d+)?)\s+[A-Za-z]{{2,}}[A-Za-z\s^{{}}\d.]*$", r"\1", s)
    # 4. spaces, a final period, a leading single-variable `x =` / `k\in`
    s = re.sub(r"\s+", "", s).rstrip(".")
    m = re.fullmatch(r"(?:[A-Za-z]|\\[A-Za-z]+)(?:_\{?\w+\}?)?(?:=|\\in(?![A-Za-z]))(.+)", s)
    if m and "=" not in m.group(1):
        s = m.group(1)
    # 5. TeX shorthand: \frac12 -> \frac{1}{2}, \sqrt2 -> \sqrt{2}; a plain a/b -> \frac{a}{b}
    s = re.sub(r"\\frac(\w)(\w)", r"\\frac{\1}{\2}", s)
    s = re.sub(r"\\frac(\w)\{", r"\\frac{\1}{", s)
    s = re.sub(r"\\frac(\{[^{}]*\})(\w)", r"\\frac\1{\2}", s)
    s = re.sub(r"\\sqrt(\w)", r"\\sqrt{\1}", s)
    s = re.sub(r"^(-?)(\d+)/(\d+)$", r"\1\\frac{\2}{\3}", s)
    # 6. numbers: thousands commas, trailing zeros (2.50 -> 2.5, 3.0 -> 3), a bare leading dot (.5 -> 0.5)
    if re.fullmatch(r"[-+]?\d{1,3}(?:,\d{3})+(?:\.\d+)?", s):
        s = s.replace(",", "")
    s = re.sub(r"(?<!\d)\d+\.\d*", lambda m: m[0].rstrip("0").rstrip("."), s)
    s = re.sub(r"(?<![\d}])\.(\d)", r"0.\1", s)
    s = re.sub(r"^\+(?=[\d.])", "", s)
    # 7. wrappers around the whole answer: {5} -> 5, (C) -> C; a word answer ignores case (Evelyn = evelyn)
    for _ in range(3):  # a few layers at most: each check is a scan of the whole string
        if len(s) > 1 and s[0] == "{" and s[-1] == "}" and _closes_at_end(s):
            s = s[1:-1]
    s = re.sub(r"^\(([A-Za-z])\)$", r"\1", s)
    return s.lower() if re.fullmatch(r"[A-Za-z]{2,}", s) else s


def _closes_at_end(s: str) -> bool:
    """Whether the brace opened at s[0] is the one closed at s[-1] (so `{1}+{2}` is not unwrapped)."""
    depth = 0
    for i, ch in enumerate(s):
        depth += (ch == "{") - (ch == "}")
        if depth == 0:
            return i == len(s) - 1
    return False


def _to_number(s: str) -> Fraction | None:
    """A normalized answer as an exact rational when it is a plain number; None otherwise. Exponents are capped
    so that a `1e999999999` answer cannot make us build a giant integer."""
    if len(s) > 60:
        return None
    try:
        m = re.fullmatch(rf"(-?)\\frac\{{({_NUM})\}}\{{({_NUM})\}}", s)
        if m:
            value = _plain(m[2]) / _plain(m[3])
            return -value if m[1] else value
        m = re.fullmatch(rf"({_NUM})(?:\\times|\\cdot|\*)10\^\{{?([-+]?\d{{1,3}})\}}?", s)
        if m:
            return _plain(m[1]) * Fraction(10) ** int(m[2])
        return _plain(s) if re.fullmatch(_NUM, s) else None
    except (ValueError, ZeroDivisionError):
        return None


def _plain(s: str) -> Fraction:
    m = re.search(r"e([-+]?\d+)$", s)
    if m and abs(int(m[1])) > 400:
        raise ValueError("exponent too large")
    return Fraction(s)


# ------------------------------------------------------------------------------------------ equivalence


def is_equivalent(pred: str, truth: str, timeout: float = 5.0) -> bool:
    """Whether the predicted final answer equals the reference (steps 1-3 in the module docstring). At most
    `timeout` seconds are spent in math-verify (not counting the helper's one-time start-up); past that the
    answer counts as not equal. Results are cached, since many of 32 samples give the same answer."""
    return _equivalent(pred, truth, timeout)


@lru_cache(maxsize=1 << 14)  # distinct (answer, reference) pairs of a few evaluations; keys can be long strings
def _equivalent(pred: str, truth: str, timeout: float) -> bool:
    a, b = normalize_answer(pred), normalize_answer(truth)
    if not a or not b:
        return False
    if a == b:
        return True
    x, y = _to_number(a), _to_number(b)
    if x is not None and y is not None:  # exact: no tolerance, so 4.67 != 14/3 and 9.1e-31 != 9.11e-31
        return x == y
    if (x is None) != (y is None) and _has_free_variable(a if x is None else b):
        return False  # a number never equals an expression in x, y, n ... and sympy can be slow to say so
    return _math_verify(pred, truth, timeout)


def _has_free_variable(s: str) -> bool:
    """A letter outside \\commands, other than the constants e and i, in an answer that is not an equation
    (math-verify compares an equation's right-hand side with a plain value)."""
    return "=" not in s and re.search(r"[A-Za-z]", re.sub(r"\\[A-Za-z]+|[eiEI]", "", s)) is not None


_warned_missing = False


def _math_verify(pred: str, truth: str, timeout: float) -> bool:
    global _warned_missing
    if importlib.util.find_spec("math_verify") is None:
        if not _warned_missing:
            _warned_missing = True
            warnings.warn("math-verify is not installed: grading compares normalized strings and numbers only. "
                          "For symbolic checks: pip install math-verify", stacklevel=3)
        return False
    # math-verify parses LaTeX between $...$; answers such as "$k=1$" carry their own dollars, and a final
    # period confuses it ("(-\infty, 0) \cup\{1\}." parses as 0)
    request = json.dumps(["$" + truth.replace("$", "").strip().rstrip(".") + "$",
                          "$" + pred.replace("$", "").strip().rstrip(".") + "$"]) + "\n"
    for _ in range(2):
        helper = _acquire()
        try:
            helper.proc.stdin.write(request)
            helper.proc.stdin.flush()
        except OSError:  # it died while idle (killed from outside): not this check's fault, use a fresh one
            _discard(helper)
            continue
        line = _readline(helper.proc, timeout)
        if line is None:  # too slow, or died on this very check: not equal, and the helper goes
            _discard(helper)
            return False
        _release(helper)
        return line.strip() == "1"
    return False


# --------------------------------------------------------------------------- the math-verify helper process


@dataclass
class _Helper:
    proc: subprocess.Popen  # `python grading.py --serve`: reads [gold, target] JSON lines, answers "1"/"0"


_idle: list[_Helper] = []  # started helpers not in use; a caller takes one, so threads never share a pipe
_live: set[subprocess.Popen] = set()  # every helper process alive, killed at exit
_lock = threading.Lock()
_STARTUP_TIMEOUT = 120.0  # s; importing sympy on a loaded machine can take a while, and is not a check's fault


def _acquire() -> _Helper:
    with _lock:
        if _idle:
            return _idle.pop()
    # run this file as a script, not `-m data.grading`: the helper then needs no package path, and a
    # caller's __main__ (sept_loop.py with torch) is not re-imported the way multiprocessing's spawn would
    proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--serve"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            start_new_session=True)  # Ctrl-C goes to the caller, which then kills it at exit
    with _lock:
        _live.add(proc)
    helper = _Helper(proc)
    if _readline(proc, _STARTUP_TIMEOUT) != "ready\n":
        _discard(helper)
        raise RuntimeError(f"the math-verify helper did not start (exit code {proc.poll()}); see its stderr")
    return helper


def _release(helper: _Helper) -> None:
    with _lock:
        _idle.append(helper)


def _discard(helper: _Helper) -> None:
    helper.proc.kill()
    helper.proc.wait()
    for f in (helper.proc.stdin, helper.proc.stdout):
        try:
            f.close()
        except OSError:  # flushing into a dead pipe
            pass
    with _lock:
        _live.discard(helper.proc)


def _readline(proc: subprocess.Popen, timeout: float) -> str | None:
    """One line from the helper, or None when none arrives within `timeout` seconds or the helper is gone.
    One request gets one short line (written atomically), so the reader's buffer never holds a second one."""
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    line = proc.stdout.readline() if ready else ""
    return line or None


@atexit.register
def _kill_helpers() -> None:
    with _lock:
        for proc in _live:
            proc.kill()


def _forget_helpers() -> None:
    """In a forked child (a multiprocessing worker), the parent's helpers and lock are the parent's: start afresh."""
    global _idle, _live, _lock
    _idle, _live, _lock = [], set(), threading.Lock()


os.register_at_fork(after_in_child=_forget_helpers)


def _serve() -> None:
    """The helper's loop (runs in the subprocess). Checks are answered on a private copy of stdout; anything a
    library prints goes to stderr, so it cannot corrupt the protocol."""
    import logging
    import resource

    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    logging.disable(logging.WARNING)  # "Timeout is disabled ..." is expected: we time checks from outside
    # a runaway expression gets a MemoryError (caught inside math-verify) rather than the machine's memory
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    cap = 8 << 30
    if soft == resource.RLIM_INFINITY or soft > cap:
        resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    parent = os.getppid()

    def watch_parent() -> None:  # exit when orphaned (stdin EOF covers a live parent closing the pipe)
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=watch_parent, daemon=True).start()
    here = os.path.dirname(os.path.abspath(__file__))  # run as a script, data/ heads sys.path: drop it, so
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != here]  # data/*.py cannot shadow a library
    from math_verify import parse, verify

    parse_cached = lru_cache(maxsize=4096)(lambda s: parse(s, parsing_timeout=None))
    verify(parse_cached("$1$"), parse_cached("$1$"), timeout_seconds=None)  # warm up before saying ready
    out.write("ready\n")
    out.flush()
    for line in sys.stdin:
        gold, target = json.loads(line)
        try:
            ok = verify(parse_cached(gold), parse_cached(target), timeout_seconds=None)
        except Exception:  # any failure (RecursionError, MemoryError, sympy errors) means "not shown equal"
            ok = False
        out.write("1\n" if ok else "0\n")
        out.flush()


# ----------------------------------------------------------------------------------------------- grading


@dataclass
class Grade:
    extracted: str | None  # content of the last \boxed{}; None when the response has no (closed) box
    correct: bool | None  # None when the reference answer is unknown; False when there is no box


def grade(response: str, truth: str | None, timeout: float = 5.0) -> Grade:
    return grade_many([response], [truth], timeout, workers=1)[0]


def grade_many(responses: list[str], truths: list[str | None], timeout: float = 5.0, workers: int = 4) -> list[Grade]:
    """`grade` over a batch. Each distinct (answer, reference) pair is checked once; up to `workers` checks
    (hence math-verify helper processes, ~100 MB each) run at a time."""
    if len(responses) != len(truths):
        raise ValueError(f"{len(responses)} responses but {len(truths)} reference answers")
    preds = [extract_boxed(r) for r in responses]
    pairs = list({(p, t) for p, t in zip(preds, truths) if p is not None and t is not None})
    with ThreadPoolExecutor(max(1, workers)) as pool:
        verdicts = dict(zip(pairs, pool.map(lambda pt: is_equivalent(pt[0], pt[1], timeout), pairs)))
    return [Grade(p, None if t is None else (p is not None and verdicts[(p, t)])) for p, t in zip(preds, truths)]


# ---------------------------------------------------------------------------------------------- pass@k


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are correct (Chen et al. 2021, the Codex paper):
    1 - C(n-c, k) / C(n, k), computed as 1 - prod_{i=n-c+1..n} (1 - k/i) to avoid huge binomials.
    k > n has no unbiased estimate from n samples: ValueError."""
    if not (0 <= c <= n and 1 <= k):
        raise ValueError(f"pass@k needs 0 <= c <= n and k >= 1, got n={n} c={c} k={k}")
    if k > n:
        raise ValueError(f"pass@{k} is undefined with only n={n} samples per problem")
    if n - c < k:  # every k-subset holds a correct sample
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def pass_at_k_table(correct_counts: list[int], n: int, ks=(1, 8, 32)) -> dict[str, float]:
    """{"pass@k": percent averaged over problems} for each k in ks with k <= n (larger k are left out)."""
    if not correct_counts:
        raise ValueError("pass_at_k_table needs at least one problem")
    return {f"pass@{k}": 100.0 * sum(pass_at_k(n, c, k) for c in correct_counts) / len(correct_counts)
            for k in ks if k <= n}


def mean_over_benchmarks(tables: dict[str, dict[str, float]]) -> dict[str, float]:
    """Unweighted mean over benchmarks (each benchmark counts once, as in the paper's "Avg." column) of the
    metrics every benchmark has."""
    keys = set.intersection(*(set(t) for t in tables.values())) if tables else set()
    return {k: sum(t[k] for t in tables.values()) / len(tables) for k in sorted(keys)}


def avg_pass(metrics: dict[str, float]) -> float:
    """Mean of pass@1, pass@8 and pass@32: one number that rewards both accuracy and diversity."""
    missing = [k for k in ("pass@1", "pass@8", "pass@32") if k not in metrics]
    if missing:
        raise KeyError(f"avg_pass needs {missing} (pass@32 needs n >= 32 samples per problem)")
    return (metrics["pass@1"] + metrics["pass@8"] + metrics["pass@32"]) / 3


def group_advantages(rewards: list[float], group: int) -> list[float]:
    """GRPO's advantage of each answer: (r - mean) / (std + 1e-6) over the G answers to its question (verl's
    grpo estimator: unbiased std, and a group of one keeps its reward). Equal rewards give 0: no signal."""
    out = []
    for g in range(0, len(rewards), group):
        r = rewards[g:g + group]
        mean, std = (statistics.mean(r), statistics.stdev(r)) if len(r) > 1 else (0.0, 1.0)
        out += [(x - mean) / (std + 1e-6) for x in r]
    return out


def main() -> None:
    if sys.argv[1:] == ["--serve"]:
        return _serve()
    p = argparse.ArgumentParser(description="Check an answer (or a response's last \\boxed{}) against a reference.")
    p.add_argument("pred")
    p.add_argument("truth")
    args = p.parse_args()
    pred = extract_boxed(args.pred) if "boxed" in args.pred else args.pred
    print(f"{normalize_answer(pred)!r} vs {normalize_answer(args.truth)!r}: {is_equivalent(pred, args.truth)}")


if __name__ == "__main__":
    main()
