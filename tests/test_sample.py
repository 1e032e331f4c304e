"""sample.py: the cached decode against full recompute, greedy against transformers, the sampling law."""
import math

import pytest
import torch
import torch.nn.functional as F

import model as model_lib
import sample

BACKENDS = ["torch", "triton"]  # triton runs in the interpreter on CPU tensors (conftest sets TRITON_INTERPRET=1)


def random_prompts(lengths, vocab=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, vocab, (n,), generator=g).tolist() for n in lengths]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_cached_decode_equals_full_forward(make_checkpoint, monkeypatch, backend, family):
    """Prefill right-padded prompts of different lengths, then decode step by step at per-row positions:
    the logits at every step equal a full causal forward over each row's whole sequence."""
    monkeypatch.setenv("SEPT_ATTENTION", backend)
    m = model_lib.load_model(make_checkpoint(family))
    prompts = random_prompts([5, 17, 1])
    cont = random_prompts([6, 6, 6], seed=1)  # teacher-forced continuation tokens
    B, T, steps = len(prompts), 17, 6
    cache = model_lib.new_kv_cache(m.config, B, T + steps, torch.float32, "cpu")
    cache.filled = T
    tokens = torch.tensor([p + [0] * (T - len(p)) for p in prompts])
    lens = torch.tensor([len(p) for p in prompts], dtype=torch.int32)
    cache.lens = lens  # the prompt lengths, set before the prefill (its attention skips the padding)
    with torch.no_grad():
        h = m.hidden_states(tokens, cache, torch.arange(T).expand(B, T))
        got = [F.linear(h[torch.arange(B), lens.long() - 1], m.head_weight)]
        for s in range(steps - 1):
            cache.filled = T + s + 1
            tok = torch.tensor([c[s] for c in cont])
            h = m.hidden_states(tok[:, None], cache, cache.lens[:, None].long())
            cache.lens = cache.lens + 1
            got.append(F.linear(h[:, 0], m.head_weight))
        for b in range(B):
            full = m(torch.tensor([prompts[b] + cont[b][:steps - 1]]))[0]
            for s in range(steps):
                ref = full[len(prompts[b]) - 1 + s]
                assert torch.allclose(got[s][b], ref, atol=1e-4, rtol=1e-4), (b, s)


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


@pytest.mark.parametrize("static", [False, True])
def test_eos_stops_rows_and_compaction_is_exact(make_checkpoint, monkeypatch, static):
    """Rows that hit EOS leave the batch (or, on the static CUDA-graph path, park at position 0); the other
    rows' tokens are unchanged by it (greedy)."""
    monkeypatch.setattr(sample, "SYNC_EVERY", 2)
    m = model_lib.load_model(make_checkpoint("llama"))
    prompts = random_prompts([4, 9, 2, 6, 13, 5, 8, 3], seed=3)
    free = sample.generate(m, prompts, max_new_tokens=30, temperature=0)
    eos = [free[0][3], free[5][10]]  # tokens that do occur, at different steps
    stopped = sample.generate(m, prompts, max_new_tokens=30, temperature=0, eos_ids=eos, cuda_graph=static)
    for f, s in zip(free, stopped):
        cut = next((i + 1 for i, t in enumerate(f) if t in eos), len(f))
        assert s == f[:cut]
    assert any(len(s) < 30 for s in stopped) and len(free[0]) == 30


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
    m = model_lib.load_model(make_checkpoint("qwen2"), device="cuda")
    prompts = random_prompts([3, 40, 17, 9], seed=2)
    eager = sample.generate(m, prompts, max_new_tokens=40, temperature=0, cuda_graph=False)
    graphed = sample.generate(m, prompts, max_new_tokens=40, temperature=0, cuda_graph=True)
    assert graphed == eager


def test_seed_reproduces(make_checkpoint):
    m = model_lib.load_model(make_checkpoint("llama"))
    prompts = random_prompts([4, 9, 2])
    a = sample.generate(m, prompts, max_new_tokens=20, temperature=1.0, seed=7)
    b = sample.generate(m, prompts, max_new_tokens=20, temperature=1.0, seed=7)
    c = sample.generate(m, prompts, max_new_tokens=20, temperature=1.0, seed=8)
    assert a == b and a != c


def test_entropy_stats(make_checkpoint):
    m = model_lib.load_model(make_checkpoint("llama"))
    stats = {}
    out = sample.generate(m, random_prompts([4, 9]), max_new_tokens=5, temperature=0.0, stats=stats)
    assert len(stats["entropy"]) == 2 and all(0 < e < math.log(256) for e in stats["entropy"])
    assert [len(o) for o in out] == [5, 5]  # no eos_ids: runs to max_new_tokens


def test_bad_input(make_checkpoint):
    m = model_lib.load_model(make_checkpoint("llama"))  # context 256
    assert sample.generate(m, [], max_new_tokens=5) == []
    with pytest.raises(ValueError, match="exceeds the model's context of 256"):
        sample.generate(m, [[1] * 200], max_new_tokens=100)
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        sample.generate(m, [[1], []], max_new_tokens=4)
    with pytest.raises(ValueError, match="max_new_tokens is -3"):
        sample.generate(m, [[1] * 200], max_new_tokens=-3)  # not a quiet empty answer


def test_cli_prompt_longer_than_context_is_one_line(capsys):
    with pytest.raises(ValueError, match="exceeds the model's context of 128"):  # the toy's context
        sample.main(["--prompt", "1+" * 80 + "1"])
