"""model.py — what the network is: a hand-written Llama / Qwen2 decoder that reads and writes HF checkpoints.

Module names mirror the Hugging Face tensor names (`model.layers.3.self_attn.q_proj.weight` ...), so loading
is a strict copy and a checkpoint written here opens in transformers and vLLM unchanged. The KV cache lives
outside the modules: `sample.py` allocates one per generate call and passes it through `hidden_states()`.

    python -c "import model; m = model.load_model('data/toy'); print(m.config)"
"""
import functools
import json
import math
import os
import shutil
from dataclasses import dataclass, field, fields

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file

import triton_kernels

SUPPORTED_MODEL_TYPES = ("llama", "qwen2")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class CheckpointError(ValueError):
    """A checkpoint folder that sept cannot read; the message names the file and the problem."""


# ----------------------------------------------------------------------------------------------------------
# Configuration: an explicit map from HF config.json keys to ours; anything we would have to guess is an error.

@dataclass
class ModelConfig:
    model_type: str = "llama"          # "llama" or "qwen2"
    vocab_size: int = 32000
    hidden_size: int = 512
    intermediate_size: int = 1376      # SwiGLU inner width
    num_hidden_layers: int = 8
    num_attention_heads: int = 8
    num_key_value_heads: int = 8       # GQA: each KV head serves num_attention_heads / num_key_value_heads queries
    head_dim: int = 64                 # may differ from hidden_size / num_attention_heads
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: dict | None = None   # None, or the `llama3` parameters
    max_position_embeddings: int = 2048
    attention_bias: bool = False       # q/k/v biases (always on for qwen2)
    tie_word_embeddings: bool = False  # head shares the embedding matrix
    dtype: str = "float32"             # the dtype the checkpoint was stored in
    hf_config: dict = field(default_factory=dict, repr=False)  # the config.json we read, written back on save


# The sizes, which have no default: a config.json without one of them is an error.
REQUIRED_KEYS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
# HF key -> our field, for keys whose meaning is the same in transformers 4.x and 5.x.
HF_KEYS = {k: k for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                          "num_attention_heads", "num_key_value_heads", "head_dim", "rms_norm_eps",
                          "max_position_embeddings", "attention_bias", "tie_word_embeddings", "model_type")}


def config_from_hf(hf: dict, where: str = "config.json") -> ModelConfig:
    def fail(msg):
        raise CheckpointError(f"{where}: {msg}")
    if hf.get("model_type") not in SUPPORTED_MODEL_TYPES:
        fail(f"unsupported model_type {hf.get('model_type')!r}; supported: {', '.join(SUPPORTED_MODEL_TYPES)}")
    if missing := [k for k in REQUIRED_KEYS if k not in hf]:
        fail(f"missing {', '.join(missing)}")
    cfg = {"num_key_value_heads": hf["num_attention_heads"], "head_dim": hf["hidden_size"] // hf["num_attention_heads"],
           "tie_word_embeddings": False,  # transformers' default for both families
           **{ours: hf[theirs] for theirs, ours in HF_KEYS.items() if hf.get(theirs) is not None}}
    if hf["model_type"] == "qwen2":
        cfg["attention_bias"] = True
        if hf.get("use_sliding_window") or "sliding_attention" in (hf.get("layer_types") or []):
            fail("sliding-window attention is switched on; sept implements full attention only")
    if hf.get("hidden_act", "silu") != "silu" or hf.get("mlp_bias"):
        fail(f"hidden_act {hf.get('hidden_act')!r}, mlp_bias {hf.get('mlp_bias')}: sept has SwiGLU (silu), no MLP bias")
    if cfg["num_attention_heads"] % cfg["num_key_value_heads"]:
        fail("num_key_value_heads must divide num_attention_heads")
    # RoPE: transformers 5.x writes `rope_parameters` (theta inside), 4.x writes `rope_theta` + `rope_scaling`.
    rope = dict(hf.get("rope_parameters") or hf.get("rope_scaling") or {})
    rope_type = rope.pop("rope_type", rope.pop("type", "default"))
    cfg["rope_theta"] = float(rope.pop("rope_theta", hf.get("rope_theta", 10000.0)))
    if rope.pop("partial_rotary_factor", 1.0) != 1.0:
        fail("partial_rotary_factor != 1 is not supported")
    if rope_type == "llama3":
        need = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
        if any(k not in rope for k in need):
            fail(f"llama3 rope scaling needs {', '.join(need)}")
        cfg["rope_scaling"] = {k: rope[k] for k in need}
    elif rope_type != "default":
        fail(f"rope type {rope_type!r} is not supported (default and llama3 are)")
    if (dtype := hf.get("dtype") or hf.get("torch_dtype") or "float32") not in DTYPES:
        fail(f"dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    return ModelConfig(**cfg, dtype=dtype, hf_config=hf)


@functools.lru_cache(maxsize=16)
@torch.inference_mode(False)  # a plain tensor, reusable by training, even when first asked for while sampling
@torch.no_grad()
def rope_inv_freq(D: int, theta: float, scaling: tuple | None, device: torch.device) -> torch.Tensor:
    """Inverse frequencies (D/2,) in fp32, with Llama 3's long-context rescaling (`scaling`: its sorted items).
    Computed once per device and kept here rather than as a module buffer, which model.to(bf16) would round."""
    inv_freq = 1.0 / theta ** (torch.arange(0, D, 2, device=device, dtype=torch.float32) / D)
    if scaling:  # llama3: keep high frequencies, divide low ones by `factor`, blend in between
        s = dict(scaling)
        old_len, factor = s["original_max_position_embeddings"], s["factor"]
        wavelen = 2 * math.pi / inv_freq
        smooth = (old_len / wavelen - s["low_freq_factor"]) / (s["high_freq_factor"] - s["low_freq_factor"])
        blended = (1 - smooth) * inv_freq / factor + smooth * inv_freq
        inv_freq = torch.where(wavelen > old_len / s["low_freq_factor"], inv_freq / factor,
                               torch.where(wavelen < old_len / s["high_freq_factor"], inv_freq, blended))
    return inv_freq


def rope_cos_sin(cfg: ModelConfig, positions: torch.Tensor, dtype):
    """cos, sin of shape (B, T, 1, head_dim) for integer positions (B, T); computed in fp32 like HF.
    sin carries rotate-half's sign (-sin on the first half), so apply_rope needs no negation or concatenation."""
    scaling = tuple(sorted(cfg.rope_scaling.items())) if cfg.rope_scaling else None  # hashable, for the cache
    freqs = positions[..., None].float() * rope_inv_freq(cfg.head_dim, cfg.rope_theta, scaling, positions.device)
    cos, sin = freqs.cos(), freqs.sin()
    cos, sin = torch.cat((cos, cos), dim=-1), torch.cat((-sin, sin), dim=-1)      # HF's rotate-half layout
    return cos[:, :, None].to(dtype), sin[:, :, None].to(dtype)


def apply_rope(x, cos, sin):
    """HF's x·cos + rotate_half(x)·sin, where rotate_half(x) = (-x2, x1) = roll(x, D/2) with the sign in sin."""
    return torch.addcmul(x * cos, x.roll(x.shape[-1] // 2, dims=-1), sin)


# ----------------------------------------------------------------------------------------------------------
# The KV cache (allocated by sample.py, never stored on a module) and attention in its three modes.

@dataclass
class KVCache:
    k: torch.Tensor      # (n_layers, B, n_kv_heads, max_len, head_dim): head-major, see new_kv_cache
    v: torch.Tensor      # same
    lens: torch.Tensor   # (B,) int32: tokens held for each row


def new_kv_cache(cfg: ModelConfig, batch: int, max_len: int, dtype, device) -> KVCache:
    # head-major: the CPU decode's matmuls read each (row, kv head)'s keys contiguously (Triton takes any strides);
    # zeros, not empty: masked-out positions still enter the matmuls, and 0 * NaN garbage would be NaN
    shape = (cfg.num_hidden_layers, batch, cfg.num_key_value_heads, max_len, cfg.head_dim)
    return KVCache(torch.zeros(shape, dtype=dtype, device=device), torch.zeros(shape, dtype=dtype, device=device),
                   torch.zeros(batch, dtype=torch.int32, device=device))


def attention_backend(device) -> str:
    """SEPT_ATTENTION=triton|torch; default triton on CUDA, torch on the CPU."""
    backend = os.environ.get("SEPT_ATTENTION") or ("triton" if device.type == "cuda" else "torch")
    if backend not in ("triton", "torch"):
        raise ValueError(f"SEPT_ATTENTION={backend!r}: expected 'triton' or 'torch'")
    return backend


@dataclass
class AttentionMeta:
    """What every layer's attention needs for one forward, worked out once rather than once per layer."""
    mode: str                           # "causal" (no cache), "prefill" or "decode": see attention
    positions: torch.Tensor             # (B, T) position of each input token
    cache: KVCache | None = None        # None in "causal" mode
    backend: str = "torch"              # attention_backend()
    rows: torch.Tensor | None = None    # (B, 1) cache row of each input row, for writing its k/v
    lens: torch.Tensor | None = None    # (B,) valid positions per row: the prompt (prefill) or prefix (decode)


def attention_meta(mode: str, positions, cache: KVCache | None, rows=None) -> AttentionMeta:
    """rows: which cache rows the B input rows fill (default 0..B-1). A prefill reads each row's prompt length
    from cache.lens, which the caller sets first, so the Triton kernel skips blocks of padding."""
    if mode not in ("causal", "prefill", "decode") or (cache is None) != (mode == "causal"):
        raise ValueError(f"attention mode {mode!r} with {'no' if cache is None else 'a'} KV cache: expected "
                         f"'causal' without one, 'prefill' or 'decode' with one")
    meta = AttentionMeta(mode, positions, cache, attention_backend(positions.device))
    if cache is not None:
        B = positions.shape[0]
        meta.rows = (torch.arange(B, device=positions.device) if rows is None else rows)[:, None]
        meta.lens = cache.lens[meta.rows[:, 0]] if mode == "prefill" else positions[:, 0] + 1
    return meta


def attention(q, k, v, meta: AttentionMeta, layer: int):
    """The one attention function. q: (B, T, Hq, D); k, v: (B, T, Hkv, D). Modes: "causal", plain causal
    attention (training, a full forward); "prefill", right-padded prompts from position 0, and "decode", one
    token per row (T = 1) against its cached prefix, both writing k/v into the cache at their positions first."""
    if meta.mode != "causal":
        meta.cache.k[layer].transpose(1, 2)[meta.rows, meta.positions] = k
        meta.cache.v[layer].transpose(1, 2)[meta.rows, meta.positions] = v
    if meta.mode == "decode":  # the cache's (B, Hkv, S, D) storage seen as (B, S, Hkv, D), as the kernel takes it
        K, V = meta.cache.k[layer].transpose(1, 2), meta.cache.v[layer].transpose(1, 2)
        if meta.backend == "triton":
            return triton_kernels.attention_decode(q[:, 0], K, V, meta.lens)[:, None]
        return triton_kernels.attention_decode_reference(q[:, 0], K, V, meta.lens)[:, None]
    if meta.mode == "prefill" and meta.backend == "triton":
        return triton_kernels.attention_prefill(q, k, v, meta.lens)
    # right padding + causality: a valid position never looks at padding, so no extra mask is needed
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                         is_causal=True, enable_gqa=True)
    return out.transpose(1, 2)                                                     # (B, T, Hq, D)


# ----------------------------------------------------------------------------------------------------------
# The network.

class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight, self.eps = nn.Parameter(torch.ones(dim)), eps

    def forward(self, x):  # normalize in fp32 like HF, scale in the input's dtype (F.rms_norm: 2x slower on CPU)
        h = x.float()
        return self.weight * (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype)


class SelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.layer, self.Hq, self.Hkv, self.D = layer, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        self.q_proj = nn.Linear(cfg.hidden_size, self.Hq * self.D, bias=cfg.attention_bias)
        self.k_proj = nn.Linear(cfg.hidden_size, self.Hkv * self.D, bias=cfg.attention_bias)
        self.v_proj = nn.Linear(cfg.hidden_size, self.Hkv * self.D, bias=cfg.attention_bias)
        self.o_proj = nn.Linear(self.Hq * self.D, cfg.hidden_size, bias=False)

    def forward(self, x, cos, sin, meta: AttentionMeta):
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.Hq, self.D)
        k = self.k_proj(x).view(B, T, self.Hkv, self.D)
        v = self.v_proj(x).view(B, T, self.Hkv, self.D)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        y = attention(q, k, v, meta, self.layer)                     # (B, T, Hq, D)
        return self.o_proj(y.reshape(B, T, self.Hq * self.D))


class MLP(nn.Module):  # SwiGLU
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = SelfAttention(cfg, layer)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x, cos, sin, meta: AttentionMeta):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, meta)
        return x + self.mlp(self.post_attention_layernorm(x))


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.model = nn.ModuleDict(dict(
            embed_tokens=nn.Embedding(cfg.vocab_size, cfg.hidden_size),
            layers=nn.ModuleList(DecoderLayer(cfg, i) for i in range(cfg.num_hidden_layers)),
            norm=RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)))
        # a tied head has no weight of its own: head_weight is the embedding matrix
        self.lm_head = None if cfg.tie_word_embeddings else nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self.checkpoint_layers = False  # per-layer activation checkpointing, switched on by train.py

    @property
    def head_weight(self) -> torch.Tensor:  # (vocab, hidden)
        return self.model.embed_tokens.weight if self.lm_head is None else self.lm_head.weight

    def hidden_states(self, input_ids, cache: KVCache | None = None, positions=None, rows=None,
                      mode: str = "causal"):
        """Final-norm hidden states (B, T, hidden). positions (B, T) default to 0..T-1 for every row. mode (see
        attention): "causal" without a cache; with one, "prefill" or "decode", rows (B,) the cache rows the inputs
        fill (default 0..B-1)."""
        B, T = input_ids.shape
        if positions is None:
            positions = torch.arange(T, device=input_ids.device).expand(B, T)
        x = self.model.embed_tokens(input_ids)
        cos, sin = rope_cos_sin(self.config, positions, x.dtype)
        meta = attention_meta(mode, positions, cache, rows)
        for layer in self.model.layers:
            if self.checkpoint_layers and torch.is_grad_enabled():
                x = torch.utils.checkpoint.checkpoint(layer, x, cos, sin, meta, use_reentrant=False)
            else:
                x = layer(x, cos, sin, meta)
        return self.model.norm(x)

    def forward(self, input_ids):
        """A full causal forward without a cache: logits (B, T, vocab)."""
        return F.linear(self.hidden_states(input_ids), self.head_weight)


def empty_model(cfg: ModelConfig, device, dtype) -> Transformer:
    """A Transformer with uninitialized weights in `dtype` on `device`, built on the meta device: no fp32 copy first."""
    with torch.device("meta"):
        model = Transformer(cfg)
    return model.to(dtype).to_empty(device=device)


# ----------------------------------------------------------------------------------------------------------
# Loading and saving HF-format checkpoints.

def read_json(file: str) -> dict:
    """The JSON object in `file`; invalid JSON, or valid JSON that is not an object ([] ...), names the file."""
    try:
        with open(file, encoding="utf-8") as f:
            if isinstance(obj := json.load(f), dict):
                return obj
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{file}: not valid JSON ({e})") from None
    raise ValueError(f"{file}: expected a JSON object, got {type(obj).__name__}")


def read_config(path: str) -> ModelConfig:
    file = os.path.join(path, "config.json")
    if not os.path.isfile(file):
        raise CheckpointError(f"{path}: " + ("no config.json (expected a Hugging Face checkpoint folder)"
                                             if os.path.isdir(path) else "no such checkpoint folder"))
    return config_from_hf(read_json(file), file)


@torch.no_grad()
def load_model(path: str, device="cpu", dtype=None) -> Transformer:
    """Strict load: every tensor used, every parameter filled, shapes equal. dtype None = the stored dtype.
    Tensors stream one at a time from the (memory-mapped) files into empty_model: one copy of the weights."""
    cfg = read_config(path)
    model = empty_model(cfg, device, dtype or DTYPES[cfg.dtype])
    params, filled = dict(model.named_parameters()), set()
    index = os.path.join(path, "model.safetensors.index.json")
    files = ([os.path.join(path, s) for s in sorted(set(read_json(index).get("weight_map", {}).values()))]
             if os.path.isfile(index) else [os.path.join(path, "model.safetensors")])
    if absent := [os.path.basename(f) for f in files if not os.path.isfile(f)]:
        raise CheckpointError(f"{index}: shard {absent[0]} is named in the index but absent" if os.path.isfile(index)
                              else f"{path}: no model.safetensors or model.safetensors.index.json")
    for file in files:
        try:  # safetensors checks at opening that the header parses and the file holds every tensor's bytes
            f = safe_open(file, framework="pt", device="cpu")
        except Exception as e:  # its errors for truncated or corrupt files
            raise CheckpointError(f"{file}: cannot read safetensors ({e})") from None
        for name in f.keys():
            if name == "lm_head.weight" and cfg.tie_word_embeddings:
                continue  # some tied checkpoints also store the head; the embedding is the source
            if name not in params:
                raise CheckpointError(f"{file}: unexpected tensor {name}")
            tensor = f.get_tensor(name)
            if tuple(tensor.shape) != tuple(params[name].shape):
                raise CheckpointError(f"{file}: tensor {name} has shape {tuple(tensor.shape)}, "
                                      f"the config implies {tuple(params[name].shape)}")
            params[name].copy_(tensor)
            filled.add(name)
    if missing := sorted(set(params) - filled):
        raise CheckpointError(f"{path}: tensors missing from the checkpoint: {', '.join(missing[:8])}"
                              + (f" and {len(missing) - 8} more" if len(missing) > 8 else ""))
    return model.eval()


# Copied beside the weights of a checkpoint we write, so that it is a whole HF folder.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "generation_config.json", "special_tokens_map.json",
                   "chat_template.jinja")


def save_model(model: Transformer, folder: str, max_shard_bytes: int = 4 << 30, copy_from: str | None = None):
    """Writes the HF checkpoint into `folder` (created; it must hold no checkpoint yet): config.json,
    model.safetensors (or shards of max_shard_bytes and their index), and the tokenizer files of copy_from.
    Replacing a checkpoint whole, and never a user's folder, is runs.write_folder's job."""
    os.makedirs(folder, exist_ok=True)
    if os.listdir(folder):
        raise FileExistsError(f"{folder}: not empty; runs.write_folder replaces a checkpoint folder whole")
    tensors = {name: p.detach().contiguous().cpu() for name, p in model.named_parameters()}
    hf = dict(model.config.hf_config or hf_config_from(model.config))
    hf["tie_word_embeddings"] = model.config.tie_word_embeddings
    for key in [k for k in ("torch_dtype", "dtype") if k in hf] or ["torch_dtype"]:
        hf[key] = str(next(iter(tensors.values())).dtype).removeprefix("torch.")
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(hf, f, indent=2)
    shards, size = [{}], 0
    for name, t in tensors.items():
        if shards[-1] and size + t.nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = t
        size += t.nbytes
    names = ["model.safetensors"] if len(shards) == 1 else [
        f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    for name, shard in zip(names, shards):
        save_file(shard, os.path.join(folder, name), metadata={"format": "pt"})
    if len(shards) > 1:
        index = {"metadata": {"total_size": sum(t.nbytes for t in tensors.values())},
                 "weight_map": {t: n for n, shard in zip(names, shards) for t in shard}}
        with open(os.path.join(folder, "model.safetensors.index.json"), "w") as f:
            json.dump(index, f, indent=2)
    for name in TOKENIZER_FILES:
        if copy_from and os.path.isfile(os.path.join(copy_from, name)):
            shutil.copy(os.path.join(copy_from, name), os.path.join(folder, name))


def hf_config_from(cfg: ModelConfig) -> dict:
    """A config.json for a model built here from scratch (the toy), in transformers' 4.x form."""
    hf = {f.name: getattr(cfg, f.name) for f in fields(cfg) if f.name not in ("hf_config", "dtype", "rope_scaling")}
    hf.update(architectures=["LlamaForCausalLM" if cfg.model_type == "llama" else "Qwen2ForCausalLM"],
              hidden_act="silu", rope_scaling=cfg.rope_scaling and {"rope_type": "llama3", **cfg.rope_scaling})
    return hf


