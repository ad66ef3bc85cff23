"""The distillation job's settings: what each trained method gets, and bad settings refused by name."""

import pytest

import lowrank_compiler as lrc
from lowrank_compiler.jobs.distill import JobConfig


def test_ours_train_scales_by_default_and_the_peers_cannot():
    cfg = JobConfig(methods=("qalora", "lrqat"))
    assert cfg.policy("lrqat", "gptq").train_scales and cfg.policy("qalora", "gptq").train_scales
    assert not cfg.policy("qlora").train_scales
    assert not JobConfig(train_scales=False).policy("lrqat").train_scales
    assert cfg.training("lrqat")["lr"] == cfg.lrqat_lr and cfg.training("qalora")["lr"] == cfg.lr
    assert JobConfig(scale_lr=1e-3).training("lrqat")["scale_lr"] == 1e-3
    assert JobConfig(scale_lr=None).training("lrqat")["scale_lr"] is None  # the method's own rate


@pytest.mark.parametrize("field, value, message", [
    ("train_scales", "yes", "train_scales must be true or false, got 'yes'"),
    ("scale_lr", 0.0, "scale_lr must be a positive finite number, got 0.0"),
    ("lrqat_lr", float("nan"), "lrqat_lr must be a positive finite number"),
    ("methods", ("qalora", "dora"), "methods must be distinct names from ('qalora', 'lrqat')"),
])
def test_bad_settings_name_the_field(field, value, message):
    with pytest.raises(lrc.PolicyError, match=message.replace("(", r"\(").replace(")", r"\)")):
        JobConfig(**{field: value})
