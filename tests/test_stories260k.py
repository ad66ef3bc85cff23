"""The real pretrained decoder (stories260K, vendored): the default policy, no override, through
compile, a short fine-tune, fold, ``export_genai`` and two generation loops.

Its MLP width is 172, not a multiple of the group (32): ``down_proj`` gets five full groups and
one of 12. Its head width is 8, so the genai folder takes the plain attention graph. Tokens are
compared exactly; where two runtimes part, the folded model's own top-2 logits must have been
within ``MARGIN`` of each other (relative to the largest logit): such near ties may break either
way under float rounding.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from models import made_once

import lowrank_compiler as lrc
from lowrank_compiler.app.jobs.llm_eval import torch_greedy
from lowrank_compiler.app.pretrained import load_stories260k
from lowrank_compiler.genai import export_genai
from lowrank_compiler.runtime.serve.generate import DecoderSession

transformers = pytest.importorskip("transformers")
try:
    import onnxruntime_genai as og
except ImportError:
    og = None
needs_og = pytest.mark.skipif(og is None, reason="onnxruntime-genai is not installed")

PROMPTS = ["Once upon a time", "The little dog", "Lily wanted to", "One day, Tom"]
STEPS = 24
MARGIN = 1e-3
TEXT = [
    "Once upon a time, there was a little girl named Lily. She liked to play in the park.",
    "Tom had a red ball. He threw it to his dog, and the dog ran after it.",
    "One day, a bird sat on a tree. It sang a song for the sun.",
]


def policy(method, quantizer="rtn"):
    """The default policy but for the method (and quantizer): no exclude, no override."""
    return lrc.Policy(method=method, quantizer=quantizer)


def fine_tune(model, tok, steps=6, lr=1e-2):
    """A few AdamW steps on fixed sentences: the adapters move off their zero start."""
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token  # llama2.c's tokenizer has none; padding is masked anyway
    batch = tok(TEXT, return_tensors="pt", padding=True)
    labels = batch.input_ids.masked_fill(batch.attention_mask == 0, -100)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr)
    model.train()
    losses = []
    for _ in range(steps):
        loss = model(**batch, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    model.eval()
    return losses


class Case:
    def __init__(self, key, tmp_path_factory):
        method, quantizer = key
        transformers.utils.logging.set_verbosity_error()
        model, self.tok = load_stories260k()
        self.tok.pad_token = (
            self.tok.eos_token if self.tok.pad_token is None else self.tok.pad_token
        )
        ids = self.tok(PROMPTS[0], return_tensors="pt").input_ids
        calibration = [self.tok(t, return_tensors="pt").input_ids for t in TEXT]
        lrc.compile(
            model,
            policy(method, quantizer),
            example_inputs=(ids,),
            calibration=calibration if quantizer == "gptq" else None,
        )
        self.compiled = model
        self.losses = fine_tune(model, self.tok) if method != "rtn" else []
        self.model = lrc.fold(model) if method != "rtn" else model
        self.dir = export_genai(
            self.model,
            tmp_path_factory.mktemp(method) / "genai",
            accuracy_level=0,
            tokenizer=self.tok,
        )


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    return made_once(lambda key: Case(key, tmp_path_factory))


METHODS = [("qalora", "rtn"), ("lrqat", "rtn"), ("rtn", "rtn"), ("qalora", "gptq")]


@pytest.fixture(params=METHODS, ids=lambda k: "-".join(k))
def case(request, cases):
    return cases(request.param)


def assert_same_up_to_ties(got, want, margins):
    """Equal tokens; where they part, the folded model's own top-2 were within ``MARGIN``."""
    assert len(got) == len(want) == STEPS
    for i, (a, b) in enumerate(zip(got, want)):
        if a != b:
            assert margins[i] < MARGIN, f"step {i}: {a} != {b} with top-2 margin {margins[i]:.2e}"
            return


def og_greedy(folder, ids, steps=STEPS):
    model = og.Model(str(folder))
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=ids.shape[1] + steps, do_sample=False, batch_size=1)
    generator = og.Generator(model, params)
    generator.append_tokens(ids.numpy().astype(np.int32))
    tokens = []
    while not generator.is_done():
        generator.generate_next_token()
        tokens.append(int(generator.get_next_tokens()[0]))
    return tokens


def test_default_policy_compiles_every_linear_of_the_real_model(case):
    """35 projections (5 layers x 7), none excluded (the tied head stays float, as all-linear
    leaves output heads); down_proj's 172 inputs make 6 groups."""
    status = {op.name: op.status for op in lrc.compile_info(case.model).linears}
    assert sum(s == "selected" for s in status.values()) == 35
    assert status["lm_head"] != "selected"
    down = case.model.model.layers[0].mlp.down_proj
    assert down.scales.shape == (64, 6)  # (N, ceil(172 / 32))


def test_fine_tune_lowers_the_loss_and_folds_exactly(case):
    if not case.losses:
        pytest.skip("rtn has no adapter to train")
    assert case.losses[-1] < case.losses[0]
    errors = lrc.compile_info(case.model).fold_errors
    assert len(errors) == 35 and max(errors.values()) < 1e-4


@needs_og
@pytest.mark.parametrize("text", PROMPTS)
def test_tokens_from_onnxruntime_genai_and_ours_equal_the_folded_model(case, text):
    ids = case.tok(text, return_tensors="pt").input_ids
    want, margins = torch_greedy(case.model, ids, STEPS)
    assert_same_up_to_ties(og_greedy(case.dir, ids), want, margins)
    ours = DecoderSession(case.dir).generate(ids, torch.ones_like(ids), max_new_tokens=STEPS)
    assert_same_up_to_ties(ours[0, ids.shape[1] :].tolist(), want, margins)


@needs_og
def test_accuracy_level_4_our_loop_equals_onnxruntime_genai(cases, tmp_path):
    """Both loops run the same MatMulNBits kernels (int8 activations): the same tokens, all
    steps."""
    model = cases(("qalora", "rtn"))
    folder = export_genai(model.model, tmp_path / "acc4", accuracy_level=4, tokenizer=model.tok)
    session = DecoderSession(folder)
    for text in PROMPTS:
        ids = model.tok(text, return_tensors="pt").input_ids
        ours = session.generate(ids, torch.ones_like(ids), max_new_tokens=STEPS)
        assert ours[0, ids.shape[1] :].tolist() == og_greedy(folder, ids)
