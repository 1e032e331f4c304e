"""runs.py — what a run keeps on disk, and how it is read back: config.json, metrics.jsonl, samples/, plot.png,
checkpoints/. Every file is written to a temporary name and renamed into place, so a kill at any moment
leaves the old version or the new one, and `sept_loop.py --resume DIR` continues from the newest checkpoint.
A new run never writes into a folder that holds another run's files unless told to (--overwrite).

    python -c "import runs; print(runs.read_metrics('runs/sept')[-1])"     # the last line of a run
"""
import json
import os
import re
import shutil

import torch
from safetensors import safe_open
from safetensors.torch import save_file

import model as model_lib


RUN_FILES = ("config.json", "metrics.jsonl", "samples", "plot.png", "sweep.png", "offline.jsonl", "checkpoints")
# All that a checkpoint folder of ours holds (and write_file's .tmp files): sept deletes or replaces nothing else.
# `.tmpXXXXXX` is safetensors' own staging file (Rust's tempfile crate), left behind when a kill lands mid-save.
OUR_FILES = re.compile("|".join([r"model(-\d{5}-of-\d{5})?\.safetensors", r"\.tmp[A-Za-z0-9]{6}", *map(re.escape, (
    *model_lib.TOKENIZER_FILES, "config.json", "model.safetensors.index.json", "optimizer.safetensors",
    "sept_state.json", "train_config.json"))]))


# ----------------------------------------------------------------------------------------------------------
# Writing without destroying: whole files and whole folders, never a user's.

def write_file(path: str, data) -> None:
    """`data` (text, or a function that writes the file at the path it is given) goes to path.tmp, which is then
    renamed onto `path`: a kill mid-write leaves the old file or the new one, never half of one."""
    if callable(data):
        data(path + ".tmp")
    else:
        with open(path + ".tmp", "w") as f:
            f.write(data)
    os.replace(path + ".tmp", path)


def write_json(path: str, obj) -> None:
    write_file(path, json.dumps(obj, indent=2))


def refuse_unless_ours(path: str) -> None:
    """Replacing `path` uses path.tmp and path.old too: each must be absent or hold nothing but a checkpoint's files
    (a partial one too: a crash may have stopped its writing or removal). Anything else may be the user's."""
    for p in filter(os.path.lexists, (path.rstrip("/") + suffix for suffix in ("", ".tmp", ".old"))):
        names = os.listdir(p) if os.path.isdir(p) and not os.path.islink(p) else ["(not a folder)"]
        if foreign := [n for n in sorted(names) if not OUR_FILES.fullmatch(n.removesuffix(".tmp"))]:
            raise FileExistsError(f"{p} is not a checkpoint folder ({', '.join(foreign[:3])}): sept will not delete it")


def write_folder(path: str, fill) -> None:
    """The checkpoint folder `path`, written by fill(folder): staged whole in path.tmp, then swapped in. A failure
    (a full disk, mostly) removes the partial copy and leaves `path` as it was."""
    staging = path.rstrip("/") + ".tmp"
    refuse_unless_ours(path)  # before any work, not after it
    shutil.rmtree(staging, ignore_errors=True)
    try:
        fill(staging)
    except Exception as e:
        shutil.rmtree(staging, ignore_errors=True)
        raise OSError(f"{path}: the checkpoint could not be written ({e}); the folder is unchanged") from None
    replace_folder(staging, path)


def replace_folder(staging: str, final: str) -> None:
    """Put the complete folder `staging` at `final`: final -> final.old, staging -> final, remove final.old. A crash
    between the renames leaves final.old whole (find_checkpoint looks there); neither is ever a user's folder."""
    old = final.rstrip("/") + ".old"
    refuse_unless_ours(final)
    shutil.rmtree(old, ignore_errors=True)
    if os.path.exists(final):
        os.rename(final, old)
    os.rename(staging, final)
    shutil.rmtree(old, ignore_errors=True)


def save_model(model, path: str, copy_from: str | None = None, **kw) -> None:
    """model.save_model into `path`, replacing the checkpoint there whole (write_folder)."""
    write_folder(path, lambda folder: model_lib.save_model(model, folder, copy_from=copy_from, **kw))


# ----------------------------------------------------------------------------------------------------------
# The run folder: metrics, samples, config.


def append_metrics(out: str, line: dict) -> None:
    with open(os.path.join(out, "metrics.jsonl"), "a") as f:
        f.write(json.dumps(line) + "\n")


def read_metrics(out: str) -> list[dict]:
    """metrics.jsonl's lines. A kill in the middle of an append leaves a torn last line: it is dropped (its round
    runs again on --resume); a bad line anywhere else is an error naming it."""
    path = os.path.join(out, "metrics.jsonl")
    with open(path) as f:
        lines = [(n, line) for n, line in enumerate(f, 1) if line.strip()]
    rows = []
    for i, (n, line) in enumerate(lines):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            if i < len(lines) - 1:
                raise ValueError(f"{path} line {n}: not valid JSON ({e.msg})") from None
    return rows


def keep_metrics_until(out: str, last_round: int) -> None:
    """A fresh run starts a new metrics.jsonl; a resumed one drops lines of rounds after its checkpoint."""
    path = os.path.join(out, "metrics.jsonl")
    lines = [m for m in read_metrics(out) if m["round"] <= last_round] if (
        last_round >= 0 and os.path.isfile(path)) else []
    write_file(path, "".join(json.dumps(m) + "\n" for m in lines))


def write_samples(out: str, r: int, rows: list[dict]) -> None:
    write_file(os.path.join(out, "samples", f"round_{r:04d}.jsonl"),
               "".join(json.dumps(row) + "\n" for row in rows))


def write_offline(out: str, questions: list[int], responses: list[list[int]], entropies: list[float]) -> None:
    """offline.jsonl: --offline's answers, drawn once; one line per answer: its question's index, ids, entropy."""
    write_file(os.path.join(out, "offline.jsonl"), "".join(
        json.dumps(dict(question=i, response=r, entropy=h)) + "\n" for i, r, h in zip(questions, responses, entropies)))


def read_offline(out: str) -> dict:
    """What write_offline stored: {question index: [(response, entropy), ...]}."""
    answers = {}
    with open(os.path.join(out, "offline.jsonl")) as f:
        for line in f:
            row = json.loads(line)
            answers.setdefault(row["question"], []).append((row["response"], row["entropy"]))
    return answers


def read_run_config(out: str, fields: set[str]) -> dict:
    """A run's config.json, for --resume: settings it does not know are an error, not silently dropped."""
    saved = os.path.join(out, "config.json")
    if not os.path.isfile(saved):
        raise ValueError(f"--resume {out}: no config.json there (not a sept run folder)")
    config = model_lib.read_json(saved)
    config.pop("resolved", None)  # what the run worked out at its start (stop ids): not a setting
    if unknown := set(config) - fields:
        raise ValueError(f"{saved}: unknown settings {', '.join(sorted(unknown))} (another version of sept?)")
    return config


def check_out(out: str, resume: bool, overwrite: bool) -> None:
    """Before anything is loaded: a new run's --out must not hold another run's files unless --overwrite."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise ValueError(f"--out {out}: exists and is not a folder")
    held = [name for name in RUN_FILES if os.path.lexists(os.path.join(out, name))]
    if held and not resume and not overwrite:
        raise ValueError(f"--out {out} holds a run already ({', '.join(held)}): continue it with --resume {out}, "
                         f"delete it with --overwrite, or choose another --out")


def start_run(out: str, config: dict, keep_until: int) -> None:
    """Once everything is checked: a new run (keep_until -1) deletes the old run's files (--overwrite allowed it), a
    resumed one its metrics and samples after round keep_until; then config.json."""
    for name in RUN_FILES if keep_until < 0 else ():
        path = os.path.join(out, name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        elif os.path.lexists(path):
            os.remove(path)
    os.makedirs(os.path.join(out, "samples"), exist_ok=True)
    keep_metrics_until(out, keep_until)
    for name in os.listdir(os.path.join(out, "samples")):
        if (m := re.fullmatch(r"round_(\d+)\.jsonl", name)) and int(m[1]) > keep_until:
            os.remove(os.path.join(out, "samples", name))
    write_json(os.path.join(out, "config.json"), config)


def save_optimizer(optimizer: torch.optim.Optimizer, path: str) -> None:
    """The optimizer state as one safetensors file: tensor `{i}.{key}` (exp_avg, exp_avg_sq, step) for the i-th
    parameter in optimizer order, a JSON header (shapes, hyperparameters) in its metadata; written to
    path.tmp and renamed. Not torch.save: loading a pickle can run arbitrary code."""
    params = [p for g in optimizer.param_groups for p in g["params"]]
    tensors = {f"{i}.{k}": v.detach().cpu().contiguous() for i, p in enumerate(params)
               for k, v in optimizer.state.get(p, {}).items()}
    header = dict(format="sept-optimizer", kind=type(optimizer).__name__, shapes=[list(p.shape) for p in params],
                  param_groups=[{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups])
    write_file(path, lambda tmp: save_file(tensors, tmp, metadata={"sept": json.dumps(header, default=str)}))


def load_optimizer(optimizer: torch.optim.Optimizer, path: str) -> None:
    """Restore what save_optimizer wrote into an optimizer over the same parameters. Hyperparameters stay those
    the optimizer was built with (the lr is rewritten every step anyway)."""
    try:
        with safe_open(path, framework="pt", device="cpu") as f:
            header = json.loads((f.metadata() or {})["sept"])
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # missing file, not safetensors, no sept header
        raise ValueError(f"{path}: cannot read an optimizer state written by save_optimizer ({e!r})") from None
    params = [p for g in optimizer.param_groups for p in g["params"]]
    if header["shapes"] != [list(p.shape) for p in params]:
        raise ValueError(f"{path}: saved for {len(header['shapes'])} parameters of other shapes than this "
                         f"optimizer's {len(params)}")
    state = {}
    for name, t in tensors.items():
        i, key = name.split(".", 1)
        state.setdefault(int(i), {})[key] = t
    groups, i = [], 0
    for g in optimizer.param_groups:
        n = len(g["params"])
        groups.append({**{k: v for k, v in g.items() if k != "params"}, "params": list(range(i, i + n))})
        i += n
    optimizer.load_state_dict({"state": state, "param_groups": groups})  # moves tensors to the params' devices


def save_checkpoint(out: str, name: str, master, optimizer, r: int, copy_from: str) -> None:
    """checkpoints/NAME: the HF checkpoint (tokenizer files copied from `copy_from`), the AdamW state and the
    round, staged whole in NAME.tmp, then swapped into place (write_folder)."""
    final = os.path.join(out, "checkpoints", name)
    if os.path.isfile(os.path.join(final + ".tmp", "sept_state.json")):  # complete, a crash kept it from its rename:
        replace_folder(final + ".tmp", final)                            # the newest; keep it, not restage over it

    def fill(folder):  # the weights, the AdamW state, then the round: written last, it marks the checkpoint complete
        model_lib.save_model(master, folder, copy_from=copy_from)
        save_optimizer(optimizer, os.path.join(folder, "optimizer.safetensors"))
        write_json(os.path.join(folder, "sept_state.json"), {"round": r})
    write_folder(final, fill)


def find_checkpoint(out: str) -> str | None:
    """The newest complete checkpoint (sept_state.json, written last, holds its round): `last`, or where crashes
    left it: last.tmp (complete, not yet renamed) or last.old (a crash fell between the two renames)."""
    found = []
    for i, name in enumerate(("last", "last.tmp", "last.old")):
        state = os.path.join(out, "checkpoints", name, "sept_state.json")
        if os.path.isfile(state):
            found.append((model_lib.read_json(state)["round"], -i, os.path.dirname(state)))
    return max(found)[2] if found else None


def resume_point(out: str, first_save: int) -> tuple[str | None, int]:
    """Where --resume continues: the newest complete checkpoint and its round, or (None, 0) when the run had not
    reached its first checkpoint (round `first_save`). Checkpoints that are gone are an error, not a restart."""
    if ckpt := find_checkpoint(out):
        return ckpt, model_lib.read_json(os.path.join(ckpt, "sept_state.json"))["round"]
    done = max((m["round"] for m in read_metrics(out)), default=0) if os.path.isfile(
        os.path.join(out, "metrics.jsonl")) else 0
    if done > first_save:
        raise ValueError(f"--resume {out}: metrics.jsonl records round {done}, but no complete checkpoint is left "
                         f"in {out}/checkpoints (last, last.tmp, last.old) to continue from")
    return None, 0


def interrupted(out: str, command: str) -> str:
    """The one line a Ctrl-C prints: what the run folder keeps, and the command that continues it."""
    if not os.path.isfile(os.path.join(out, "config.json")):
        return f"interrupted before anything was written to {out}"
    ckpt = find_checkpoint(out)
    kept = (f"{ckpt} holds round {model_lib.read_json(os.path.join(ckpt, 'sept_state.json'))['round']}" if ckpt
            else "no checkpoint yet (it starts again at round 0)")
    return f"interrupted: {kept}; continue with: {command} --resume {out}"


# ----------------------------------------------------------------------------------------------------------
# What a round reports: its line of metrics, on stdout too.

def round_metrics(r: int, tau_s: float, tau_t: float, steps: list[dict], responses, entropies, grades,
                  tokenizer) -> dict:
    """The round's line of metrics.jsonl: schedules, loss, answer lengths and stops, entropy, and the share of
    training answers that were right (logged for the reader; SePT never sees it)."""
    stop_ids, stops = tokenizer.stop_ids, {}
    for resp in responses:
        key = tokenizer.decode([resp[-1]]) if resp and resp[-1] in stop_ids else "none (truncated)"
        stops[key] = stops.get(key, 0) + 1
    lens, known = [len(resp) for resp in responses], [g.correct for g in grades if g.correct is not None]
    return dict(round=r, tau_s=tau_s, tau_t=tau_t, lr=steps[0]["lr"], loss=sum(s["loss"] for s in steps) / len(steps),
                grad_norm=max(s["grad_norm"] for s in steps), response_len_mean=sum(lens) / len(lens),
                response_len_max=max(lens), truncation_rate=stops.get("none (truncated)", 0) / len(responses),
                stop_tokens=stops, entropy=sum(entropies) / len(entropies),
                train_answers_correct=sum(known) / len(known) * 100 if known else None)


def temperatures_after(out: str, r: int) -> tuple[float, float]:
    """(τ_eff, Theorem 1's τ) as round r's line left them: the products a resumed run continues; 1, 1 at round 0."""
    lines = [m for m in read_metrics(out) if m["round"] == r and "tau_eff" in m] if r else []
    return (lines[-1]["tau_eff"], lines[-1]["tau_theorem1"]) if lines else (1.0, 1.0)


def reward_metrics(rewards: list[float], group: int) -> dict:
    """The mean reward, and the share of questions whose G answers all got the same reward (no signal)."""
    groups = [rewards[g:g + group] for g in range(0, len(rewards), group)]
    return dict(reward=sum(rewards) / len(rewards), groups_all_same=sum(len(set(g)) == 1 for g in groups) / len(groups))


def log_round(out: str, line: dict, qs: list, responses, texts, grades) -> None:
    """The round's line into metrics.jsonl and onto stdout, its answers into samples/round_NNNN.jsonl."""
    append_metrics(out, line)
    write_samples(out, line["round"], [
        dict(id=q.id, question=q.problem, response=t, response_tokens=len(resp), extracted=g.extracted,
             answer=q.answer, correct=g.correct) for q, resp, t, g in zip(qs, responses, texts, grades)])
    acc = line["train_answers_correct"]
    print(f"round {line['round']} | τs {line['tau_s']:.2f} τt {line['tau_t']:.2f} lr {line['lr']:.2e} | loss "
          f"{line['loss']:.4f} gnorm {line['grad_norm']:.3f} | len {line['response_len_mean']:.1f}/"
          f"{line['response_len_max']} trunc {line['truncation_rate'] * 100:.1f}% | H {line['entropy']:.3f}"
          + (f" | answers correct {acc:.1f}%" if acc is not None else "")
          + (f" | reward {line['reward']:.3f} no-signal groups {line['groups_all_same'] * 100:.0f}%"
             if "reward" in line else "")
          + f" | τ_eff {line['tau_eff']:.3g} (Theorem 1: {line['tau_theorem1']:.3g})"
          + f" | sample {line['seconds_sampling']:.1f}s train {line['seconds_training']:.1f}s")


def metric_text(m: dict) -> str:
    return " ".join(f"{k} {m[k]:.1f}" for k in ("pass@1", "pass@8", "pass@32") if k in m)


def report_eval(cfg, r: int, result: dict) -> None:
    """An evaluation of round r (cfg: sept_loop's SePTConfig) into metrics.jsonl, the console and plot.png."""
    append_metrics(cfg.out, dict(round=r, **result))
    rows = f", {result['sample_rows']} rows" if "sample_rows" in result else ""  # fewer: memory ran out
    seconds = f"{result['seconds_eval']:.0f}s{rows}"
    print(f"eval round {r} τ={result['eval_temperature']} | {metric_text(result)} ({seconds})")
    title = f"{cfg.algo} on {os.path.basename(cfg.model.rstrip('/'))}" + (" (offline)" if cfg.offline else "")
    write_plot(cfg.out, cfg.eval_temperature, title)


def keep_smaller(cfg, **sizes) -> dict:
    """Sizes that memory made smaller (sample.generate's rows, train_step's micro-batches), kept in cfg (sept_loop's
    SePTConfig) for the rest of the run and in its config.json for --resume. Returns those that changed."""
    smaller = {k: v for k, v in sizes.items() if v < getattr(cfg, k)}
    if smaller:
        cfg.__dict__.update(smaller)
        path = os.path.join(cfg.out, "config.json")
        write_json(path, {**model_lib.read_json(path), **smaller})
    return smaller


def stop_if_not_finite(steps: list[dict], r: int, cfg) -> None:
    if steps[-1]["skipped"]:
        raise SystemExit(f"error: round {r}, update {len(steps)}: the loss or gradient norm is not finite "
                         f"(loss {steps[-1]['loss']}, grad norm {steps[-1]['grad_norm']}); stopping. The weights "
                         f"are untouched; the last good checkpoint is {find_checkpoint(cfg.out) or cfg.model}")


def summary(out: str, eval_temperature: float) -> str:
    """First and last evaluation of the run, side by side."""
    evals = [m for m in read_metrics(out) if "pass@1" in m and not m.get("sweep")]
    first, last = evals[0], evals[-1]
    return f"summary τ={eval_temperature}: " + " | ".join(
        f"{k} {first[k]:.1f} -> {last[k]:.1f} ({last[k] - first[k]:+.1f})" for k in ("pass@1", "pass@8", "pass@32")
        if k in first) + f" (round {first['round']} -> {last['round']})"


# ----------------------------------------------------------------------------------------------------------
# Plots.

def write_plot(out: str, eval_temperature: float, title: str) -> None:
    """plot.png: pass@k at τ_eval against rounds; on a log scale beside it, τs, τ_eff (the base model's temperature
    the trained one matches) and Theorem 1's prediction at convergence, Π τs/τt."""
    plt = pyplot()
    if plt is None:
        return
    lines = read_metrics(out)
    evals = [m for m in lines if "pass@1" in m and m.get("eval_temperature") == eval_temperature]
    fig, ax = plt.subplots(figsize=(7, 4))
    for k in (1, 8, 32):
        pts = [(m["round"], m[f"pass@{k}"]) for m in evals if f"pass@{k}" in m]
        if pts:
            ax.plot(*zip(*pts), marker="o", label=f"pass@{k}")
    ax.set(xlabel="round", ylabel=f"pass@k (%) at τ={eval_temperature}", ylim=(0, 100))
    rounds = [m for m in lines if "tau_s" in m]
    if rounds:
        ax2 = ax.twinx()
        curves = (("tau_s", "--", "τs"), ("tau_eff", "-", "τ_eff"), ("tau_theorem1", ":", "Theorem 1"))
        for key, style, label in curves:
            pts = [(0, 1.0)] * (key != "tau_s") + [(m["round"], m[key]) for m in rounds if key in m]
            ax2.plot(*zip(*pts), color="gray", linestyle=style, label=label)
        ax2.set(ylabel="temperature (log scale)", yscale="log")
        ax2.legend(loc="lower right")
    ax.legend(loc="upper left")
    ax.set_title(title)
    save_figure(fig, os.path.join(out, "plot.png"))


def write_sweep_plot(out: str, results: list[dict]) -> None:
    """sweep.png: pass@1 and pass@32 of the untrained model against the sampling temperature (the paper's Fig. 1a)."""
    plt = pyplot()
    if plt is None:
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    taus = [m["eval_temperature"] for m in results]
    for k in (1, 8, 32):
        if all(f"pass@{k}" in m for m in results):
            ax.plot(taus, [m[f"pass@{k}"] for m in results], marker="o", label=f"pass@{k}")
    ax.set(xlabel="sampling temperature τ", ylabel="pass@k (%)", ylim=(0, 100), title="the base model, untrained")
    ax.legend()
    save_figure(fig, os.path.join(out, "sweep.png"))


def write_comparison(run_dirs: list[str], png: str) -> None:
    """Several runs on one plot: pass@1 and pass@32 against rounds, one line per run, labelled by its settings."""
    plt = pyplot()
    if plt is None:
        return
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for run in run_dirs:
        with open(os.path.join(run, "config.json")) as f:
            c = json.load(f)
        label = (f"{os.path.basename(run.rstrip('/'))}: {c['algo']}, {c['loss']}, τs {c['tau_s_start']:g}"
                 f"{' = τt' if c['couple'] else ''}{', offline' if c['offline'] else ''}, lr {c['lr']:g}")
        evals = [m for m in read_metrics(run) if "pass@1" in m and not m.get("sweep")
                 and m["eval_temperature"] == c["eval_temperature"]]
        for ax, k in zip(axes, ("pass@1", "pass@32")):
            ax.plot([m["round"] for m in evals], [m.get(k) for m in evals], marker="o", label=label)
    for ax, k in zip(axes, ("pass@1", "pass@32")):
        ax.set(xlabel="round", ylabel=f"{k} (%) at the runs' τ_eval", title=k)
    axes[0].legend(fontsize=7)
    save_figure(fig, png)
    print(f"wrote {png}")


def pyplot():
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        return plt
    except ImportError:
        print("plots skipped: pip install matplotlib")
        return None


def save_figure(fig, path: str) -> None:
    fig.tight_layout()
    write_file(path, lambda tmp: fig.savefig(tmp, format="png"))
    pyplot().close(fig)
