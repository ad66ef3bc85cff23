"""export_genai(attention="gqa"): one GroupQueryAttention per layer over a shared KV buffer, fused
q/k/v, SkipSimplifiedLayerNormalization; run by onnxruntime-genai and by DecoderSession (IO
binding, left-padded batches moved to the front), against HF ``generate`` on the same model.

One export per case (module-scoped, ~4 s each): Llama, Qwen2 (q/k/v bias), Phi-3 (fused
qkv_proj), Mistral with a sliding window of 8 (``local_window_size``), each QA-LoRA INT4 folded
(split zero points), and a float Llama. Parity at accuracy level 0. Prompts and helpers come
from ``test_genai.py`` (well-separated greedy runs, so tokens compare exactly).
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from models import made_once
from test_genai import (
    CONTEXT,
    GREEDY_STEPS,
    LOGIT_STEPS,
    REL,
    _common,
    _quiet,
    folded_model,
    gpt2,
    llama,
    needs_og,
    og_greedy,
    phi3,
    prompt,
    qwen2,
    transformers,
)

from lowrank_compiler.genai import ExportError, _attention, export_genai
from lowrank_compiler.runtime.serve.generate import DecoderSession

WINDOW = 8


def mistral_window():  # HF masks keys older than the window; GQA's local_window_size
    return transformers.MistralForCausalLM(
        transformers.MistralConfig(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            sliding_window=WINDOW,
            **_common(),
        )
    )


def float_llama():
    _quiet()
    torch.manual_seed(0)
    return llama().eval()


BUILDS = {
    "llama": lambda: folded_model(llama),
    "qwen2": lambda: folded_model(qwen2),
    "phi3": lambda: folded_model(phi3),
    "mistral-window": lambda: folded_model(mistral_window),
    "llama-float": float_llama,
}
PROBE = torch.randint(2, 128, (2, 7), generator=torch.Generator().manual_seed(42))


def _snapshot(model):
    with torch.no_grad():
        logits = model(PROBE).logits.clone()
    return {n: type(m) for n, m in model.named_modules()}, logits


class Case:
    def __init__(self, name, tmp_path_factory):
        self.name = name
        self.model = BUILDS[name]()
        self.before = _snapshot(self.model)
        root = tmp_path_factory.mktemp(name)
        self.dir = export_genai(
            self.model, root / "genai", accuracy_level=0, dump_dir=root / "dumps"
        )
        self.dumps = root / "dumps"
        self.after = _snapshot(self.model)
        self.session = DecoderSession(self.dir)


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """One model and one export per case, made on first use."""
    return made_once(lambda name: Case(name, tmp_path_factory))


@pytest.fixture(params=list(BUILDS))
def case(request, exports):
    return exports(request.param)


def test_graph_is_fused(case):
    proto = onnx.load(str(case.dir / "model.onnx"), load_external_data=False)
    ops = [n.op_type for n in proto.graph.node]
    assert ops.count("GroupQueryAttention") == 2
    assert (
        ops.count("SkipSimplifiedLayerNormalization") == 4
    )  # 2 per layer; the first norm has no residual
    assert ops.count("SimplifiedLayerNormalization") == 1
    per_layer = 4 if case.name == "phi3" else 5  # qkv, o, gate, up, down (Phi-3: gate_up)
    assert ops.count("MatMulNBits") == (0 if case.name == "llama-float" else 2 * per_layer)
    gqa = [n for n in proto.graph.node if n.op_type == "GroupQueryAttention"]
    assert all(n.input[1] == "" and n.input[2] == "" for n in gqa)  # packed q/k/v
    window = {a.name: onnx.helper.get_attribute_value(a) for a in gqa[0].attribute}[
        "local_window_size"
    ]
    assert window == (WINDOW if case.name == "mistral-window" else -1)
    names = [i.name for i in proto.graph.input]
    assert (
        names[:3] == ["input_ids", "attention_mask", "past_key_values.0.key"]
        and "position_ids" not in names
    )
    config = json.loads((case.dir / "genai_config.json").read_text())
    assert config["search"]["past_present_share_buffer"] is True
    assert "position_ids" not in config["model"]["decoder"]["inputs"]
    assert json.loads((case.dir / "lowrank_compiler.json").read_text())["attention"] == "gqa"


def test_the_onnx_stage_dumps_each_pass_and_fuses_qkv_and_the_norms(case):
    names = sorted(p.stem for p in case.dumps.glob("*.txt"))
    assert names == [
        "00-onnx-as-exported",
        "01-share-table-codes",
        "02-split-form",
        "03-fuse-qkv",
        "04-fuse-skip-norm",
    ]
    qkv = (case.dumps / "03-fuse-qkv.txt").read_text()
    packed = case.name == "phi3"  # its qkv_proj is one projection already
    assert f"stats: {{'fused': {0 if packed else 2}}}" in qkv
    fused = (case.dumps / "04-fuse-skip-norm.txt").read_text()
    assert "modified: yes" in fused and "stats: {'fused': 4, 'norms': 5}" in fused
    assert fused.count("com.microsoft::SkipSimplifiedLayerNormalization(") == 4
    assert "com.microsoft::GroupQueryAttention(" in fused
    assert "04-fuse-skip-norm.html" in (case.dumps / "index.html").read_text()


def test_users_model_is_unchanged(case):
    types, logits = case.before
    types_after, logits_after = case.after
    assert types_after == types
    assert torch.equal(logits_after, logits)


@needs_og
def test_greedy_tokens_match_hf_in_onnxruntime_genai_and_ours(case):
    ids, mask, ref, _ = prompt(case.model, [10], GREEDY_STEPS)
    want = ref[0, ids.shape[1] :].tolist()
    assert og_greedy(case.dir, ids, GREEDY_STEPS)[0].tolist() == want
    assert torch.equal(case.session.generate(ids, mask, max_new_tokens=GREEDY_STEPS), ref)


@needs_og
def test_onnxruntime_genai_batch_takes_right_padding(case):
    ids, mask, ref, _ = prompt(case.model, [9, 6, 3], 12)
    right = torch.zeros_like(ids)
    for row in range(ids.shape[0]):
        real = ids[row][mask[row] == 1]
        right[row, : len(real)] = real
    assert og_greedy(case.dir, right, 12).tolist() == ref[:, ids.shape[1] :].tolist()


@pytest.mark.parametrize("lengths", [[9], [9, 6, 3]], ids=["batch1", "batch3-left-padded"])
def test_logits_every_step_match_pytorch(case, lengths):
    ids, mask, ref, ref_logits = prompt(case.model, lengths, LOGIT_STEPS)
    ours, logits = case.session.generate(ids, mask, max_new_tokens=LOGIT_STEPS, output_logits=True)
    assert torch.equal(ours, ref)
    assert len(logits) == LOGIT_STEPS
    for step, (got, want) in enumerate(zip(logits, ref_logits)):
        err = np.abs(got - want).max() / np.abs(want).max()
        assert err <= REL, (case.name, lengths, step, err)


def test_prefill_and_decode_equal_the_no_cache_forward(case):
    """The logits of prefill + 16 decode steps through the shared buffer equal one pass over the
    whole sequence, in onnxruntime (a first prompt, no cache) and in PyTorch (no cache)."""
    ids, mask, _, _ = prompt(case.model, [9], LOGIT_STEPS)
    seq, logits = case.session.generate(ids, mask, max_new_tokens=LOGIT_STEPS, output_logits=True)
    full = seq[:, :-1].numpy()  # the last token was never fed
    whole, _ = case.session.step(
        full, np.ones_like(full), None, case.session.empty_past(1, full.shape[1])
    )
    with torch.no_grad():
        torch_whole = case.model(input_ids=torch.from_numpy(full), use_cache=False).logits.numpy()
    scale = np.abs(torch_whole).max()
    assert np.abs(whole - torch_whole).max() <= REL * scale
    stepped = np.stack([x[0] for x in logits])  # positions 8 .. 8 + 16
    assert np.abs(stepped - whole[0, ids.shape[1] - 1 :]).max() <= REL * scale


def test_auto_falls_back_to_plain_and_gqa_says_why(tmp_path):
    _quiet()
    assert _attention(gpt2(), "auto", "gpt2", CONTEXT)[0] == "plain"
    with pytest.raises(ExportError, match="attention='gqa' cannot export GPT2LMHeadModel: GPT-2"):
        export_genai(gpt2(), tmp_path / "g", attention="gqa")
    dynamic = transformers.LlamaForCausalLM(
        transformers.LlamaConfig(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=1,
            num_attention_heads=4,
            num_key_value_heads=2,
            rope_parameters={"rope_type": "dynamic", "factor": 2.0, "rope_theta": 10000.0},
            **_common(),
        )
    )
    mode, reason = _attention(dynamic, "auto", "llama", CONTEXT)
    assert mode == "plain" and "'dynamic'" in reason
    with pytest.raises(ExportError, match="attention must be one of"):
        export_genai(dynamic, tmp_path / "x", attention="fused")
