"""INT4 vocabulary tables: ``IntEmbedding`` / ``quantize_embeddings`` and the exporters'
``embeddings="int4"`` (``com.microsoft::GatherBlockQuantized``).

Properties checked: the rounding bound per row and group; onnxruntime's lookup equals the
PyTorch layer bit for bit; a tied head and the table share one initializer in the file;
decoders generate the same greedy tokens in onnxruntime-genai, in ``.generate`` and in HF
``generate`` on the model with its table quantized; the caller's model is unchanged after
an export; bad settings fail before anything is written.
"""

from __future__ import annotations

import copy

import numpy as np
import onnx
import pytest
import torch
from models import made_once
from torch import nn

import lowrank_compiler as lrc
from lowrank_compiler.runtime.errors import ExportError
from lowrank_compiler.runtime.layers.int_embedding import IntEmbedding
from lowrank_compiler.runtime.layers.int_linear import IntLinear
from lowrank_compiler.runtime.serve.load import load

transformers = pytest.importorskip("transformers")
try:
    import onnxruntime_genai as og
except ImportError:
    og = None

VOCAB = 160  # its table (160 x 64) differs in size from every linear layer: copies can be counted


class Lookup(nn.Module):
    """A table and a float layer after it: ``ids (B, T) -> (B, T, 8)``."""

    def __init__(self, rows=VOCAB, width=96):
        super().__init__()
        self.emb = nn.Embedding(rows, width)
        self.proj = nn.Linear(width, 8)

    def forward(self, ids):
        return self.proj(self.emb(ids))


def ids(batch=2, seq=5, seed=1):
    return torch.randint(0, VOCAB, (batch, seq), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(
    "width,group", [(96, 32), (128, 16), (64, 64)]
)  # 3 groups: an odd count of packed zeros
def test_rounding_bound_per_row_and_group(width, group):
    torch.manual_seed(0)
    emb = nn.Embedding(VOCAB, width)
    q = IntEmbedding.from_float(emb, group_size=group)
    err = (q.dequantize() - emb.weight.detach()).abs().reshape(VOCAB, width // group, group)
    bound = q.scales.unsqueeze(-1) / 2 * (1 + 1e-5) + 1e-7
    assert (err <= bound).all()
    x = ids()
    assert torch.equal(q(x), q.dequantize()[x])


@pytest.mark.parametrize("width,group", [(96, 32), (128, 16)])
def test_onnxruntime_lookup_equals_pytorch(tmp_path, width, group):
    torch.manual_seed(0)
    model = Lookup(width=width).eval()
    done = lrc.quantize_embeddings(model, group_size=group)
    assert done == {"emb": f"INT4 g{group}"} and isinstance(model.emb, IntEmbedding)
    path = lrc.export_onnx(model, tmp_path / "m.onnx", example_inputs=(ids(),))
    proto = onnx.load(str(path))
    assert [n.op_type for n in proto.graph.node].count("GatherBlockQuantized") == 1
    onnx.checker.check_model(proto, full_check=True)
    x = ids(3, 7, seed=2)
    with torch.no_grad():
        want = model(x).numpy()
    got = load(path)(x.numpy())
    assert np.abs(got - want).max() <= 1e-6 * np.abs(want).max()


def _llama(tied: bool, seed=0):
    transformers.utils.logging.set_verbosity_error()
    torch.manual_seed(seed)
    return transformers.LlamaForCausalLM(
        transformers.LlamaConfig(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            vocab_size=VOCAB,
            max_position_embeddings=96,
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=0,
            initializer_range=0.15,
            tie_word_embeddings=tied,
        )
    ).eval()


def _gpt2(seed=0):
    transformers.utils.logging.set_verbosity_error()
    torch.manual_seed(seed)
    return transformers.GPT2LMHeadModel(
        transformers.GPT2Config(
            n_layer=2,
            n_embd=64,
            n_head=4,
            vocab_size=VOCAB,
            n_positions=96,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            bos_token_id=0,
            eos_token_id=1,
            initializer_range=0.15,
        )
    ).eval()


def _rtn(model):
    lrc.compile(model, lrc.Policy(method="rtn", bits=4, group_size=32), example_inputs=(ids(),))
    return model


def table_copies(proto, rows, width) -> int:
    """Initializers holding ``rows x width`` 4-bit codes, in any shape."""
    return sum(
        1
        for i in proto.graph.initializer
        if i.data_type == onnx.TensorProto.UINT8 and int(np.prod(i.dims)) == rows * width // 2
    )


class Decoder:
    def __init__(self, name, tmp_path_factory):
        build = {
            "llama-tied": lambda: _rtn(_llama(True)),
            "llama-untied": lambda: _rtn(_llama(False)),
            "gpt2": lambda: _rtn(_gpt2()),
        }[name]
        self.model = build()
        self.before = {n: type(m).__name__ for n, m in self.model.named_modules()}
        self.dir = lrc.export_genai(
            self.model, tmp_path_factory.mktemp(name) / "genai", accuracy_level=0, embeddings="int4"
        )
        self.proto = onnx.load(str(self.dir / "model.onnx"))
        self.reference = copy.deepcopy(self.model)
        self.tables = lrc.quantize_embeddings(self.reference)


@pytest.fixture(scope="module")
def decoders(tmp_path_factory):
    return made_once(lambda name: Decoder(name, tmp_path_factory))


@pytest.mark.parametrize("name", ["llama-tied", "gpt2"])
def test_tied_decoder_holds_the_table_once(decoders, name):
    case = decoders(name)
    ops = [n.op_type for n in case.proto.graph.node]
    assert ops.count("GatherBlockQuantized") == 1
    assert table_copies(case.proto, VOCAB, 64) == 1
    gather = next(n for n in case.proto.graph.node if n.op_type == "GatherBlockQuantized")
    head = [n for n in case.proto.graph.node if n.op_type == "MatMulNBits"][-1]
    assert gather.input[2:] == head.input[2:4]  # the same scales and zero points
    assert "shared with" in next(iter(case.tables.values()))
    # the model handed to the export is as it was: float table, float head, still tied
    assert {n: type(m).__name__ for n, m in case.model.named_modules()} == case.before
    assert case.model.get_output_embeddings().weight is case.model.get_input_embeddings().weight


def test_untied_decoder_rounds_the_table_alone(decoders):
    case = decoders("llama-untied")
    assert table_copies(case.proto, VOCAB, 64) == 1
    assert case.tables == {"model.embed_tokens": "INT4 g32"}
    assert isinstance(case.reference.lm_head, nn.Linear)  # an untied head keeps its own form


def _margin_ok(logits) -> bool:
    for step in logits:
        top2 = np.sort(step.numpy(), axis=-1)[:, -2:]
        if ((top2[:, 1] - top2[:, 0]) < 2e-3 * np.abs(step.numpy()).max()).any():
            return False
    return True


def _prompt(model, steps=16):
    for seed in range(40):
        x = torch.randint(2, VOCAB, (1, 10), generator=torch.Generator().manual_seed(100 + seed))
        with torch.no_grad():
            out = model.generate(
                x,
                do_sample=False,
                max_new_tokens=steps,
                min_new_tokens=steps,
                output_logits=True,
                return_dict_in_generate=True,
                pad_token_id=0,
            )
        if _margin_ok(out.logits) and 1 not in out.sequences[0, 10:].tolist():
            return x, out.sequences[0, 10:].tolist()
    pytest.fail("no prompt with clear top-2 margins")


@pytest.mark.parametrize("name", ["llama-tied", "llama-untied", "gpt2"])
def test_greedy_tokens_match_pytorch_with_the_quantized_table(decoders, name):
    case = decoders(name)
    x, want = _prompt(case.reference)
    got = load(case.dir).generate(x, max_new_tokens=len(want))[0, x.shape[1] :].tolist()
    assert got == want
    if og is not None:
        model = og.Model(str(case.dir))
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=x.shape[1] + len(want), do_sample=False)
        generator = og.Generator(model, params)
        generator.append_tokens(x.numpy().astype(np.int32))
        tokens = []
        while not generator.is_done():
            generator.generate_next_token()
            tokens.append(int(generator.get_next_tokens()[0]))
        assert tokens == want


def test_a_quantized_tied_head_lends_its_codes(tmp_path):
    model = _llama(True)
    lrc.compile(
        model,
        lrc.Policy(method="rtn", bits=4, group_size=32, target=["all-linear", "lm_head"]),
        example_inputs=(ids(),),
    )
    assert isinstance(model.lm_head, IntLinear)
    done = lrc.quantize_embeddings(model)
    assert done == {"model.embed_tokens": "codes of lm_head"}
    assert model.model.embed_tokens.qweight is model.lm_head.qweight


def test_bad_settings_fail_before_writing(tmp_path):
    model = Lookup(width=96)
    out = tmp_path / "m.onnx"
    with pytest.raises(ExportError, match="embeddings must be one of"):
        lrc.export_onnx(model, out, example_inputs=(ids(),), embeddings="int8")
    with pytest.raises(ExportError, match="embedding_group_size"):
        lrc.export_onnx(
            model, out, example_inputs=(ids(),), embeddings="int4", embedding_group_size=24
        )
    with pytest.raises(
        ValueError, match=r"emb: width 95 \(shape \[160, 95\]\) is odd: GatherBlockQuantized"
    ):
        lrc.export_onnx(Lookup(width=95), out, example_inputs=(ids(),), embeddings="int4")
    with pytest.raises(ExportError, match="GatherBlockQuantized"):
        lrc.export_onnx(model, out, example_inputs=(ids(),), embeddings="int4", format="qdq")
    assert not out.exists() and list(tmp_path.iterdir()) == []
    assert isinstance(model.emb, nn.Embedding)
    with pytest.raises(ValueError, match="no nn.Embedding"):
        lrc.quantize_embeddings(nn.Sequential(nn.Linear(4, 4)))


def test_a_functional_read_of_the_table_names_the_fix(tmp_path):
    from models import tiny_gpt

    model = tiny_gpt(tie_head=True)  # nanoGPT: logits = F.linear(x, wte.weight)
    with pytest.raises(Exception, match="reads .weight directly"):
        lrc.export_onnx(
            model, tmp_path / "m.onnx", example_inputs=(ids(seq=8) % 96,), embeddings="int4"
        )
    assert not (tmp_path / "m.onnx").exists()


def test_quantizing_twice_changes_nothing(tmp_path):
    model = Lookup().eval()
    lrc.quantize_embeddings(model)
    table = model.emb
    assert lrc.quantize_embeddings(model) == {}
    path = lrc.export_onnx(model, tmp_path / "m.onnx", example_inputs=(ids(),), embeddings="int4")
    assert model.emb is table and table_copies(onnx.load(str(path)), VOCAB, 96) == 1
