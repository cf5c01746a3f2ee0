"""The compiled passes of the shared-weight members' PyTorch step (``csrc/shared.cpp``) and the
dropout masks they make: the masks' bits against SplitMix64 written out in Python and against
:class:`CounterDropout`'s PyTorch operations, their statistics, the fused activation and
dropout against autograd, the adapters' folding against PyTorch's, the same bits on one and
two threads, and a whole step with the passes against one without them."""

from __future__ import annotations

import ctypes

import pytest
import torch

from nnreg.engine import FastTabM, native
from nnreg.engine.kernels import CounterDropout
from nnreg.model import MLPConfig
from nnreg.tabm import TabM

needs_compiler = pytest.mark.skipif(
    native.library() is None, reason="no C++ compiler here: the PyTorch operations run instead"
)
MASK = 2**64 - 1


def _splitmix(key: int, word: int) -> int:
    """SplitMix64's output for counter ``word``, in Python's unbounded integers."""
    z = (key + (word + 1) * 0x9E3779B97F4A7C15) & MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
    return z ^ (z >> 31)


def _draws(key: int, first: int, n: int) -> list[int]:
    """Units first .. first + n - 1's signed 16-bit draws, one by one."""
    out = []
    for u in range(first, first + n):
        bits = (_splitmix(key, u // 4) >> (16 * (u % 4))) & 0xFFFF
        out.append(bits - 2**16 if bits >= 2**15 else bits)
    return out


@pytest.mark.parametrize(("first", "n"), [(0, 1), (3, 5), (0, 64), (7, 37), (2**33 + 1, 9)])
def test_the_pytorch_masks_are_splitmix64_bits(first: int, n: int) -> None:
    sampler = CounterDropout(0.3, torch.Generator().manual_seed(0))
    for key in (0, 1, 2**63 + 5, MASK, sampler.key()):
        mask = sampler.fill_(torch.empty(n, dtype=torch.float64), key, first)
        kept = [d < sampler.threshold for d in _draws(key, first, n)]
        assert mask.tolist() == [sampler.factor if k else 0.0 for k in kept]


@needs_compiler
@pytest.mark.parametrize(("first", "n"), [(0, 1), (1, 3), (5, 2048), (3, 2049), (11, 10_001)])
def test_the_compiled_draws_are_the_pytorch_ones(first: int, n: int) -> None:
    lib = native.library()
    assert lib is not None
    draw = lib.nnreg_dropout_draws
    draw.argtypes = [ctypes.c_long, ctypes.c_void_p, ctypes.c_uint64, ctypes.c_long]
    sampler = CounterDropout(0.15, torch.Generator().manual_seed(1))
    for _ in range(3):
        key = sampler.key()
        bits = torch.empty(n, dtype=torch.int16)
        draw(n, bits.data_ptr(), key, first)
        expected = (bits < sampler.threshold).double() * sampler.factor
        assert torch.equal(sampler.fill_(torch.empty(n, dtype=torch.float64), key, first), expected)
        assert bits[:5].tolist() == _draws(key, first, min(n, 5))


def test_keys_drawn_together_are_those_drawn_one_by_one() -> None:
    """A step draws its layers' keys in one call; the autograd TabM draws them a layer at a
    time from the same generator."""
    together, one_by_one = (CounterDropout(0.1, torch.Generator().manual_seed(2)) for _ in "ab")
    for n in (1, 3, 7):
        assert together.keys(n) == [one_by_one.key() for _ in range(n)]
    assert all(0 <= key < 2**64 for key in together.keys(50))


def test_masks_keep_one_minus_p_and_two_keys_are_unrelated() -> None:
    p, n = 0.15, 2**20
    sampler = CounterDropout(p, torch.Generator().manual_seed(2))
    a, b = (sampler.fill_(torch.empty(n)) > 0 for _ in range(2))
    for kept in (a, b):
        assert abs(kept.double().mean().item() - (1 - p)) < 4 * (p * (1 - p) / n) ** 0.5
    both = (a & b).double().mean().item()  # independent masks: (1 - p)**2
    assert abs(both - (1 - p) ** 2) < 4 * ((1 - p) ** 2 / n) ** 0.5
    neighbours = (a[:-1] & a[1:]).double().mean().item()  # units next to each other too
    assert abs(neighbours - (1 - p) ** 2) < 4 * ((1 - p) ** 2 / n) ** 0.5
    assert sampler.factor * (1 - p) == pytest.approx(1.0, abs=1e-5)


def _passes(dtype: torch.dtype) -> native.Passes:
    passes = native.passes(dtype)
    assert passes is not None
    return passes


@needs_compiler
@pytest.mark.parametrize(("dtype", "rtol"), [(torch.float64, 1e-13), (torch.float32, 2e-6)])
@pytest.mark.parametrize("activation", ["relu", "silu"])
@pytest.mark.parametrize(("width", "per_member"), [(13, True), (3000, False)])
def test_fused_activation_and_dropout_match_autograd(
    dtype: torch.dtype, rtol: float, activation: str, width: int, per_member: bool
) -> None:
    """A (3, 7, width) block: rows of one and of several per chunk of draws, partial
    vectors, a bias per member and a shared one, and extreme pre-activations."""
    torch.manual_seed(3)
    k, rows = 3, 7
    z = torch.randn(k, rows, width, dtype=dtype) * 5
    z[0, 0, :8] = torch.tensor([-1000.0, -90.0, -30.0, -1e-30, 0.0, 30.0, 90.0, 1000.0])
    bias = torch.randn(k, 1, width, dtype=dtype) if per_member else torch.randn(width, dtype=dtype)
    sampler = CounterDropout(0.3, torch.Generator().manual_seed(4))
    key, first = sampler.key(), 6
    mask = sampler.fill_(torch.empty_like(z), key, first)
    act = torch.relu if activation == "relu" else torch.nn.functional.silu
    leaves = [z.clone().requires_grad_(), bias.clone().requires_grad_()]
    expected = act(leaves[0] + leaves[1]) * mask
    upstream = torch.randn_like(z)
    expected.backward(upstream)

    x = (z + bias).requires_grad_()
    (derivative,) = torch.autograd.grad(act(x).sum(), x)

    passes, number = _passes(dtype), native.DROPOUT_ACTIVATIONS[activation]
    out, grad, dbias = torch.empty_like(z), upstream.clone(), torch.empty_like(bias)
    block = (k, rows, width, z.data_ptr())  # z becomes mask * act'(z + bias)
    biased = (bias.data_ptr(), int(per_member))
    common = (key, first, sampler.threshold, sampler.factor, number)
    passes.dropout_forward(2, *block, *biased, out.data_ptr(), *common)
    torch.testing.assert_close(out, expected.detach(), rtol=rtol, atol=1e-30)
    torch.testing.assert_close(z, mask * derivative, rtol=rtol, atol=rtol)
    gradients = (grad.data_ptr(), z.data_ptr(), int(per_member), dbias.data_ptr())
    passes.dropout_backward(2, k, rows, width, *gradients)
    # silu' crosses zero near -1.28: compare there on the gradient's own scale
    scale = rtol * upstream.abs().max()
    torch.testing.assert_close(grad, leaves[0].grad, rtol=rtol, atol=scale)
    torch.testing.assert_close(dbias, leaves[1].grad, rtol=rtol, atol=scale * k * rows)


@needs_compiler
@pytest.mark.parametrize(("dtype", "rtol"), [(torch.float64, 1e-13), (torch.float32, 2e-6)])
@pytest.mark.parametrize("activation", ["relu", "silu"])
@pytest.mark.parametrize(("width", "per_member"), [(13, True), (3000, False)])
def test_the_last_layers_passes_with_the_head_match_autograd(
    dtype: torch.dtype, rtol: float, activation: str, width: int, per_member: bool
) -> None:
    """The one-output head computed in the last layer's passes: its output forward; the
    layer's gradient from the output's, the bias's and the head weight's, backward."""
    torch.manual_seed(7)
    k, rows = 3, 7
    z = torch.randn(k, rows, width, dtype=dtype) * 5
    z[1, 2, :6] = torch.tensor([-1000.0, -30.0, 0.0, 1e-30, 30.0, 1000.0])
    bias = torch.randn(k, 1, width, dtype=dtype) if per_member else torch.randn(width, dtype=dtype)
    head_weight, head_bias = torch.randn(k, width, 1, dtype=dtype), torch.randn(k, 1, dtype=dtype)
    sampler = CounterDropout(0.2, torch.Generator().manual_seed(9))
    key, first = sampler.key(), 3
    mask = sampler.fill_(torch.empty_like(z), key, first)
    act = torch.relu if activation == "relu" else torch.nn.functional.silu
    leaves = [t.clone().requires_grad_() for t in (z, bias, head_weight)]
    hidden = act(leaves[0] + leaves[1]) * mask
    expected = (hidden * leaves[2].transpose(1, 2)).sum(dim=2) + head_bias  # (k, rows)
    upstream = torch.randn(k, rows, dtype=dtype)
    expected.backward(upstream)
    hidden = hidden.detach()

    passes, number = _passes(dtype), native.DROPOUT_ACTIVATIONS[activation]
    out, grad = torch.empty(k, rows, dtype=dtype), torch.empty_like(z)
    dbias, dhead = torch.empty_like(bias), torch.empty_like(head_weight)
    biased = (bias.data_ptr(), int(per_member))
    common = (key, first, sampler.threshold, sampler.factor, number)
    to_head = (head_weight.data_ptr(), head_bias.data_ptr(), out.data_ptr())
    before = z.clone()
    passes.head_forward(2, k, rows, width, z.data_ptr(), *biased, *to_head, *common)
    assert torch.equal(z, before)  # the backward pass makes the layer's output again from z
    gradients = (grad.data_ptr(), z.data_ptr(), *biased, dbias.data_ptr())
    from_head = (head_weight.data_ptr(), upstream.data_ptr(), dhead.data_ptr())
    passes.head_backward(2, k, rows, width, *gradients, *from_head, *common)
    scale = (hidden.abs() * head_weight.abs().transpose(1, 2)).sum(dim=2).max()
    torch.testing.assert_close(out, expected.detach(), rtol=rtol, atol=rtol * scale)
    scale = rtol * upstream.abs().max() * head_weight.abs().max()
    torch.testing.assert_close(grad, leaves[0].grad, rtol=rtol, atol=scale)
    torch.testing.assert_close(dbias, leaves[1].grad, rtol=rtol, atol=scale * k * rows)
    scale = rtol * upstream.abs().max() * hidden.abs().max() * rows
    torch.testing.assert_close(dhead, leaves[2].grad, rtol=rtol, atol=scale)


def _layer(dtype: torch.dtype, k: int = 5, o: int = 19, a: int = 13) -> list[torch.Tensor]:
    torch.manual_seed(5)
    return [torch.randn(*shape, dtype=dtype) for shape in ((o, a), (k, a), (k, o), (k, o, a))]


@needs_compiler
def test_fold_and_unfold_match_autograd() -> None:
    W, r, s, dM = _layer(torch.float64)
    k, (o, a) = r.shape[0], W.shape
    passes = _passes(torch.float64)
    M = torch.empty(k, o, a, dtype=torch.float64)
    passes.fold(2, k, o, a, W.data_ptr(), r.data_ptr(), s.data_ptr(), M.data_ptr())
    leaves = [t.clone().requires_grad_() for t in (W, r, s)]
    folded = leaves[2].unsqueeze(2) * leaves[1].unsqueeze(1) * leaves[0]
    torch.testing.assert_close(M, folded.detach(), rtol=1e-15, atol=0)
    folded.backward(dM)
    grads = [torch.empty_like(t) for t in (W, r, s)]
    pointers = [t.data_ptr() for t in (W, r, s, dM, *grads)]
    passes.unfold(2, k, o, a, *pointers)
    for got, leaf in zip(grads, leaves, strict=True):
        assert leaf.grad is not None
        torch.testing.assert_close(got, leaf.grad, rtol=1e-12, atol=1e-13)


@needs_compiler
def test_the_passes_give_the_same_bits_on_one_and_two_threads() -> None:
    W, r, s, dM = _layer(torch.float32, k=32, o=128, a=64)
    k, (o, a) = r.shape[0], W.shape
    passes = _passes(torch.float32)
    z, up = torch.randn(97 * 13 * 1001), torch.randn(97 * 13 * 1001)
    head, head_bias = torch.randn(97, 1001), torch.randn(97)  # a one-output head's
    results = []
    for threads in (1, 2):
        grads = [torch.empty_like(t) for t in (W, r, s)]
        passes.unfold(threads, k, o, a, *[t.data_ptr() for t in (W, r, s, dM, *grads)])
        out, grad, db = torch.empty_like(z), up.clone(), torch.empty(1001)
        block, bias = (97, 13, 1001), torch.linspace(-1, 1, 1001)  # 97 members, a shared bias
        common = (bias.data_ptr(), 0)
        mask = (12345, 0, 1000, 1.25, 1)
        derivative = z.clone()
        passes.dropout_forward(
            threads, *block, derivative.data_ptr(), *common, out.data_ptr(), *mask
        )
        passes.dropout_backward(
            threads, *block, grad.data_ptr(), derivative.data_ptr(), 0, db.data_ptr()
        )
        outputs, grad_from_head, dhead = torch.empty(97 * 13), torch.empty_like(z), head.clone()
        to_head = (head.data_ptr(), head_bias.data_ptr(), outputs.data_ptr())
        passes.head_forward(threads, *block, z.data_ptr(), *common, *to_head, *mask)
        db_head = torch.empty(1001)
        gradients = (grad_from_head.data_ptr(), z.data_ptr(), *common, db_head.data_ptr())
        from_head = (head.data_ptr(), up[: 97 * 13].data_ptr(), dhead.data_ptr())
        passes.head_backward(threads, *block, *gradients, *from_head, *mask)
        results.append([*grads, out, derivative, grad, db, outputs, grad_from_head, db_head, dhead])
    for one, two in zip(*results, strict=True):
        assert torch.equal(one, two)


@needs_compiler
@pytest.mark.parametrize(
    ("form", "activation", "outputs"),
    [("tabm", "silu", 1), ("tabm-mini", "relu", 1), ("tabm", "relu", 2)],
)
def test_steps_with_the_passes_match_steps_without(
    form: str, activation: str, outputs: int
) -> None:
    """Three steps of plain gradient descent in float64: the same masks (one key per layer and
    step) and the same gradients, whether the compiled passes run (the head in the last
    layer's with one output) or PyTorch's operations."""
    torch.manual_seed(6)
    config = MLPConfig(4, (24, 24), outputs, activation, dropout=0.25, ensemble=form, k=6)
    nets = [TabM(config).double() for _ in range(2)]
    nets[1].load_state_dict(nets[0].state_dict())
    fasts = [
        FastTabM(n, activation, "squared_error", 0.25, torch.Generator().manual_seed(8))
        for n in nets
    ]
    assert fasts[0].fused
    fasts[1].fused, fasts[1].calls = False, None
    x, y = torch.randn(50, 4, dtype=torch.float64), torch.randn(50, outputs, dtype=torch.float64)
    for _ in range(3):
        losses = [f.loss_and_grad(f.prepare(x, y, None)) for f in fasts]
        torch.testing.assert_close(losses[0], losses[1], rtol=1e-12, atol=0)
        torch.testing.assert_close(fasts[0].grads, fasts[1].grads, rtol=1e-10, atol=1e-12)
        for f in fasts:
            f.params.sub_(0.05 * f.grads)
