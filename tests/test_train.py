"""train.py against slow references: transformers' loss, full-logits autograd, direct formulas; plus resume,
overfitting, non-finite updates, the sampler copy and the CLI."""
import json
import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from conftest import limit_positions, write_checkpoint

import runs
import sample
import train
from model import load_model
from train import IGNORE, TrainConfig


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny matmuls on 2 shared cores: a second OpenMP thread spin-waits and makes backward ~100x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """Module-wide tiny checkpoints: llama (tied head) and qwen2 (untied, biases)."""
    cache = {}

    def get(family="llama"):
        if family not in cache:
            cache[family] = write_checkpoint(tmp_path_factory.mktemp(family), family)
        return cache[family]
    return get


def make_pairs(lens=((4, 7), (9, 3), (2, 12), (6, 5), (3, 1)), seed=0, vocab=256):
    g = torch.Generator().manual_seed(seed)
    ids = lambda n: torch.randint(0, vocab, (n,), generator=g).tolist()  # noqa: E731
    return [(ids(p), ids(r)) for p, r in lens]


def grads_of(m, pairs, cfg):
    m.zero_grad(set_to_none=True)
    loss = train.loss_and_grad(m, pairs, cfg)
    return loss.item(), {n: p.grad.clone() for n, p in m.named_parameters()}


def ref_token_losses(m, inputs, targets, tau=1.0, kind="ce"):
    """The slow way: whole (B, T, V) logits, log_softmax, autograd."""
    logp = (m(inputs).float() / tau).log_softmax(-1)
    mask = targets != IGNORE
    if kind == "ce":
        return -logp.gather(-1, targets.clamp(min=0)[..., None])[..., 0][mask]
    return -(logp.exp() * logp).sum(-1)[mask]


def ref_loss(m, pairs, cfg, tau):
    """Full-logits loss of one update, weights from loss_weights; one batch, no chunking."""
    inputs, targets = train.make_batch(pairs, "cpu")
    w = torch.tensor(train.loss_weights([len(r) for _, r in pairs], cfg.loss_agg))[:, None].expand(targets.shape)
    return (ref_token_losses(m, inputs, targets, tau, cfg.loss) * w[targets != IGNORE]).sum()


def assert_grads_close(a, b, rtol=1e-4, atol=1e-6):
    for name in a:
        assert torch.allclose(a[name], b[name], rtol=rtol, atol=atol), (name, (a[name] - b[name]).abs().max())


# ---- the data path -----------------------------------------------------------------------------------------

def test_make_batch_shifts_masks_and_pads():
    inputs, targets = train.make_batch([([1, 2, 3], [4, 5, 6]), ([7], [8])], "cpu")
    assert inputs.tolist() == [[1, 2, 3, 4, 5], [7, 0, 0, 0, 0]]
    assert targets.tolist() == [[IGNORE, IGNORE, 4, 5, 6], [8] + [IGNORE] * 4]  # the last token (EOS) is a target


def test_micro_batches_respect_the_budget():
    lens = [5, 17, 3, 9, 9, 30, 1]
    groups = train.micro_batches(lens, 20)
    assert sorted(i for g in groups for i in g) == list(range(len(lens)))
    for g in groups:
        assert len(g) == 1 or len(g) * max(lens[i] for i in g) <= 20
    assert train.micro_batches(lens, 10**6) == [[5, 1, 3, 4, 0, 2, 6]]


def test_loss_weights():
    assert train.loss_weights([2, 6], "token-mean") == [1 / 8, 1 / 8]
    assert train.loss_weights([2, 6], "seq-mean-token-sum") == [1 / 2, 1 / 2]
    assert train.loss_weights([2, 6], "seq-mean-token-mean") == [1 / 4, 1 / 12]
    with pytest.raises(ValueError, match="loss_agg"):
        TrainConfig(loss_agg="sum")
    # groups of 2 (the last of 1), each group's token mean, then the mean over the groups
    assert train.loss_weights([2, 6, 4], "token-mean", 2) == [1 / 16, 1 / 16, 1 / 8]
    assert train.loss_weights([2, 6, 4], "token-mean", 3) == train.loss_weights([2, 6, 4], "token-mean")


@pytest.mark.parametrize("group", [2, 3])
def test_loss_groups_equal_a_direct_computation(ckpt, group):
    """verl's averaging, computed directly: the token mean of each run of `group` answers (its micro-batch), then
    their mean. Answers of unequal lengths, and micro-batches of sept's own choosing in between."""
    m, pairs = load_model(ckpt()), make_pairs()
    cfg = TrainConfig(loss_group=group, micro_batch_tokens=20)
    loss, grads = grads_of(m, pairs, cfg)
    m.zero_grad(set_to_none=True)
    means = []
    for g in range(0, len(pairs), group):
        inputs, targets = train.make_batch(pairs[g:g + group], "cpu")
        means.append(ref_token_losses(m, inputs, targets).mean())
    expected = torch.stack(means).mean()
    expected.backward()
    assert abs(loss - expected.item()) < 1e-5 * expected.item()
    assert_grads_close(grads, {n: p.grad for n, p in m.named_parameters()})
    assert abs(loss - grads_of(m, pairs, TrainConfig())[0]) > 1e-3  # not the plain token mean


# ---- the loss against references ------------------------------------------------------------------------------

@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_token_mean_equals_transformers_loss(ckpt, family):
    import transformers
    path = ckpt(family)
    m, hf = load_model(path), transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    cfg = TrainConfig()
    pairs = make_pairs()
    for batch in (pairs[:1], pairs):  # one sequence, then a right-padded batch
        T = max(len(p) + len(r) for p, r in batch)
        ids = torch.tensor([p + r + [0] * (T - len(p) - len(r)) for p, r in batch])
        labels = torch.tensor([[IGNORE] * len(p) + r + [IGNORE] * (T - len(p) - len(r)) for p, r in batch])
        with torch.no_grad():
            expected = hf(ids, labels=labels).loss.item()
        ours = train.loss_and_grad(m, batch, cfg).item()
        inputs, targets = train.make_batch(batch, "cpu")
        with torch.no_grad():
            manual = ref_token_losses(m, inputs, targets).sum().item() / sum(len(r) for _, r in batch)
        assert abs(ours - expected) < 1e-5 * expected and abs(ours - manual) < 1e-5 * manual


@pytest.mark.parametrize("family", ["llama", "qwen2"])  # tied head, untied head
@pytest.mark.parametrize("kind", ["ce", "em"])
def test_chunked_gradients_equal_full_logits(ckpt, family, kind):
    m = load_model(ckpt(family))
    pairs = make_pairs()
    one = TrainConfig(loss=kind, loss_agg="seq-mean-token-mean", loss_chunk_rows=10**6, tau_t=0.7)
    loss1, g1 = grads_of(m, pairs, one)
    loss3, g3 = grads_of(m, pairs, replace(one, loss_chunk_rows=3))
    m.zero_grad(set_to_none=True)
    ref = ref_loss(m, pairs, one, 0.7)
    ref.backward()
    gref = {n: p.grad.clone() for n, p in m.named_parameters()}
    assert abs(loss1 - ref.item()) < 1e-5 * abs(ref.item()) and abs(loss3 - loss1) < 1e-6 * abs(loss1)
    assert_grads_close(g3, g1)
    assert_grads_close(g1, gref)


def test_token_mean_gradient_is_independent_of_the_micro_batch_split(ckpt):
    m = load_model(ckpt("llama"))
    pairs = make_pairs()
    loss, g = grads_of(m, pairs, TrainConfig(micro_batch_tokens=10**6))
    for budget in (1, 25):  # every sequence alone; mixed groups
        loss_b, g_b = grads_of(m, pairs, TrainConfig(micro_batch_tokens=budget))
        assert abs(loss_b - loss) < 1e-6 * loss
        assert_grads_close(g_b, g)
    _, g_ckpt = grads_of(m, pairs, TrainConfig(micro_batch_tokens=25, activation_checkpointing=True))
    assert_grads_close(g_ckpt, g)


def test_sequence_aggregations_match_their_formulas(ckpt):
    m = load_model(ckpt("qwen2"))
    pairs = make_pairs()
    with torch.no_grad():
        per_seq = [ref_token_losses(m, *train.make_batch([pair], "cpu")) for pair in pairs]
    expected = {"seq-mean-token-sum": sum(x.sum() for x in per_seq).item() / len(pairs),          # Eq. 1
                "seq-mean-token-mean": sum(x.mean() for x in per_seq).item() / len(pairs),
                "token-mean": torch.cat(per_seq).mean().item()}
    for agg, value in expected.items():
        ours = train.loss_and_grad(m, pairs, TrainConfig(loss_agg=agg, micro_batch_tokens=25)).item()
        assert abs(ours - value) < 1e-5 * value, agg
    sums = [t.sum().item() for t in train.response_token_losses(m, pairs, TrainConfig(micro_batch_tokens=25))]
    assert all(abs(s - x.sum().item()) < 1e-4 for s, x in zip(sums, per_seq))


def test_tau_t_divides_logits_before_the_softmax(ckpt):
    m = load_model(ckpt("llama"))
    inputs, targets = train.make_batch(make_pairs(), "cpu")
    mask = targets != IGNORE
    with torch.no_grad():
        logits = m(inputs)
        ce1 = train.token_losses(m, inputs, targets, 1.0, "ce", 4)
        ce07 = train.token_losses(m, inputs, targets, 0.7, "ce", 4)
    plain = F.cross_entropy(logits.transpose(1, 2), targets, ignore_index=IGNORE, reduction="none")[mask]
    scaled = -(logits / 0.7).log_softmax(-1).gather(-1, targets.clamp(min=0)[..., None])[..., 0][mask]
    assert torch.allclose(ce1, plain, atol=1e-5) and torch.allclose(ce07, scaled, atol=1e-5)
    assert not torch.allclose(ce07, plain, atol=1e-3)


def test_em_loss_is_the_entropy(ckpt):
    m = load_model(ckpt("qwen2"))
    inputs, targets = train.make_batch(make_pairs(), "cpu")
    with torch.no_grad():
        em = train.token_losses(m, inputs, targets, 0.5, "em", 5)
        p = torch.softmax(m(inputs).double() / 0.5, -1)[targets != IGNORE]
    assert torch.allclose(em.double(), -(p * p.log()).sum(-1), atol=1e-5)


@pytest.mark.parametrize("kind", ["ce", "em"])
def test_head_loss_under_bf16_autocast(kind):
    """The GPU's mixed-precision path, run on the CPU: bf16 matmuls, fp32 softmax, fp32 weight gradient."""
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(37, 16, generator=g).requires_grad_()
    weight = (torch.randn(300, 16, generator=g) * 0.3).requires_grad_()
    targets = torch.randint(0, 300, (37,), generator=g)
    scale = torch.rand(37, generator=g)
    ref = train.HeadLoss.apply(hidden, weight, targets, 0.8, kind, 10**6)
    ref_grads = torch.autograd.grad((ref * scale).sum(), (hidden, weight))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = train.HeadLoss.apply(hidden, weight, targets, 0.8, kind, 8)
    assert out.dtype == torch.float32 and torch.allclose(out, ref, rtol=2e-2, atol=2e-2)
    assert not torch.equal(out, ref)  # the bf16 path did run
    grads = torch.autograd.grad((out * scale).sum(), (hidden, weight))
    for ours, full in zip(grads, ref_grads):
        assert ours.dtype == torch.float32
        assert (ours - full).norm() < 2e-2 * full.norm()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_head_loss_memory_does_not_grow_with_rows_on_cuda():
    """Qwen's vocabulary: peak memory of forward + backward stays flat as rows grow 4x (no (N, V) logits)."""
    H, V, peaks = 1536, 151936, []
    weight = (torch.randn(V, H, device="cuda") * 0.02).requires_grad_()
    for N in (4096, 16384):
        hidden = torch.randn(N, H, device="cuda").requires_grad_()
        targets = torch.randint(0, V, (N,), device="cuda")
        weight.grad = None
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = train.HeadLoss.apply(hidden, weight, targets, 1.0, "ce", 2048)
        loss.mean().backward()
        assert weight.grad.dtype == torch.float32 and torch.isfinite(weight.grad).all()
        peaks.append(torch.cuda.max_memory_allocated() - base)
    assert peaks[1] - peaks[0] < 0.1 * (16384 - 4096) * V * 4, peaks


# ---- the optimizer ------------------------------------------------------------------------------------------

def test_lr_schedule_values():
    cfg = TrainConfig(lr=1.0, warmup_steps=4)
    assert [train.lr_at(s, cfg) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    cos = TrainConfig(lr=1.0, warmup_steps=2, lr_schedule="cosine", min_lr=0.1, total_steps=6)
    assert [train.lr_at(s, cos) for s in (0, 1, 2)] == [0.5, 1.0, 1.0]
    assert train.lr_at(3, cos) == 0.1 + 0.45 * (1 + math.cos(math.pi / 4))
    assert abs(train.lr_at(4, cos) - 0.55) < 1e-15 and train.lr_at(6, cos) == train.lr_at(9, cos) == 0.1
    ratio = TrainConfig(lr=1.0, warmup_ratio=0.01, lr_schedule="cosine", total_steps=942)  # verl SFT: int(9.42)
    assert train.lr_at(8, ratio) == 1.0 * 9 / 9 and train.lr_at(7, ratio) == 8 / 9 and train.lr_at(942, ratio) == 0
    with pytest.raises(ValueError, match="total_steps"):
        train.lr_at(3, TrainConfig(lr_schedule="cosine", total_steps=0))


def test_lr_1e7_moves_fp32_master_weights_but_not_bf16(ckpt):
    m = load_model(ckpt("llama"))
    cfg = TrainConfig(lr=1e-7)
    opt = train.make_optimizer(m, cfg)
    before = [p.detach().clone() for p in m.parameters()]
    stats = train.train_step(m, opt, make_pairs(), 0, cfg)
    assert stats["lr"] == opt.param_groups[0]["lr"] == 1e-7 and not stats["skipped"]
    moved = sum((p != b).sum().item() for p, b in zip(m.parameters(), before))
    total = sum(b.numel() for b in before)
    assert moved > 0.95 * total
    # the same update applied to bf16 weights rounds away almost entirely
    moved16 = sum((b.bfloat16() + (p.detach() - b).bfloat16() != b.bfloat16()).sum().item()
                  for p, b in zip(m.parameters(), before))
    assert moved16 < 0.05 * total


def test_overfits_one_batch(ckpt):
    m = load_model(ckpt("llama"))
    cfg = TrainConfig(lr=1e-2, warmup_steps=5)
    opt = train.make_optimizer(m, cfg)
    pairs = make_pairs(seed=1)
    for step in range(100):
        loss = train.train_step(m, opt, pairs, step, cfg)["loss"]
        if loss < 0.05:
            break
    assert loss < 0.05, loss


def test_checkpoint_and_optimizer_resume_bit_for_bit(ckpt, tmp_path):
    path = ckpt("qwen2")
    cfg = TrainConfig(lr=1e-3, warmup_steps=3, micro_batch_tokens=25)
    batches = [make_pairs(seed=s) for s in range(4)]
    a = load_model(path)
    opt_a = train.make_optimizer(a, cfg)
    for step in range(4):
        train.train_step(a, opt_a, batches[step], step, cfg)
    b = load_model(path)
    opt_b = train.make_optimizer(b, cfg)
    for step in range(2):
        train.train_step(b, opt_b, batches[step], step, cfg)
    runs.save_model(b, str(tmp_path / "ckpt"))
    runs.save_optimizer(opt_b, str(tmp_path / "opt.safetensors"))
    c = load_model(str(tmp_path / "ckpt"))
    x = torch.tensor([batches[0][0][0] + batches[0][0][1]])
    with torch.no_grad():
        assert torch.equal(c(x), b(x))
    opt_c = train.make_optimizer(c, cfg)
    runs.load_optimizer(opt_c, str(tmp_path / "opt.safetensors"))
    for p_b, p_c in zip(b.parameters(), c.parameters()):
        for k in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(opt_b.state[p_b][k], opt_c.state[p_c][k])
    for step in range(2, 4):
        train.train_step(c, opt_c, batches[step], step, cfg)
    for (name, p_a), p_c in zip(a.named_parameters(), c.parameters()):
        assert torch.equal(p_a, p_c), name
    with pytest.raises(ValueError, match="opt.safetensors"):
        other = train.make_optimizer(load_model(ckpt("llama")), cfg)  # other shapes
        runs.load_optimizer(other, str(tmp_path / "opt.safetensors"))


def test_non_finite_loss_or_gradient_skips_the_update(ckpt):
    m = load_model(ckpt("llama"))
    cfg = TrainConfig(lr=1e-3)
    opt = train.make_optimizer(m, cfg)
    with torch.no_grad():
        m.model.layers[0].mlp.up_proj.weight[0, 0] = float("nan")  # poisons every hidden state: NaN loss
    before = [p.detach().clone() for p in m.parameters()]
    stats = train.train_step(m, opt, make_pairs(), 0, cfg)
    assert stats["skipped"] and math.isnan(stats["loss"])
    assert all(torch.equal(p.nan_to_num(), b.nan_to_num()) for p, b in zip(m.parameters(), before))
    assert len(opt.state) == 0 and all(p.grad is None for p in m.parameters())

    m = load_model(ckpt("llama"))
    opt = train.make_optimizer(m, cfg)
    before = [p.detach().clone() for p in m.parameters()]
    hook = m.model.norm.weight.register_hook(lambda g: g * float("inf"))  # finite loss, infinite gradient
    stats = train.train_step(m, opt, make_pairs(), 0, cfg)
    assert stats["skipped"] and math.isfinite(stats["loss"]) and not math.isfinite(stats["grad_norm"])
    assert all(torch.equal(p, b) for p, b in zip(m.parameters(), before))
    hook.remove()
    assert not train.train_step(m, opt, make_pairs(), 1, cfg)["skipped"]


def test_sampler_copy_is_refreshed_in_place(ckpt):
    m = load_model(ckpt("qwen2"))
    assert sample.make_sampler(m, torch.float32) is m  # fp32 everywhere: the master serves as sampler
    sampler = sample.make_sampler(m, torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in sampler.parameters())
    ptrs = [p.data_ptr() for p in sampler.parameters()]
    cfg = TrainConfig(lr=1e-2)
    train.train_step(m, train.make_optimizer(m, cfg), make_pairs(), 0, cfg)
    sample.refresh_sampler(m, sampler)
    assert ptrs == [p.data_ptr() for p in sampler.parameters()]
    assert all(torch.equal(s, p.bfloat16()) for s, p in zip(sampler.parameters(), m.parameters()))
    with pytest.raises(ValueError, match="fp32 master"):
        train.make_optimizer(sampler, cfg)


def test_memory_to_come_is_what_an_update_allocates(ckpt):
    """--sample-batch 0's reserve: the gradients and AdamW moments a first update allocates; then the gradients."""
    m = load_model(ckpt("qwen2"))
    cfg = TrainConfig(lr=1e-2)
    optimizer = train.make_optimizer(m, cfg)
    before = train.memory_to_come(optimizer)
    for p in m.parameters():  # train_step frees them after the update: kept here to count them
        p.register_post_accumulate_grad_hook(lambda p: setattr(p, "kept_grad", p.grad.clone()))
    train.train_step(m, optimizer, make_pairs(), 0, cfg)
    grads = sum(p.kept_grad.nbytes for p in m.parameters())
    moments = sum(s["exp_avg"].nbytes + s["exp_avg_sq"].nbytes for s in optimizer.state.values())
    assert before == grads + moments and train.memory_to_come(optimizer) == grads


# ---- flags and the CLI ----------------------------------------------------------------------------------------

def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


def test_cli_end_to_end(ckpt, tmp_path, capsys):
    src = ckpt("llama")
    rows = [{"prompt": f"What is 12 + {k}? ", "response": f"12 + {k} = {12 + k}. \\boxed{{{12 + k}}}"}
            for k in range(5)]
    data, out = write_jsonl(tmp_path / "pairs.jsonl", rows), str(tmp_path / "sft")
    train.main(["--model", src, "--data", data, "--out", out, "--lr", "1e-3", "--epochs", "2", "--batch-size", "2",
                "--lr-schedule", "cosine", "--warmup-steps", "1"])
    lines = [x for x in capsys.readouterr().out.splitlines() if x.startswith("step ")]
    assert len(lines) == 6 and "grad_norm" in lines[0] and "tok/s" in lines[0]
    before, after = load_model(src), load_model(out)
    assert not torch.equal(before.head_weight, after.head_weight)
    assert json.load(open(f"{out}/train_config.json"))["total_steps"] == 6
    assert (tmp_path / "sft" / "tokenizer.json").exists()


@pytest.mark.parametrize("rows,fragment", [
    ([{"prompt": "a", "response": "b"}, "{not json"], "pairs.jsonl:2: not valid JSON"),
    ([{"prompt": "a", "response": ""}], "pairs.jsonl:1: empty response"),
    ([{"prompt": "a"}], "pairs.jsonl:1: missing or non-string field response"),
    ([{"prompt": "a", "response": "b"}, "", {"prompt": "12 + 7", "response": "12 + 7 = 19. " * 200}],
     "pairs.jsonl:3: .* exceed the model's context of 256"),
])
def test_cli_errors_name_file_and_line(ckpt, tmp_path, rows, fragment):
    data = write_jsonl(tmp_path / "pairs.jsonl", rows)
    with pytest.raises(ValueError, match=fragment):
        train.main(["--model", ckpt("llama"), "--data", data, "--out", str(tmp_path / "out")])


# ---- τ_eff: the factor on the logits that a round of training amounts to ---------------------------------------

def test_logit_scale_recovers_a_known_factor():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(500, 32, generator=g) * 3
    shift = torch.randn(500, 1, generator=g) * 10  # per-position constants: softmax ignores them
    for s in (0.5, 1.0, 1 / 0.6, 4.0):
        assert abs(train.logit_scale(z, s * z + shift) - s) < 1e-6 * s
    # not a pure scaling: still the best single factor, between the two scalings it mixes
    mixed = torch.cat([2.0 * z[:250], 3.0 * z[250:]])
    assert 2.0 < train.logit_scale(z, mixed) < 3.0


def test_top_logits_of_a_model_whose_head_is_scaled(ckpt):
    """A model whose logits are the base model's times 1.7 (its untied head scaled): factor 1.7, i.e. the base
    model at τ = 1/1.7, measured through top_logits on the answers' positions."""
    base, pairs, cfg = load_model(ckpt("qwen2")), make_pairs(), TrainConfig(micro_batch_tokens=20, loss_chunk_rows=7)
    values, ids = train.top_logits(base, pairs, cfg, k=5)
    assert values.shape == ids.shape == (sum(len(r) for _, r in pairs), 5)
    order = [i for g in train.micro_batches([len(p) + len(r) - 1 for p, r in pairs], 20) for i in g]
    inputs, targets = train.make_batch([pairs[i] for i in order], "cpu")
    with torch.no_grad():
        full = base(inputs)[targets != IGNORE]  # the same positions, in training's order (micro-batches)
    expected = full.topk(5, dim=-1)
    assert torch.equal(ids, expected.indices) and torch.allclose(values, expected.values, atol=1e-5)
    with torch.no_grad():
        base.lm_head.weight.mul_(1.7)
    after, _ = train.top_logits(base, pairs, cfg, ids=ids)
    assert abs(train.logit_scale(values, after) - 1.7) < 1e-4


# ---- out of memory: the update is redone in smaller micro-batches ------------------------------------------------

def training(mode: str) -> bool:  # the forwards limit_positions limits here: those of a backward to come
    return torch.is_grad_enabled()


def test_out_of_memory_halves_the_micro_batch_and_redoes_the_update(ckpt, monkeypatch, capsys):
    pairs, base = make_pairs(), TrainConfig(lr=1e-3, micro_batch_tokens=1000)
    a, b = load_model(ckpt()), load_model(ckpt())
    cfg_a, cfg_b = replace(base), replace(base)
    step_a = train.train_step(a, train.make_optimizer(a, cfg_a), pairs, 0, cfg_a)
    limit_positions(monkeypatch, 30, training)  # the one micro-batch of 5 × 13 positions does not fit; 2 × 13 do
    step_b = train.train_step(b, train.make_optimizer(b, cfg_b), pairs, 0, cfg_b)
    assert cfg_a.micro_batch_tokens == 1000 and cfg_b.micro_batch_tokens == step_b["micro_batch_tokens"] == 31
    assert "out of memory; micro-batches of at most 31 tokens" in capsys.readouterr().err
    assert abs(step_a["loss"] - step_b["loss"]) < 1e-6 * step_a["loss"]  # the same update, up to rounding
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.allclose(p, q, rtol=1e-5, atol=1e-7), name
    limit_positions(monkeypatch, 5, training)  # not even one answer of 14 tokens: say which, and what to lower
    with pytest.raises(train.AnswerTooLong, match="an answer of 14 tokens .prompt . response. does not fit alone; "
                                                  "lower --max-response-tokens"):
        train.train_step(b, train.make_optimizer(b, cfg_b), pairs, 1, cfg_b)
