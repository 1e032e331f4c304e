"""Scaling out: a sept run configuration as a ready launch of the official verl recipe, with its data.

sept is for one GPU; the paper's 7B runs used the official code (github.com/ElementQi/SePT, folder sept/: verl,
vLLM and FSDP on 8 GPUs). `--export-verl DIR` resolves and checks the configuration exactly as a run would, then
writes only DIR/run.sh (the official script's hydra keys, each with sept's value) and DIR/data/ (the question sets
as verl parquet, which sept reads too). It loads no model and runs nothing:

    python sept_loop.py --export-verl /tmp/verl-toy                          # CPU, a second: the toy world
    python sept_loop.py --preset paper --model Qwen2.5-Math-7B --train-questions dsr.jsonl \\
        --test-questions math500.jsonl,aime.jsonl --export-verl runs/verl
    SEPT_CODE=SePT/sept N_GPUS=8 bash runs/verl/run.sh                       # where the GPUs are

The keys are tables, one row a key: K(hydra key, sept's value, the official scripts that set it, verl's default,
comment). A key the official script sets is always written, so that run.sh reproduces that script key for key
(tests/test_verl.py checks it against ../shared/verl/*.json); any other key is written when sept's value differs
from verl's default, and otherwise listed as a comment. A value is a constant or a function of the config `c`
and the Plan `p`; None leaves the key out.
"""
import math
import os
import re
import shlex
import textwrap
from dataclasses import asdict, dataclass

from data import prompts, questions
from runs import write_file

# verl's math grader (sept/verl/utils/reward_score/__init__.py) scores only these data_source names
VERL_MATH_SOURCES = {"lighteval/MATH", "DigitalLearningGmbH/MATH-lighteval", "math500", "amc", "aime", "aime25",
                     "olympiadbench", "minerva", "amc23", "deepscaler", "math_dapo", "math_12k",
                     "open-thoughts/OpenThoughts3-1.2M"}
USER_INSTRUCTION = ("qwen-instruct", "chat")  # the templates that append the boxed instruction to the question
SCRIPTS = {"sept": "sept_1e7_dsr.sh", "em": "em_1e7_dsr.sh", "grpo": "grpo_5e7_dsr.sh",
           "offline": "generate_solutions.sh, then offline_train.sh"}


@dataclass
class Plan:
    """What the export derives from the configuration and the number of training questions."""
    kind: str                # sept | em | grpo | offline: the official script the run becomes (its first letter)
    rounds: int              # R: --rounds, or --epochs passes of questions // B rounds (sept_loop.resolve_rounds)
    epochs: int              # trainer.total_epochs: verl's epoch is questions // B steps (a partial batch dropped)
    steps: int | None        # trainer.total_training_steps = --rounds, when that is not whole epochs
    tau_epochs: int          # tau_s_annealing.epochs: verl's τs ramp is epochs × steps per epoch
    tau_steps: float | None  # +tau_s_annealing.steps = sept's ramp (τs ramp × rounds), when not whole epochs
    sft_epochs: int          # --offline: passes of verl's SFT trainer over the G answers to each question
    sft_steps: int | None    # --offline: its total_training_steps = rounds × µ, when not whole epochs


def K(key: str, value, sets: str = "*", default=None, note="") -> tuple:
    """A row; sets: the letters of the official scripts that set the key ("*": every one this table is for)."""
    return key, value, sets, default, note


def V(name: str) -> str:  # a variable of run.sh's header
    return "${" + name + "}"


def field(name: str):
    return lambda c, p: getattr(c, name)


def tau_s_end(c, p) -> float:  # a constant τs is an annealing from τs to itself
    return c.tau_s_start if c.tau_s_schedule == "constant" else c.tau_s_end


def loss_group(c, p):  # answers per token-mean; --loss-group 0 (one over the mini-batch) has no verl form
    return c.loss_group or V("MICRO_BATCH_PER_GPU")


def loss_group_note(c, p) -> str:
    return "--loss-group: answers per token-mean, those averaged" if c.loss_group else "see the header"


def warmup_rounds(c, p) -> int:  # train.lr_at: --warmup-rounds, or else --warmup-ratio of the cosine's length
    return c.warmup_steps or int(c.warmup_ratio * (c.total_steps or p.rounds))


def warmup_ratio(c, p) -> float:  # verl's SFT warms up over int(ratio × its steps), sept over its rounds
    return min(1.0, c.warmup_steps / p.rounds) if c.warmup_steps else c.warmup_ratio


def warmup_note(c, p) -> str:
    if not (c.warmup_steps or c.warmup_ratio):
        return ""
    return "verl's warmup starts at 0, sept's at lr/warmup"


COMMON = [  # the online scripts: SePT and EM-FT (recipe.sept.main_sept), GRPO (verl.trainer.main_ppo)
    K("data.train_files", V("TRAIN_FILES")), K("data.val_files", V("VAL_FILES")),
    K("data.train_batch_size", field("batch_prompts"), note="B: fresh questions per round"),
    K("data.val_batch_size", V("VAL_BATCH_SIZE")),
    K("data.filter_overlong_prompts", True, note="verl drops longer prompts; sept stops, naming them"),
    K("data.max_prompt_length", field("max_prompt_tokens")),
    K("data.max_response_length", field("max_response_tokens")),
    K("actor_rollout_ref.model.path", V("MODEL_PATH")), K("actor_rollout_ref.model.use_liger", V("USE_LIGER")),
    K("actor_rollout_ref.model.use_shm", V("USE_SHM")),
    K("actor_rollout_ref.model.use_remove_padding", V("USE_REMOVE_PADDING")),
    K("actor_rollout_ref.model.enable_gradient_checkpointing", field("activation_checkpointing")),
    K("actor_rollout_ref.actor.optim.lr_warmup_steps", warmup_rounds, note=warmup_note),
    K("actor_rollout_ref.actor.optim.lr", field("lr")),
    K("actor_rollout_ref.actor.optim.warmup_style", field("lr_schedule"), "", "constant",
      note=lambda c, p: "verl's cosine ends at --rounds, not --total-steps" if c.total_steps else ""),
    K("actor_rollout_ref.actor.optim.min_lr_ratio", lambda c, p: c.min_lr / c.lr, "", 0.0),
    K("actor_rollout_ref.actor.optim.weight_decay", field("weight_decay"), "", 0.01),
    K("actor_rollout_ref.actor.optim.betas", lambda c, p: f"[{fmt(c.beta1)},{fmt(c.beta2)}]", "", "[0.9,0.999]"),
    K("actor_rollout_ref.actor.grad_clip", lambda c, p: c.grad_clip or math.inf, "", 1.0),
    K("actor_rollout_ref.actor.loss_agg_mode", field("loss_agg"), "", "token-mean"),
    K("actor_rollout_ref.actor.ppo_mini_batch_size", lambda c, p: c.batch_prompts // c.updates_per_round,
      note="questions per update (verl multiplies by rollout.n): µ = B / this"),
    K("actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu", loss_group, note=loss_group_note),
    K("actor_rollout_ref.actor.use_kl_loss", False),
    K("actor_rollout_ref.actor.fsdp_config.param_offload", V("PARAM_OFFLOAD")),
    K("actor_rollout_ref.actor.fsdp_config.optimizer_offload", V("OPTIMIZER_OFFLOAD")),
    K("actor_rollout_ref.rollout.tensor_model_parallel_size", V("TENSOR_PARALLEL")),
    K("actor_rollout_ref.rollout.name", "vllm"),
    K("actor_rollout_ref.rollout.gpu_memory_utilization", V("GPU_MEMORY_UTILIZATION")),
    K("actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu", V("MICRO_BATCH_PER_GPU")),
    K("actor_rollout_ref.rollout.n", field("rollouts"), note="G: answers per question"),
    K("actor_rollout_ref.rollout.temperature", field("tau_s_start"), note="τs at round 1"),
    K("actor_rollout_ref.rollout.top_p", field("top_p"), "se", 1.0),
    K("actor_rollout_ref.rollout.val_kwargs.temperature", field("eval_temperature")),
    K("actor_rollout_ref.rollout.val_kwargs.n", field("eval_n")),
    K("actor_rollout_ref.rollout.val_kwargs.do_sample", lambda c, p: c.eval_temperature > 0),
    K("actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu", V("MICRO_BATCH_PER_GPU")),
    K("trainer.logger", V("LOGGER")), K("trainer.project_name", V("PROJECT_NAME")),
    K("trainer.experiment_name", V("EXPERIMENT_NAME")),
    K("trainer.val_before_train", True, note="sept evaluates at round 0 too"),
    K("trainer.default_local_dir", V("OUTPUT_DIR")), K("trainer.n_gpus_per_node", V("N_GPUS")),
    K("trainer.default_hdfs_dir", "null"), K("trainer.nnodes", V("N_NODES")),
    K("trainer.save_freq", lambda c, p: c.save_every or p.rounds,
      note="--save-every (0: the last round's); verl's are also its resume points (--checkpoint-every)"),
    K("trainer.rollout_data_dir", V("OUTPUT_DIR") + "/rollout_data"),
    K("trainer.validation_data_dir", V("OUTPUT_DIR") + "/rollout_eval_data"),
    K("trainer.test_freq", lambda c, p: c.eval_every or p.rounds, note="K: every K rounds and at the end"),
    K("+trainer.log_freq", 1),
    K("trainer.total_epochs", lambda c, p: p.epochs,
      note=lambda c, p: "--rounds × B / questions, rounded up" if c.rounds else "--epochs"),
    K("trainer.total_training_steps", lambda c, p: p.steps, "", note="--rounds: not whole epochs"),
]
SEPT = [  # recipe.sept.main_sept only: the τs schedule, τt, the loss
    K("actor_rollout_ref.rollout.tau_s_annealing.enable", True),
    K("actor_rollout_ref.rollout.tau_s_annealing.start_tau", field("tau_s_start")),
    K("actor_rollout_ref.rollout.tau_s_annealing.end_tau", tau_s_end,
      note=lambda c, p: "--tau-s-schedule constant: τs stays at start_tau" if c.tau_s_schedule == "constant" else ""),
    K("actor_rollout_ref.rollout.tau_s_annealing.epochs", lambda c, p: p.tau_epochs,
      note=lambda c, p: "ignored: steps below" if p.tau_steps else "the ramp: --tau-s-ramp × total_epochs"),
    K("+actor_rollout_ref.rollout.tau_s_annealing.steps", lambda c, p: p.tau_steps, "",
      note="the ramp in rounds, --tau-s-ramp × --rounds: not whole epochs"),
    K("actor_rollout_ref.rollout.tau_s_annealing.mode",
      lambda c, p: "linear" if c.tau_s_schedule == "constant" else c.tau_s_schedule),
    K("actor_rollout_ref.actor.policy_loss_type",
      lambda c, p: "entropy_minimization" if c.loss == "em" else "cross_entropy", "e", "cross_entropy"),
    K("actor_rollout_ref.actor.entropy_loss_coeff", lambda c, p: 1.0 if c.loss == "em" else None, "e"),
    K("trainer.enable_train_temperature",  # τt = τs; when τt ≡ τs both settings agree (the EM script writes True)
      lambda c, p: c.couple or c.tau_t == c.tau_s_start == tau_s_end(c, p), note=lambda c, p: "" if c.couple
      or c.tau_t == 1 else f"sept's --tau-t {fmt(c.tau_t)}: verl trains at τt = 1 or τs"),
]
GRPO = [  # verl.trainer.main_ppo with GRPO's advantage and no KL (grpo_5e7_dsr.sh)
    K("algorithm.adv_estimator", "grpo"), K("actor_rollout_ref.actor.kl_loss_coef", 0),
    K("actor_rollout_ref.actor.kl_loss_type", "low_var_kl"), K("actor_rollout_ref.actor.entropy_coeff", 0),
    K("actor_rollout_ref.actor.clip_ratio", field("clip_ratio"), "", 0.2),
    K("actor_rollout_ref.actor.clip_ratio_c", field("clip_ratio_c"), "", 3.0, note="the dual clip"),
]
GENERATE = [  # --offline, step 1: the initial model answers every training question at τs, G times
    K("data.path", V("TRAIN_FILES")), K("data.output_dir", V("OUTPUT_DIR") + "/generated_solutions"),
    K("data.filter_overlong_prompts", True), K("data.batch_size", V("GENERATE_BATCH_SIZE")),
    K("data.n_samples", field("rollouts"), "", 1, note="G: answers per question"),
    K("model.path", V("MODEL_PATH")), K("rollout.prompt_length", field("max_prompt_tokens")),
    K("rollout.response_length", field("max_response_tokens")), K("rollout.top_p", field("top_p"), "", 1.0),
    K("rollout.tensor_model_parallel_size", V("TENSOR_PARALLEL")),
    K("rollout.gpu_memory_utilization", V("GPU_MEMORY_UTILIZATION")), K("rollout.enforce_eager", False),
    K("trainer.n_gpus_per_node", V("N_GPUS")), K("trainer.nnodes", V("N_NODES")),
    K("eval.taus", lambda c, p: f"[{fmt(c.tau_s_start)}]", note="--tau-s-start"),
]
SFT = [  # --offline, step 2: verl's SFT trainer on those answers, µ updates of B·G/µ answers a round
    K("data.train_files", V("OUTPUT_DIR") + "/sft/train.parquet"),
    K("data.val_files", V("OUTPUT_DIR") + "/sft/test.parquet"),
    K("data.prompt_key", "extra_info"), K("data.response_key", "extra_info"),
    K("data.prompt_dict_keys", "['question']"), K("data.response_dict_keys", "['answer']"),
    K("data.micro_batch_size_per_gpu", loss_group, note=loss_group_note),
    K("data.max_length", lambda c, p: c.max_prompt_tokens + c.max_response_tokens),
    K("data.train_batch_size", lambda c, p: c.batch_prompts * c.rollouts // c.updates_per_round,
      note="answers per update: B·G/µ"),
    K("model.partial_pretrain", V("MODEL_PATH")), K("model.use_shm", V("USE_SHM")),
    K("model.fsdp_config.model_dtype", V("SFT_DTYPE")),
    K("model.enable_gradient_checkpointing", field("activation_checkpointing"), "", True),
    K("optim.lr", field("lr")),
    K("optim.warmup_steps_ratio", warmup_ratio, note=warmup_note),
    K("optim.betas", lambda c, p: f"[{fmt(c.beta1)},{fmt(c.beta2)}]", "", "[0.9,0.95]"),
    K("optim.weight_decay", field("weight_decay"), "", 0.01),
    K("optim.clip_grad", lambda c, p: c.grad_clip or math.inf, "", 1.0),
    K("trainer.n_gpus_per_node", V("N_GPUS")), K("trainer.nnodes", V("N_NODES")),
    K("trainer.save_freq", lambda c, p: (c.save_every or p.rounds) * c.updates_per_round, note="--save-every × µ"),
    K("trainer.test_freq", 5, note="the official value: a validation loss, not pass@k"),
    K("trainer.default_local_dir", V("OUTPUT_DIR")), K("trainer.project_name", V("PROJECT_NAME")),
    K("trainer.experiment_name", V("EXPERIMENT_NAME")),
    K("trainer.total_epochs", lambda c, p: p.sft_epochs, note="passes over the answers"),
    K("trainer.total_training_steps", lambda c, p: p.sft_steps, "",
      note="--rounds × µ: not whole epochs (verl's cosine still spans total_epochs)"),
    K("+trainer.log_freq", 1), K("trainer.logger", V("LOGGER")), K("trainer.default_hdfs_dir", "null"),
]
PAIRS = """\
python3 - "$TRAIN_FILES" "$OUTPUT_DIR/generated_solutions/solutions_tau{tau}.parquet" "$OUTPUT_DIR/sft" <<'EOF'
import os, sys, pyarrow as pa, pyarrow.parquet as pq  # each answer beside its question, as the SFT trainer reads
questions, solutions, out = sys.argv[1:]
problem = {{q["id"]: q["prompt"][-1]["content"] for q in pq.read_table(questions).to_pylist()}}
pairs = pa.table({{"extra_info": [dict(question=problem[a["id"]], answer=a["solution"])
                                for a in pq.read_table(solutions, columns=["id", "solution"]).to_pylist()]}})
os.makedirs(out, exist_ok=True)
pq.write_table(pairs, f"{{out}}/train.parquet")
pq.write_table(pairs.slice(0, 64), f"{{out}}/test.parquet")  # for the SFT trainer's validation loss only
EOF
"""


def make_plan(c, n_train: int) -> Plan:
    """The run's shape in verl's terms; a configuration verl cannot hold is an error naming the flag."""
    kind = "grpo" if getattr(c, "algo", "sept") == "grpo" else "em" if c.loss == "em" else "sept"
    if c.offline and kind != "sept":
        raise ValueError(f"--export-verl: --offline with {kind} has no official script (offline SePT is CE)")
    if c.sweep:
        raise ValueError("--export-verl: --sweep only evaluates (the official one: sept/examples/base_model_sweep.sh)")
    if c.batch_prompts % c.updates_per_round:
        raise ValueError(f"--export-verl: verl splits a round by questions: --batch-prompts {c.batch_prompts} must be "
                         f"a multiple of --updates-per-round {c.updates_per_round}")
    per_epoch = n_train // c.batch_prompts  # verl's dataloader drops the partial batch of each pass
    if not per_epoch:
        raise ValueError(f"--export-verl: {c.train_questions} has {n_train} questions, fewer than --batch-prompts "
                         f"{c.batch_prompts}: verl's epoch would be empty")
    rounds = c.rounds or c.epochs * per_epoch  # sept_loop.resolve_rounds, which runs after the export
    epochs = math.ceil(rounds / per_epoch)
    ramp = max(1.0, c.tau_s_ramp * rounds) / (rounds // epochs)  # in verl's epochs (sept_loop.tau_s_at)
    whole = c.tau_s_schedule == "constant" or (round(ramp) >= 1 and math.isclose(ramp, round(ramp)))
    updates, answers = rounds * c.updates_per_round, n_train * c.rollouts
    sft_per_epoch = max(1, answers // (c.batch_prompts * c.rollouts // c.updates_per_round))
    sft_epochs = math.ceil(updates / sft_per_epoch)
    return Plan("offline" if c.offline else kind, rounds, epochs, None if rounds == epochs * per_epoch else rounds,
                max(1, round(ramp)), None if whole else max(1.0, c.tau_s_ramp * rounds),
                sft_epochs, None if updates == sft_epochs * sft_per_epoch else updates)


def fmt(v) -> str:
    """A value as hydra reads it: True/False, 1e-7 (not 1e-07), inf."""
    if isinstance(v, float):
        return "inf" if math.isinf(v) else re.sub(r"e\+?(-?)0*(\d)", r"e\1\2", repr(v))
    return str(v)


def quote(token: str) -> str:  # for bash: "${VAR}" expands, '...' is literal
    return f'"{token}"' if "$" in token or ("'" in token and not re.search(r'["\\`]', token)) else shlex.quote(token)


def bash_array(name: str, table: list, c, p: Plan) -> str:
    """`name=( key=value  # comment ... )`, and the keys sept leaves at verl's defaults as comments."""
    lines, at_default = [], []
    for key, value, sets, default, note in table:
        v = value(c, p) if callable(value) else value
        if v is None:
            continue
        if sets != "*" and p.kind[0] not in sets and default is not None and fmt(v) == fmt(default):
            at_default.append(f"{key}={fmt(v)}")
            continue
        note = note(c, p) if callable(note) else note
        lines.append(f"    {quote(f'{key}={fmt(v)}'):<72}" + (f"  # {note}" if note else ""))
    lines += textwrap.wrap("sept's values at verl's defaults: " + " ".join(at_default), 110,
                           initial_indent="    # ", subsequent_indent="    #   ") if at_default else []
    return f"{name}=(\n" + "\n".join(line.rstrip() for line in lines) + "\n)\n"


def differences(c, p: Plan, sets: dict) -> list[str]:
    """What the header says about the few places where verl will not do what this sept run would."""
    bare = c.template not in USER_INSTRUCTION
    same = {"qwen-math": ": for Qwen2.5-Math that is sept's qwen-math prompt byte for byte",
            "qwen-instruct": ": for Qwen2.5-Instruct that is sept's qwen-instruct prompt",
            "chat": ", as sept's chat template does"}
    out = [("the questions are bare (the official data/ form); " if bare else "each question ends with the boxed "
            "instruction (the official data_user_reasoning/ form); ") + "verl renders the checkpoint's chat template "
           "over them" + same.get(c.template, f", not sept's {c.template} prompt: set a chat template that renders it")]
    graded = [qs for name, qs in sets.items() if name != "train" or p.kind == "grpo"]  # SePT grades only tests
    unknown = sorted({q.source for qs in graded for q in qs} - VERL_MATH_SOURCES)
    if unknown:
        out.append(f"verl's math grader knows no data_source {', '.join(unknown)}: rename them (jsonl \"source\") "
                   "or set custom_reward_function.path")
    if p.kind == "grpo" and (tau_s_end(c, p) != c.tau_s_start or not (c.couple or c.tau_t == c.tau_s_start)):
        out.append("verl's GRPO samples and trains at one τ, --tau-s-start: sept's τs schedule and τt do not apply")
    if c.stop != "checkpoint":
        out.append(f"--stop {c.stop} has no verl key: verl's vLLM ends answers at the checkpoint's EOS ids only "
                   "(sept's --stop checkpoint), not at every end-of-turn token")
    if not c.loss_group:
        out.append("--loss-group 0 (one token-mean over each mini-batch) has no verl form: verl averages the "
                   "token-means of micro-batches of MICRO_BATCH_PER_GPU answers (the official 4: --loss-group 4)")
    if c.offline:
        out += offline_differences(c, p)
    if c.resume:
        out.append("--resume: this starts from --model; sept's checkpoints are HF folders (MODEL_PATH may name one)")
    if c.eps != 1e-8:
        out.append(f"verl's AdamW has eps 1e-8 (sept: --eps {fmt(c.eps)})")
    return out + ["--seed, --sample-batch, --micro-batch-tokens, --loss-chunk-rows and --checkpoint-every have no "
                  "verl key and, --seed aside, change nothing verl computes" + (
                      "" if c.offline else "; verl trains under bf16 with fp32 masters, as sept")]


def offline_differences(c, p: Plan) -> list[str]:
    """Where verl's SFT recipe (generate_solutions.sh, then offline_train.sh) will not train as this --offline run."""
    out = ["offline: verl answers every question G times (sept: those its rounds draw), keeps the answers as text "
           "and its SFT trainer tokenizes them again (sept trains on the sampled tokens); its validation is a loss "
           "(trainer.test_freq): evaluate the result with sept --sweep or sept/recipe/sept/tau_sweep.py",
           "verl's SFT holds the weights in SFT_DTYPE (bf16 in the official script) and computes in bf16; sept keeps "
           "fp32 master weights: SFT_DTYPE=fp32 is sept's"]
    if not c.offline_eos:
        out.append("verl's SFT ends every answer with the EOS, a cut-off one too (sept: only with --offline-eos)")
    if c.rollouts > 1:
        out.append("verl's SFT shuffles the answers, not the questions: an update mixes answers of more questions "
                   "than sept's B/µ, G each")
    if c.couple or c.tau_t != 1:
        out.append("verl's SFT trains at τt = 1 (sept: --tau-t, --couple)")
    if c.lr_schedule != "cosine" or c.min_lr or c.total_steps:
        out.append("verl's SFT decays the lr by a cosine to 0 over all its steps (sept: --lr-schedule, --min-lr, "
                   "--total-steps)")
    if c.updates_per_round > 1:
        out.append(f"verl's SFT moves the lr every update, sept every round (of {c.updates_per_round} updates)")
    if c.loss_agg != "token-mean":
        out.append(f"verl's SFT loss is a token-mean (sept: --loss-agg {c.loss_agg})")
    return out


def variables(c, p: Plan, out_dir: str, files: dict) -> list[tuple[str, str, str]]:
    """run.sh's header: (name, default, comment). The machine's defaults are the official script's."""
    online, model = p.kind != "offline", os.path.abspath(c.model) if os.path.exists(c.model) else c.model
    return [("SEPT_CODE", ".", "the official code's sept/ folder: recipe/ and verl/ are there"),
            ("N_GPUS", "8", "GPUs per node"), ("N_NODES", "1", "nodes"),
            ("GPU_MEMORY_UTILIZATION", "0.85" if online else "0.9", "vLLM's share of each GPU's memory"),
            ("TENSOR_PARALLEL", "1", "GPUs per vLLM copy of the model"),
            *([("MICRO_BATCH_PER_GPU", "4", "answers per log-prob forward on one GPU" if c.loss_group else
                "answers per forward on one GPU, a token-mean of the loss each (--loss-group 0)")]
              if online or not c.loss_group else []),
            *([("VAL_BATCH_SIZE", "256", "questions per validation batch"),
               ("USE_LIGER", "False", "Liger kernels"), ("USE_REMOVE_PADDING", "True", "packed sequences"),
               ("PARAM_OFFLOAD", "False", "FSDP parameters on the CPU"),
               ("OPTIMIZER_OFFLOAD", "False", "AdamW state on the CPU")] if online else
              [("GENERATE_BATCH_SIZE", "256", "questions per generation batch"),
               ("SFT_DTYPE", "bf16", "the weights' dtype: the official bf16; fp32 is sept's")]),
            ("USE_SHM", "False", "load the model through /dev/shm"),
            ("LOGGER", "['console','swanlab']", "swanlab needs SWANLAB_API_KEY; ['console'] nothing"),
            ("PROJECT_NAME", "formal" if online else "offline-sept", "the logger's project"),
            ("EXPERIMENT_NAME", "sept-" + os.path.basename(os.path.abspath(out_dir)), "the logger's run name"),
            ("OUTPUT_DIR", os.path.join(os.path.abspath(out_dir), "outputs"), "checkpoints, rollouts, samples"),
            ("MODEL_PATH", model, "--model"), ("TRAIN_FILES", files["train"], "--train-questions, as verl parquet"),
            *([("VAL_FILES", "[" + ", ".join(f'"{f}"' for n, f in files.items() if n != "train") + "]",
                "--test-questions, as verl parquet")] if online else [])]


def run_sh(c, p: Plan, out_dir: str, sets: dict, files: dict) -> str:
    defaults, values = asdict(type(c)()), asdict(c)
    flags = " ".join(("--no-" if v is False else "--") + k.replace("_", "-") + ("" if isinstance(v, bool) else f" {v}")
                     for k, v in {"preset": c.preset, **values}.items() if v != defaults[k] and k != "export_verl")
    head = [f"The official recipe (github.com/ElementQi/SePT, sept/examples/{SCRIPTS[p.kind]}) with the settings of "
            f"this sept run: {flags or 'the defaults'}.", "Written by sept_loop.py --export-verl: every key sept "
            "knows carries sept's value; the variables are the machine's. Run from anywhere, with any more hydra "
            "overrides after it:  SEPT_CODE=path/to/SePT/sept N_GPUS=8 bash run.sh [key=value ...]",
            "Where verl differs from this sept run:"] + [f"- {d}" for d in differences(c, p, sets)]
    text = "#!/usr/bin/env bash\n" + "".join(textwrap.fill(h, 114, initial_indent="# ", subsequent_indent="#   ",
                                                           break_on_hyphens=False)
                                             + "\n" for h in head) + "set -euo pipefail\n\n"
    text += "".join(f"{f'{n}=${{{n}:-{quote(d)}}}':<60}  # {why}\n" for n, d, why in variables(c, p, out_dir, files))
    text += '\ncd "$SEPT_CODE"\n'
    if p.kind != "offline":
        module = "verl.trainer.main_ppo" if p.kind == "grpo" else "recipe.sept.main_sept"
        table = COMMON + (GRPO if p.kind == "grpo" else SEPT)
        return text + bash_array("args", table, c, p) + f'python3 -m {module} "${{args[@]}}" "$@"\n'
    return (text + "# 1. the initial model's answers\n" + bash_array("generate", GENERATE, c, p)
            + 'python3 -m recipe.sept.generate_solutions "${generate[@]}"\n\n# 2. the (question, answer) pairs\n'
            + PAIRS.format(tau=str(float(c.tau_s_start)).replace(".", "s")) + "\n# 3. SFT on them\n"
            + bash_array("train", SFT, c, p) + 'torchrun --standalone --nnodes=1 --nproc_per_node="$N_GPUS" '
            '-m verl.trainer.fsdp_sft_trainer "${train[@]}" "$@"\n')


def write_parquet(path: str, qs: list[questions.Question], split: str, template: str) -> None:
    """verl's RL form of a question set; data.questions.load_questions reads it back to the same questions."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    suffix = " " + prompts.BOXED_INSTRUCTION if template in USER_INSTRUCTION else ""
    rows = [dict(data_source=q.source, prompt=[dict(role="user", content=q.problem + suffix)], ability="math",
                 reward_model=dict(style="rule", ground_truth=q.answer), extra_info=dict(index=i, split=split),
                 id=q.id) for i, q in enumerate(qs)]
    os.makedirs(os.path.dirname(path), exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path + ".tmp")
    os.replace(path + ".tmp", path)


def require_pyarrow() -> None:
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        raise SystemExit("error: --export-verl writes verl's parquet files and needs pyarrow: pip install pyarrow")


def export(c, out_dir: str) -> None:
    """DIR/run.sh and DIR/data/ for the official verl recipe. Every error comes before anything is written."""
    require_pyarrow()
    sets = {"train": questions.load_questions(c.train_questions)}  # name -> questions; a test set is test/<stem>
    for name, path in questions.test_set_names(c.test_questions).items():  # as sept names them, fit for a file
        test = questions.load_questions(path)[:c.eval_max_questions or None]
        sets["test/" + name.strip(os.sep).replace(os.sep, "_")] = test
    p = make_plan(c, len(sets["train"]))
    if p.kind == "grpo" and (q := next((q for q in sets["train"] if q.answer is None), None)):
        raise ValueError(f"{c.train_questions}: question {q.id} has no answer (GRPO rewards each answer by its grade)")
    data = os.path.abspath(os.path.join(out_dir, "data"))
    files = {name: os.path.join(data, name + ".parquet") for name in sets}
    text = run_sh(c, p, out_dir, sets, files)
    os.makedirs(out_dir, exist_ok=True)
    for name, qs in sets.items():
        write_parquet(files[name], qs, name.split("/")[0], c.template)
    write_file(os.path.join(out_dir, "run.sh"), text)
    os.chmod(os.path.join(out_dir, "run.sh"), 0o755)
    print(f"wrote {os.path.join(out_dir, 'run.sh')} ({SCRIPTS[p.kind]} with this run's settings) and "
          f"{len(sets)} question sets in {data}")
