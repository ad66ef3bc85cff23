"""The genai section's folders: one Llama-shaped fp32 model, written for onnxruntime-genai by
its model builder (with and without a LoRA adapter) and by us (fused and plain attention,
and with the same adapter folded).

The adapter: QA-LoRA (float zero points, rank 16 on q, k, v, o, gate, up, down, random
nonzero B) compiled onto our INT4 base. Its group pooling is a plain LoRA whose A repeats
each column over its group of ``g`` inputs divided by ``g``, so the same adapter goes to the
builder as a PEFT LoRA folder (``save_peft_adapter``, then A widened): the builder adds it
as an unmerged branch over its INT4 base, we fold it into ours.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import onnx
import torch
from safetensors.torch import load_file, save_file

import lowrank_compiler as lrc

EXAMPLE = (2, 8)  # token ids compile traces with


def mlp_width(hidden: int) -> int:
    return (int(2.75 * hidden) // 256) * 256 or 256


def make_model(hidden: int, layers: int, heads: int, kv_heads: int, vocab: int, context: int):
    import transformers

    config = transformers.LlamaConfig(
        hidden_size=hidden,
        intermediate_size=mlp_width(hidden),
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        vocab_size=vocab,
        max_position_embeddings=context,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).eval()
    with (
        torch.no_grad()
    ):  # std 0.02 gives near-tied logits; 1/sqrt(fan_in) keeps greedy runs meaningful
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, p.shape[1] ** -0.5)
    return model


def save_with_tokenizer(model, folder: Path) -> None:
    """``save_pretrained`` beside a word-level tokenizer: the builder and onnxruntime-genai want
    one."""
    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3}
    vocab.update({f"w{i}": i for i in range(4, model.config.vocab_size)})
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = transformers.PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
    )
    model.save_pretrained(str(folder))
    tok.save_pretrained(str(folder))


def build_builder(
    hf_dir: Path, out: Path, adapter: Path | None = None, symmetric: bool = False
) -> None:
    """onnxruntime-genai's model builder: INT4 block 32 (asymmetric unless ``symmetric``, the
    builder's own default), accuracy level 4, lm_head float."""
    # 0.18's names: its help calls the older ``int4_``-prefixed ones aliases, but it ignores them
    # silently
    extra = [
        f"is_symmetric={str(symmetric).lower()}",
        "block_size=32",
        "accuracy_level=4",
        "nodes_to_exclude=/lm_head/MatMul",
    ] + ([f"adapter_path={adapter}"] if adapter else [])
    cmd = [
        sys.executable,
        "-m",
        "onnxruntime_genai.models.builder",
        "-i",
        str(hf_dir),
        "-o",
        str(out),
        "-p",
        "int4",
        "-e",
        "cpu",
        "-c",
        str(out.parent / "builder-cache"),
        "--extra_options",
        *extra,
    ]
    done = subprocess.run(
        cmd, capture_output=True, text=True, check=False
    )  # its output goes into the error
    if done.returncode != 0:
        raise RuntimeError(
            f"the model builder failed ({' '.join(cmd[1:4])} ...):\n{done.stdout[-2000:]}\n"
            f"{done.stderr[-2000:]}"
        )
    check_zero_points(out / "model.onnx", symmetric)


def check_zero_points(path: Path, symmetric: bool) -> None:
    """Refuse a builder file whose grid is not the one asked for (an option it ignored): MatMulNBits
    takes zero points as its fourth input, and a symmetric file has none."""
    graph = onnx.load(str(path), load_external_data=False).graph
    with_zeros = {
        len(n.input) > 3 and n.input[3] != "" for n in graph.node if n.op_type == "MatMulNBits"
    }
    if with_zeros != {not symmetric}:
        raise RuntimeError(
            f"{path}: the model builder wrote MatMulNBits nodes "
            f"{'with' if True in with_zeros else 'without'} zero points, asked for a "
            f"{'symmetric' if symmetric else 'asymmetric'} grid: check its --extra_options names"
        )


def _ids(vocab: int) -> torch.Tensor:
    return torch.randint(4, vocab, EXAMPLE, generator=torch.Generator().manual_seed(1))


def ours_int4(model, method: str = "rtn"):
    """The same weights, INT4 g32 by our compiler (RTN, or QA-LoRA with B = 0 folded)."""
    m = copy.deepcopy(model)
    rank = {"rank": 8} if method == "qalora" else {}
    lrc.compile(
        m,
        lrc.Policy(method=method, bits=4, group_size=32, **rank),
        example_inputs=(_ids(m.config.vocab_size),),
    )
    return lrc.fold(m) if method == "qalora" else m


def with_adapter(model, rank: int = 16, zero_point: str = "float"):
    """QA-LoRA INT4 g32 on every block linear, B drawn nonzero: a trained adapter's stand-in."""
    m = copy.deepcopy(model)
    policy = lrc.Policy(
        method="qalora", bits=4, group_size=32, rank=rank, alpha=2.0 * rank, zero_point=zero_point
    )
    lrc.compile(m, policy, example_inputs=(_ids(m.config.vocab_size),))
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name.endswith("lora_B"):
                p.normal_(0, 0.02, generator=g)
    return m


def plain_lora_adapter(compiled, path: Path) -> Path:
    """``compiled``'s QA-LoRA adapters as a PEFT LoRA folder that computes the same thing on float
    inputs.

    PEFT's QA-LoRA A is ``A_ours / L`` over the group means (``L = K / g`` groups); the plain
    LoRA A is ``A_ours`` repeated over each group's ``g`` columns, over ``g``: ``A_peft * L / g``.
    """
    lrc.save_peft_adapter(compiled, path)
    config = json.loads((path / "adapter_config.json").read_text())
    g = config["qalora_group_size"]
    tensors = {}
    for key, t in load_file(path / "adapter_model.safetensors").items():
        if key.endswith("lora_A.weight"):  # (r, L) -> (r, L * g)
            t = torch.repeat_interleave(t * (t.shape[1] / g), g, dim=1)
        tensors[key] = t.contiguous()
    save_file(tensors, path / "adapter_model.safetensors", metadata={"format": "pt"})
    config["use_qalora"] = False
    (path / "adapter_config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return path


def build_ours(deployed, out: Path, attention: str, tokenizer_dir: Path) -> None:
    lrc.export_genai(
        deployed, out, tokenizer=str(tokenizer_dir), accuracy_level=4, attention=attention
    )


def set_threads(folder: Path, threads: int) -> None:
    path = folder / "genai_config.json"
    config = json.loads(path.read_text())
    options = config["model"]["decoder"].setdefault("session_options", {})
    options["intra_op_num_threads"], options["inter_op_num_threads"] = threads, 1
    path.write_text(json.dumps(config, indent=2))
