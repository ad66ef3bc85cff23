"""The training stacks people use, on the real stories260K: ``transformers.Trainer`` (loss falls,
only adapters move, a checkpoint resumes to the unbroken run's adapters, adapter-only checkpoints
through ``lrc.adapter_checkpoints()``, fold and export after) and gradient checkpointing (the same
gradients, bit for bit, with ``gradient_checkpointing_enable()`` and the Trainer flag).

Every run seeds before ``compile``, since ``A`` starts random: two runs then start equal.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_stories260k import TEXT

import lowrank_compiler as lrc
from lowrank_compiler.app.pretrained import load_stories260k

transformers = pytest.importorskip("transformers")
STEPS, SAVE = 6, 3


def compiled(method="qalora"):
    transformers.utils.logging.set_verbosity_error()
    model, tok = load_stories260k()
    tok.pad_token = tok.eos_token
    torch.manual_seed(0)
    ids = tok("Once upon a time", return_tensors="pt").input_ids
    lrc.compile(model, lrc.Policy(method=method), example_inputs=(ids,))
    return model, tok


def rows(tok):
    """Four padded rows per sentence set, labels masked on padding."""
    batch = tok(TEXT * 4, padding="max_length", max_length=32, truncation=True)
    return [
        {
            "input_ids": ids,
            "attention_mask": mask,
            "labels": [t if m else -100 for t, m in zip(ids, mask)],
        }
        for ids, mask in zip(batch["input_ids"], batch["attention_mask"])
    ]


def train(out, *, resume=None, callbacks=(), steps=STEPS, **extra):
    model, tok = compiled()
    args = transformers.TrainingArguments(
        output_dir=str(out),
        max_steps=steps,
        per_device_train_batch_size=4,
        learning_rate=1e-2,
        save_steps=SAVE,
        logging_steps=1,
        report_to=[],
        use_cpu=True,
        seed=0,
        disable_tqdm=True,
        **extra,
    )
    trainer = transformers.Trainer(
        model=model, args=args, train_dataset=rows(tok), callbacks=list(callbacks)
    )
    trainer.train(resume_from_checkpoint=resume)
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return model, losses


def adapters(model):
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.fixture(scope="module")
def unbroken(tmp_path_factory):
    out = tmp_path_factory.mktemp("unbroken")
    model, losses = train(out)
    return model, losses, out


def test_trainer_lowers_the_loss_and_moves_only_the_adapters(unbroken):
    model, losses, out = unbroken
    assert len(losses) == STEPS and np.mean(losses[-2:]) < losses[0]
    fresh, _ = compiled()
    trained_state, fresh_state = model.state_dict(), fresh.state_dict()
    moved = {n for n in trained_state if not torch.equal(trained_state[n], fresh_state[n])}
    assert moved and moved <= set(adapters(model))
    assert (out / f"checkpoint-{SAVE}" / "model.safetensors").is_file()


def test_a_checkpoint_resumes_to_the_unbroken_runs_adapters(unbroken, tmp_path):
    model, _, out = unbroken
    resumed, _ = train(tmp_path, resume=str(out / f"checkpoint-{SAVE}"))
    want, got = adapters(model), adapters(resumed)
    assert want.keys() == got.keys()
    assert all(torch.equal(want[n], got[n]) for n in want)  # bit for bit


def test_the_trained_model_folds_and_exports(unbroken, tmp_path):
    model, _, _ = unbroken
    model.eval()
    folded = lrc.fold(model)
    assert max(lrc.compile_info(folded).fold_errors.values()) < 1e-5
    ids = torch.tensor([[1, 403, 407, 261, 378, 429, 269]])
    path = lrc.export_onnx(folded, tmp_path / "m.onnx", example_inputs=(ids,))
    with torch.no_grad():
        want = folded(ids).logits.numpy()
    got = lrc.runtime.load(path)(ids.numpy())
    got = got[0] if isinstance(got, (list, tuple)) else got
    assert np.abs(got - want).max() / np.abs(want).max() < 1e-5


def test_adapter_checkpoints_write_adapters_instead_of_the_model(unbroken, tmp_path):
    model, _, _ = unbroken
    trained, _ = train(tmp_path, callbacks=[lrc.adapter_checkpoints()])
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"adapters-{SAVE}", f"adapters-{STEPS}"]
    fresh, tok = compiled()
    lrc.load_adapters(fresh, tmp_path / f"adapters-{STEPS}")
    ids = tok(TEXT[:1], return_tensors="pt").input_ids
    trained.eval()
    with torch.no_grad():
        assert torch.equal(fresh.eval()(ids).logits, trained(ids).logits)
    assert all(
        torch.equal(a, b) for a, b in zip(adapters(trained).values(), adapters(model).values())
    )


ENABLE = ["gradient_checkpointing_enable", "activation_checkpointing_enable"]  # the second: HF 5


@pytest.mark.filterwarnings("ignore:`gradient_checkpointing_enable` is deprecated")
@pytest.mark.parametrize("method", ["qalora", "lrqat", "lora"])
@pytest.mark.parametrize("reentrant", [False, True])
@pytest.mark.parametrize("enable", ENABLE)
def test_gradient_checkpointing_gives_the_same_gradients(method, reentrant, enable):
    def gradients(checkpointing):
        model, tok = compiled(method)
        with torch.no_grad():  # a trained-looking adapter, so every gradient path is live
            for name, p in model.named_parameters():
                if name.endswith("lora_B"):
                    p.normal_(0, 0.02, generator=torch.Generator().manual_seed(1))
        if checkpointing:
            if not hasattr(model, enable):
                pytest.skip(f"transformers {transformers.__version__} has no {enable}")
            getattr(model, enable)({"use_reentrant": reentrant})
        model.train()
        batch = tok(TEXT, return_tensors="pt", padding=True)
        model(**batch, labels=batch.input_ids).loss.backward()
        return {n: p.grad for n, p in model.named_parameters() if p.requires_grad}

    plain, checkpointed = gradients(False), gradients(True)
    assert all(checkpointed[n] is not None for n in plain)
    assert all(torch.equal(plain[n], checkpointed[n]) for n in plain)


def test_the_trainer_flag_trains_to_the_same_adapters(unbroken, tmp_path):
    model, _, _ = unbroken
    flagged, _ = train(tmp_path, gradient_checkpointing=True, save_strategy="no")
    want, got = adapters(model), adapters(flagged)
    assert all(torch.equal(want[n], got[n]) for n in want)
