"""Hand-written decoders through ``export_genai``'s protocol: a ``.config`` with the cache's sizes
and
``forward_with_cache(input_ids, attention_mask, position_ids, past) -> (logits, presents)``.

The decoder below (grouped-query attention, learned positions, written as a user would) is compiled
with QA-LoRA by both tracers' entry point, nudged, folded and exported; 32 greedy tokens from
onnxruntime-genai and from ``.generate`` equal the model's own loop without a cache (a forward over
the whole sequence per token), and the logits of a prefill and 16 decode steps match PyTorch within
1e-4 relative. A module that lacks part of the protocol is refused with what is missing.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from models import nudged
from torch import nn

import lowrank_compiler as lrc
from lowrank_compiler.genai import ExportError, export_genai
from lowrank_compiler.runtime.serve.generate import DecoderSession

try:
    import onnxruntime_genai as og
except ImportError:
    og = None

VOCAB, DIM, HEADS, KV_HEADS, LAYERS, CONTEXT = 96, 64, 4, 2, 2, 80
HEAD = DIM // HEADS


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(DIM), nn.LayerNorm(DIM)
        self.q = nn.Linear(DIM, DIM)
        self.k = nn.Linear(DIM, KV_HEADS * HEAD)
        self.v = nn.Linear(DIM, KV_HEADS * HEAD)
        self.o = nn.Linear(DIM, DIM)
        self.up, self.down = nn.Linear(DIM, 4 * DIM), nn.Linear(4 * DIM, DIM)

    def forward(self, x, mask, k_past, v_past):  # x: (B, T, C); mask: (B, total)
        b, t, _ = x.shape
        h = self.norm1(x)
        q = self.q(h).view(b, t, HEADS, HEAD).transpose(1, 2)  # (B, H, T, hd)
        k = torch.cat(
            [k_past, self.k(h).view(b, t, KV_HEADS, HEAD).transpose(1, 2)], 2
        )  # (B, KVH, total, hd)
        v = torch.cat([v_past, self.v(h).view(b, t, KV_HEADS, HEAD).transpose(1, 2)], 2)
        total = k.shape[2]
        rows = torch.arange(t).unsqueeze(1) + (total - t)  # each new token's place in the sequence
        allowed = (torch.arange(total).unsqueeze(0) <= rows).unsqueeze(0) & mask.bool()[
            :, None, :
        ]  # (B, T, total)
        rep = HEADS // KV_HEADS
        a = F.scaled_dot_product_attention(
            q,
            k.repeat_interleave(rep, 1),
            v.repeat_interleave(rep, 1),
            attn_mask=allowed.unsqueeze(1),
        )  # (B, H, T, hd)
        x = x + self.o(a.transpose(1, 2).reshape(b, t, DIM))
        return x + self.down(F.gelu(self.up(self.norm2(x)))), k, v


class CachedGPT(nn.Module):
    def __init__(self):
        super().__init__()
        self.config = SimpleNamespace(
            num_hidden_layers=LAYERS,
            num_attention_heads=HEADS,
            num_key_value_heads=KV_HEADS,
            hidden_size=DIM,
            vocab_size=VOCAB,
            max_position_embeddings=CONTEXT,
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=0,
        )
        self.emb, self.pos = nn.Embedding(VOCAB, DIM), nn.Embedding(CONTEXT, DIM)
        self.blocks = nn.ModuleList(Block() for _ in range(LAYERS))
        self.norm = nn.LayerNorm(DIM)
        self.head = nn.Linear(DIM, VOCAB, bias=False)

    def forward(self, input_ids):  # the whole sequence, no cache
        b, t = input_ids.shape
        empty = [(torch.zeros(b, KV_HEADS, 0, HEAD), torch.zeros(b, KV_HEADS, 0, HEAD))] * LAYERS
        positions = torch.arange(t).expand(b, t)
        return self.forward_with_cache(input_ids, torch.ones_like(input_ids), positions, empty)[0]

    def forward_with_cache(self, input_ids, attention_mask, position_ids, past):
        x = self.emb(input_ids) + self.pos(position_ids)  # (B, T, C)
        presents = []
        for block, (k_past, v_past) in zip(self.blocks, past):
            x, k, v = block(x, attention_mask, k_past, v_past)
            presents.append((k, v))
        return self.head(self.norm(x)), presents


def reference_greedy(model, ids, steps):
    """Greedy tokens and each step's logits from full forwards (no cache)."""
    seq, logits = ids.clone(), []
    with torch.no_grad():
        for _ in range(steps):
            last = model(seq)[:, -1]
            logits.append(last)
            seq = torch.cat([seq, last.argmax(-1, keepdim=True)], 1)
    return seq[:, ids.shape[1] :], logits


def well_separated(logits) -> bool:
    return all(
        ((s.topk(2).values[:, 0] - s.topk(2).values[:, 1]) > 2e-3 * s.abs().max()).all()
        and (s.argmax(-1) != 1).all()
        for s in logits
    )


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    torch.manual_seed(0)
    model = CachedGPT().eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.15)
    ids = torch.randint(2, VOCAB, (2, 8), generator=torch.Generator().manual_seed(1))
    lrc.compile(
        model,
        lrc.Policy(method="qalora", bits=4, group_size=32, rank=8, target=["all-linear", "head"]),
        example_inputs=(ids,),
    )
    folded = lrc.fold(nudged(model, scale=0.05, parts=("lora_B",)))
    folder = export_genai(folded, tmp_path_factory.mktemp("protocol") / "genai", accuracy_level=0)
    return folded, folder


def prompt(model, steps):
    for seed in range(40):
        ids = torch.randint(2, VOCAB, (1, 10), generator=torch.Generator().manual_seed(100 + seed))
        tokens, logits = reference_greedy(model, ids, steps)
        if well_separated(logits):
            return ids, tokens[0].tolist(), logits
    pytest.fail("no prompt with clear top-2 margins in 40 tries")


def test_folder_is_a_generic_decoder(exported):
    import json

    _, folder = exported
    config = json.loads((folder / "genai_config.json").read_text())
    assert (
        config["model"]["type"] == "decoder"
        and config["model"]["decoder"]["num_key_value_heads"] == KV_HEADS
    )
    marker = json.loads((folder / "lowrank_compiler.json").read_text())
    assert marker["attention"] == "plain" and "forward_with_cache" in marker["attention_reason"]


def test_greedy_tokens_match_the_models_own_loop(exported):
    model, folder = exported
    ids, want, _ = prompt(model, 32)
    assert DecoderSession(folder).generate(ids, max_new_tokens=32)[0, 10:].tolist() == want
    if og is not None:
        m = og.Model(str(folder))
        params = og.GeneratorParams(m)
        params.set_search_options(max_length=10 + 32, do_sample=False)
        generator = og.Generator(m, params)
        generator.append_tokens(ids.numpy().astype(np.int32))
        got = []
        while not generator.is_done():
            generator.generate_next_token()
            got.append(int(generator.get_next_tokens()[0]))
        assert got == want


def test_logits_every_step_match_pytorch(exported):
    model, folder = exported
    ids, want, ref_logits = prompt(model, 17)
    seen = []
    ours, logits = DecoderSession(folder).generate(
        ids, max_new_tokens=17, output_logits=True, streamer=lambda t: seen.append(t)
    )
    assert ours[0, 10:].tolist() == want and len(seen) == 17
    for got, ref in zip(logits, ref_logits):
        assert np.abs(got - ref.numpy()).max() <= 1e-4 * ref.abs().max().item()


def test_missing_parts_of_the_protocol_are_named(tmp_path):
    class NoCache(nn.Module):
        def __init__(self):
            super().__init__()
            self.config = SimpleNamespace(
                num_hidden_layers=2, num_attention_heads=4, hidden_size=64
            )
            self.lin = nn.Linear(4, 4)

        def forward(self, x):
            return self.lin(x)

    with pytest.raises(ExportError, match=r"lacks config.vocab_size, forward_with_cache\(\) here"):
        export_genai(NoCache(), tmp_path / "out")
    with pytest.raises(ExportError, match=r"lacks .config"):
        export_genai(nn.Sequential(nn.Linear(4, 4)), tmp_path / "out")
    model = CachedGPT()
    with pytest.raises(ExportError, match="use attention='plain'"):
        export_genai(model, tmp_path / "out", attention="gqa")
    assert not (tmp_path / "out").exists()
