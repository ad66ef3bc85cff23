import pytest
import torch
from models import ids, tiny_gpt

from lowrank_compiler import (
    LintError,
    PassError,
    PassInputError,
    PassManager,
    PassSpec,
    Pipeline,
    PipelineError,
    trace,
)
from lowrank_compiler.passes import (
    PassResult,
    get_pass,
    register_pass,
    registered_passes,
    unregister_pass,
)
from lowrank_compiler.pipeline_text import format_value, parse_value


def _break_graph(gm, *, attr="missing_weight"):
    gm.graph.create_node("get_attr", attr)
    return PassResult(gm, True, {})


def _raise(gm, *, value=False):
    if value:
        raise ValueError("bad value option")
    raise RuntimeError("boom")


def _noop(gm):
    return PassResult(gm, False, {"seen": len(gm.graph.nodes)})


TEST_PASSES = {
    "test-break-graph": ("test only: leave a get_attr pointing at nothing", _break_graph),
    "test-raise": ("test only: raise", _raise),
    "test-noop": ("test only: change nothing", _noop),
}


@pytest.fixture(autouse=True, scope="module")
def test_passes():
    """This module's passes, registered while its tests run and removed after (the registry is
    global)."""
    for name, (summary, fn) in TEST_PASSES.items():
        register_pass(name, summary)(fn)
    yield
    for name in TEST_PASSES:
        unregister_pass(name)
    assert not set(TEST_PASSES) & set(registered_passes())


@pytest.mark.parametrize(
    "value",
    [
        0,
        -3,
        2.5,
        1e-9,
        True,
        False,
        None,
        "q_proj",
        "re:layers\\.[0-9]+\\.(q|v)_proj",
        "a b",
        "16",
        "true",
        "",
        [],
        [1, "x", [2.0]],
        {},
        {"q_proj": {"rank": 4}, "re:.*,{}=": {"bits": 8}},
    ],
)
def test_option_values_round_trip(value):
    assert parse_value(format_value(value)) == value


def test_pipeline_parses_and_prints_the_same_text():
    text = (
        'find-linears{target=[q_proj,"re:.*mlp.*"],exclude=[lm_head]},'
        "insert-lora{rank=8,alpha=16.0}"
    )
    p = Pipeline.parse(text)
    assert str(p) == text.replace('"', "")  # quotes only where a value needs them
    assert Pipeline.parse(str(p)) == p
    assert (
        str(Pipeline.parse('find-linears{target=["re:a,b{1}"]}'))
        == 'find-linears{target=["re:a,b{1}"]}'
    )
    assert p.passes[1] == PassSpec("insert-lora", {"rank": 8, "alpha": 16.0})
    assert Pipeline.parse(" find-linears , insert-lora { rank = 8 } ").passes[1].options == {
        "rank": 8
    }


@pytest.mark.parametrize(
    "text, message",
    [
        (
            "find-linears,no-such-pass",
            "unknown pass 'no-such-pass'; registered passes: .*insert-lora",
        ),
        (
            "insert-lora{rnak=8}",
            r"pass 'insert-lora' has no option\(s\) \['rnak'\]; its options are",
        ),
        ("insert-lora{rank=8", "expected '}' at character"),
        ("insert-lora{rank=8,rank=9}", "given twice"),
        ("", "names at least one pass"),
        ("find-linears,,insert-lora", "expected a name"),
    ],
)
def test_bad_pipeline_text_is_rejected(text, message):
    with pytest.raises(PipelineError, match=message):
        Pipeline.parse(text)


def test_registry_has_kebab_names_and_summaries():
    passes = registered_passes()
    assert {"find-linears", "insert-lora"} <= set(passes)
    assert get_pass("insert-lora").options == {
        "rank": 16,
        "alpha": 32.0,
        "dropout": 0.0,
        "adapter_dtype": "float32",
        "overrides": None,
    }
    for info in passes.values():
        assert info.summary and "\n" not in info.summary
    with pytest.raises(ValueError, match="kebab-case"):
        register_pass("Bad_Name", "x")


def test_failure_names_the_pass_and_the_passes_before_it():
    gm = trace(tiny_gpt())
    pm = PassManager("test-noop,find-linears,test-raise")
    with pytest.raises(PassError) as e:
        pm.run(gm)
    assert e.value.pass_name == "test-raise" and e.value.before == ("test-noop", "find-linears")
    assert "pass 'test-raise', step 3 of 3 (after test-noop, find-linears), failed: boom" in str(
        e.value
    )
    assert not isinstance(e.value, ValueError)
    with pytest.raises(PassInputError, match="the first pass.*bad value option"):
        PassManager("test-raise{value=true}").run(trace(tiny_gpt()))


def test_lint_runs_after_every_pass():
    with pytest.raises(PassError, match="test-break-graph.*missing_weight") as e:
        PassManager("test-noop,test-break-graph").run(trace(tiny_gpt()))
    assert isinstance(e.value.__cause__, LintError)


def test_dumps_one_file_per_pass_with_header_and_graph(tmp_path):
    model = tiny_gpt()
    gm = trace(model)
    PassManager("find-linears{target=[q_proj]},insert-lora{rank=2}", dump_dir=tmp_path).run(gm)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [
        "00-trace.html",
        "00-trace.json",  # what the page shows, for programs (the Model Explorer overlays)
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
    ]
    find = (tmp_path / "01-find-linears.txt").read_text()
    assert find.startswith("// after pass find-linears{target=[q_proj]}")
    assert "modified: no" in find and "nodes: +0 added, -0 removed" in find
    assert "selected     blocks.0.attn.q_proj (linear, 32->32)" in find
    assert "not-targeted blocks.0.attn.k_proj" in find
    lora = (tmp_path / "02-insert-lora.txt").read_text()
    assert "modified: yes" in lora and "step 2 of 2, after: find-linears" in lora
    # 2 layers x 8 adapter nodes, the 2 original calls removed
    assert "nodes: +16 added, -2 removed" in lora
    assert "+ blocks_0_attn_q_proj_lora_a = get_attr[blocks.0.attn.q_proj.lora_A]" in lora
    assert "- blocks_0_attn_q_proj\n" in lora
    body = lora.split("\n\n", 1)[1]
    assert "get_attr[target=blocks.1.attn.q_proj.lora_B]" in body
    assert "call_module[target=blocks.0.attn.k_proj]" in body  # untouched layers stay as they were


def test_gm_still_computes_the_model_after_rewrites():
    model = tiny_gpt()
    x = ids()
    gm = PassManager("find-linears,insert-lora{rank=2}").run(trace(model))
    with torch.no_grad():
        model.blocks[0].attn.q_proj.lora_B.normal_()
        assert torch.equal(gm(x), model(x))


def test_numpy_floats_format_as_plain_numbers_and_specs_hash():
    import numpy as np

    assert format_value(np.float64(1.5)) == "1.5"
    assert (
        parse_value("inf") == "inf" and parse_value("nan") == "nan"
    )  # strings, never non-finite numbers
    a = PassSpec("insert-lora", {"rank": 2, "alpha": 4.0})
    b = PassSpec("insert-lora", {"alpha": 4.0, "rank": 2})
    assert a == b and hash(a) == hash(b) and len({a, b}) == 1
