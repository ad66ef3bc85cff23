import json

import pytest

from lowrank_compiler import Override, Pipeline, Policy, PolicyError


def rich_policy() -> Policy:
    return Policy(
        target=["q_proj", "layers.*.mlp.*", "re:.*\\.v_proj$"],
        exclude=("layers.0.mlp.down_proj",),
        rank=8,
        alpha=16,
        dropout=0.1,
        bits=4,
        group_size=64,
        overrides={
            "q_proj": {"rank": 4, "alpha": 8.0},
            "re:.*mlp.*": {"bits": 8, "group_size": 128},
        },
    )


def test_defaults_are_valid_and_target_all_linear():
    p = Policy()
    assert p.method == "lora" and p.target == ("all-linear",) and p.rank == 16 and p.alpha == 32.0


def test_to_dict_from_dict_round_trip_is_exact():
    p = rich_policy()
    d = p.to_dict()
    assert Policy.from_dict(d) == p
    assert Policy.from_dict(json.loads(json.dumps(d))) == p
    assert d["overrides"] == {
        "q_proj": {"rank": 4, "alpha": 8.0},
        "re:.*mlp.*": {"bits": 8, "group_size": 128},
    }


def test_is_frozen_and_hashable():
    p = rich_policy()
    with pytest.raises(AttributeError):
        p.rank = 3
    assert hash(p) == hash(Policy.from_dict(p.to_dict()))


def test_from_file_json_and_toml(tmp_path):
    p = rich_policy()
    (tmp_path / "p.json").write_text(p.to_json())
    assert Policy.from_file(tmp_path / "p.json") == p
    (tmp_path / "p.toml").write_text(
        'target = ["q_proj", "v_proj"]\nrank = 4\nalpha = 8.0\n\n[overrides."q_proj"]\nrank = 2\n'
    )
    t = Policy.from_file(tmp_path / "p.toml")
    assert t == Policy(
        target=("q_proj", "v_proj"), rank=4, alpha=8.0, overrides={"q_proj": {"rank": 2}}
    )


@pytest.mark.parametrize(
    "fields, field_name",
    [
        ({"rank": 0}, "rank"),
        ({"rank": -3}, "rank"),
        ({"rank": 2.5}, "rank"),
        ({"rank": True}, "rank"),
        ({"alpha": 0}, "alpha"),
        ({"alpha": float("nan")}, "alpha"),
        ({"dropout": 1.0}, "dropout"),
        ({"bits": 5}, "bits"),
        ({"group_size": 48}, "group_size"),
        ({"group_size": 8}, "group_size"),
        ({"method": "dora"}, "method"),
        ({"target": []}, "target"),
        ({"target": 3}, "target"),
        ({"target": ["re:("]}, "target"),
        ({"exclude": [""]}, "exclude"),
        ({"overrides": {"q_proj": {"rank": 0}}}, "overrides['q_proj'].rank"),
        ({"overrides": {"q_proj": {"dropout": 0.1}}}, "dropout"),
        ({"overrides": ["q_proj"]}, "overrides"),
    ],
)
def test_invalid_fields_are_named(fields, field_name):
    with pytest.raises(PolicyError) as e:
        Policy.from_dict(fields)
    assert field_name in str(e.value)


def test_unknown_field_is_named():
    with pytest.raises(PolicyError, match=r"unknown policy field\(s\) \['rnak'\]"):
        Policy.from_dict({"rnak": 8})


def test_from_file_errors_name_the_file(tmp_path):
    with pytest.raises(PolicyError, match="cannot read policy file"):
        Policy.from_file(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{rank: 3")
    with pytest.raises(PolicyError, match="bad.json.*not valid JSON"):
        Policy.from_file(bad)
    other = tmp_path / "p.yaml"
    other.write_text("rank: 3")
    with pytest.raises(PolicyError, match=r"\.json or \.toml"):
        Policy.from_file(other)


def test_pipeline_string_round_trips_and_carries_every_option():
    p = rich_policy()
    pipeline = p.pipeline()
    text = str(pipeline)
    assert text.startswith("find-linears{target=[q_proj,")
    assert Pipeline.parse(text) == pipeline
    assert "re:.*\\.v_proj$" in text


def test_override_objects_are_accepted_directly():
    o = Override("q_proj", rank=2)
    assert Policy(overrides=(o,)).overrides == (o,)


def test_more_invalid_policies():
    with pytest.raises(PolicyError, match="bits must be one of"):
        Policy(bits=4.0)
    with pytest.raises(
        PolicyError, match=r"overrides name pattern\(s\) \['q_proj'\] more than once"
    ):
        Policy(overrides=(Override("q_proj", rank=2), Override("q_proj", alpha=3.0)))
    with pytest.raises(PolicyError, match="exclude cannot be 'all-linear'"):
        Policy(exclude="all-linear")
    with pytest.raises(PolicyError, match="double_quant must be true or false"):
        Policy(double_quant=1)


@pytest.mark.parametrize(
    "method, pass_name",
    [
        ("lora", "insert-lora"),
        ("qalora", "insert-qalora"),
        ("qlora", "insert-qlora"),
        ("rtn", "quantize"),
    ],
)
def test_every_method_lowers_to_a_runnable_pipeline(method, pass_name):
    p = Policy(method=method, overrides={"q_proj": {"rank": 2, "bits": 8}})
    pipeline = p.pipeline()
    assert [s.name for s in pipeline.passes] == ["find-linears", pass_name]
    assert Pipeline.parse(str(pipeline)) == pipeline
    assert Policy.from_dict(p.to_dict()) == p
