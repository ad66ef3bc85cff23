"""Every deployed form through export_genai (the fused graph on a Llama): QA-LoRA folded with float
zero points, QA-LoRA trained with integer zero points, LoRA folded into float weights, RTN and
GPTQ bases without adapters. 32 greedy tokens from onnxruntime-genai and from our loop equal HF
``generate`` of the same PyTorch model; logits within 1e-4 (accuracy level 0)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from models import nudged
from test_genai import GREEDY_STEPS, REL, VOCAB, _quiet, llama, og, og_greedy, prompt

import lowrank_compiler as lrc
from lowrank_compiler.genai import export_genai
from lowrank_compiler.runtime.layers.protocol import AdapterLayer

FORMS = {
    "qalora-float-zeros": (dict(method="qalora", rank=8), "float"),
    "qalora-int-zeros": (dict(method="qalora", rank=8, zero_point="int"), "split"),
    "lora": (dict(method="lora", rank=8), "split"),
    "rtn": (dict(method="rtn"), None),
    "gptq": (dict(method="rtn", quantizer="gptq"), None),
}


def deployed(form: str):
    _quiet()
    policy, zeros = FORMS[form]
    torch.manual_seed(0)
    model = llama().eval()
    ids = torch.randint(2, VOCAB, (2, 8), generator=torch.Generator().manual_seed(1))
    calibration = [
        torch.randint(2, VOCAB, (4, 16), generator=torch.Generator().manual_seed(s))
        for s in range(4)
    ]
    lrc.compile(
        model,
        lrc.Policy(bits=4, group_size=32, **policy),
        example_inputs=(ids,),
        calibration=calibration if policy.get("quantizer") == "gptq" else None,
    )
    if zeros is None:
        return model
    nudged(model, scale=0.05 if policy["method"] == "qalora" else 0.02, parts=("lora_B",))
    return lrc.fold(model, zeros=zeros)


@pytest.mark.parametrize("form", list(FORMS))
def test_each_deployed_form_generates_the_pytorch_tokens(form, tmp_path):
    model = deployed(form)
    folder = export_genai(model, tmp_path / "genai", accuracy_level=0)
    ids, mask, ref, logits = prompt(model, [10], GREEDY_STEPS)
    session = lrc.runtime.load(folder)
    ours, our_logits = session.generate(ids, mask, max_new_tokens=GREEDY_STEPS, output_logits=True)
    assert torch.equal(ours, ref)
    for step, (a, b) in enumerate(zip(our_logits, logits)):
        assert np.abs(a - b).max() <= REL * np.abs(b).max(), f"step {step}"
    if og is None:  # onnxruntime-genai not installed: our loop alone
        return
    assert og_greedy(folder, ids, GREEDY_STEPS)[0].tolist() == ref[0, ids.shape[1] :].tolist()


def test_unmerged_lora_is_written_as_it_computes_and_generates_the_pytorch_tokens(tmp_path):
    _quiet()
    torch.manual_seed(0)
    model = llama().eval()
    ids = torch.randint(2, VOCAB, (2, 8), generator=torch.Generator().manual_seed(1))
    lrc.compile(model, lrc.Policy(method="lora", rank=8), example_inputs=(ids,))
    nudged(model, scale=0.02, parts=("lora_B",))
    with pytest.raises(lrc.ExportError, match="unmerged=True"):
        export_genai(model, tmp_path / "refused")
    assert not (tmp_path / "refused").exists()
    folder = export_genai(model, tmp_path / "genai", accuracy_level=0, unmerged=True)
    adapted = sum(isinstance(m, AdapterLayer) for m in model.modules())
    graph = onnx.load(str(folder / "model.onnx"), load_external_data=False).graph
    matmuls = sum(n.op_type == "MatMul" for n in graph.node)
    assert matmuls == 3 * adapted + 1  # each layer's base, A and B unfused; and the head
    prompt_ids, mask, ref, logits = prompt(model, [10], GREEDY_STEPS)
    session = lrc.runtime.load(folder)
    ours, our_logits = session.generate(
        prompt_ids, mask, max_new_tokens=GREEDY_STEPS, output_logits=True
    )
    assert torch.equal(ours, ref)
    for step, (a, b) in enumerate(zip(our_logits, logits)):
        assert np.abs(a - b).max() <= REL * np.abs(b).max(), f"step {step}"
