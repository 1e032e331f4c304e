"""Shared fixtures: tiny random Llama / Qwen2 checkpoints written by transformers (a test-only dependency),
each with a byte-level BPE tokenizer trained in-process. Nothing is downloaded."""
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("TRITON_INTERPRET", "1")  # Triton kernels run on CPU tensors in the tests
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import pytest  # noqa: E402
import torch  # noqa: E402

SHARED_BENCHMARKS = ROOT.parent / "shared" / "benchmarks"
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CORPUS = ["The sum of 12 and 30 is 42, so the answer is \\boxed{42}.",
          "Please reason step by step, and put your final answer within \\boxed{}.",
          "12 + 7 = 19. 19 + 5 = 24. 24 * 3 = 72. Therefore the total is 72."] * 20

# Architecture presets, each small enough for a fast fp32 forward on 2 CPU cores.
FAMILIES = {
    # Llama with GQA 2:1 and a tied head
    "llama": dict(model_type="llama", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True),
    # Qwen2: q/k/v biases, untied head, 6:1 GQA, theta 1e6
    "qwen2": dict(model_type="qwen2", hidden_size=96, intermediate_size=160, num_hidden_layers=2,
                  num_attention_heads=6, num_key_value_heads=1, tie_word_embeddings=False, rope_theta=1e6),
    # Llama 3: llama3 rope scaling, head_dim 32 != hidden / heads = 16
    "llama3": dict(model_type="llama", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                   num_attention_heads=4, num_key_value_heads=2, head_dim=32, tie_word_embeddings=False,
                   max_position_embeddings=256, rope_theta=500000.0,
                   rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                                     original_max_position_embeddings=64)),
}


def train_tokenizer(vocab_size: int = 200):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS, trainer)
    return tok


def write_checkpoint(path, family="llama", seed=0, shard_size=None, **overrides) -> str:
    """A random transformers checkpoint (fp32) with tokenizer files; returns the folder."""
    import transformers
    path = str(path)
    tok = train_tokenizer()
    kw = dict(FAMILIES[family], vocab_size=256, max_position_embeddings=256, eos_token_id=tok.token_to_id("<|endoftext|>"),
              bos_token_id=None)
    kw.update(overrides)
    config_cls = transformers.Qwen2Config if kw["model_type"] == "qwen2" else transformers.LlamaConfig
    kw.pop("model_type")
    torch.manual_seed(seed)
    hf_model = transformers.AutoModelForCausalLM.from_config(config_cls(**kw), dtype=torch.float32)
    with torch.no_grad():  # random weights with a larger spread so logits are far from uniform
        for p in hf_model.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.15)
    save_kw = {"max_shard_size": shard_size} if shard_size else {}
    hf_model.save_pretrained(path, **save_kw)
    tok.save(os.path.join(path, "tokenizer.json"))
    with open(os.path.join(path, "tokenizer_config.json"), "w") as f:
        json.dump({"eos_token": "<|endoftext|>", "tokenizer_class": "PreTrainedTokenizerFast"}, f)
    return path


@pytest.fixture
def make_checkpoint(tmp_path):
    """Factory: make_checkpoint(family="llama", **config_overrides) -> folder."""
    counter = iter(range(1000))

    def make(family="llama", **kw):
        return write_checkpoint(tmp_path / f"{family}-{next(counter)}", family, **kw)
    return make


def hf_logits(path, input_ids):
    import transformers
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    with torch.no_grad():
        return hf_model(input_ids).logits


@pytest.fixture(autouse=True)
def release_static_rows():
    """sample.static_rows keeps its rows (a KV cache, a CUDA graph on CUDA) between calls: not between tests."""
    yield
    import sample
    sample.held_static_rows = None


def limit_positions(monkeypatch, limit, when=lambda mode: True):
    """The device's memory, simulated: a forward (Transformer.hidden_states) of more than `limit` token positions
    (B x T) raises torch.OutOfMemoryError where when(mode) holds, mode being the forward's ("causal" in training,
    "prefill", "decode"). `limit` may be a function, read at each forward (a device that shrinks)."""
    import model
    real = model.Transformer.hidden_states

    def limited(self, input_ids, *args, mode="causal", **kw):
        cap = limit() if callable(limit) else limit
        if when(mode) and input_ids.numel() > cap:
            raise torch.OutOfMemoryError(f"simulated: {tuple(input_ids.shape)} > {cap} positions")
        return real(self, input_ids, *args, mode=mode, **kw)
    monkeypatch.setattr(model.Transformer, "hidden_states", limited)
