"""GRPO (--algo grpo), the paper's RLVR baseline: the clipped surrogate against a direct autograd version, the
group advantages, the first update's ratio, a short toy run, and the official scripts' presets."""
import json
import math
import os
from pathlib import Path

import pytest
import torch
from conftest import write_checkpoint

import sept_loop
from data import grading
import train
from model import load_model
from train import IGNORE, PolicyTargets, TrainConfig

ROOT = Path(__file__).resolve().parents[1]
VERL = ROOT.parent / "shared" / "verl"  # the official scripts' overrides; beside the repo, absent in a clone


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_checkpoint(tmp_path_factory.mktemp("llama"), "llama")


def make_pairs(seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = lambda n: torch.randint(0, 256, (n,), generator=g).tolist()  # noqa: E731
    return [(ids(p), ids(r)) for p, r in ((4, 7), (9, 3), (2, 12), (6, 5))]


def reference_surrogate_loss(m, pairs, old_logp, advantages, eps, tau):
    """The formula written out: full (B, T, V) logits, log_softmax, ratio, clip, token-mean, autograd."""
    inputs, targets = train.make_batch(pairs, "cpu")
    mask = targets != IGNORE
    logp = (m(inputs).float() / tau).log_softmax(-1).gather(-1, targets.clamp(min=0)[..., None])[..., 0][mask]
    old = torch.cat(old_logp)
    adv = torch.cat([torch.full((len(r),), a) for (_, r), a in zip(pairs, advantages)])
    ratio = torch.exp(logp - old)
    per_token = -torch.minimum(ratio * adv, torch.clamp(ratio, 1 - eps, 1 + eps) * adv)
    return per_token.sum() / mask.sum()


@pytest.mark.parametrize("tau", [1.0, 0.7])
def test_clipped_surrogate_gradient_equals_autograd(tiny, tau):
    torch.manual_seed(0)
    m = load_model(tiny)
    pairs = make_pairs()
    cfg = TrainConfig(tau_t=tau, micro_batch_tokens=20)  # several micro-batches
    now = [-t for t in train.response_token_losses(m, pairs, cfg)]
    # old log-probs shifted by up to ±0.6: ratios from ~0.55 to ~1.8, inside and outside [0.8, 1.2]
    old = [lp + (torch.rand(lp.shape) * 1.2 - 0.6) for lp in now]
    ratios = torch.cat([torch.exp(n - o) for n, o in zip(now, old)])
    assert (ratios < 0.8).any() and (ratios > 1.2).any() and ((ratios > 0.8) & (ratios < 1.2)).any()
    advantages = [1.5, -0.7, 0.3, -1.2]  # both signs
    m.zero_grad(set_to_none=True)
    loss = train.loss_and_grad(m, pairs, cfg, PolicyTargets(advantages, old)).item()
    ours = {n: p.grad.clone() for n, p in m.named_parameters()}
    m.zero_grad(set_to_none=True)
    ref = reference_surrogate_loss(m, pairs, old, advantages, cfg.clip_ratio, tau)
    ref.backward()
    assert abs(loss - ref.item()) < 1e-5 * abs(ref.item())
    for name, p in m.named_parameters():
        assert torch.allclose(ours[name], p.grad, rtol=1e-4, atol=1e-6), name


def test_clipping_stops_the_gradient_outside_the_range():
    logp = torch.tensor([0.0, 0.0, 0.0, 0.0], requires_grad=True)
    old = torch.log(torch.tensor([1 / 1.5, 1 / 1.5, 1 / 0.5, 1 / 0.5]))  # ratios 1.5, 1.5, 0.5, 0.5
    adv = torch.tensor([1.0, -1.0, 1.0, -1.0])
    train.clipped_surrogate(logp, old, adv, 0.2).sum().backward()
    # ratio above 1+ε with A > 0, and below 1-ε with A < 0: clipped, no gradient; the other two still push
    assert logp.grad[0] == 0 and logp.grad[3] == 0 and logp.grad[1] != 0 and logp.grad[2] != 0


def test_dual_clip_and_the_log_ratio_clamp_stop_the_gradient():
    """verl's compute_policy_loss: with A < 0 the loss is capped at c·|A| (ratio 4 > c = 3: no gradient; ratio 2:
    the gradient -A·ρ of the plain surrogate), and log ρ is clamped to ±20 (a ratio e^25 with A > 0 would be
    clipped anyway; with A < 0 and c = 1e12 only the clamp binds)."""
    logp = torch.tensor([0.0, 0.0, 25.0, 0.0], requires_grad=True)
    old = torch.tensor([-math.log(4.0), -math.log(2.0), 0.0, -21.0])
    adv = torch.tensor([-1.0, -1.0, -1.0, -1.0])
    loss = train.clipped_surrogate(logp, old, adv, 0.2, c=3.0)
    assert loss[0].item() == pytest.approx(3.0) and loss[1].item() == pytest.approx(2.0)
    loss.sum().backward()
    assert logp.grad[0] == 0 and logp.grad[1].item() == pytest.approx(2.0)
    logp.grad = None
    loss = train.clipped_surrogate(logp, old, adv, 0.2, c=1e12)
    assert loss[2].item() == pytest.approx(math.exp(20.0)) and loss[3].item() == pytest.approx(math.exp(20.0))
    loss.sum().backward()
    assert logp.grad[2] == 0 and logp.grad[3] == 0 and logp.grad[0].item() == pytest.approx(4.0)


def test_group_advantages():
    assert grading.group_advantages([1, 1, 1, 1, 0, 0, 0, 0], 4) == [0.0] * 8  # equal rewards: no signal
    adv = grading.group_advantages([1, 0, 0, 0, 1, 1, 0, 0], 4)
    std1 = math.sqrt(((0.75 ** 2) + 3 * 0.25 ** 2) / 3)  # unbiased, as verl's torch.std
    assert adv[:4] == pytest.approx([0.75 / (std1 + 1e-6)] + [-0.25 / (std1 + 1e-6)] * 3)
    assert adv[4:] == pytest.approx([0.5 / (math.sqrt(1 / 3) + 1e-6)] * 2 + [-0.5 / (math.sqrt(1 / 3) + 1e-6)] * 2)
    assert grading.group_advantages([1, 0], 1) == pytest.approx([1 / (1 + 1e-6), 0.0])  # verl: mean 0, std 1


def test_first_update_ratio_is_exactly_one(tiny, monkeypatch):
    m = load_model(tiny)
    cfg = TrainConfig(lr=1e-2, micro_batch_tokens=20)
    optimizer = train.make_optimizer(m, cfg)
    seen, real_surrogate, real_step = [], train.clipped_surrogate, train.train_step

    def surrogate(logp, old_logp, *args):  # records log ratios, tagged with the update they belong to
        seen.append((len(updates), (logp - old_logp).detach().clone()))
        return real_surrogate(logp, old_logp, *args)

    updates = []

    def step(*args, **kw):
        updates.append(None)
        return real_step(*args, **kw)
    monkeypatch.setattr(train, "clipped_surrogate", surrogate)
    monkeypatch.setattr(train, "train_step", step)
    steps, _ = sept_loop.train_on_answers(m, optimizer, make_pairs() * 2, 0, cfg, updates=2, seed=0,
                                       advantages=[1.0, -1.0, 0.5, -0.5] * 2)
    assert len(steps) == 2 and not any(s["skipped"] for s in steps)
    assert all(torch.equal(d, torch.zeros_like(d)) for u, d in seen if u == 1)  # ratio exactly 1
    assert any(d.abs().max() > 0 for u, d in seen if u == 2)  # update 2 sees the moved model


def test_grpo_needs_answers(make_checkpoint, tmp_path):
    q = tmp_path / "q.jsonl"
    q.write_text(json.dumps({"problem": "1+1", "answer": "2"}) + "\n" + json.dumps({"problem": "2+2"}) + "\n")
    args = ["--model", make_checkpoint("llama"), "--train-questions", str(q), "--test-questions", str(q),
            "--template", "raw", "--algo", "grpo", "--rounds", "1", "--batch-prompts", "2", "--rollouts", "2",
            "--updates-per-round", "1",
            "--out", str(tmp_path / "run")]
    with pytest.raises(ValueError, match=r"q.jsonl: question q-2 has no answer"):
        sept_loop.main(args)


@pytest.mark.skipif(not os.path.isfile(ROOT / "data" / "toy" / "model.safetensors"), reason="no toy model")
def test_toy_grpo_raises_the_reward(tmp_path):
    out = tmp_path / "grpo"
    sept_loop.main(["--preset", "toy-grpo", "--rounds", "6", "--lr", "3e-4", "--warmup-rounds", "1",
                    "--batch-prompts", "24", "--eval-every", "0", "--eval-max-questions", "8", "--eval-n", "4",
                    "--out", str(out)])
    lines = [json.loads(line) for line in open(out / "metrics.jsonl")]
    rewards = [m["reward"] for m in lines if "reward" in m]
    assert len(rewards) == 6 and all(0 <= m["groups_all_same"] <= 1 for m in lines if "reward" in m)
    assert sum(rewards[-2:]) / 2 > rewards[0] + 0.05, rewards


# The official scripts' values that sept's presets carry: hydra key -> the preset's setting.
PRESET_KEYS = {
    "data.train_batch_size": lambda c: c.batch_prompts,
    "actor_rollout_ref.rollout.n": lambda c: c.rollouts,
    "actor_rollout_ref.actor.ppo_mini_batch_size": lambda c: c.batch_prompts // c.updates_per_round,
    "actor_rollout_ref.actor.optim.lr": lambda c: c.lr,
    "actor_rollout_ref.actor.optim.lr_warmup_steps": lambda c: c.warmup_steps,
    "data.max_prompt_length": lambda c: c.max_prompt_tokens,
    "data.max_response_length": lambda c: c.max_response_tokens,
    "actor_rollout_ref.rollout.temperature": lambda c: c.tau_s_start,
    "actor_rollout_ref.rollout.tau_s_annealing.start_tau": lambda c: c.tau_s_start,
    "actor_rollout_ref.rollout.tau_s_annealing.end_tau": lambda c: c.tau_s_end,
    "actor_rollout_ref.rollout.tau_s_annealing.mode": lambda c: c.tau_s_schedule,
    "actor_rollout_ref.rollout.top_p": lambda c: c.top_p,
    "actor_rollout_ref.rollout.val_kwargs.n": lambda c: c.eval_n,
    "actor_rollout_ref.rollout.val_kwargs.temperature": lambda c: c.eval_temperature,
    "trainer.test_freq": lambda c: c.eval_every,
    "trainer.save_freq": lambda c: c.save_every,
    "trainer.enable_train_temperature": lambda c: c.couple,
    "actor_rollout_ref.model.enable_gradient_checkpointing": lambda c: c.activation_checkpointing,
    "algorithm.adv_estimator": lambda c: c.algo,
    "actor_rollout_ref.actor.policy_loss_type": lambda c: "entropy_minimization" if c.loss == "em" else None,
}


def same(official: str, ours) -> bool:
    if isinstance(ours, bool):
        return official == str(ours)
    if isinstance(ours, (int, float)):
        return float(official) == float(ours)
    return official == ours


@pytest.mark.parametrize("preset,script", [("paper", "sept_1e7_dsr"), ("paper-grpo", "grpo_5e7_dsr"),
                                           ("paper-em", "em_1e7_dsr")])
def test_paper_presets_equal_the_official_scripts(preset, script):
    if not VERL.is_dir():
        pytest.skip(f"no official overrides at {VERL}")
    official = json.loads((VERL / f"{script}.json").read_text())["overrides"]
    cfg = sept_loop.resolve_config(["--preset", preset, "--model", "m", "--train-questions", "t",
                                    "--test-questions", "v"])
    checked = 0
    for key, ours in PRESET_KEYS.items():
        if key in official:
            assert same(official[key], ours(cfg)), (key, official[key], ours(cfg))
            checked += 1
    assert checked >= 14
    if "tau_s_annealing.enable" not in " ".join(official):  # GRPO: one temperature, sampled and trained at
        assert cfg.tau_s_schedule == "constant" and cfg.tau_s_start == cfg.tau_s_end
    assert cfg.algo == ("grpo" if official.get("algorithm.adv_estimator") == "grpo" else "sept")
    assert cfg.loss == ("em" if "entropy_minimization" in official.values() else "ce")
    assert float(official["actor_rollout_ref.rollout.val_kwargs.n"]) == cfg.eval_n
    # the fraction of the run over which τs moves: verl's annealing epochs out of total_epochs
    if "actor_rollout_ref.rollout.tau_s_annealing.epochs" in official:
        ramp = float(official["actor_rollout_ref.rollout.tau_s_annealing.epochs"]) / float(
            official["trainer.total_epochs"])
        assert abs(ramp - cfg.tau_s_ramp) < 1e-9
