"""Where did SePT sharpen a toy model, and is it more than a lower temperature? One table from two checkpoints.

Theorem 1 says a round of SePT trained to convergence multiplies every logit margin by τt/τs: the trained model is
the base model at a lower temperature. A temperature never changes which token is most likely. So this script
answers the question at each kind of position in the toy's answers (a step's result digits, the copied operands, the
boxed answer, the punctuation): by how much the logits were scaled there (train.logit_scale, the factor behind each
round's τ_eff), and how often the most likely token changed, which no temperature can do.

    python data/sharpening.py --trained runs/sept/checkpoints/last                 # the toy (data/toy), seconds
    python data/sharpening.py --base data/toy-fork --trained runs/fork/checkpoints/last

The answers are the base model's own, sampled at --temperature (SePT's τs) for the first --questions test questions;
both models are read at the same positions of the same answers (teacher forcing), in fp32 on the CPU.
"""
import json
import os
import re
import sys
from dataclasses import dataclass

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo root

import torch  # noqa: E402

import cli  # noqa: E402
import model as model_lib  # noqa: E402
import sample  # noqa: E402
import train  # noqa: E402
from data import prompts, questions  # noqa: E402
from data.make_toy import is_slip_step  # noqa: E402

STEP = re.compile(r"(\d+)\+(\d+)=(\d+)")  # one step of a toy answer: acc+x=value
PLACES = ("units", "tens", "hundreds", "thousands")


@dataclass
class SharpeningConfig:
    base: str = os.path.join(os.path.dirname(os.path.abspath(__file__)), "toy")  # the untrained toy checkpoint
    trained: str = ""                # the trained checkpoint (e.g. a run's checkpoints/last)
    questions: int = 200             # the first N test questions of the base folder's test.jsonl
    temperature: float = 0.6         # the answers are the base model's at this τ (SePT's τs)
    seed: int = 0


def position_kinds(answer: str) -> list[str]:
    """The kind of each character of a toy answer (one token per character): which digit of a step's result, at a
    carry into the hundreds or not; a copied operand; the boxed answer; anything else is format."""
    kinds = ["format"] * len(answer)
    for m in STEP.finditer(answer):
        acc, x = int(m[1]), int(m[2])
        where = "carry into hundreds" if is_slip_step(acc, x) else "other steps"  # the fork world's slip steps
        for i in range(m.start(1), m.end(2)):
            kinds[i] = "copied operand" if answer[i].isdigit() else "format"
        for place, i in enumerate(reversed(range(m.start(3), m.end(3)))):
            kinds[i] = f"result {PLACES[min(place, 3)]} digit, {where}"
    if (box := answer.rfind("\\boxed{")) >= 0:
        for i in range(box + 7, len(answer)):
            if answer[i].isdigit():
                kinds[i] = "boxed answer"
    return kinds


def main(argv=None):
    cfg = cli.config_from_argv(SharpeningConfig, argv, __doc__.splitlines()[0])
    if not cfg.trained:
        raise SystemExit("error: --trained: the trained checkpoint folder")
    base, trained = (model_lib.load_model(path, "cpu", torch.float32) for path in (cfg.base, cfg.trained))
    tok = prompts.load_tokenizer(cfg.base)
    qs = questions.load_questions(os.path.join(cfg.base, "test.jsonl"))[:cfg.questions]
    ids = [tok.encode(prompts.build_prompt(q.problem, "toy")) for q in qs]
    answers = sample.generate(base, ids, max_new_tokens=64, temperature=cfg.temperature, eos_ids=tok.stop_ids,
                              seed=cfg.seed)
    pairs = [(p, a) for p, a in zip(ids, answers) if a]
    tcfg = train.TrainConfig()
    before, top = train.top_logits(base, pairs, tcfg)
    after, _ = train.top_logits(trained, pairs, tcfg, ids=top)
    # the kinds in top_logits' order: micro-batch by micro-batch, each pair's positions in turn
    order = [i for g in train.micro_batches([len(p) + len(a) - 1 for p, a in pairs], tcfg.micro_batch_tokens)
             for i in g]
    texts = ["".join(c if len(c) == 1 else "$" for c in map(tok.decode, ([t] for t in pairs[i][1]))) for i in order]
    kinds = [k for text in texts for k in position_kinds(text)]  # "$": the EOS, one token
    if len(kinds) != len(before):
        raise SystemExit("error: the tokenizer is not one token per character: not a toy world")
    margin = before.topk(2, dim=-1).values
    changed = before.argmax(-1) != after.argmax(-1)  # the most likely token moved: no temperature does that
    rows = []
    for kind in [*sorted(set(kinds)), "all"]:
        at = torch.tensor([kind in (k, "all") for k in kinds])
        rows.append(dict(kind=kind, positions=int(at.sum()), logit_scale=train.logit_scale(before[at], after[at]),
                         base_top2_margin=float((margin[at, 0] - margin[at, 1]).median()),
                         argmax_changed=float(changed[at].float().mean())))
    print(f"{'kind':<42} {'positions':>9} {'scale':>6} {'τ':>6} {'base margin':>11} {'argmax moved':>12}")
    for r in rows:
        print(f"{r['kind']:<42} {r['positions']:>9} {r['logit_scale']:>6.2f} {1 / r['logit_scale']:>6.2f} "
              f"{r['base_top2_margin']:>11.2f} {r['argmax_changed'] * 100:>11.1f}%")
    print(json.dumps(dict(config=vars(cfg), rows=rows)))


if __name__ == "__main__":
    main()
