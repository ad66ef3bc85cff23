"""runtime.gptq: the format is runtime.quant's, and the output error along H is smaller than
RTN's."""

import pytest
import torch

from lowrank_compiler.runtime.layers.int_linear import IntLinear
from lowrank_compiler.runtime.quant.gptq import gptq, gptq_quantize
from lowrank_compiler.runtime.quant.group import quantize


def correlated_inputs(k: int, tokens: int = 2048, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(k, k, generator=g) / k**0.5 + torch.eye(k)
    return torch.randn(tokens, k, generator=g) @ mix  # (T, K): real inputs are correlated


def output_error(w, wq, h) -> float:
    d = w - wq
    return torch.einsum("nk,kl,nl->", d, h, d).item()  # tr(D H D^T) = E|x D^T|^2


def dequant(codes, scales, zeros, g):
    n, k = codes.shape
    q = codes.float().reshape(n, k // g, g)
    return ((q - zeros.float()[..., None]) * scales[..., None]).reshape(n, k)


@pytest.mark.parametrize("act_order", [True, False])
@pytest.mark.parametrize("bits,g", [(4, 32), (3, 16), (2, 64), (8, 32)])
def test_gptq_lowers_the_output_error_below_rtn(bits, g, act_order):
    torch.manual_seed(bits * g)
    w = torch.randn(48, 128)
    x = correlated_inputs(128) * torch.linspace(
        0.2, 3.0, 128
    )  # inputs of unequal energy, as in real layers
    h = x.T @ x / x.shape[0]
    gq = gptq_quantize(w, h, bits, g, act_order=act_order)
    rtn = quantize(w, bits, g)
    e_gptq, e_rtn = output_error(w, dequant(*gq, g), h), output_error(w, dequant(*rtn, g), h)
    assert e_gptq < 0.9 * e_rtn, (e_gptq, e_rtn)  # measured 0.29x-0.83x
    codes, scales, zeros = gq
    assert codes.dtype == zeros.dtype == torch.uint8 and int(codes.max()) < 2**bits
    assert scales.shape == zeros.shape == (48, 128 // g)


@pytest.mark.parametrize("act_order", [True, False])
def test_uncorrelated_inputs_give_exactly_the_rtn_codes(act_order):
    # H diagonal: no column predicts another, so there is no error to move and GPTQ is RTN, in any
    # order
    w = torch.randn(16, 64)
    h = torch.diag(torch.rand(64) + 0.5)
    for a, b in zip(gptq_quantize(w, h, 4, 32, act_order=act_order), quantize(w, 4, 32)):
        assert torch.equal(a, b)


def test_columns_no_input_reaches_still_quantize():
    w = torch.randn(8, 64)
    x = correlated_inputs(64)
    x[:, 5] = 0  # a dead input
    codes, scales, zeros = gptq_quantize(w, x.T @ x / len(x), 4, 32)
    assert torch.isfinite(scales).all() and torch.isfinite(dequant(codes, scales, zeros, 32)).all()


def test_int_linear_from_gptq_runs_its_codes():
    lin = torch.nn.Linear(64, 24)
    x = correlated_inputs(64, tokens=512)
    h = x.T @ x / len(x)
    layer = IntLinear.from_float(lin, bits=4, group_size=32, quantizer=gptq(h))
    codes, scales, zeros = gptq_quantize(lin.weight, h, 4, 32)
    assert torch.equal(layer.dequantize(), dequant(codes, scales, zeros, 32))
    torch.testing.assert_close(
        layer(x[:8]), x[:8] @ layer.dequantize().T + lin.bias, rtol=1e-5, atol=1e-5
    )


def test_bad_statistics_are_named():
    w = torch.randn(8, 64)
    with pytest.raises(ValueError, match=r"hessian has shape \[32, 32\], expected \[64, 64\]"):
        gptq_quantize(w, torch.eye(32), 4, 32)
    h = 2 * torch.ones(64, 64) - torch.eye(64)  # positive diagonal, eigenvalue -1
    with pytest.raises(ValueError, match="not positive definite"):
        gptq_quantize(w, h, 4, 32)
