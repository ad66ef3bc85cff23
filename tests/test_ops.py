import torch

from lowrank_compiler.runtime.layers.int_linear import IntLinear


def layer(k=64, n=24, bias=True, bits=4, group=32):
    torch.manual_seed(0)
    return IntLinear.from_float(torch.nn.Linear(k, n, bias=bias), bits=bits, group_size=group)


def test_op_matches_the_dequantized_reference():
    m = layer()
    x = torch.randn(3, 5, 64)
    ref = x @ m.dequantize().T + m.bias
    torch.testing.assert_close(m(x), ref, rtol=1e-6, atol=1e-6)


def test_opcheck_fake_and_autograd_registration():
    m = layer()
    args = (torch.randn(4, 64, requires_grad=True), m.qweight, m.scales, m.zeros, m.bias, 4, 32)
    torch.library.opcheck(torch.ops.lowrank_compiler.int_linear, args)


def test_input_gradient_is_exact_and_base_gets_none():
    m = layer(bias=False)
    x = torch.randn(6, 64, dtype=torch.float64, requires_grad=True)

    def f(t):
        return torch.ops.lowrank_compiler.int_linear(t, m.qweight, m.scales, m.zeros, None, 4, 32)

    assert torch.autograd.gradcheck(f, (x,))
    y = f(x)
    g = torch.randn_like(y)
    (grad,) = torch.autograd.grad(y, x, g)
    torch.testing.assert_close(grad, g @ m.dequantize().double())
    assert list(m.parameters()) == []  # codes, scales, zeros are buffers: nothing to train


def test_bias_gradient_when_asked():
    m = layer()
    bias = m.bias.clone().requires_grad_(True)
    x = torch.randn(2, 3, 64)
    y = torch.ops.lowrank_compiler.int_linear(x, m.qweight, m.scales, m.zeros, bias, 4, 32)
    y.sum().backward()
    torch.testing.assert_close(bias.grad, torch.full((24,), 6.0))


def test_traces_with_torch_export_as_one_op():
    m = layer()
    ep = torch.export.export(m, (torch.randn(2, 64),))
    ops = [n.target for n in ep.graph.nodes if n.op == "call_function"]
    assert ops == [torch.ops.lowrank_compiler.int_linear.default]
    fake = torch.ops.lowrank_compiler.int_linear(
        torch.empty(7, 3, 64, device="meta"),
        m.qweight.to("meta"),
        m.scales.to("meta"),
        m.zeros.to("meta"),
        None,
        4,
        32,
    )
    assert fake.shape == (7, 3, 24)


def test_float_zero_points_and_correction():
    m = layer(bias=False)
    x = torch.randn(4, 64)
    z = m.zero_points() + 0.25
    fz = IntLinear(m.qweight, m.scales, z, bits=4, group_size=32)
    w = (torch.stack([m.dequantize()]) - 0.25 * m.scales.repeat_interleave(32, 1))[0]
    torch.testing.assert_close(fz(x), x @ w.T, rtol=1e-5, atol=1e-5)
    d = torch.randn(2, 24)  # D^T: (K/g, N)
    cm = IntLinear(m.qweight, m.scales, m.zeros, bits=4, group_size=32, correction=d)
    torch.testing.assert_close(cm(x), m(x) + x.reshape(4, 2, 32).sum(-1) @ d, rtol=1e-5, atol=1e-5)
    assert fz.describe()["zeros"] == "float" and cm.describe()["zeros"] == "split"
