"""export_genai and the onnxruntime generation loop: QA-LoRA-folded INT4 decoders with a KV cache,
run by onnxruntime-genai and by ``runtime.serve.DecoderSession``, against HF ``generate`` on the
same folded torch model.

One export per architecture (module-scoped fixtures, ~6 s each). Parity runs at accuracy level 0
(fp32 compute; level 4 quantizes activations to int8, ~5e-3 off). Prompts are chosen so that at
every greedy step the top-2 logit margin is well above the parity bound and no eos comes up, so
token sequences can be compared exactly.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from models import made_once, tiny_bpe_tokenizer

import lowrank_compiler as lrc
from lowrank_compiler.genai import ExportError, export_genai
from lowrank_compiler.runtime.serve.generate import DecoderSession

transformers = pytest.importorskip("transformers")
try:
    import onnxruntime_genai as og
except ImportError:  # not a dependency of the package: the loop's own tests still run
    og = None
needs_og = pytest.mark.skipif(
    og is None, reason="onnxruntime-genai is not installed (pip install onnxruntime-genai)"
)

VOCAB, CONTEXT = 128, 96
REL = 1e-4  # logits parity, relative to the largest |logit|
MARGIN = 2e-3  # top-2 margin each greedy step needs, relative to the largest |logit|
GREEDY_STEPS = 32
LOGIT_STEPS = 17  # prefill + 16 decode steps


def _quiet():
    transformers.utils.logging.set_verbosity_error()


def _common(**extra):
    return dict(
        vocab_size=VOCAB,
        max_position_embeddings=CONTEXT,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=0,
        initializer_range=0.15,
        **extra,
    )


def llama():
    return transformers.LlamaForCausalLM(
        transformers.LlamaConfig(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            **_common(),
        )
    )


def mistral():
    return transformers.MistralForCausalLM(
        transformers.MistralConfig(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            sliding_window=None,
            **_common(),
        )
    )


def qwen2():  # q/k/v carry a bias
    return transformers.Qwen2ForCausalLM(
        transformers.Qwen2Config(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            **_common(),
        )
    )


def phi3():  # fused qkv_proj and gate_up_proj
    return transformers.Phi3ForCausalLM(
        transformers.Phi3Config(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            original_max_position_embeddings=CONTEXT,
            **_common(),
        )
    )


def gpt2():  # Conv1D, learned positions; combined past_%d in onnxruntime-genai
    return transformers.GPT2LMHeadModel(
        transformers.GPT2Config(
            n_layer=2,
            n_embd=64,
            n_head=4,
            vocab_size=VOCAB,
            n_positions=CONTEXT,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            bos_token_id=0,
            eos_token_id=1,
            initializer_range=0.15,
        )
    )


ARCHS = {"llama": llama, "mistral": mistral, "qwen2": qwen2, "phi3": phi3, "gpt2": gpt2}


def folded_model(build, seed=0):
    """QA-LoRA int4 g32 rank 8, adapters nudged (as after training), folded (split zero points)."""
    _quiet()
    torch.manual_seed(seed)
    model = build().eval()
    ids = torch.randint(2, VOCAB, (2, 8), generator=torch.Generator().manual_seed(1))
    lrc.compile(
        model, lrc.Policy(method="qalora", bits=4, group_size=32, rank=8), example_inputs=(ids,)
    )
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("lora_B"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    folded = lrc.fold(model)
    assert max(lrc.compile_info(folded).fold_errors.values()) < 1e-4
    return folded


def hf_generate(model, ids, mask, steps):
    with torch.no_grad():
        out = model.generate(
            ids,
            attention_mask=mask,
            do_sample=False,
            max_new_tokens=steps,
            min_new_tokens=steps,
            output_logits=True,
            return_dict_in_generate=True,
            pad_token_id=0,
        )
    return out.sequences, [x.numpy() for x in out.logits]


def well_separated(logits) -> bool:
    """Every step's top-2 margin (every row) clears MARGIN; and no row picks eos (id 1)."""
    for step in logits:
        top2 = np.sort(step, axis=-1)[:, -2:]
        if ((top2[:, 1] - top2[:, 0]) < MARGIN * np.abs(step).max()).any() or (
            step.argmax(-1) == 1
        ).any():
            return False
    return True


def prompt(model, lengths, steps, tries=40):
    """Left-padded prompts of the given lengths whose greedy run is well separated, and that run."""
    batch, seq = len(lengths), max(lengths)
    for seed in range(tries):
        ids = torch.randint(
            2, VOCAB, (batch, seq), generator=torch.Generator().manual_seed(100 + seed)
        )
        mask = torch.zeros(batch, seq, dtype=torch.int64)
        for row, n in enumerate(lengths):
            mask[row, seq - n :] = 1
        ids = ids.masked_fill(mask == 0, 0)
        sequences, logits = hf_generate(model, ids, mask, steps)
        if well_separated(logits):
            return ids, mask, sequences, logits
    pytest.fail(
        f"no prompt of lengths {lengths} with top-2 margins above {MARGIN} in {tries} tries"
    )


class Case:
    def __init__(self, name, tmp_path_factory):
        self.name = name
        self.model = folded_model(ARCHS[name])
        self.dir = export_genai(
            self.model, tmp_path_factory.mktemp(name) / "genai", accuracy_level=0, attention="plain"
        )
        self.session = DecoderSession(self.dir)


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """One model and one export per case, made on first use."""
    return made_once(lambda name: Case(name, tmp_path_factory))


@pytest.fixture(params=list(ARCHS))
def case(request, exports):
    return exports(request.param)


def og_greedy(folder, ids, steps):
    """onnxruntime-genai's greedy tokens, ``[batch, steps]``."""
    model = og.Model(str(folder))
    params = og.GeneratorParams(model)
    params.set_search_options(
        max_length=ids.shape[1] + steps, do_sample=False, batch_size=ids.shape[0]
    )
    generator = og.Generator(model, params)
    generator.append_tokens(ids.numpy().astype(np.int32))
    tokens = []
    while not generator.is_done():
        generator.generate_next_token()
        tokens.append(generator.get_next_tokens().copy())
    return np.stack(tokens, axis=1)


@needs_og
def test_greedy_tokens_match_hf_in_onnxruntime_genai_and_ours(case):
    ids, mask, ref, _ = prompt(case.model, [10], GREEDY_STEPS)
    want = ref[0, ids.shape[1] :].tolist()
    assert len(want) == GREEDY_STEPS
    assert og_greedy(case.dir, ids, GREEDY_STEPS)[0].tolist() == want
    ours = case.session.generate(ids, mask, max_new_tokens=GREEDY_STEPS)
    assert torch.equal(ours, ref)


@needs_og
def test_onnxruntime_genai_batch_takes_right_padding(case):
    """onnxruntime-genai (0.18) builds the first mask from the tokens: trailing pad ids are padding
    (it scans each row from the end), leading ones are not. So its batches are padded on the
    right, and give the tokens HF gives for the same prompts padded on the left."""
    ids, mask, ref, _ = prompt(case.model, [9, 6, 3], 12)
    pad = json.loads((case.dir / "genai_config.json").read_text())["model"]["pad_token_id"]
    right = torch.full_like(ids, pad)
    for row in range(ids.shape[0]):
        real = ids[row][mask[row] == 1]
        right[row, : len(real)] = real
    assert og_greedy(case.dir, right, 12).tolist() == ref[:, ids.shape[1] :].tolist()


@pytest.mark.parametrize("lengths", [[9], [9, 6, 3]], ids=["batch1", "batch3-left-padded"])
def test_logits_every_step_match_pytorch(case, lengths):
    ids, mask, ref, ref_logits = prompt(case.model, lengths, LOGIT_STEPS)
    ours, logits = case.session.generate(ids, mask, max_new_tokens=LOGIT_STEPS, output_logits=True)
    assert torch.equal(ours, ref)
    assert len(logits) == len(ref_logits) == LOGIT_STEPS
    for step, (got, want) in enumerate(zip(logits, ref_logits)):
        err = np.abs(got - want).max() / np.abs(want).max()
        assert err <= REL, (case.name, lengths, step, err)
    # the prefill's logits at every real position, from a past of length 0
    positions = torch.where(mask == 1, mask.cumsum(-1) - 1, 1)
    got, presents = case.session.step(
        ids.numpy(), mask.numpy(), positions.numpy(), case.session.empty_past(len(lengths))
    )
    with torch.no_grad():
        want = case.model(input_ids=ids, attention_mask=mask, position_ids=positions).logits.numpy()
    real = mask.numpy() == 1
    assert np.abs(got[real] - want[real]).max() <= REL * np.abs(want[real]).max()
    assert len(presents) == len(case.session.present_names)


def test_folder_and_genai_config(case):
    config = json.loads((case.dir / "genai_config.json").read_text())
    marker = json.loads((case.dir / "lowrank_compiler.json").read_text())
    model_cfg = case.model.config
    assert config["model"]["type"] == case.name
    assert config["search"]["past_present_share_buffer"] is False
    assert config["search"]["do_sample"] is False
    decoder = config["model"]["decoder"]
    assert decoder["num_hidden_layers"] == 2 and decoder["head_size"] == 16
    assert decoder["num_key_value_heads"] == (4 if case.name == "gpt2" else 2)
    assert config["model"]["context_length"] == CONTEXT and config["model"]["vocab_size"] == VOCAB
    assert config["model"]["eos_token_id"] == 1
    assert marker["writer"] == "lowrank_compiler.export_genai" and marker["accuracy_level"] == 0
    assert marker["architecture"] == type(case.model).__name__
    import onnx

    graph = onnx.load(str(case.dir / "model.onnx"), load_external_data=False).graph
    ops = [n.op_type for n in graph.node]
    linears = {"gpt2": 4, "phi3": 4}.get(
        case.name, 7
    ) * 2  # per layer x 2 layers; lm_head stays float
    assert ops.count("MatMulNBits") == linears, model_cfg.model_type
    names = [i.name for i in graph.input]
    if case.name == "gpt2":
        assert names == ["input_ids", "attention_mask", "position_ids", "past_0", "past_1"]
    else:
        assert names[:4] == ["input_ids", "attention_mask", "position_ids", "past_key_values.0.key"]


# ---- the generation loop's own behaviour (on the Llama export) ----


@pytest.fixture
def llama_case(exports):
    return exports("llama")


def test_sampling_is_seeded_and_top_k_1_is_greedy(llama_case):
    s = llama_case.session
    ids = torch.randint(2, VOCAB, (2, 5), generator=torch.Generator().manual_seed(7))
    a = s.generate(
        ids, max_new_tokens=12, do_sample=True, temperature=1.5, top_p=0.9, seed=11, eos_token_id=[]
    )
    b = s.generate(
        ids, max_new_tokens=12, do_sample=True, temperature=1.5, top_p=0.9, seed=11, eos_token_id=[]
    )
    c = s.generate(
        ids, max_new_tokens=12, do_sample=True, temperature=1.5, top_p=0.9, seed=12, eos_token_id=[]
    )
    assert torch.equal(a, b) and not torch.equal(a, c)
    greedy = s.generate(ids, max_new_tokens=12, eos_token_id=[])
    assert torch.equal(
        s.generate(ids, max_new_tokens=12, do_sample=True, top_k=1, seed=0, eos_token_id=[]), greedy
    )
    assert torch.equal(
        s.generate(ids, max_new_tokens=12, do_sample=True, top_p=1e-6, seed=0, eos_token_id=[]),
        greedy,
    )


def test_eos_stops_each_row_and_pads_it(llama_case):
    s = llama_case.session
    ids = torch.randint(2, VOCAB, (2, 6), generator=torch.Generator().manual_seed(5))
    free = s.generate(ids, max_new_tokens=10, eos_token_id=[])
    stop = int(free[0, 6 + 2])  # row 0's third new token is its eos
    got = s.generate(ids, max_new_tokens=10, eos_token_id=stop, pad_token_id=0)
    ends = [row.index(stop) + 1 if stop in row else 10 for row in free[:, 6:].tolist()]
    assert ends[0] <= 3 and got.shape[1] == 6 + max(ends)  # the run ends when every row has stopped
    for row, end in enumerate(ends):
        assert torch.equal(got[row, : 6 + end], free[row, : 6 + end])
        assert (got[row, 6 + end :] == 0).all()  # padded after its eos


def test_context_length_and_bad_masks_are_refused(llama_case):
    s = llama_case.session
    ids = torch.randint(2, VOCAB, (1, 90))
    with pytest.raises(
        ValueError,
        match=r"90 tokens \+ max_new_tokens 7 = 97 exceeds the model's context_length 96",
    ):
        s.generate(ids, max_new_tokens=7)
    assert s.generate(ids, max_new_tokens=6, eos_token_id=[]).shape == (1, 96)
    right = torch.tensor([[1, 1, 0]])
    with pytest.raises(ValueError, match="left padding"):
        s.generate(torch.tensor([[5, 6, 0]]), right)
    with pytest.raises(ValueError, match="all padding"):
        s.generate(torch.tensor([[5, 6]]), torch.tensor([[0, 0]]))


def test_streamers(llama_case):
    s = llama_case.session
    ids = torch.randint(2, VOCAB, (1, 4), generator=torch.Generator().manual_seed(9))
    seen = []
    out = s.generate(ids, max_new_tokens=5, streamer=seen.append, eos_token_id=[])
    assert [int(a[0]) for a in seen] == out[0, 4:].tolist()

    class Recorder:  # HF's streamer protocol: the prompt, then each step's tokens, then end()
        def __init__(self):
            self.calls = []

        def put(self, value):
            self.calls.append(value.tolist())

        def end(self):
            self.calls.append("end")

    rec = Recorder()
    s.generate(ids, max_new_tokens=5, streamer=rec, eos_token_id=[])
    assert rec.calls[0] == ids.tolist() and rec.calls[-1] == "end"
    assert [c[0] for c in rec.calls[1:-1]] == out[0, 4:].tolist()


@needs_og
def test_folder_safety_and_tokenizer(llama_case, tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(
        lrc.OutputError, match="holds no lowrank_compiler.json, so this package did not write it"
    ):
        export_genai(llama_case.model, foreign)
    assert (foreign / "notes.txt").read_text() == "keep me"
    not_folded = lrc.compile(
        llama(),
        lrc.Policy(method="qalora", bits=4, group_size=32, rank=8),
        example_inputs=(torch.randint(2, VOCAB, (2, 8)),),
    )
    with pytest.raises(ExportError, match="fold"):
        export_genai(not_folded, tmp_path / "x")

    # a tokenizer (a tiny BPE, built here) goes into the folder, and onnxruntime-genai reads it;
    # re-exporting over our own folder replaces it
    tok = tiny_bpe_tokenizer(VOCAB)
    out = export_genai(llama_case.model, llama_case.dir, tokenizer=tok, accuracy_level=0)
    assert (out / "tokenizer.json").is_file() and (out / "tokenizer_config.json").is_file()
    assert "tokenizer.json" in json.loads((out / "lowrank_compiler.json").read_text())["files"]
    tokenizer = og.Tokenizer(og.Model(str(out)))
    ids = tok("abcd ef")["input_ids"]
    assert tokenizer.decode(np.array(ids, dtype=np.int32)).replace(" ", "") == "abcdef"
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no staging folder left


@needs_og
def test_qdq_format_keeps_accuracy_level_0(llama_case, tmp_path):
    """Standard DequantizeLinear + MatMul: onnxruntime fuses them into MatMulNBits at accuracy level
    4 unless told otherwise; genai_config's session options tell it (onnxruntime-genai and ours)."""
    out = export_genai(llama_case.model, tmp_path / "qdq", format="qdq", accuracy_level=0)
    import onnx

    ops = {n.op_type for n in onnx.load(str(out / "model.onnx")).graph.node}
    assert "DequantizeLinear" in ops and "MatMulNBits" not in ops
    config = json.loads((out / "genai_config.json").read_text())
    assert (
        config["model"]["decoder"]["session_options"]["session.qdq_matmulnbits_accuracy_level"]
        == "0"
    )
    ids, mask, ref, ref_logits = prompt(llama_case.model, [9, 6, 3], 8)
    got, logits = DecoderSession(out).generate(ids, mask, max_new_tokens=8, output_logits=True)
    assert torch.equal(got, ref)
    for a, b in zip(logits, ref_logits):
        assert np.abs(a - b).max() <= REL * np.abs(b).max()
    model = og.Model(str(out))
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=20, do_sample=False)
    generator = og.Generator(model, params)
    generator.append_tokens(ids[:1].numpy().astype(np.int32))
    first = generator.get_output("logits")[0, -1]
    assert np.abs(first - ref_logits[0][0]).max() <= REL * np.abs(ref_logits[0][0]).max()
