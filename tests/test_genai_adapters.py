"""Many fine-tunes over one INT4 base: ``export_genai(..., adapter_inputs=...)`` writes the base,
``export_adapter`` each fine-tune as its zero points (and scales), and onnxruntime-genai
(``og.Adapters``) and our loop (``DecoderSession.load_adapter``) swap them per generation.

Two QA-LoRA fine-tunes with integer zero points, trained on different token ranges over one RTN
base: with each active, the greedy tokens equal those of its own folded file (accuracy level 0);
none active gives the base's; adapters of another base, group size or fold are refused."""

from __future__ import annotations

import copy
import json
import re
import shutil

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from test_genai import VOCAB, _quiet, llama, og

import lowrank_compiler as lrc
from lowrank_compiler.genai import export_genai
from lowrank_compiler.runtime.quant.formats import adapter_record_path

STEPS = 24
G = 32


def tuned(float_model, low, high, *, seed, group=G, train_scales=False):
    """QA-LoRA (integer zeros) over RTN, 12 AdamW steps on tokens in [low, high), folded."""
    model = trained(float_model, low, high, seed=seed, group=group, train_scales=train_scales)
    return lrc.fold(model, zeros="round")


def trained(float_model, low, high, *, seed, group=G, train_scales=False, zero_point="int"):
    """QA-LoRA over RTN, 12 AdamW steps on tokens in [low, high); not folded."""
    ids = torch.randint(2, VOCAB, (2, 8), generator=torch.Generator().manual_seed(1))
    model = lrc.compile(
        copy.deepcopy(float_model),
        lrc.Policy(
            method="qalora",
            bits=4,
            group_size=group,
            rank=8,
            zero_point=zero_point,
            train_scales=train_scales,
        ),
        example_inputs=(ids,),
    )
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-2)
    model.train()
    for _ in range(12):
        batch = torch.randint(low, high, (4, 16), generator=g)
        loss = model(batch, labels=batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def og_generator(model, ids, adapters=None, name=None):
    """A greedy generator of ``model`` over the prompt ``ids``, adapter ``name`` active (set
    before the prompt: onnxruntime-genai takes one set later too, for the steps after it)."""
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=ids.shape[1] + STEPS, do_sample=False)
    generator = og.Generator(model, params)
    if name is not None:
        generator.set_active_adapter(adapters, name)
    generator.append_tokens(ids.numpy().astype(np.int32))
    return generator


def og_new(generator, ids):
    """The generated tokens (after the prompt ``ids``), generating what remains first."""
    while not generator.is_done():
        generator.generate_next_token()
    return [int(t) for t in generator.get_sequence(0)[ids.shape[1] :]]


def og_step_in_turn(generators):
    """One token of each generator in turn, until all are done."""
    while not all(g.is_done() for g in generators):
        for g in generators:
            if not g.is_done():
                g.generate_next_token()


def og_tokens(folder, ids, adapter=None):
    model = og.Model(str(folder))
    adapters = None
    if adapter is not None:
        adapters = og.Adapters(model)
        adapters.load(str(adapter), "tuned")
    return og_new(og_generator(model, ids, adapters, None if adapter is None else "tuned"), ids)


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    _quiet()
    root = tmp_path_factory.mktemp("adapters")
    torch.manual_seed(0)
    float_model = llama().eval()
    ids = torch.randint(2, VOCAB, (2, 8), generator=torch.Generator().manual_seed(1))
    base = lrc.compile(
        copy.deepcopy(float_model),
        lrc.Policy(method="rtn", bits=4, group_size=G),
        example_inputs=(ids,),
    )
    base_dir = export_genai(base, root / "base", accuracy_level=0, adapter_inputs="zeros")
    plain_dir = export_genai(base, root / "plain", accuracy_level=0)
    tunes, folded, files = {}, {}, {}
    for name, (low, high, seed) in {"a": (2, 64, 1), "b": (64, VOCAB, 2)}.items():
        tunes[name] = tuned(float_model, low, high, seed=seed)
        files[name] = lrc.export_adapter(tunes[name], base_dir, root / f"{name}.onnx_adapter")
        folded[name] = export_genai(tunes[name], root / f"folded-{name}", accuracy_level=0)
    prompt = torch.randint(2, VOCAB, (1, 10), generator=torch.Generator().manual_seed(5))
    return dict(
        root=root,
        float_model=float_model,
        base=base,
        base_dir=base_dir,
        plain_dir=plain_dir,
        tunes=tunes,
        files=files,
        folded=folded,
        prompt=prompt,
    )


@pytest.fixture(scope="module")
def other(case, tmp_path_factory):
    """A base of other weights, the same shapes (and adapter inputs)."""
    model = lrc.compile(
        llama().eval(),
        lrc.Policy(method="rtn", bits=4, group_size=G),
        example_inputs=(case["prompt"],),
    )
    folder = tmp_path_factory.mktemp("other") / "base"
    return export_genai(model, folder, accuracy_level=0, adapter_inputs="zeros")


@pytest.fixture(scope="module")
def og_want(case):
    """onnxruntime-genai's greedy tokens of each fine-tune's own folded file, and of the base
    (``None``: the folder without adapter inputs)."""
    want = {n: og_tokens(case["folded"][n], case["prompt"]) for n in ("a", "b")}
    return {**want, None: og_tokens(case["plain_dir"], case["prompt"])}


def tokens(session, prompt, adapter=None):
    out = session.generate(prompt, max_new_tokens=STEPS, adapter=adapter)
    return out[0, prompt.shape[1] :].tolist()


def test_each_adapter_gives_its_folded_files_tokens_in_our_loop(case):
    session = lrc.runtime.load(case["base_dir"])
    for name in ("a", "b"):
        session.load_adapter(case["files"][name], name)
    want = {n: tokens(lrc.runtime.load(case["folded"][n]), case["prompt"]) for n in ("a", "b")}
    base = tokens(lrc.runtime.load(case["plain_dir"]), case["prompt"])
    assert want["a"] != want["b"] != base  # the fine-tunes did move the model
    # back and forth in one session, the base between
    for name in ("a", "b", None, "a", None, "b"):
        assert tokens(session, case["prompt"], name) == (base if name is None else want[name])
    assert session.adapters == ["a", "b"]
    session.unload_adapter("a")
    with pytest.raises(lrc.AdapterError, match="no adapter named 'a'"):
        session.generate(case["prompt"], adapter="a")


@pytest.mark.skipif(og is None, reason="onnxruntime-genai is not installed")
def test_onnxruntime_genai_applies_each_adapter_as_its_folded_file(case, og_want):
    for name in ("a", "b"):
        assert og_tokens(case["base_dir"], case["prompt"], case["files"][name]) == og_want[name]
    assert og_tokens(case["base_dir"], case["prompt"]) == og_want[None]


@pytest.mark.skipif(og is None, reason="onnxruntime-genai is not installed")
def test_onnxruntime_genai_switches_adapters_per_generator_on_one_model(case, og_want):
    """One og.Model, one og.Adapters holding both: one generator after another (a, none, b, a),
    then three alive at once stepped in turn; each generator keeps its own adapter. An adapter
    a live generator uses cannot be unloaded; once the generator is gone it can."""
    prompt = case["prompt"]
    assert og_want["a"] != og_want[None] and og_want["b"] != og_want[None]
    assert og_want["a"] != og_want["b"]
    model = og.Model(str(case["base_dir"]))
    adapters = og.Adapters(model)
    for name in ("a", "b"):
        adapters.load(str(case["files"][name]), name)
    for name in ("a", None, "b", "a"):
        assert og_new(og_generator(model, prompt, adapters, name), prompt) == og_want[name], name
    live = {n: og_generator(model, prompt, adapters, n) for n in ("b", None, "a")}
    og_step_in_turn(live.values())
    assert {n: og_new(g, prompt) for n, g in live.items()} == og_want
    with pytest.raises(RuntimeError, match="in use"):
        adapters.unload("a")
    del live
    adapters.unload("a")
    assert og_new(og_generator(model, prompt, adapters, "b"), prompt) == og_want["b"]


def test_an_adapter_is_the_zero_points_alone(case):
    weights = (case["base_dir"] / "model.onnx").stat().st_size
    for name in ("a", "b"):
        size = case["files"][name].stat().st_size
        assert size <= weights / 16, (size, weights)
        record = case["files"][name].with_name(case["files"][name].name + ".json")
        assert "base_weights_sha256" in record.read_text()


def test_the_base_may_be_named_by_its_model_onnx(case, tmp_path):
    out = lrc.export_adapter(case["tunes"]["a"], case["base_dir"] / "model.onnx", tmp_path / "a.x")
    assert out.read_bytes() == case["files"]["a"].read_bytes()
    bare = tmp_path / "bare.onnx"
    shutil.copy(case["base_dir"] / "model.onnx", bare)  # a file without its folder's record
    with pytest.raises(lrc.ExportError, match="not a folder export_genai wrote.*its model.onnx"):
        lrc.export_adapter(case["tunes"]["a"], bare, tmp_path / "b.x")


def test_a_foreign_adapter_or_fine_tune_is_refused(case, other, tmp_path):
    other_dir = other
    session = lrc.runtime.load(other_dir)
    with pytest.raises(lrc.AdapterError, match="belongs to another base"):
        session.load_adapter(case["files"]["a"])
    with pytest.raises(lrc.ExportError, match="the 4-bit codes must be the base's"):
        lrc.export_adapter(case["tunes"]["a"], other_dir, tmp_path / "x.onnx_adapter")
    g16 = tuned(case["float_model"], 2, 64, seed=1, group=16)
    with pytest.raises(lrc.ExportError, match="is not the base's|must be the base's"):
        lrc.export_adapter(g16, case["base_dir"], tmp_path / "g16.onnx_adapter")
    with pytest.raises(lrc.AdapterError, match="not an overridable input"):
        lrc.runtime.load(case["plain_dir"]).load_adapter(case["files"]["a"], route="feeds")
    assert not list(tmp_path.glob("*.onnx_adapter*"))


def test_a_fold_to_other_zero_points_is_refused_naming_the_tensor(case, tmp_path):
    """QA-LoRA trained with float zero points: a ``float`` fold's zero points are float32, one
    per group, where the base's are packed 4-bit integers; a ``split`` fold adds corrections."""
    model = trained(case["float_model"], 2, 64, seed=1, zero_point="float")
    with pytest.raises(lrc.ExportError) as float_fold:
        lrc.export_adapter(lrc.fold(model, zeros="float"), case["base_dir"], tmp_path / "f.x")
    message = str(float_fold.value)
    name = re.search(r"'(model\.[\w.]+\.zeros)' is float32 \[", message).group(1)
    assert f"layer {name.rsplit('.', 1)[0]!r}" in message
    base = onnx.load(case["base_dir"] / "model.onnx", load_external_data=False)
    zeros = next(t for t in base.graph.initializer if t.name == name)
    assert name in {i.name for i in base.graph.input}  # an overridable zero point
    assert zeros.data_type == onnx.TensorProto.UINT8
    node = next(n for n in base.graph.node if n.op_type == "MatMulNBits" and name in n.input)
    attrs = {a.name: a.i for a in node.attribute}
    groups = -(-attrs["K"] // attrs["block_size"])  # a float zero point a group
    assert zeros.dims[1] == -(-groups // 2)  # the base's: two 4-bit zero points a byte
    assert f"float32 [{zeros.dims[0]}, {groups}]" in message, message
    assert f"uint8 {list(zeros.dims)}" in message, message
    assert "zero_point='int'" in message and "zeros='round'" in message
    with pytest.raises(lrc.ExportError, match=r"\.correction'.*zeros='split'.*zero_point='int'"):
        lrc.export_adapter(lrc.fold(model, zeros="split"), case["base_dir"], tmp_path / "s.x")
    assert not list(tmp_path.iterdir())


def test_an_adapter_without_its_record_is_checked_by_its_model_version(case, other, tmp_path):
    """The file's model version is the first hex digits of its base's weights digest: without
    the record beside it, the adapter loads into its base (the same tokens as with the record)
    and is refused by another base of the same shapes."""
    bare = shutil.copy(case["files"]["a"], tmp_path / "a.onnx_adapter")
    assert not adapter_record_path(bare).exists()
    record = json.loads(adapter_record_path(case["files"]["a"]).read_text())
    version = ort.AdapterFormat.read_adapter(str(bare)).get_model_version()
    assert f"{version:07x}" == record["base_weights_sha256"][:7]
    session = lrc.runtime.load(case["base_dir"])
    session.load_adapter(bare, "bare")
    session.load_adapter(case["files"]["a"], "a")
    assert tokens(session, case["prompt"], "bare") == tokens(session, case["prompt"], "a")
    with pytest.raises(lrc.AdapterError, match=r"has no record.*model version.*another base"):
        lrc.runtime.load(other).load_adapter(bare)


def read(path):
    params = ort.AdapterFormat.read_adapter(str(path)).get_parameters()
    return {n: v.numpy() for n, v in params.items()}


def test_a_level_4_base_runs_each_adapter_in_its_own_session(case, tmp_path):
    """The session route: onnxruntime's level-4 kernel takes zero points only as constants, so
    each adapter gets a session with its tensors as constants; its tokens are its folded level-4
    file's, and switching leaves the base as it was."""
    fast = export_genai(case["base"], tmp_path / "fast", accuracy_level=4)
    session = lrc.runtime.load(fast)
    for name in ("a", "b"):  # written over the swappable base: the same weights digest
        session.load_adapter(case["files"][name], name)
    want = {
        n: tokens(
            lrc.runtime.load(export_genai(case["tunes"][n], tmp_path / n, accuracy_level=4)),
            case["prompt"],
        )
        for n in ("a", "b")
    }
    want[None] = tokens(lrc.runtime.load(fast), case["prompt"])
    assert want["a"] != want["b"] != want[None]
    for name in ("a", None, "b", "a", None):
        assert tokens(session, case["prompt"], name) == want[name]
    # an adapter written over the level-4 base holds the same tensors
    again = read(lrc.export_adapter(case["tunes"]["a"], fast, tmp_path / "a4.onnx_adapter"))
    first = read(case["files"]["a"])
    assert sorted(again) == sorted(first)
    assert all(np.array_equal(again[n], first[n]) for n in first)


def test_trained_scales_need_a_base_that_exposes_them(case, tmp_path):
    scaled = tuned(case["float_model"], 2, 64, seed=3, train_scales=True)
    with pytest.raises(lrc.ExportError, match="adapter_inputs='zeros\\+scales'"):
        lrc.export_adapter(scaled, case["base_dir"], tmp_path / "s.onnx_adapter")
    both = export_genai(
        case["base"], tmp_path / "both", accuracy_level=0, adapter_inputs="zeros+scales"
    )
    adapter = lrc.export_adapter(scaled, both, tmp_path / "s.onnx_adapter")
    session = lrc.runtime.load(both)
    session.load_adapter(adapter, "s")
    want = tokens(
        lrc.runtime.load(export_genai(scaled, tmp_path / "f", accuracy_level=0)), case["prompt"]
    )
    assert tokens(session, case["prompt"], "s") == want
