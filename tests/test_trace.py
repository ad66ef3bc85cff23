import pytest
import torch
from models import DataDependent, hf_bert, hf_gpt2, hf_llama, ids, output, tiny_gpt

from lowrank_compiler import TraceError, trace
from lowrank_compiler.runtime import is_linear_module


def call_modules(gm):
    """Targets of the graph's linear-layer calls (torch.export adds a guard module of its own)."""
    return [
        n.target
        for n in gm.graph.nodes
        if n.op == "call_module" and is_linear_module(gm.get_submodule(n.target))
    ]


def test_fx_traces_the_hand_written_gpt_with_linear_leaves():
    model = tiny_gpt()
    gm = trace(model)
    linears = [t for t in call_modules(gm) if "proj" in t or t == "lm_head"]
    assert len(linears) == 13
    assert (
        gm.get_submodule("blocks.0.attn.q_proj") is model.blocks[0].attn.q_proj
    )  # shared, not copied
    assert torch.equal(gm(ids()), model(ids()))


@pytest.mark.parametrize("build, n_linear", [(hf_llama, 15), (hf_gpt2, 9), (hf_bert, 13)])
def test_export_folds_linear_ops_back_into_module_calls(build, n_linear):
    model = build()
    x = ids()
    gm = trace(model, (x,))
    assert gm.meta["lowrank_compiler.tracer"] == "export"
    targets = call_modules(gm)
    assert len(targets) == n_linear
    for t in targets:
        assert gm.get_submodule(t) is model.get_submodule(t)
    left = [
        n
        for n in gm.graph.nodes
        if n.target in (torch.ops.aten.linear.default, torch.ops.aten.addmm.default)
    ]
    assert left == []
    out = gm(
        x, use_cache=False
    )  # the graph was exported with the kwargs compile adds for HF models
    ref = output(model, x)
    got = out.logits if hasattr(out, "logits") and out.logits is not None else out.last_hidden_state
    assert torch.equal(got, ref)


def test_gpt2_conv1d_addmm_maps_to_the_conv1d_module():
    model = hf_gpt2()
    gm = trace(model, (ids(),))
    assert "transformer.h.0.attn.c_attn" in call_modules(gm)
    assert type(gm.get_submodule("transformer.h.0.attn.c_attn")).__name__ == "Conv1D"


def test_fx_failure_says_where_and_what_to_pass():
    with pytest.raises(TraceError) as e:
        trace(hf_llama())
    msg = str(e.value)
    assert "symbolic tracing of LlamaForCausalLM failed at" in msg
    assert "example_inputs" in msg and "trace_mode='modules'" in msg


def test_fx_failure_on_data_dependent_control_flow_names_the_line():
    with pytest.raises(TraceError, match=r"models\.py:\d+ in forward: if h.sum\(\) > 0:"):
        trace(DataDependent())


def test_export_failure_is_a_trace_error():
    with pytest.raises(TraceError, match="torch.export of TinyGPT failed"):
        trace(tiny_gpt(), (torch.zeros(2, 3),))  # float ids: embedding lookup fails


def test_modules_mode_makes_one_node_per_linear_module():
    model = DataDependent()
    gm = trace(model, mode="modules")
    assert call_modules(gm) == ["fc1", "fc2"]
    assert gm.meta["lowrank_compiler.tracer"] == "modules"


def test_bad_mode_and_export_without_inputs():
    with pytest.raises(ValueError, match="trace_mode must be one of"):
        trace(tiny_gpt(), mode="jit")
    with pytest.raises(TraceError, match="needs example_inputs"):
        trace(tiny_gpt(), mode="export")
