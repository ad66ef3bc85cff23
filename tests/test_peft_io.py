"""PEFT's adapter format, both ways, against the real peft package on a small HF Llama."""

import dataclasses
import json
import shutil
from types import SimpleNamespace

import pytest
import torch
from models import hf_llama, ids
from safetensors.torch import load_file, save_file

import lowrank_compiler as lrc
from lowrank_compiler.runtime.errors import AdapterError

peft = pytest.importorskip("peft", reason="peft is a test dependency (the dev extra)")

KEY = "base_model.model.model.layers.{}.{}.lora_{}.weight"


def _randomize(model: torch.nn.Module, seed: int) -> None:
    """Give every adapter weight nonzero random values (B starts at zero)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)


def _logits(model, x) -> torch.Tensor:
    with torch.no_grad():
        return model(x).logits


@pytest.fixture(scope="module")
def peft_dir(tmp_path_factory):
    """A PEFT LoRA adapter with per-layer ranks and alphas and rsLoRA scaling, nonzero B."""
    config = peft.LoraConfig(
        r=4,
        lora_alpha=8,
        target_modules=["q_proj", "v_proj", "up_proj"],
        rank_pattern={"up_proj": 2},
        alpha_pattern={"v_proj": 3},
        use_rslora=True,
        task_type="CAUSAL_LM",
    )
    model = peft.get_peft_model(hf_llama(0), config)
    _randomize(model, seed=3)
    path = tmp_path_factory.mktemp("peft") / "adapter"
    model.save_pretrained(path)
    return path, model.eval()


def test_peft_adapter_loaded_onto_compiled_model_matches_peft_forward(peft_dir):
    path, peft_model = peft_dir
    x = ids()
    ours = lrc.compile(hf_llama(0), lrc.peft_policy(path), example_inputs=(x,))
    assert lrc.load_peft_adapter(ours, path) is ours
    expected = _logits(peft_model, x)
    assert (
        expected - _logits(hf_llama(0), x)
    ).abs().max() > 1e-2  # the adapter does change the output
    assert (_logits(ours, x) - expected).abs().max().item() <= 1e-6
    rows = {r.name: r for r in lrc.summary(ours).layers}
    assert len(rows) == 6 and rows["model.layers.0.mlp.up_proj"].rank == 2


def test_our_adapters_saved_for_peft_match_our_forward(tmp_path):
    x = ids()
    policy = lrc.Policy(
        method="lora",
        target=["q_proj", "v_proj", "gate_proj"],
        rank=4,
        alpha=8,
        overrides={"mlp.*": {"rank": 2, "alpha": 6}},
    )
    ours = lrc.compile(hf_llama(0), policy, example_inputs=(x,))
    _randomize(ours, seed=4)
    opt = torch.optim.AdamW([p for p in ours.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(2):  # trained, not just initialised
        loss = ours(x, labels=x).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    ours.eval()
    out = lrc.save_peft_adapter(ours, tmp_path / "adapter")
    assert sorted(p.name for p in out.iterdir()) == [
        "adapter_config.json",
        "adapter_model.safetensors",
    ]
    keys = load_file(out / "adapter_model.safetensors")
    assert keys[KEY.format(0, "mlp.gate_proj", "A")].shape == (2, 32)
    assert len(keys) == 12
    theirs = peft.PeftModel.from_pretrained(hf_llama(0), out).eval()
    assert (_logits(theirs, x) - _logits(ours, x)).abs().max().item() <= 1e-6
    loras = [n for n, m in theirs.named_modules() if isinstance(m, peft.tuners.lora.LoraLayer)]
    assert len(loras) == 6  # PEFT adapted exactly our layers


def test_qalora_adapters_use_peft_naming_and_pooling_scale(tmp_path):
    """PEFT's QA-LoRA multiplies the group mean by K/g; the file's A is ours divided by it."""
    x = ids()
    policy = lrc.Policy(
        method="qalora", target=["q_proj", "down_proj"], rank=4, alpha=8, group_size=16
    )
    ours = lrc.compile(hf_llama(0), policy, trace_mode="modules")
    _randomize(ours, seed=5)
    lrc.save_peft_adapter(ours, tmp_path / "qa")
    config = json.loads((tmp_path / "qa" / "adapter_config.json").read_text())
    assert config["use_qalora"] is True and config["qalora_group_size"] == 16
    tensors = load_file(tmp_path / "qa" / "adapter_model.safetensors")
    from peft.tuners.lora.variants import QALoraLinearVariant

    for name in config["target_modules"]:
        layer = ours.get_submodule(name)
        peft_layer = SimpleNamespace(  # what PEFT's QA-LoRA forward reads of its layer
            lora_A={"a": SimpleNamespace(weight=tensors[f"base_model.model.{name}.lora_A.weight"])},
            lora_B={"a": SimpleNamespace(weight=tensors[f"base_model.model.{name}.lora_B.weight"])},
            lora_dropout={"a": torch.nn.Identity()},
            scaling={"a": config["lora_alpha"] / config["r"]},
            qalora_group_size={"a": 16},
            in_features=layer.in_features,
            training=False,
        )
        xi = torch.randn(2, 5, layer.in_features)
        with torch.no_grad():
            theirs = QALoraLinearVariant.forward(peft_layer, "a", xi, result=layer.base(xi))
            assert (theirs - layer(xi)).abs().max().item() <= 1e-6
    fresh = lrc.compile(hf_llama(0), lrc.peft_policy(tmp_path / "qa"), trace_mode="modules")
    lrc.load_peft_adapter(fresh, tmp_path / "qa")
    assert torch.equal(_logits(fresh, x), _logits(ours, x))


def _edited(peft_dir, tmp_path, **fields):
    path = tmp_path / "edited"
    shutil.copytree(peft_dir[0], path)
    config = json.loads((path / "adapter_config.json").read_text())
    config.update(fields)
    (path / "adapter_config.json").write_text(json.dumps(config))
    return path


@pytest.mark.parametrize(
    "fields, words",
    [
        ({"use_dora": True}, "use_dora"),
        ({"bias": "all"}, "bias='all'"),
        ({"modules_to_save": ["lm_head"]}, "modules_to_save"),
        ({"layers_to_transform": [0]}, "layers_to_transform"),
        ({"init_lora_weights": "pissa"}, "rewrote the base weights"),
        ({"peft_type": "IA3"}, "peft_type"),
        ({"some_new_variant": {"k": 1}}, "some_new_variant"),
        ({"rank_pattern": {"q_proj": 0}}, "rank_pattern['q_proj'] must be a positive integer"),
        ({"r": 4.5}, "r must be a positive integer"),
    ],
)
def test_configs_we_cannot_compute_are_refused_naming_the_field(peft_dir, tmp_path, fields, words):
    path = _edited(peft_dir, tmp_path, **fields)
    with pytest.raises(AdapterError, match=words.replace("[", r"\[").replace("(", r"\(")):
        lrc.peft_policy(path)


def _compiled(policy=None):
    policy = policy or lrc.Policy(target=["q_proj", "v_proj", "up_proj"], rank=4, alpha=8.0)
    return lrc.compile(hf_llama(0), policy, trace_mode="modules")


def test_mismatched_rank_names_the_layer_and_shapes(peft_dir):
    policy = lrc.peft_policy(peft_dir[0])
    same_but_up = dataclasses.replace(
        policy, overrides=tuple(o for o in policy.overrides if "up_proj" not in o.pattern)
    )
    model = _compiled(same_but_up)  # up_proj at rank 4; the adapter's has rank 2
    with pytest.raises(
        AdapterError, match=r"layer model\.layers\.0\.mlp\.up_proj: .*\[2, 32\].*\[4, 32\]"
    ):
        lrc.load_peft_adapter(model, peft_dir[0])


def test_mismatched_scale_and_layer_sets_are_refused(peft_dir):
    policy = lrc.peft_policy(peft_dir[0])
    with pytest.raises(AdapterError, match=r"scale .*peft_policy"):
        lrc.load_peft_adapter(_compiled(dataclasses.replace(policy, alpha=1.0)), peft_dir[0])
    with pytest.raises(AdapterError, match=r"does not hold .*k_proj"):
        lrc.load_peft_adapter(
            _compiled(
                dataclasses.replace(policy, target=("q_proj", "k_proj", "v_proj", "up_proj"))
            ),
            peft_dir[0],
        )
    with pytest.raises(AdapterError, match=r"not adapter layers of this model .*up_proj"):
        lrc.load_peft_adapter(
            _compiled(dataclasses.replace(policy, target=("q_proj", "v_proj"), overrides={})),
            peft_dir[0],
        )


def test_refused_load_changes_nothing_and_bad_keys_are_named(peft_dir, tmp_path):
    model = _compiled(lrc.peft_policy(peft_dir[0]))
    before = {n: p.clone() for n, p in model.named_parameters()}
    path = _edited(peft_dir, tmp_path)
    tensors = load_file(path / "adapter_model.safetensors")
    last = KEY.format(1, "self_attn.v_proj", "B")
    tensors[last] = torch.zeros(16, 3)  # the last layer checked: every other one would load
    save_file(tensors, path / "adapter_model.safetensors")
    with pytest.raises(AdapterError, match=r"v_proj\.lora_B\.weight has shape \[16, 3\]"):
        lrc.load_peft_adapter(model, path)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())

    del tensors[last]
    tensors["base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector.weight"] = (
        torch.ones(32)
    )
    save_file(tensors, path / "adapter_model.safetensors")
    with pytest.raises(AdapterError, match="lora_magnitude_vector.*DoRA"):
        lrc.load_peft_adapter(model, path)


def test_only_safetensors_are_read(peft_dir, tmp_path):
    path = _edited(peft_dir, tmp_path)
    (path / "adapter_model.safetensors").unlink()
    (path / "adapter_model.bin").write_bytes(b"not read")
    with pytest.raises(AdapterError, match="adapter_model.bin, a pickle: it is not read"):
        lrc.load_peft_adapter(_compiled(), path)


def test_what_peft_cannot_compute_is_not_written(tmp_path):
    int_zeros = _compiled(
        lrc.Policy(method="qalora", target=["q_proj"], rank=4, group_size=16, zero_point="int")
    )
    with pytest.raises(AdapterError, match="zero_point='int'"):
        lrc.save_peft_adapter(int_zeros, tmp_path / "a")
    folded = lrc.fold(_compiled())
    with pytest.raises(AdapterError, match="no LoRA or QA-LoRA layers"):
        lrc.save_peft_adapter(folded, tmp_path / "b")
    lrqat = _compiled(lrc.Policy(method="lrqat", target=["q_proj"], rank=4, group_size=16))
    with pytest.raises(
        AdapterError,
        match=r"layer 'model.layers.0.self_attn.q_proj' \(2 in all\) is an LR-QAT "
        r"layer: .* no PEFT adapter computes; keep it with lrc.save_adapters",
    ):
        lrc.save_peft_adapter(lrqat, tmp_path / "c")
    assert not any((tmp_path / d).exists() for d in "abc")
