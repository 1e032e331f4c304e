"""model.py against transformers: logits, round trips, dtypes, and the errors for bad checkpoints."""
import json
import os
import shutil

import pytest
import torch
from conftest import hf_logits

import model
import runs
from data import prompts


def ids(vocab=256, B=2, T=37, seed=0):
    return torch.randint(0, vocab, (B, T), generator=torch.Generator().manual_seed(seed))


def assert_close_rel(ours, ref, rel=1e-4):
    err = (ours - ref).abs().max().item()
    assert err <= rel * ref.abs().max().item(), f"max abs error {err} vs scale {ref.abs().max().item()}"


@pytest.mark.parametrize("family,kw", [
    ("llama", {}),                              # GQA 2:1, tied head
    ("qwen2", {"shard_size": "40KB"}),          # biases, untied, 6:1 GQA, theta 1e6, sharded safetensors
    ("llama3", {}),                             # llama3 rope scaling, head_dim != hidden / heads
])
def test_logits_match_transformers(make_checkpoint, family, kw):
    path = make_checkpoint(family, **kw)
    if "shard_size" in kw:
        assert os.path.exists(os.path.join(path, "model.safetensors.index.json"))
    x = ids(T=200 if family == "llama3" else 37)  # llama3: positions past original_max_position_embeddings
    with torch.no_grad():
        ours = model.load_model(path)(x)
    assert_close_rel(ours, hf_logits(path, x))


def test_attention_mode_is_explicit(make_checkpoint):
    """A forward says what it is: "causal" without a KV cache, "prefill" or "decode" with one; a prefill of one
    token is a prefill (no T > 1 needed), and decoding its next token gives the full forward's logits."""
    m = model.load_model(make_checkpoint("llama"))
    cache = model.new_kv_cache(m.config, 2, 8, torch.float32, "cpu")
    x = ids(B=2, T=2)
    with torch.no_grad():
        for mode, kv in [("decode", None), ("prefill", None), ("causal", cache), ("sideways", cache)]:
            with pytest.raises(ValueError, match="attention mode"):
                m.hidden_states(x, kv, mode=mode)
        cache.lens[:] = 1
        m.hidden_states(x[:, :1], cache, mode="prefill")
        h = m.hidden_states(x[:, 1:], cache, torch.ones(2, 1, dtype=torch.long), mode="decode")
        assert_close_rel(h, m.hidden_states(x)[:, 1:])


def test_transformers_4x_config_form(make_checkpoint):
    """transformers 4.x writes rope_theta / rope_scaling / torch_dtype instead of rope_parameters / dtype."""
    path = make_checkpoint("llama3")
    with open(os.path.join(path, "config.json")) as f:
        hf = json.load(f)
    rope = hf.pop("rope_parameters")
    hf["rope_theta"] = rope.pop("rope_theta")
    hf["rope_scaling"] = rope
    hf["torch_dtype"] = hf.pop("dtype", "float32")
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(hf, f)
    cfg = model.read_config(path)
    assert cfg.rope_theta == 500000.0 and cfg.rope_scaling["factor"] == 8.0 and cfg.head_dim == 32
    x = ids(T=150)
    with torch.no_grad():
        assert_close_rel(model.load_model(path)(x), hf_logits(path, x))


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_save_round_trip(make_checkpoint, tmp_path, family):
    src = make_checkpoint(family)
    m = model.load_model(src)
    out = str(tmp_path / "saved")
    runs.save_model(m, out, copy_from=src)
    assert os.path.isfile(os.path.join(out, "tokenizer.json"))
    x = ids()
    with torch.no_grad():
        assert_close_rel(m(x), hf_logits(out, x))                  # transformers loads what we wrote
        assert torch.equal(model.load_model(out)(x), m(x))        # and we read it back bit for bit
    for name, p in model.load_model(out).state_dict().items():
        assert torch.equal(p, m.state_dict()[name]), name


def test_save_sharded_and_overwrite(make_checkpoint, tmp_path):
    m = model.load_model(make_checkpoint("qwen2"))
    out = str(tmp_path / "ckpt")
    runs.save_model(m, out, max_shard_bytes=20_000)
    assert os.path.isfile(os.path.join(out, "model.safetensors.index.json"))
    runs.save_model(m, out)  # replaces the folder atomically; no stale shards, no temporary folders left
    assert sorted(os.listdir(out)) == ["config.json", "model.safetensors"]
    assert sorted(os.listdir(tmp_path)) == ["ckpt", "qwen2-0"]
    x = ids()
    with torch.no_grad():
        assert torch.equal(model.load_model(out)(x), m(x))


def test_bf16_load_holds_half_the_bytes(make_checkpoint):
    path = make_checkpoint("llama")
    m32, m16 = model.load_model(path), model.load_model(path, dtype=torch.bfloat16)
    nbytes = lambda m: sum(p.numel() * p.element_size() for p in m.parameters())  # noqa: E731
    assert nbytes(m16) * 2 == nbytes(m32)
    assert all(p.dtype == torch.bfloat16 for p in m16.parameters())
    x = ids()
    with torch.no_grad():
        ref, out = m32(x), m16(x).float()
    assert (out.argmax(-1) == ref.argmax(-1)).float().mean() > 0.9


def test_tokenizer_stop_ids(make_checkpoint):
    path = make_checkpoint("qwen2")
    tok = prompts.load_tokenizer(path, stop="turn")
    eot, im_end = tok.tok.token_to_id("<|endoftext|>"), tok.tok.token_to_id("<|im_end|>")
    assert set(tok.stop_ids) == {eot, im_end}  # Qwen base declares <|endoftext|>; chat turns end with <|im_end|>
    # the official (vLLM) rule: the tokenizer's EOS and generation_config.json's ids, nothing else
    assert prompts.load_tokenizer(path).stop_ids == (eot,) and tok.eos_id == eot
    generation = os.path.join(path, "generation_config.json")
    with open(generation) as f:
        declared = json.load(f)
    with open(generation, "w") as f:  # an instruct checkpoint declares both
        json.dump(dict(declared, eos_token_id=[im_end, eot]), f)
    assert prompts.load_tokenizer(path).stop_ids == (eot, im_end)
    os.remove(generation)  # none: the tokenizer's EOS alone
    assert prompts.load_tokenizer(path).stop_ids == (eot,)
    with open(os.path.join(path, "tokenizer_config.json"), "w") as f:
        json.dump({"tokenizer_class": "PreTrainedTokenizerFast"}, f)
    with pytest.raises(ValueError, match="no EOS token in tokenizer_config.json"):
        prompts.load_tokenizer(path)
    assert set(prompts.load_tokenizer(path, stop="turn").stop_ids) == {eot, im_end}  # config.json's, end-of-turn
    text = "<|im_start|>user\nWhat is 12 + 30?<|im_end|>\n"
    assert tok.decode(tok.encode(text)) == text
    assert tok.encode("<|im_end|>") == [im_end]


# ---- bad input: one-line errors that name the file and the problem -------------------------------------

def expect_error(path, *fragments):
    with pytest.raises(model.CheckpointError) as e:
        model.load_model(path)
    msg = str(e.value)
    assert "\n" not in msg and all(f in msg for f in fragments), msg


def test_error_missing_folder_and_config(tmp_path):
    expect_error(str(tmp_path / "nope"), "nope", "no such checkpoint folder")
    expect_error(str(tmp_path), "no config.json")


def test_error_unsupported_model_type(make_checkpoint):
    path = make_checkpoint("llama")
    with open(os.path.join(path, "config.json")) as f:
        hf = json.load(f)
    hf["model_type"] = "mistral"
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(hf, f)
    expect_error(path, "config.json", "'mistral'", "llama, qwen2")


@pytest.mark.parametrize("change,fragment", [
    (dict(rope_parameters={"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e4}), "'yarn'"),
    (dict(use_sliding_window=True), "sliding-window"),
])
def test_error_unsupported_features(make_checkpoint, change, fragment):
    path = make_checkpoint("qwen2")
    with open(os.path.join(path, "config.json")) as f:
        hf = json.load(f)
    hf.update(change)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(hf, f)
    expect_error(path, "config.json", fragment)


def rewrite_tensors(path, edit):
    from safetensors.torch import load_file, save_file
    file = os.path.join(path, "model.safetensors")
    tensors = load_file(file)
    edit(tensors)
    save_file(tensors, file, metadata={"format": "pt"})


def test_error_tensor_missing_unexpected_misshaped(make_checkpoint):
    path = make_checkpoint("llama")
    rewrite_tensors(path, lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))
    expect_error(path, "missing", "model.layers.1.mlp.up_proj.weight")
    path = make_checkpoint("llama")
    rewrite_tensors(path, lambda t: t.update({"model.layers.0.extra.weight": torch.zeros(2)}))
    expect_error(path, "model.safetensors", "unexpected tensor model.layers.0.extra.weight")
    path = make_checkpoint("llama")
    rewrite_tensors(path, lambda t: t.update({"model.norm.weight": torch.zeros(65)}))
    expect_error(path, "model.safetensors", "model.norm.weight", "(65,)", "(64,)")


def test_error_truncated_file_and_absent_shard(make_checkpoint):
    path = make_checkpoint("llama")
    file = os.path.join(path, "model.safetensors")
    with open(file, "r+b") as f:
        f.truncate(os.path.getsize(file) // 2)
    expect_error(path, "model.safetensors", "cannot read safetensors")
    path = make_checkpoint("qwen2", shard_size="40KB")
    with open(os.path.join(path, "model.safetensors.index.json")) as f:
        shard = sorted(set(json.load(f)["weight_map"].values()))[-1]
    os.remove(os.path.join(path, shard))
    expect_error(path, "model.safetensors.index.json", shard, "absent")
    shutil.rmtree(path)
