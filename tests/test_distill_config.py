"""The distillation job's settings: what each trained method gets, and bad settings refused by
name."""

import pytest

import lowrank_compiler as lrc
from lowrank_compiler.app.jobs.distill import JobConfig


def test_ours_train_scales_by_default_and_the_peers_cannot():
    cfg = JobConfig(methods=("qalora", "lrqat"))
    assert cfg.policy("lrqat", "gptq").train_scales and cfg.policy("qalora", "gptq").train_scales
    assert not cfg.policy("qlora").train_scales
    assert not JobConfig(train_scales=False).policy("lrqat").train_scales
    assert cfg.training("lrqat")["lr"] == cfg.lrqat_lr and cfg.training("qalora")["lr"] == cfg.lr
    assert JobConfig(scale_lr=1e-3).training("lrqat")["scale_lr"] == 1e-3
    assert JobConfig(scale_lr=None).training("lrqat")["scale_lr"] is None  # the method's own rate


def test_scale_gains_get_the_rate_of_their_width_and_adapters_the_methods():
    """AdamW's groups: adapters at ``lr``; each width's scale gains at ``scale_rate`` (4 bits:
    ``scale_lr`` itself; 2 bits: (15 / 3)^1.5 = 11.2 times it), or at ``lr`` without one."""
    from lowrank_compiler.app.jobs.encoder import adamw, scale_rate
    from lowrank_compiler.app.toy import GPTConfig, TinyGPT

    for bits, factor in ((4, 1.0), (2, 5**1.5)):
        model = lrc.compile(
            TinyGPT(GPTConfig()),
            lrc.Policy(method="lrqat", bits=bits, group_size=16, train_scales=True),
        )
        gains = [p for n, p in model.named_parameters() if n.endswith("scale_gain")]
        opt = adamw(model, 3e-4, 1e-3)
        assert [g["lr"] for g in opt.param_groups] == pytest.approx([3e-4, 1e-3 * factor])
        assert scale_rate(1e-3, bits) == pytest.approx(1e-3 * factor)
        assert {id(p) for p in opt.param_groups[1]["params"]} == {id(p) for p in gains} and gains
        n_trained = sum(1 for p in model.parameters() if p.requires_grad)
        assert sum(len(g["params"]) for g in opt.param_groups) == n_trained
        assert [g["lr"] for g in adamw(model, 3e-4).param_groups] == pytest.approx([3e-4, 3e-4])


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("train_scales", "yes", "train_scales must be true or false, got 'yes'"),
        ("scale_lr", 0.0, "scale_lr must be a positive finite number, got 0.0"),
        ("lrqat_lr", float("nan"), "lrqat_lr must be a positive finite number"),
        ("methods", ("qalora", "dora"), "methods must be distinct names from ('qalora', 'lrqat')"),
    ],
)
def test_bad_settings_name_the_field(field, value, message):
    with pytest.raises(lrc.PolicyError, match=message.replace("(", r"\(").replace(")", r"\)")):
        JobConfig(**{field: value})
