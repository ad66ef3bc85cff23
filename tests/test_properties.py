"""Property tests over random shapes, bits, group sizes and ranks (hypothesis, bounded for
speed)."""

import threading

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import lowrank_compiler as lrc
from lowrank_compiler.runtime.layers.grid_base import GridBase
from lowrank_compiler.runtime.layers.int_linear import IntLinear
from lowrank_compiler.runtime.layers.lrqat import LRQATLinear
from lowrank_compiler.runtime.layers.qalora import QALoRALinear
from lowrank_compiler.runtime.quant.group import (
    dequantize,
    pack,
    pack_codes,
    pack_zeros,
    quantize,
    unpack,
    unpack_codes,
)

FAST = settings(max_examples=25, deadline=None)
shapes = st.tuples(st.integers(1, 12), st.sampled_from([1, 2, 3, 5]), st.sampled_from([16, 32, 64]))


@FAST
@given(
    shape=shapes,
    bits=st.sampled_from([2, 3, 4, 8]),
    seed=st.integers(0, 2**16),
    scale=st.floats(1e-3, 1e3),
)
def test_quantize_dequantize_within_half_a_step(shape, bits, seed, scale):
    n, groups, g = shape
    w = torch.randn(n, groups * g, generator=torch.Generator().manual_seed(seed)) * scale
    codes, scales, zeros = quantize(w, bits, g)
    deq = dequantize(pack_codes(codes, bits, g), scales, pack_zeros(zeros, bits), bits, g)
    bound = scales.repeat_interleave(g, 1) / 2
    assert ((deq - w).abs() <= bound * (1 + 1e-5) + 1e-6 * scale).all()


@FAST
@given(
    bits=st.sampled_from([2, 3, 4, 8]),
    lead=st.integers(1, 4),
    runs=st.integers(1, 6),
    seed=st.integers(0, 2**16),
)
def test_pack_unpack_identity(bits, lead, runs, seed):
    codes = torch.randint(
        0,
        2**bits,
        (lead, runs * 8),
        generator=torch.Generator().manual_seed(seed),
        dtype=torch.uint8,
    )
    assert torch.equal(unpack(pack(codes, bits), bits, runs * 8), codes)
    c2 = codes.reshape(lead, -1)[:, : (runs * 8 // 16) * 16] if runs * 8 >= 16 else None
    if c2 is not None:
        assert torch.equal(unpack_codes(pack_codes(c2, bits, 16), bits, 16), c2)


@FAST
@given(
    shape=shapes,
    rank=st.integers(1, 8),
    zero_point=st.sampled_from(["float", "int"]),
    seed=st.integers(0, 2**16),
    spread=st.floats(0.01, 3.0),
)
def test_fold_is_exact_for_any_adapter(shape, rank, zero_point, seed, spread):
    n, groups, g = shape
    gen = torch.Generator().manual_seed(seed)
    base = IntLinear.from_weight(
        torch.randn(max(n, rank), groups * g, generator=gen), None, bits=4, group_size=g
    )
    layer = QALoRALinear.from_int_linear(base, rank=rank, alpha=2.0 * rank, zero_point=zero_point)
    with torch.no_grad():
        layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=gen) * spread)
        x = torch.randn(7, groups * g, generator=gen)
        y = layer(x)
        for zeros in ("split", "float"):
            err = (
                (layer.folded_layer(zeros)(x) - y).abs().max() / y.abs().max().clamp(min=1e-6)
            ).item()
            assert err <= (1e-6 if zero_point == "int" else 1e-5)


@FAST
@given(
    shape=shapes,
    bits=st.sampled_from([2, 3, 4, 8]),
    rank=st.integers(1, 8),
    seed=st.integers(0, 2**16),
    spread=st.floats(0.01, 3.0),
    scale=st.floats(1e-3, 1e3),
    train_scales=st.booleans(),
)
def test_lrqat_fold_is_bit_identical_for_any_adapter(
    shape, bits, rank, seed, spread, scale, train_scales
):
    n, groups, g = shape
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(max(n, rank), groups * g, generator=gen) * scale
    base = GridBase.from_weight(
        w, torch.randn(max(n, rank), generator=gen), bits=bits, group_size=g
    )
    ref_codes, _, _ = quantize(w, bits, g)
    assert torch.equal(
        base.codes(), ref_codes
    )  # the fixed-point grid rounds to the quantizer's codes
    layer = LRQATLinear.from_base(base, rank=rank, alpha=2.0 * rank, train_scales=train_scales)
    with torch.no_grad():
        layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=gen) * spread)
        if train_scales:
            layer.scale_gain.add_(0.1 * torch.randn(layer.scale_gain.shape, generator=gen))
        x = torch.randn(7, groups * g, generator=gen)
        folded = layer.folded_layer()
        assert torch.equal(unpack_codes(folded.qweight, bits, g), layer.codes())
        assert torch.equal(folded(x), layer(x))


@FAST
@given(
    rank=st.integers(1, 64),
    alpha=st.floats(0.01, 1e3),
    dropout=st.floats(0, 0.9),
    target=st.lists(
        st.sampled_from(["q_proj", "v_proj", "re:.*mlp.*", "layers.*.o_proj"]),
        min_size=1,
        max_size=3,
        unique=True,
    ),
    method=st.sampled_from(["lora", "qalora", "lrqat", "qlora", "rtn"]),
    bits=st.sampled_from([2, 3, 4, 8]),
    group=st.sampled_from([16, 32, 64, 128]),
    over=st.dictionaries(
        st.sampled_from(["q_proj", "mlp.*"]),
        st.fixed_dictionaries({"rank": st.integers(1, 8)}),
        max_size=2,
    ),
    train_scales=st.booleans(),
)
def test_policy_round_trip(rank, alpha, dropout, target, method, bits, group, over, train_scales):
    lrqat = method == "lrqat"  # no input dropout; the one method whose scales train
    p = lrc.Policy(
        method=method,
        target=target,
        rank=rank,
        alpha=alpha,
        dropout=0.0 if lrqat else dropout,
        bits=bits,
        group_size=group,
        overrides=over,
        train_scales=train_scales and lrqat,
    )
    assert lrc.Policy.from_dict(p.to_dict()) == p
    assert lrc.Pipeline.parse(str(p.pipeline())) == p.pipeline()


def test_session_serves_threads_with_serial_results(tmp_path):
    """4 threads released together, 50 calls each over mixed batch sizes: every result equals the
    serial one, no call raises, and no thread outlives the bound (daemon threads cannot hang the
    run)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.GELU(), torch.nn.Linear(64, 32))
    lrc.compile(model, lrc.Policy(method="rtn", target=["0", "2"]))
    path = lrc.export_onnx(model, tmp_path / "m.onnx", example_inputs=(torch.randn(2, 64),))
    session = lrc.runtime.load(path)
    inputs = [
        np.random.default_rng(i).standard_normal((1 + i % 4, 64)).astype(np.float32)
        for i in range(24)
    ]
    serial = [session(x) for x in inputs]
    threads_n, calls = 4, 50
    start = threading.Barrier(threads_n)
    mismatches, errors = [], []

    def serve(k):
        try:
            start.wait(timeout=30)
            for c in range(calls):
                i = (k * calls + c) % len(inputs)
                if not np.array_equal(session(inputs[i]), serial[i]):
                    mismatches.append((k, i))
        except Exception as e:  # a failing call must fail the test, not vanish with its thread
            errors.append(repr(e))

    threads = [threading.Thread(target=serve, args=(k,), daemon=True) for k in range(threads_n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads), "a thread did not finish within 60 s"
    assert errors == [] and mismatches == []


EXPORT = settings(max_examples=4, deadline=None)


@EXPORT
@given(
    groups=st.integers(1, 4),
    out=st.integers(1, 24),
    g=st.sampled_from([16, 32, 64]),
    bits=st.sampled_from([2, 4, 8]),
    zeros=st.sampled_from(["split", "float", "round"]),
    fmt=st.sampled_from(["matmulnbits", "qdq"]),
    bias=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_export_parity_one_layer(tmp_path_factory, groups, out, g, bits, zeros, fmt, bias, seed):
    """A folded one-layer QA-LoRA model and its ONNX file agree at a batch size not used for
    export."""
    if fmt == "qdq" and bits == 2:
        bits = 4  # standard ONNX has no 2-bit DequantizeLinear; MatMulNBits covers 2 bits
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(groups * g, out, bias=bias))
    lrc.compile(model, lrc.Policy(method="qalora", target=["0"], bits=bits, group_size=g, rank=1))
    with torch.no_grad():
        model[0].lora_B.normal_()
    deployed = lrc.fold(model, zeros=zeros)
    path = lrc.export_onnx(
        deployed,
        tmp_path_factory.mktemp("one") / "m.onnx",
        example_inputs=(torch.randn(2, groups * g),),
        format=fmt,
    )
    x = torch.randn(5, groups * g)
    with torch.no_grad():
        ref = deployed(x)
    got = lrc.runtime.load(path)(x)
    assert got.shape == ref.shape
    assert (got - ref).abs().max().item() <= 1e-4 * ref.abs().max().item() + 1e-6
