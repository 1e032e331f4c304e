"""runs.py — what a run keeps on disk, and how it is read back: config.json, metrics.jsonl, samples/, plot.png,
checkpoints/. Every file is written to a temporary name and renamed into place, so a kill at any moment
leaves the old version or the new one, and `sept_loop.py --resume DIR` continues from the newest checkpoint.

    python -c "import runs; print(runs.read_metrics('runs/sept')[-1])"     # the last line of a run
"""
import json
import os
import shutil

import model as model_lib
import train


def write_json(path: str, obj) -> None:
    model_lib.write_file(path, json.dumps(obj, indent=2))


def append_metrics(out: str, line: dict) -> None:
    with open(os.path.join(out, "metrics.jsonl"), "a") as f:
        f.write(json.dumps(line) + "\n")


def read_metrics(out: str) -> list[dict]:
    with open(os.path.join(out, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def keep_metrics_until(out: str, last_round: int) -> None:
    """A fresh run starts a new metrics.jsonl; a resumed one drops lines of rounds after its checkpoint."""
    path = os.path.join(out, "metrics.jsonl")
    lines = [m for m in read_metrics(out) if m["round"] <= last_round] if (
        last_round >= 0 and os.path.isfile(path)) else []
    model_lib.write_file(path, "".join(json.dumps(m) + "\n" for m in lines))


def write_samples(out: str, r: int, rows: list[dict]) -> None:
    model_lib.write_file(os.path.join(out, "samples", f"round_{r:04d}.jsonl"),
                         "".join(json.dumps(row) + "\n" for row in rows))


def save_checkpoint(out: str, name: str, master, optimizer, r: int, copy_from: str) -> None:
    """checkpoints/NAME: the HF checkpoint (tokenizer files copied from `copy_from`), the AdamW state and the
    round, staged whole in NAME.new, then swapped into place."""
    final = os.path.join(out, "checkpoints", name)
    staging = final + ".new"
    shutil.rmtree(staging, ignore_errors=True)
    os.makedirs(staging)
    model_lib.write_model_files(master, staging, copy_from=copy_from)
    train.save_optimizer(optimizer, os.path.join(staging, "optimizer.safetensors"))
    write_json(os.path.join(staging, "sept_state.json"), {"round": r})  # written last: marks it complete
    model_lib.replace_folder(staging, final)


def find_checkpoint(out: str) -> str | None:
    """The newest complete checkpoint: `last`, or `last.old` if a crash fell between the two renames."""
    for name in ("last", "last.old"):
        path = os.path.join(out, "checkpoints", name)
        if os.path.isfile(os.path.join(path, "sept_state.json")):
            return path
    return None


def write_plot(out: str, eval_temperature: float, title: str) -> None:
    """plot.png: pass@k at τ_eval and τs against rounds."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("plot.png skipped: pip install matplotlib")
        return
    lines = read_metrics(out)
    evals = [m for m in lines if "pass@1" in m and m.get("eval_temperature") == eval_temperature]
    fig, ax = plt.subplots(figsize=(7, 4))
    for k in (1, 8, 32):
        pts = [(m["round"], m[f"pass@{k}"]) for m in evals if f"pass@{k}" in m]
        if pts:
            ax.plot(*zip(*pts), marker="o", label=f"pass@{k}")
    ax.set(xlabel="round", ylabel=f"pass@k (%) at τ={eval_temperature}", ylim=(0, 100))
    taus = [(m["round"], m["tau_s"]) for m in lines if "tau_s" in m]
    if taus:
        ax2 = ax.twinx()
        ax2.plot(*zip(*taus), color="gray", linestyle="--", label="τs")
        ax2.set(ylabel="τs", ylim=(0, 1.5))
        ax2.legend(loc="lower right")
    ax.legend(loc="upper left")
    ax.set_title(title)
    fig.tight_layout()
    model_lib.write_file(os.path.join(out, "plot.png"), lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)
