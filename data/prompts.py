"""Prompts: how a question is put to the model.

    python -m data.prompts qwen-math "What is 1+1?"            # from the repo root: prints the prompt
    python -m data.prompts chat "What is 1+1?" --model-dir PATH  # the checkpoint's own chat template

Templates (`build_prompt(question, template, model_dir=None)`):
  qwen-math      what Qwen2.5-Math's chat template renders for one user turn (its default system message asks
                 for step-by-step reasoning and a \\boxed{} answer); the prompt the paper uses.
  qwen-instruct  what Qwen2.5-Instruct's chat template renders for one user turn (its default system message,
                 "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."), with the boxed
                 instruction appended to the question after a space.
  raw            the question itself (for base models without a chat format).
  toy            "Q: {question}\nA:", the format the embedded toy model (data/toy) was pretrained on.
  chat           the checkpoint's own chat template from `model_dir` (tokenizer_config.json's "chat_template",
                 or chat_template.jinja), rendered like transformers' apply_chat_template with one user
                 message (question + the boxed instruction) and add_generation_prompt=True.
  deepseek-math  the paper's Figure 4 template for DeepSeek-Math base models: the checkpoint's BOS token, then
                 "\n\n{boxed instruction}\n\nUser: {question}\n\nAssistant:".

Tokenizing a prompt: the string holds special tokens as plain text ("<|im_start|>"). The `tokenizers` library
matches a tokenizer.json's added tokens in the text before any other splitting, so "<|im_start|>" becomes its one
id; never encode the pieces of a special token as ordinary text. Tokenizer.encode then gives a prompt the BOS
that transformers' tokenizer(text) would (the post-processor's: Llama 3's <|begin_of_text|>, DeepSeek's
<｜begin▁of▁sentence｜>; Qwen has none), exactly once: not again when the text starts with it already (a chat
template's {{ bos_token }}, the deepseek-math template).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from model import read_json

BOXED_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
QWEN_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."

# "{question}" is replaced verbatim (str.replace, not str.format: \boxed{} and questions hold braces)
TEMPLATES: dict[str, str] = {
    "qwen-math": (
        "<|im_start|>system\n" + BOXED_INSTRUCTION + "<|im_end|>\n"
        "<|im_start|>user\n{question}<|im_end|>\n"
        "<|im_start|>assistant\n"
    ),
    "qwen-instruct": (
        "<|im_start|>system\n" + QWEN_SYSTEM + "<|im_end|>\n"
        "<|im_start|>user\n{question} " + BOXED_INSTRUCTION + "<|im_end|>\n"
        "<|im_start|>assistant\n"
    ),
    "raw": "{question}",
    "toy": "Q: {question}\nA:",  # the embedded toy world's format (data/make_toy.py)
}
# The paper's third template (its Figure 4), for DeepSeek-Math: the checkpoint's own BOS token written as text,
# then the reasoning prompt and a User/Assistant exchange. Encoding keeps that one BOS and adds no second.
DEEPSEEK_MATH = "{bos}\n\n" + BOXED_INSTRUCTION + "\n\nUser: {question}\n\nAssistant:"
# "chat" and "deepseek-math" need the checkpoint folder: its chat template, its BOS token
TEMPLATE_NAMES = [*TEMPLATES, "chat", "deepseek-math"]


def build_prompt(question: str, template: str, model_dir: str | Path | None = None) -> str:
    if template in ("chat", "deepseek-math") and model_dir is None:
        raise ValueError(f"template {template!r} needs model_dir, the checkpoint folder (its tokenizer files)")
    if template == "chat":
        return render_chat_template(model_dir, [{"role": "user", "content": question + " " + BOXED_INSTRUCTION}])
    if template == "deepseek-math":
        return DEEPSEEK_MATH.replace("{bos}", bos_text(model_dir)).replace("{question}", question)
    if template not in TEMPLATES:
        raise ValueError(f"unknown prompt template {template!r}; choose one of {', '.join(TEMPLATE_NAMES)}")
    return TEMPLATES[template].replace("{question}", question)


def bos_text(model_dir: str | Path) -> str:
    """The checkpoint's BOS token as its tokenizer spells it (tokenizer_config.json's bos_token)."""
    file = Path(model_dir) / "tokenizer_config.json"
    bos = read_json(str(file)).get("bos_token") if file.is_file() else None
    if not bos:
        raise ValueError(f"{file}: no bos_token; the deepseek-math template starts with the checkpoint's BOS")
    return _token_text(bos)


def render_chat_template(model_dir: str | Path, messages: list[dict]) -> str:
    """The folder's chat template applied to `messages`, ending with the assistant's turn opened.
    As in transformers: a sandboxed Jinja environment (a template cannot reach Python internals), trim_blocks
    and lstrip_blocks, `raise_exception`, `tojson`, `strftime_now`, and bos_token/eos_token from
    tokenizer_config.json. A separate chat_template.jinja takes precedence over the config's field."""
    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    folder = Path(model_dir)
    config_file, jinja_file = folder / "tokenizer_config.json", folder / "chat_template.jinja"
    config = read_json(str(config_file)) if config_file.is_file() else {}
    source = jinja_file.read_text(encoding="utf-8") if jinja_file.is_file() else config.get("chat_template")
    if isinstance(source, list):  # several named templates: [{"name": "default", "template": ...}, ...]
        source = {t.get("name"): t.get("template") for t in source}.get("default")
    if not source:
        raise ValueError(f"no chat template in {folder}: expected 'chat_template' in tokenizer_config.json "
                         f"or a chat_template.jinja file (or use --template qwen-math / raw)")

    def raise_exception(message: str):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False) -> str:
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals.update(raise_exception=raise_exception, strftime_now=lambda fmt: datetime.now().strftime(fmt))
    special = {k: _token_text(config.get(k)) for k in ("bos_token", "eos_token") if config.get(k) is not None}
    try:
        return env.from_string(source).render(messages=messages, add_generation_prompt=True, **special)
    except jinja2.exceptions.SecurityError as e:
        raise ValueError(f"the chat template in {folder} tried something the Jinja sandbox forbids: {e}") from e
    except jinja2.exceptions.TemplateError as e:
        raise ValueError(f"the chat template in {folder} failed: {e}") from e


def _token_text(token) -> str:
    """tokenizer_config.json stores a special token as a string or as {"content": "<s>", ...}."""
    return token["content"] if isinstance(token, dict) else str(token)


# ---------------------------------------------------------------------------------------------- tokens

# Chat-turn terminators: Qwen base checkpoints declare <|endoftext|> but end chat turns with <|im_end|>.
END_OF_TURN_TOKENS = ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|end_of_text|>")
# Where generation stops (load_tokenizer): the official run's rule, or also at every end of a chat turn.
STOP_RULES = ("checkpoint", "turn")


@dataclass
class Tokenizer:
    """A checkpoint's tokenizer.json (through `tokenizers`) and the ids at which generation stops."""
    tok: object                     # tokenizers.Tokenizer
    stop_ids: tuple[int, ...] = ()  # generation ends at the first of these
    bos_ids: tuple[int, ...] = ()   # what the post-processor puts before a text (a BOS, or nothing)
    eos_id: int | None = None       # the tokenizer's own EOS (tokenizer_config.json), what SFT data ends with

    def encode(self, text: str, bos: bool = True) -> list[int]:
        """A prompt's ids as transformers' tokenizer(text).input_ids, less any EOS its post-processor appends: the
        BOS once, also when the text starts with it already. bos=False: the text's own ids (a response)."""
        ids = self.tok.encode(text, add_special_tokens=False).ids
        return ids if not bos or ids[:len(self.bos_ids)] == list(self.bos_ids) else [*self.bos_ids, *ids]

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids, skip_special_tokens=False)


def load_tokenizer(path: str | Path, stop: str = "checkpoint") -> Tokenizer:
    """tokenizer.json of a checkpoint folder, and where generation stops (`stop`):
    checkpoint  where the official run's vLLM stops: the tokenizer's EOS and generation_config.json's eos_token_id
                (one id or a list). A base Qwen2.5-Math declares only <|endoftext|>: its answers run on past an
                <|im_end|>, and SePT trains on what follows, as the official run does.
    turn        also config.json's eos_token_id and every end-of-turn token the vocabulary has (END_OF_TURN_TOKENS)."""
    from tokenizers import Tokenizer as HFTokenizer
    folder = Path(path)
    if not (folder / "tokenizer.json").is_file():
        raise ValueError(f"{folder}: " + ("no tokenizer.json" if folder.is_dir() else "no such checkpoint folder"))
    try:
        tok = HFTokenizer.from_file(str(folder / "tokenizer.json"))
    except Exception as e:  # the Rust library's errors for a corrupt or foreign file
        raise ValueError(f"{folder / 'tokenizer.json'}: cannot read the tokenizer ({str(e)[:200]})") from None
    config = {name: read_json(str(folder / name)) if (folder / name).is_file() else {}
              for name in ("generation_config.json", "config.json", "tokenizer_config.json")}
    if stop not in STOP_RULES:
        raise ValueError(f"stop rule {stop!r}: choose one of {', '.join(STOP_RULES)}")
    eos = config["tokenizer_config.json"].get("eos_token")
    eos_id = tok.token_to_id(_token_text(eos)) if eos else None
    stop_ids = [eos_id]
    for name in ("generation_config.json",) + (("config.json",) if stop == "turn" else ()):
        ids = config[name].get("eos_token_id")
        stop_ids += ids if isinstance(ids, list) else [ids]
    if stop == "turn":
        stop_ids += [tok.token_to_id(t) for t in END_OF_TURN_TOKENS]
    stop_ids = tuple(dict.fromkeys(i for i in stop_ids if i is not None))
    if not stop_ids:
        raise ValueError(f"{folder}: no EOS token in tokenizer_config.json (eos_token) nor generation_config.json "
                         f"(eos_token_id): generation would never stop")
    probe = tok.encode("0", add_special_tokens=True)  # special_tokens_mask: 1 where the post-processor added one
    bos = probe.ids[:probe.special_tokens_mask.index(0)] if 0 in probe.special_tokens_mask else []
    return Tokenizer(tok, stop_ids, tuple(bos), eos_id)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description="Print the prompt a question becomes.")
    p.add_argument("template", choices=TEMPLATE_NAMES)
    p.add_argument("question")
    p.add_argument("--model-dir", default=None, help="checkpoint folder (for the 'chat' template)")
    args = p.parse_args()
    print(build_prompt(args.question, args.template, args.model_dir), end="")
