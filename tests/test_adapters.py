"""save_adapters / load_adapters: exact round trips, a different base refused, damaged files
refused."""

import json

import pytest
import torch
from models import hf_llama, ids, nudged, output, tiny_gpt

import lowrank_compiler as lrc
from lowrank_compiler.adapters import CONFIG, TENSORS

QALORA = lrc.Policy(method="qalora", rank=4, alpha=8, group_size=16)


def gpt(policy, seed=0, width=None):
    if width is None:
        return lrc.compile(tiny_gpt(seed=seed), policy)
    from models import VOCAB

    from lowrank_compiler.app.toy import GPTConfig, TinyGPT

    torch.manual_seed(seed)
    return lrc.compile(
        TinyGPT(GPTConfig(vocab_size=VOCAB, n_embd=width, n_head=4, n_layer=2)).eval(), policy
    )


def adapter_values(model):
    return {
        n: p.detach().clone()
        for n, p in model.named_parameters()
        if n.endswith(("lora_A", "lora_B"))
    }


@pytest.fixture(scope="module")
def saved_gpt(tmp_path_factory):
    d = tmp_path_factory.mktemp("adapters")
    model = nudged(gpt(QALORA))
    lrc.save_adapters(model, d)
    return model, d


def test_round_trip_on_hf_llama_is_exact(tmp_path):
    x = ids(3, 11)
    trained = nudged(lrc.compile(hf_llama(seed=0), QALORA, example_inputs=(ids(),)))
    lrc.save_adapters(trained, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [CONFIG, TENSORS]
    fresh = lrc.compile(hf_llama(seed=0), QALORA, example_inputs=(ids(),))
    with torch.no_grad():
        want = output(trained, x)
        assert (output(fresh, x) - want).abs().max().item() > 0  # fresh adapters differ
        assert lrc.load_adapters(fresh, tmp_path) is fresh
        assert (output(fresh, x) - want).abs().max().item() == 0.0


@pytest.mark.parametrize(
    "policy",
    [
        lrc.Policy(method="lora", rank=4, alpha=8),
        lrc.Policy(method="qlora", rank=4, alpha=8),
        lrc.Policy(method="qalora", rank=4, group_size=16, zero_point="int"),
        lrc.Policy(method="qalora", rank=4, group_size=16, train_scales=True),
        lrc.Policy(method="lrqat", rank=4, group_size=16),
    ],
    ids=["lora", "qlora", "qalora-int", "qalora-scales", "lrqat"],
)
def test_round_trip_every_adapter_kind_is_exact(policy, tmp_path):
    x = ids()
    trained = nudged(gpt(policy))
    lrc.save_adapters(trained, tmp_path)
    fresh = lrc.load_adapters(gpt(policy), tmp_path)
    with torch.no_grad():
        assert (fresh(x) - trained(x)).abs().max().item() == 0.0
    config = json.loads((tmp_path / CONFIG).read_text())
    assert lrc.Policy.from_dict(config["policy"]) == policy
    assert len(config["layers"]) == 12


def test_lrqat_trained_scales_round_trip_and_the_base_is_the_compiled_one(tmp_path):
    policy = lrc.Policy(method="lrqat", rank=4, group_size=16, train_scales=True)
    trained = nudged(nudged(gpt(policy)), scale=1e-3, parts=("scale_gain",))
    lrc.save_adapters(trained, tmp_path)
    config = json.loads((tmp_path / CONFIG).read_text())
    layer = config["layers"]["blocks.0.attn.q_proj"]
    assert sorted(layer["adapter"]) == [
        f"blocks.0.attn.q_proj.{k}" for k in ("lora_A", "lora_B", "scale_gain")
    ]
    assert sorted(layer["base"]["tensors"]) == ["bias", "phi0", "scales", "zeros"]
    assert layer["base"]["tensors"]["phi0"] == "uint8[32, 32]"  # 1 byte a weight
    fresh = lrc.load_adapters(gpt(policy), tmp_path)
    x = ids()
    with torch.no_grad():
        assert (fresh(x) - trained(x)).abs().max().item() == 0.0
    with pytest.raises(lrc.AdapterError, match="layer 'blocks.0.attn.q_proj' has kind"):
        lrc.load_adapters(gpt(QALORA), tmp_path)
    with pytest.raises(lrc.AdapterError, match="different base weights"):
        lrc.load_adapters(gpt(policy, seed=1), tmp_path)


def test_different_base_weights_are_refused_naming_the_first_layer(saved_gpt):
    _, d = saved_gpt
    other = gpt(QALORA, seed=1)
    before = adapter_values(other)
    with pytest.raises(lrc.AdapterError) as e:
        lrc.load_adapters(other, d)
    msg = str(e.value)
    assert "different base model" in msg and "layer 'blocks.0.attn.q_proj'" in msg
    assert "same shapes, different base weights" in msg
    after = adapter_values(other)
    assert all(torch.equal(before[k], after[k]) for k in before)  # nothing was copied


def test_different_shape_or_settings_are_refused(saved_gpt):
    _, d = saved_gpt
    with pytest.raises(
        lrc.AdapterError, match=r"layer 'blocks.0.attn.q_proj' has in_features 32 saved, 64 here"
    ):
        lrc.load_adapters(gpt(QALORA, width=64), d)
    with pytest.raises(lrc.AdapterError, match="has rank 4 saved, 8 here"):
        lrc.load_adapters(gpt(lrc.Policy(method="qalora", rank=8, alpha=8, group_size=16)), d)
    with pytest.raises(lrc.AdapterError, match="has alpha 8.0 saved, 16.0 here"):
        lrc.load_adapters(gpt(lrc.Policy(method="qalora", rank=4, alpha=16, group_size=16)), d)
    with pytest.raises(lrc.AdapterError, match="has kind 'qalora' saved, 'lora' here"):
        lrc.load_adapters(gpt(lrc.Policy(method="lora", rank=4, alpha=8)), d)
    fewer = gpt(
        lrc.Policy(
            method="qalora", rank=4, alpha=8, group_size=16, exclude=["lm_head", "blocks.1.*"]
        )
    )
    with pytest.raises(
        lrc.AdapterError, match="layer 'blocks.1.attn.q_proj' of the saved record is not"
    ):
        lrc.load_adapters(fewer, d)


def test_a_changed_base_tensor_shape_is_named():
    saved = {"fc": {"tensors": {"scales": "float32[32, 2]"}, "sha256": "a"}}
    here = {"fc": {"tensors": {"scales": "float32[32, 4]"}, "sha256": "b"}}
    from lowrank_compiler.adapters import identity_mismatch

    assert identity_mismatch(saved, here) == (
        "layer 'fc': base tensor 'scales' was float32[32, 2] saved, float32[32, 4] here"
    )
    assert identity_mismatch(saved, saved) is None


def test_truncated_or_corrupted_files_are_clear_errors(saved_gpt, tmp_path):
    model, d = saved_gpt
    data = (d / TENSORS).read_bytes()
    config = (d / CONFIG).read_text()
    (tmp_path / CONFIG).write_text(config)
    for damaged in (
        data[: len(data) // 2],
        data[:-1],
        data[:100] + bytes([data[100] ^ 1]) + data[101:],
    ):
        (tmp_path / TENSORS).write_bytes(damaged)
        with pytest.raises(lrc.AdapterError, match="adapter file .* is truncated or corrupted"):
            lrc.load_adapters(gpt(QALORA), tmp_path)
    (tmp_path / TENSORS).unlink()
    with pytest.raises(lrc.AdapterError, match="cannot read adapter file"):
        lrc.load_adapters(gpt(QALORA), tmp_path)
    (tmp_path / CONFIG).write_text(config[:50])
    with pytest.raises(lrc.AdapterError, match="cannot read"):
        lrc.load_adapters(gpt(QALORA), tmp_path)
    with pytest.raises(lrc.AdapterError, match="no adapter directory"):
        lrc.load_adapters(gpt(QALORA), tmp_path / "missing")
    with pytest.raises(lrc.AdapterError, match="holds no adapter_config.json"):
        lrc.load_adapters(gpt(QALORA), tmp_path.parent)


def test_names_dtypes_and_shapes_are_checked_even_when_the_hash_matches(saved_gpt, tmp_path):
    """A file rewritten with a fresh sha256 (not damaged, just wrong) is still refused."""
    from safetensors.torch import load_file

    from lowrank_compiler.tensorfile import write_tensors

    _, d = saved_gpt
    tensors = load_file(str(d / TENSORS))
    key = "blocks.0.attn.q_proj.lora_A"
    cases = {
        "lacks tensor 'blocks.0.attn.q_proj.lora_A'": {
            **{k: v for k, v in tensors.items() if k != key}
        },
        "holds unexpected tensor 'extra'": {**tensors, "extra": torch.zeros(1)},
        "is float64[4, 2], expected float32[4, 2]": {**tensors, key: tensors[key].double()},
    }
    for message, bad in cases.items():
        config = json.loads((d / CONFIG).read_text())
        config["tensors"]["sha256"] = write_tensors(tmp_path / TENSORS, bad)
        (tmp_path / CONFIG).write_text(json.dumps(config))
        with pytest.raises(lrc.AdapterError, match=message.replace("[", r"\[").replace("]", r"\]")):
            lrc.load_adapters(gpt(QALORA), tmp_path)


def test_a_failed_save_leaves_the_previous_adapters_whole(saved_gpt, tmp_path, monkeypatch):
    model, _ = saved_gpt
    lrc.save_adapters(model, tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    import lowrank_compiler.runtime.files as files

    def fail(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(files.os, "replace", fail)
    with pytest.raises(OSError, match="No space left"):
        lrc.save_adapters(nudged(gpt(QALORA), seed=9), tmp_path)
    monkeypatch.undo()
    assert {
        p.name: p.read_bytes() for p in tmp_path.iterdir()
    } == before  # no temporary file left either
    x = ids()
    with torch.no_grad():
        assert torch.equal(lrc.load_adapters(gpt(QALORA), tmp_path)(x), model(x))


def test_models_without_adapters_are_refused(tmp_path):
    with pytest.raises(lrc.AdapterError, match="holds no adapter layers to save"):
        lrc.save_adapters(gpt(lrc.Policy(method="rtn", group_size=16)), tmp_path)
    with pytest.raises(lrc.AdapterError, match="holds no adapter layers to save"):
        lrc.save_adapters(lrc.fold(gpt(QALORA)), tmp_path)
    with pytest.raises(lrc.AdapterError, match="holds no adapter layers to save"):
        lrc.save_adapters(tiny_gpt(), tmp_path)
    lrc.save_adapters(gpt(QALORA), tmp_path)
    with pytest.raises(lrc.AdapterError, match="compile the base model with the saved policy"):
        lrc.load_adapters(tiny_gpt(), tmp_path)
