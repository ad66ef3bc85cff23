import pytest
import torch
import torch.nn.functional as F
from models import DataDependent, NoLinear, hf_bert, hf_gpt2, hf_llama, ids, output, tiny_gpt

import lowrank_compiler as lrc
from lowrank_compiler.runtime import LoRALinear

BUILDERS = {"tiny_gpt": tiny_gpt, "llama": hf_llama, "gpt2": hf_gpt2, "bert": hf_bert}


def compile_named(name, model, x, **kw):
    example = None if name == "tiny_gpt" else (x,)
    return lrc.compile(model, lrc.Policy(rank=4, alpha=8), example_inputs=example, **kw)


@pytest.mark.parametrize("name", BUILDERS)
def test_compiled_model_equals_original_and_keeps_its_class(name, tmp_path):
    model = BUILDERS[name]()
    cls = type(model)
    x = ids()
    ref = output(model, x)
    out = compile_named(name, model, x, dump_dir=tmp_path)
    assert out is model and type(out) is cls
    assert (output(model, x) - ref).abs().max().item() == 0.0
    assert any(isinstance(m, LoRALinear) for m in model.modules())
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.endswith(("lora_A", "lora_B")) for n in trainable)
    dump = (tmp_path / "02-insert-lora.txt").read_text()
    assert "lora_A" in dump and "lora_B" in dump
    assert (tmp_path / "pipeline.txt").read_text().strip() == str(
        lrc.Policy(rank=4, alpha=8).pipeline()
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "00-trace.html",
        "00-trace.json",
        "00-trace.txt",
        "01-find-linears.html",
        "01-find-linears.json",
        "01-find-linears.txt",
        "02-insert-lora.after.svg",  # the first rewritten layer, drawn for the index
        "02-insert-lora.before.svg",
        "02-insert-lora.html",
        "02-insert-lora.json",
        "02-insert-lora.txt",
        "index.html",
        "pipeline.txt",
    ]


def lm_loss(name, model, x):
    if name == "tiny_gpt":
        logits = model(x)
        return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1))
    if name == "bert":
        out = model(x)  # both outputs, so the pooler's adapter trains too
        h = torch.cat([out.last_hidden_state, out.pooler_output[:, None]], dim=1)
        target = torch.randn(h.shape, generator=torch.Generator().manual_seed(0))
        return (h - target).pow(2).mean()
    return model(x, labels=x).loss  # HF causal LMs still compute their loss from labels


@pytest.mark.parametrize("name", BUILDERS)
def test_training_lowers_the_loss_and_only_adapters_change(name):
    model = BUILDERS[name]()
    x = ids(batch=4, seq=12)
    compile_named(name, model, x)
    model.train()
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(30):
        loss = lm_loss(name, model, x)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.9 * losses[0], losses
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    adapters = {k for k in before if k.endswith(("lora_A", "lora_B"))}
    assert changed == adapters  # every adapter moved, nothing else did


@pytest.mark.parametrize("name", ["llama", "gpt2"])
def test_hf_causal_lm_still_generates(name):
    model = BUILDERS[name]()
    x = ids(batch=1, seq=5)
    ref = model.generate(x, max_new_tokens=4, do_sample=False)
    compile_named(name, model, x)
    got = model.generate(x, max_new_tokens=4, do_sample=False)
    assert torch.equal(got, ref)  # B = 0: greedy generations unchanged


def test_untraceable_model_gets_advice_then_works_by_module_names():
    model = DataDependent()
    with pytest.raises(lrc.TraceError, match="example_inputs.*trace_mode='modules'"):
        lrc.compile(model, lrc.Policy(rank=2))
    assert not any(isinstance(m, LoRALinear) for m in model.modules())
    lrc.compile(model, lrc.Policy(rank=2), trace_mode="modules")
    s = lrc.summary(model)
    assert s.tracer == "modules" and len(s.layers) == 2
    assert "no graph: layers were matched by module name" in str(s)
    with pytest.raises(
        lrc.TraceError, match=r"torch.export of DataDependent failed at .*if h.sum\(\) > 0"
    ):
        lrc.compile(DataDependent(), lrc.Policy(rank=2), example_inputs=(torch.randn(3, 16),))


def test_failure_leaves_the_model_as_it_was():
    model = tiny_gpt()
    model.wte.weight.requires_grad_(False)
    modules = dict(model.named_modules())
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    policy = lrc.Policy(rank=16, overrides={"mlp.up_proj": {"rank": 8}, "q_proj": {"rank": 40}})
    with pytest.raises(lrc.PassInputError, match="rank=40 for layer 'blocks.0.attn.q_proj'"):
        lrc.compile(model, policy)
    assert dict(model.named_modules()) == modules
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert not hasattr(model, "lowrank_compiler_info")


def test_policy_as_dict_or_file(tmp_path):
    path = tmp_path / "policy.json"
    path.write_text(lrc.Policy(target=["q_proj"], rank=2).to_json())
    assert len(lrc.summary(lrc.compile(tiny_gpt(), str(path))).layers) == 2
    assert len(lrc.summary(lrc.compile(tiny_gpt(), {"target": "v_proj", "rank": 2})).layers) == 2


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda: lrc.compile("gpt", lrc.Policy()), TypeError, "expects a torch.nn.Module, got str"),
        (lambda: lrc.compile(tiny_gpt(), 3), lrc.PolicyError, "policy must be a Policy"),
        (lambda: lrc.compile(NoLinear()), lrc.TargetError, "no linear layers"),
        (
            lambda: lrc.compile(tiny_gpt(), lrc.Policy(target=["query"])),
            lrc.TargetError,
            "blocks.0.attn.q_proj",
        ),
        (lambda: lrc.compile(tiny_gpt(), lrc.Policy(rank=40)), lrc.PolicyError, "exceeds min"),
    ],
)
def test_bad_input(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_compiling_twice_is_refused():
    model = lrc.compile(tiny_gpt(), lrc.Policy(rank=2))
    with pytest.raises(lrc.LowRankError, match="already compiled: 12 layer"):
        lrc.compile(model, lrc.Policy(rank=2))


def test_dump_dir_that_is_a_file(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(lrc.OutputError, match="it is a file; name a directory"):
        lrc.compile(tiny_gpt(), lrc.Policy(), dump_dir=f)
