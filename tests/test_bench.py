"""bench.py at its smallest (--quick): every section runs on the CPU and the JSON has the promised keys.
No timing is asserted: the figures depend on the machine, the report's shape does not."""
import json

import bench
from model import ModelConfig

MACHINE_KEYS = {"device", "name", "threads", "torch", "triton", "transformers", "date", "copy_gb_s", "peak_tflops"}
ROW_KEYS = {  # keys every measured row of a section carries on the CPU
    "sampling": {"name", "batch", "new_tokens", "sept_tok_s", "hf_tok_s", "speedup_vs_hf", "decode_ms",
                 "roofline_frac"},
    "kernels": {"name", "kind", "batch", "seq", "triton_ms", "sdpa_ms", "speedup_vs_sdpa"},
    "training": {"name", "impl", "seq_tokens", "step_s", "tok_s", "tflops", "mfu", "peak_gb"},
    "lengths": {"name", "fixed_tok_s", "static_tok_s", "stream_tok_s", "static_share", "stream_share"},
    "round": {"name", "seconds_sampling", "seconds_training", "seconds_total"},
}


def test_quick_bench_writes_every_section(tmp_path, monkeypatch):
    # the CPU bench times what the wrappers run on CPU tensors (the references), not Triton's interpreter,
    # which conftest switches on for the kernel tests
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    out = tmp_path / "bench.json"
    bench.main(["--quick", "--threads", "1", "--reps", "1", "--out", str(out)])
    report = json.loads(out.read_text())
    assert MACHINE_KEYS <= set(report["machine"]) and report["machine"]["device"] == "cpu"
    assert report["config"]["quick"] is True
    for section, keys in ROW_KEYS.items():
        rows = report[section]
        assert rows, section
        assert not [r for r in rows if "error" in r], rows
        for row in rows:
            assert keys <= set(row), (section, keys - set(row))
    assert {r["kind"] for r in report["kernels"]} == {"prefill", "decode"}
    assert {r["impl"] for r in report["training"]} == {"sept", "transformers"}


def test_only_selects_sections(tmp_path, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    out = tmp_path / "bench.json"
    bench.main(["--quick", "--threads", "1", "--only", "kernels", "--out", str(out)])
    report = json.loads(out.read_text())
    assert "kernels" in report and "sampling" not in report and "training" not in report


def test_train_flops_formula():
    # a tied head: every parameter is a multiplied matrix (or a norm, counted too)
    cfg = ModelConfig("llama", 512, 64, 128, 2, 4, 2, 16, tie_word_embeddings=True)
    L, H, D = cfg.num_hidden_layers, cfg.num_attention_heads, cfg.head_dim
    assert bench.train_flops(cfg, 1000, [10, 20]) == 6 * 1000 * 30 + 6 * L * H * D * (100 + 400)
    untied = ModelConfig("llama", 8192, 256, 768, 4, 4, 2, 64)  # an untied embedding: left out
    assert bench.train_flops(untied, 10**7, [5]) == 6 * (10**7 - untied.vocab_size * untied.hidden_size) * 5 + \
        6 * untied.num_hidden_layers * untied.num_attention_heads * untied.head_dim * 25
