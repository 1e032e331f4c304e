"""sample.py: prefill + decode_step against full recompute, greedy against transformers, the stream of prompts
through fewer rows against one prompt at a time, budgets, seeds, the sampling law, the static rows kept between
calls, running out of memory."""
import math

import pytest
import torch

import model as model_lib
import sample
from conftest import limit_positions

BACKENDS = ["torch", "triton"]  # triton runs in the interpreter on CPU tensors (conftest sets TRITON_INTERPRET=1)


def random_prompts(lengths, vocab=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, vocab, (n,), generator=g).tolist() for n in lengths]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_cached_decode_equals_full_forward(make_checkpoint, monkeypatch, backend, family):
    """sample.prefill of right-padded prompts of different lengths (one of them twice: computed once, its k/v
    copied), then sample.decode_step at per-row positions, attention reading up to the longest row (as the eager
    stream asks), a row parked from the third step on: the logits at every step equal a full causal forward over
    each running row's whole sequence."""
    monkeypatch.setenv("SEPT_ATTENTION", backend)
    m = model_lib.load_model(make_checkpoint(family))
    prompts = random_prompts([5, 17, 1])
    prompts.append(prompts[0])
    cont = random_prompts([6, 6, 6, 6], seed=1)  # teacher-forced continuation tokens
    B, steps = len(prompts), 6
    rows = sample.empty_rows(m, B, 17 + steps)
    with torch.no_grad():
        got = [sample.prefill(m, rows.cache, prompts, torch.arange(B))]
        assert rows.cache.lens.tolist() == [5, 17, 1, 5]
        rows.done[:] = False
        for s in range(steps - 1):
            rows.done[2] = s >= 2
            rows.next_input[:] = torch.tensor([c[s] for c in cont])
            got.append(sample.decode_step(m, rows, B, 17 + s + 1))  # the longest row's positions after this step
        for b in range(B):
            full = m(torch.tensor([prompts[b] + cont[b][:steps - 1]]))[0]
            for s in range(3 if b == 2 else steps):
                ref = full[len(prompts[b]) - 1 + s]
                assert torch.allclose(got[s][b], ref, atol=1e-4, rtol=1e-4), (b, s)
        assert rows.cache.lens.tolist() == [10, 22, 1, 10]  # the parked row holds position 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_greedy_equals_transformers(make_checkpoint, monkeypatch, backend):
    import transformers
    monkeypatch.setenv("SEPT_ATTENTION", backend)
    path = make_checkpoint("qwen2")
    prompts = random_prompts([3, 11, 7])
    ours = sample.generate(model_lib.load_model(path), prompts, max_new_tokens=12, temperature=0)
    hf = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    for p, o in zip(prompts, ours):
        ref = hf.generate(torch.tensor([p]), attention_mask=torch.ones(1, len(p), dtype=torch.long),
                          max_new_tokens=12, do_sample=False, eos_token_id=None, pad_token_id=0)
        assert o == ref[0, len(p):].tolist()


def one_at_a_time(m, prompts, budgets, eos):
    return [sample.generate(m, [p], max_new_tokens=n, temperature=0, eos_ids=eos)[0] for p, n in zip(prompts, budgets)]


# prompt lengths 1 to 13 (one repeated, as evaluation repeats each question), per-prompt budgets 0 to 9
STREAM_PROMPTS = random_prompts([4, 9, 1, 6, 13, 5, 8, 3, 2], seed=3)
STREAM_PROMPTS.insert(5, STREAM_PROMPTS[1])
STREAM_BUDGETS = [7, 9, 3, 1, 8, 9, 0, 6, 9, 5]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("path", ["static", "eager-refill", "eager-batches"])
def test_stream_equals_one_prompt_at_a_time(make_checkpoint, monkeypatch, backend, path):
    """Greedy: prompts streamed through max_batch rows give each prompt the tokens it gets alone, for every
    max_batch, with stop ids that end rows at different steps, and with host checks every step or every third
    (ended rows then park until the check). Paths: the CUDA graph's fixed-shape step (launched eagerly here),
    ended rows refilled in place; eager, ended rows leaving the batch and new prompts joining it as rows free
    up (refill_group 1), or only once all rows have ended (refill_group = every row)."""
    monkeypatch.setenv("SEPT_ATTENTION", backend)
    static = path == "static"
    group = len(STREAM_PROMPTS) if path == "eager-batches" else 1
    m = model_lib.load_model(make_checkpoint("llama"))
    free = sample.generate(m, STREAM_PROMPTS, max_new_tokens=STREAM_BUDGETS, temperature=0)
    eos = [free[0][2], free[4][5]]  # tokens that do occur, at different steps
    alone = one_at_a_time(m, STREAM_PROMPTS, STREAM_BUDGETS, eos)
    assert any(0 < len(a) < n for a, n in zip(alone, STREAM_BUDGETS))  # some rows stop early
    for every, max_batch in [(1, 1), (1, 4), (3, 3), (3, None)] if backend == "torch" else [(3, 3)]:
        got = sample.generate(m, STREAM_PROMPTS, max_new_tokens=STREAM_BUDGETS, temperature=0, eos_ids=eos,
                              cuda_graph=static, max_batch=max_batch, check_every=every, refill_group=group)
        assert got == alone, (every, max_batch)


def test_static_rows_are_kept_per_shape(make_checkpoint):
    """The static decode step (a CUDA graph on CUDA) is built once and its rows kept for later calls of the same
    model and shape, whatever their budgets (the cache length is rounded up); another shape replaces them. Greedy
    output equals the eager path's every time."""
    m = model_lib.load_model(make_checkpoint("llama"))
    kw, held = dict(temperature=0, max_batch=3), []
    for budgets in (STREAM_BUDGETS, [min(n, 4) for n in STREAM_BUDGETS], STREAM_BUDGETS):
        eager = sample.generate(m, STREAM_PROMPTS, max_new_tokens=budgets, cuda_graph=False, **kw)
        assert sample.generate(m, STREAM_PROMPTS, max_new_tokens=budgets, cuda_graph=True, **kw) == eager
        held.append(sample.held_static_rows)
    assert held[0] is held[1] is held[2] and held[0].cache.k.shape[1] == 3
    sample.generate(m, STREAM_PROMPTS, max_new_tokens=STREAM_BUDGETS, cuda_graph=True, temperature=0, max_batch=4)
    assert sample.held_static_rows is not held[0] and sample.held_static_rows.cache.k.shape[1] == 4


def test_budgets_and_refill_cost(make_checkpoint, monkeypatch):
    """Without stop ids every answer is exactly its budget long. The eager stream feeds a row only while its
    answer runs (one decode row per answer token after the first, plus one for a budget-1 answer that starts
    in the middle of the stream), and a refill prefills each distinct prompt once."""
    m = model_lib.load_model(make_checkpoint("llama"))
    rows_decoded, prefilled = [], []
    decode_step, hidden_states = sample.decode_step, m.hidden_states

    def counting_decode_step(model, rows, n, span):
        rows_decoded.append(n)
        return decode_step(model, rows, n, span)

    def counting_hidden_states(ids, *args, **kw):
        prefilled.extend([len(ids)] if kw.get("mode") == "prefill" else [])
        return hidden_states(ids, *args, **kw)
    monkeypatch.setattr(sample, "decode_step", counting_decode_step)
    monkeypatch.setattr(m, "hidden_states", counting_hidden_states)
    out = sample.generate(m, STREAM_PROMPTS, max_new_tokens=STREAM_BUDGETS, temperature=1.0, seed=0, max_batch=3)
    assert [len(o) for o in out] == STREAM_BUDGETS
    fed = sum(n - 1 for n in STREAM_BUDGETS if n)
    assert fed <= sum(rows_decoded) <= fed + STREAM_BUDGETS.count(1)
    prefilled.clear()
    sample.generate(m, STREAM_PROMPTS, max_new_tokens=STREAM_BUDGETS, temperature=1.0, seed=0)  # one refill
    assert prefilled == [len({tuple(p) for p, n in zip(STREAM_PROMPTS, STREAM_BUDGETS) if n})]
    with pytest.raises(ValueError, match="max_new_tokens has 2 entries for 3 prompts"):
        sample.generate(m, STREAM_PROMPTS[:3], max_new_tokens=[4, 4])


def test_when_ended_rows_get_new_prompts(make_checkpoint):
    """As rows free up (1/16 of the rows at a time) where the weights outweigh the cache rows, or on the
    CUDA-graph path; once all rows have ended where the rows outweigh the weights, as for the toy's evaluation:
    2,048 rows of 81 positions."""
    m = model_lib.load_model(make_checkpoint("llama"))
    shape = dict(vocab_size=28, hidden_size=128, intermediate_size=384, num_hidden_layers=4, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=32)  # data/toy's
    toy = model_lib.empty_model(model_lib.ModelConfig(**shape), "cpu", torch.float32)
    assert sample.default_refill_group(m, 4, 32, False) == 1  # max(1, 4 // 16)
    assert sample.default_refill_group(toy, 2048, 81, False) == 2048
    assert sample.default_refill_group(toy, 2048, 81, True) == 128


def chi_square_p_value_bound(counts, probs):
    """Pearson's statistic divided by its degrees of freedom; about 1 when counts follow probs."""
    n = counts.sum()
    expected = probs * n
    keep = expected > 5
    stat = ((counts[keep] - expected[keep]) ** 2 / expected[keep]).sum()
    return stat.item() / max(1, keep.sum().item() - 1)


def test_temperature_sampling_follows_softmax(make_checkpoint):
    """The first sampled token of many copies of one prompt follows softmax(logits / T); a wrong T fails."""
    m = model_lib.load_model(make_checkpoint("llama"))
    prompt = random_prompts([6], seed=5)[0]
    with torch.no_grad():
        logits = m(torch.tensor([prompt]))[0, -1]
    T, N = 0.6, 20000
    first = [c[0] for c in sample.generate(m, [prompt] * N, max_new_tokens=1, temperature=T, seed=1)]
    counts = torch.bincount(torch.tensor(first), minlength=logits.numel()).float()
    assert chi_square_p_value_bound(counts, torch.softmax(logits / T, -1)) < 2.0
    for wrong in (0.5, 0.75):  # the same bound rejects a neighbouring temperature
        assert chi_square_p_value_bound(counts, torch.softmax(logits / wrong, -1)) > 2.0


def test_top_p_stays_in_nucleus():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(64, 50, generator=g) * 2
    probs = torch.softmax(logits, -1)
    for top_p in (0.3, 0.9):
        sorted_probs, order = probs.sort(-1, descending=True)
        nucleus_size = ((sorted_probs.cumsum(-1) - sorted_probs) < top_p).sum(-1)
        for _ in range(50):
            tok = sample.sample_next(logits, 1.0, top_p, g)
            rank = (order == tok[:, None]).float().argmax(-1)
            assert (rank < nucleus_size).all()
    # top_p tiny: always the most likely token
    assert torch.equal(sample.sample_next(logits, 1.0, 1e-6, g), logits.argmax(-1))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_graph_decoding_matches_eager(make_checkpoint):
    """The replayed CUDA graph, with rows refilled at the host checks, gives the eager path's tokens (greedy,
    fp32), which are each prompt's tokens alone."""
    m = model_lib.load_model(make_checkpoint("qwen2"), device="cuda")
    prompts = random_prompts([3, 40, 17, 9, 1, 25, 12], seed=2)
    prompts.insert(3, prompts[1])
    budgets = [40, 9, 33, 40, 1, 20, 40, 28]
    free = sample.generate(m, prompts, max_new_tokens=budgets, temperature=0, cuda_graph=False)
    eos = [free[0][20], free[2][5]]
    alone = one_at_a_time(m, prompts, budgets, eos)
    for max_batch in (None, 3):
        kw = dict(max_new_tokens=budgets, temperature=0, eos_ids=eos, max_batch=max_batch)
        assert sample.generate(m, prompts, cuda_graph=False, **kw) == alone, max_batch
        assert sample.generate(m, prompts, cuda_graph=True, **kw) == alone, max_batch


def test_seeds_and_the_global_rng(make_checkpoint):
    """A seed reproduces a stream's draws; an unseeded call draws its seed from the global RNG without
    reseeding it (torch.seed() would), so torch.manual_seed makes it reproducible too."""
    m = model_lib.load_model(make_checkpoint("llama"))
    kw = dict(max_new_tokens=STREAM_BUDGETS, temperature=1.0, max_batch=3)
    a, b = (sample.generate(m, STREAM_PROMPTS, seed=7, **kw) for _ in range(2))
    assert a == b and a != sample.generate(m, STREAM_PROMPTS, seed=8, **kw)
    runs = []
    for _ in range(2):
        torch.manual_seed(0)
        runs.append((sample.generate(m, STREAM_PROMPTS, **kw), torch.rand(4).tolist()))
    assert runs[0] == runs[1]


def test_entropy_stats(make_checkpoint, monkeypatch):
    """stats["entropy"]: each prompt's mean next-token entropy over its answer, the same however it streams;
    only when asked (entropy=True): otherwise no log-softmax over the vocabulary is computed."""
    m = model_lib.load_model(make_checkpoint("llama"))
    stats, streamed, plain = {}, {}, {}
    out = sample.generate(m, random_prompts([4, 9]), max_new_tokens=5, temperature=0.0, stats=stats, entropy=True)
    assert len(stats["entropy"]) == 2 and all(0 < e < math.log(256) for e in stats["entropy"])
    assert [len(o) for o in out] == [5, 5]  # no eos_ids: runs to max_new_tokens
    kw = dict(max_new_tokens=STREAM_BUDGETS, temperature=0.0, entropy=True)
    sample.generate(m, STREAM_PROMPTS, stats=stats, **kw)
    sample.generate(m, STREAM_PROMPTS, stats=streamed, max_batch=2, **kw)
    assert streamed["entropy"] == pytest.approx(stats["entropy"], rel=1e-5) and stats["entropy"][6] == 0.0
    monkeypatch.setattr(torch, "log_softmax", None)  # any call would fail
    monkeypatch.setattr(torch.Tensor, "log_softmax", None)
    out = sample.generate(m, STREAM_PROMPTS, max_new_tokens=STREAM_BUDGETS, temperature=1.0, stats=plain)
    assert [len(o) for o in out] == STREAM_BUDGETS and plain.get("entropy") is None  # no eos_ids: whole budgets


def test_bad_input(make_checkpoint):
    m = model_lib.load_model(make_checkpoint("llama"))  # context 256
    assert sample.generate(m, [], max_new_tokens=5) == []
    with pytest.raises(ValueError, match="exceeds the model's context of 256"):
        sample.generate(m, [[1] * 200], max_new_tokens=100)
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        sample.generate(m, [[1], []], max_new_tokens=4)
    with pytest.raises(ValueError, match="max_new_tokens is -3"):
        sample.generate(m, [[1] * 200], max_new_tokens=-3)  # not a quiet empty answer


def test_cli_stop_rule(capsys):
    """--stop as sept_loop's: the toy's one stop token either way, so the same greedy answer; an unknown rule is
    one line."""
    completions = []
    for stop in ("checkpoint", "turn"):
        sample.main(["--stop", stop, "--temperature", "0"])
        completions.append(capsys.readouterr().out.split("\n--- ")[0])
    assert completions[0].startswith("--- completion 0") and completions[0] == completions[1]
    with pytest.raises(ValueError, match="stop rule 'eos': choose one of checkpoint, turn"):
        sample.main(["--stop", "eos"])


def test_cli_prompt_longer_than_context_is_one_line(capsys):
    with pytest.raises(ValueError, match="exceeds the model's context of 128"):  # the toy's context
        sample.main(["--prompt", "1+" * 80 + "1"])


@pytest.mark.parametrize("path,max_batch,limit,rows", [
    ("prefill", 6, 14, [3, 1]),       # the first prefill (6 prompts) fails, then a later one while a row runs
    ("decode", 8, 3, [4, 2]),         # steps of 8 and 4 rows fail, each row with its first token
    ("static decode", 8, 3, [4, 2]),  # the same on the static rows: new ones, of 4 then 2 rows
])
def test_out_of_memory_goes_on_with_fewer_rows(make_checkpoint, monkeypatch, capsys, path, max_batch, limit, rows):
    """Out of memory in a prefill or a decode step, generate goes on with half the rows (again if need be), so the
    prefill in smaller groups, the running answers kept and continued after their prompts: greedy output equals the
    run without the limit; stderr and stats say how many rows were left."""
    m = model_lib.load_model(make_checkpoint("llama"))
    kw = dict(max_new_tokens=STREAM_BUDGETS, temperature=0, max_batch=max_batch, cuda_graph=path == "static decode")
    free = sample.generate(m, STREAM_PROMPTS, **kw)
    eos = [free[0][2], free[4][5]]
    unlimited, stats = {}, {}
    want = sample.generate(m, STREAM_PROMPTS, eos_ids=eos, stats=unlimited, entropy=True, **kw)
    limit_positions(monkeypatch, limit, lambda mode: mode == ("decode" if "decode" in path else "prefill"))
    assert sample.generate(m, STREAM_PROMPTS, eos_ids=eos, stats=stats, entropy=True, **kw) == want
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("sample.py")]
    assert err == [f"sample.py: out of memory; the rows halved to {n}" for n in rows] and stats["rows"] == rows[-1]
    assert stats["entropy"] == pytest.approx(unlimited["entropy"], rel=1e-4)  # a preempted answer's too


def test_out_of_memory_with_one_row_is_an_error(make_checkpoint, monkeypatch):
    """A limit below one row's needs: a clear error after halving down to one row, not an endless loop."""
    m = model_lib.load_model(make_checkpoint("llama"))
    limit_positions(monkeypatch, 0)
    with pytest.raises(torch.OutOfMemoryError, match="out of memory with one row"):
        sample.generate(m, STREAM_PROMPTS, max_new_tokens=STREAM_BUDGETS, temperature=0, max_batch=8)


def test_rows_that_fit_the_free_memory(make_checkpoint):
    """--sample-batch 0: the rows whose KV cache, as static_rows allocates it (length rounded up to 256s), and a
    step's logits, probabilities and CDF (4 + 4 + 8 bytes per vocabulary entry) fit in the free memory less the
    reserve and the margin; one more row would not. On the CPU: 256."""
    m = model_lib.load_model(make_checkpoint("llama"))
    assert sample.rows_that_fit(m, 100, reserve=0) == 256
    total, reserve, max_len = 64 << 30, 3 << 30, 100
    margin = max(4 << 30, 0.2 * total)
    for free in (30 << 30, 16 << 30, (17 << 30) + 12345):
        n = sample.rows_that_fit(m, max_len, reserve, memory=(free, total))
        row = sample.static_rows(m, 1, max_len)
        per_row = row.cache.k.nbytes + row.cache.v.nbytes + 16 * m.config.vocab_size
        assert n * per_row <= free - reserve - margin < (n + 1) * per_row
    assert sample.rows_that_fit(m, max_len, reserve, memory=(4 << 30, total)) == 1  # none fit: one row, then halving
