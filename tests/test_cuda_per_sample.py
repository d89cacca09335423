"""gmmfast::per_sample_log_prob on CUDA tensors: the CUDA kernels (cuda/per_sample.cu)
against the CPU kernels.

Every form x mode x dtype x mask runs on the same inputs on the CPU and on the GPU and is
compared within tolerances justified by the arithmetic (below); plus the two row mappings
(a thread / a warp per row), saved vs recomputed responsibilities (identical bits), special
values, float64 gradcheck and torch.library.opcheck on CUDA inputs, no synchronisation,
CUDA-graph capture and torch.compile.

Skipped without a CUDA device (and gmmfast built with its CUDA kernels).
GMMFAST_CUDA_TESTS_ON_CPU=1 runs the same test code with the CPU standing in for the GPU
(both sides then run the CPU kernels): a check of the tests themselves; the GPU-only tests
still skip. GMMFAST_CUDA_EMU_MODULE=DIR (a directory made by cuda/emu/build_emu_module.sh)
also runs the CUDA code path of gmmfast.torch.per_sample -- the Python wrapper, the
bindings and the kernels -- in the host emulation of the kernels, on CPU tensors.
"""

from __future__ import annotations

import importlib.util
import math
import os
import pathlib

import pytest

torch = pytest.importorskip("torch")
import gmmfast  # noqa: E402
from gmmfast.torch import per_sample as ps  # noqa: E402
from gmmfast.torch.per_sample import (  # noqa: E402
    per_sample_log_prob,
    per_sample_log_prob_backward_op,
    per_sample_log_prob_op,
)

_ON_CPU = os.environ.get("GMMFAST_CUDA_TESTS_ON_CPU") == "1"
_HAS_GPU = gmmfast.cuda_available() and ps.fused_available("cuda")
_EMU_DIR = os.environ.get("GMMFAST_CUDA_EMU_MODULE")

needs_device = pytest.mark.skipif(
    not (_ON_CPU or _HAS_GPU),
    reason="needs a CUDA device and gmmfast built with its CUDA kernels (or GMMFAST_CUDA_TESTS_ON_CPU=1)",
)
needs_gpu = pytest.mark.skipif(_ON_CPU or not _HAS_GPU, reason="needs a CUDA device and gmmfast._cuda")
needs_emu = pytest.mark.skipif(
    not _EMU_DIR, reason="set GMMFAST_CUDA_EMU_MODULE to the output of cuda/emu/build_emu_module.sh"
)

DEV = torch.device("cpu") if (_ON_CPU or not _HAS_GPU) else torch.device("cuda")
CPU = torch.device("cpu")
F32, F64 = torch.float32, torch.float64
DTYPES = [F32, F64]
FORMS = [
    ("diag", "joint"),
    ("isotropic", "joint"),
    ("full", "joint"),
    ("correlated2d", "joint"),
    ("diag", "per_dim"),
    ("isotropic", "per_dim"),
]
FORM_IDS = [f"{c}-{m}" for c, m in FORMS]
MASKS = [None, "bool", "float"]


# ----------------------------------------------------------------------------- tolerances
#
# The CUDA kernels evaluate the CPU's expressions in the CPU's order; they differ in the
# log-sum-exp (online running max vs max first), exp/log (libdevice vs the CPU's
# polynomials, each within ~1 ulp), fma contraction, and with a warp per row the order of
# the lane reductions. So:
#  - log-densities: a D-term sum of magnitude |L| errs by ~(D + 10) eps (1 + |L|), with
#    |L| ~ |log p| (a far outlier row has log p ~ -800: its own scale);
#  - responsibilities r err by r |δL|: the same tolerance on the row's scale 1 + |log p|;
#  - gradients are products of those with a few well-conditioned factors (|ρ| <= 0.9,
#    diag(L) >= 0.5, σ >= 0.5): the same relative error times a small constant, measured
#    against the row's largest entry.


def lp_tol(dtype, D):
    return 10 * (D + 10) * torch.finfo(dtype).eps


def grad_tol(dtype, D):
    return 100 * (D + 10) * torch.finfo(dtype).eps


def assert_rows_close(got, want, tol, what, row_scale=None):
    """Entry-wise |got - want| <= tol·(s_i + |want|), s_i the largest finite |want| of row i
    (and 1 + |row_scale_i|); NaN and ±inf exactly where the CPU has them."""
    assert tuple(got.shape) == tuple(want.shape), (what, got.shape, want.shape)
    if want.numel() == 0:
        return
    B = want.shape[0] if want.dim() else 1
    g = got.detach().to(CPU, F64).reshape(B, -1)
    w = want.detach().to(CPU, F64).reshape(B, -1)
    assert torch.equal(torch.isnan(g), torch.isnan(w)), f"{what}: NaN pattern differs"
    inf = torch.isinf(w)
    assert torch.equal(torch.isinf(g), inf) and torch.equal(g[inf], w[inf]), f"{what}: inf pattern differs"
    finite = torch.isfinite(w)
    s = torch.where(finite, w.abs(), torch.zeros_like(w)).amax(1, keepdim=True)
    if row_scale is not None:
        extra = row_scale.detach().to(CPU, F64).reshape(B, 1)
        s = torch.maximum(s, torch.where(torch.isfinite(extra), 1 + extra.abs(), torch.zeros_like(extra)))
    err = (g - w).abs()[finite]
    bound = (tol * (s.expand_as(w) + w.abs()))[finite] + 1e-300
    assert bool((err <= bound).all()), f"{what}: max error {(err / bound).max().item():.3g} x tolerance"


# ----------------------------------------------------------------------------- data


def make_case(covariance, mixture, B, K, D, dtype, seed=0, special=False, masked=None):
    """(y, logits, means, scale, rho, mask) on the CPU in dtype (mask None/bool/float).

    special: row 1 has a component of weight 0 (logit -inf), row 2 is a far outlier
    (tiny but finite densities), row 3 a NaN target, row 4 underflows in every component
    (log p = -inf), row 5 an invalid scale (σ < 0: NaN). Masked rows (every third,
    starting at 1) get NaN in every parameter: they must give 0 and zero gradients."""
    g = torch.Generator().manual_seed(seed)
    if covariance == "correlated2d":
        D = 2
    y = torch.randn(B, D, generator=g, dtype=F64) + 3.0
    rho = None
    if mixture == "per_dim":
        logits = torch.randn(B, D, K, generator=g, dtype=F64)
        means = y.unsqueeze(-1) + torch.randn(B, D, K, generator=g, dtype=F64)
        scale = torch.rand(B, D, K, generator=g, dtype=F64) + 0.5
    else:
        logits = torch.randn(B, K, generator=g, dtype=F64)
        means = y.unsqueeze(1) + torch.randn(B, K, D, generator=g, dtype=F64)
        if covariance == "diag":
            scale = torch.rand(B, K, D, generator=g, dtype=F64) + 0.5
        elif covariance == "isotropic":
            scale = torch.rand(B, K, generator=g, dtype=F64) + 0.5
        elif covariance == "full":
            scale = 0.4 * torch.tril(torch.randn(B, K, D, D, generator=g, dtype=F64), -1) + torch.diag_embed(
                torch.rand(B, K, D, generator=g, dtype=F64) + 0.5
            )
            scale = scale + torch.triu(torch.full_like(scale, float("nan")), 1)  # never read
        else:
            scale = torch.rand(B, K, 2, generator=g, dtype=F64) + 0.5
            rho = torch.rand(B, K, generator=g, dtype=F64) * 1.8 - 0.9
    if special:
        assert B > 6
        logits.view(B, -1)[1, 0] = -math.inf
        y[2, 0] += 40.0
        y[3, -1] = math.nan
        y[4, 0] = 1e30 if dtype == F32 else 1e200
        scale.view(B, -1)[5, -1] = -1.0
    mask = None
    if masked is not None:
        keep = torch.arange(B) % 3 != 1
        for t in (y, logits, means, scale, rho):
            if t is not None:
                t[~keep] = math.nan
        mask = keep if masked == "bool" else keep.to(F64) * 0.5  # any nonzero keeps
    ts = [None if t is None else t.to(dtype) for t in (y, logits, means, scale, rho)]
    return (*ts, mask)


def to(device, *tensors):
    return [None if t is None else t.to(device) for t in tensors]


def run(device, case, covariance, mixture, G, save=True):
    """log p and the gradients of Σ G_i log p_i with respect to (y, logits, means, scale, rho)."""
    y, logits, means, scale, rho, mask = to(device, *case)
    inputs = [t.clone().requires_grad_() for t in (y, logits, means, scale) + ((rho,) if rho is not None else ())]
    lp = per_sample_log_prob(
        *inputs[:4], inputs[4] if rho is not None else None, covariance=covariance, mixture=mixture, mask=mask,
        backend="fused", save_responsibilities=save,
    )
    grads = torch.autograd.grad((lp * G.to(device)).sum(), inputs, allow_unused=True)
    return lp.detach(), list(grads)


def check_against_cpu(case, covariance, mixture, dtype, what, lanes_via=None):
    y = case[0]
    D = y.shape[1]
    G = torch.randn(y.shape[0], generator=torch.Generator().manual_seed(99), dtype=F64).to(dtype)
    lp_cpu, g_cpu = run(CPU, case, covariance, mixture, G)
    lp_dev, g_dev = run(DEV, case, covariance, mixture, G)
    assert lp_dev.device.type == DEV.type and lp_dev.dtype == dtype
    assert_rows_close(lp_dev, lp_cpu, lp_tol(dtype, D), f"{what} log_prob", row_scale=torch.ones_like(lp_cpu))
    names = ("y", "logits", "means", "scale", "rho")
    for name, a, b in zip(names, g_dev, g_cpu):
        assert a.device.type == DEV.type
        assert_rows_close(a, b, grad_tol(dtype, D), f"{what} grad {name}", row_scale=lp_cpu)
    # recomputed responsibilities: the same bits as saved ones, on the device too
    lp_r, g_r = run(DEV, case, covariance, mixture, G, save=False)
    assert torch.equal(lp_r.view(-1).view(torch.uint8), lp_dev.view(-1).view(torch.uint8))
    for a, b in zip(g_r, g_dev):
        assert torch.equal(a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8)), what
    # the op's responsibilities
    y_, logits, means, scale, rho, mask = case
    flat_mask = None if mask is None else mask
    _, r_cpu = per_sample_log_prob_op(y_, logits, means, scale, rho, flat_mask, covariance, mixture)
    _, r_dev = per_sample_log_prob_op(*to(DEV, y_, logits, means, scale, rho, flat_mask), covariance, mixture)
    assert_rows_close(r_dev, r_cpu, lp_tol(dtype, D), f"{what} responsibilities", row_scale=lp_cpu)
    return lp_dev, g_dev


SHAPES = {
    # thread per row (K, per_dim D < 16) and warp per row (K, per_dim D >= 16)
    "small": (64, 5, 3),
    "wide": (40, 20, 18),
}


# ----------------------------------------------------------------------------- parity


@needs_device
@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("mask", MASKS, ids=lambda m: f"mask-{m}")
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("covariance,mixture", FORMS, ids=FORM_IDS)
def test_matches_cpu(covariance, mixture, dtype, mask, shape):
    B, K, D = SHAPES[shape]
    case = make_case(covariance, mixture, B, K, D, dtype, seed=B + K + D, masked=mask)
    lp, grads = check_against_cpu(case, covariance, mixture, dtype, f"{covariance}-{mixture} {dtype} {mask}")
    if mask is not None:
        keep = case[5] != 0
        assert (lp.cpu()[~keep] == 0).all()
        for g in grads:
            assert (g.cpu()[~keep] == 0).all() and torch.isfinite(g.cpu()[~keep]).all()


@needs_device
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("covariance,mixture", FORMS, ids=FORM_IDS)
def test_special_values_match_cpu(covariance, mixture, dtype):
    case = make_case(covariance, mixture, 30, 4, 3, dtype, seed=3, special=True, masked=None)
    lp, _ = check_against_cpu(case, covariance, mixture, dtype, f"special {covariance}-{mixture} {dtype}")
    lp = lp.cpu()
    assert math.isfinite(lp[1]) and math.isfinite(lp[2])
    assert math.isnan(lp[3]) and lp[4] == -math.inf and math.isnan(lp[5])


@needs_device
@pytest.mark.parametrize("covariance,mixture", FORMS, ids=FORM_IDS)
def test_large_batch(covariance, mixture):
    # many blocks; K = 32 (joint) / D = 32 (per_dim) takes the warp path
    B, K, D = (6000, 32, 6) if mixture == "joint" else (6000, 4, 32)
    if covariance == "full":
        B, K, D = 3000, 6, 8
    check_against_cpu(make_case(covariance, mixture, B, K, D, F32, seed=5), covariance, mixture, F32, "large")


@needs_device
def test_float32_far_from_origin():
    # (y - μ)/σ computed directly: float32 keeps its digits at 1e4 (as on the CPU)
    case = list(make_case("diag", "joint", 200, 5, 4, F32, seed=6))
    case[0] = case[0] + 1e4
    case[2] = case[2] + 1e4
    c64 = [None if t is None or not t.is_floating_point() else t.double() for t in case]
    c64[5] = None
    lp32, _ = run(DEV, case, "diag", "joint", torch.ones(200))
    lp64, _ = run(CPU, c64, "diag", "joint", torch.ones(200, dtype=F64))
    assert torch.isfinite(lp32).all()
    torch.testing.assert_close(lp32.cpu().double(), lp64, rtol=2e-5, atol=2e-5)


# ----------------------------------------------------------------------------- mappings


@needs_gpu
@pytest.mark.parametrize("lanes", [1, 32], ids=["thread-per-row", "warp-per-row"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("covariance,mixture", FORMS, ids=FORM_IDS)
def test_both_row_mappings_match_cpu(covariance, mixture, dtype, lanes):
    # The automatic choice takes one mapping per shape; force each on the same problem.
    _compare_backend_functions(ps._cuda_module(), DEV, covariance, mixture, dtype, lanes, None)


def _compare_backend_functions(cu, device, covariance, mixture, dtype, lanes, index_stream):
    """ps._cuda_forward / _cuda_backward (the op's CUDA body) with a forced mapping, vs
    the CPU op; saved and recomputed responsibilities give the same bits."""
    B, K, D = 37, 19, 5
    for masked, special in ((None, True), ("bool", False)):
        case = make_case(covariance, mixture, B, K, D, dtype, seed=7, special=special, masked=masked)
        y, logits, means, scale, rho, mask = case
        Dy = y.shape[1]
        G = torch.randn(B, generator=torch.Generator().manual_seed(8), dtype=F64).to(dtype)
        lp_cpu, r_cpu = per_sample_log_prob_op(y, logits, means, scale, rho, mask, covariance, mixture)
        g_cpu = per_sample_log_prob_backward_op(G, r_cpu, y, logits, means, scale, rho, mask, covariance, mixture, True)
        dev_case = to(device, y, logits, means, scale, rho, mask)
        if index_stream is None:
            index_stream = ps._cuda_launch_context(dev_case[0])
        lp, r = ps._cuda_forward(cu, *index_stream, *dev_case, covariance, mixture, True, lanes)
        lp_nr, r_nr = ps._cuda_forward(cu, *index_stream, *dev_case, covariance, mixture, False, lanes)
        assert r_nr.shape == (0,)
        assert torch.equal(lp.view(torch.uint8), lp_nr.view(torch.uint8))
        what = f"{covariance}-{mixture} {dtype} lanes={lanes} mask={masked}"
        assert_rows_close(lp, lp_cpu, lp_tol(dtype, Dy), what + " log_prob", row_scale=torch.ones_like(lp_cpu))
        assert_rows_close(r, r_cpu, lp_tol(dtype, Dy), what + " resp", row_scale=lp_cpu)
        g_saved = ps._cuda_backward(cu, *index_stream, G.to(device), r, *dev_case, covariance, mixture, True, lanes)
        g_recomp = ps._cuda_backward(cu, *index_stream, G.to(device), r_nr, *dev_case, covariance, mixture, True,
                                     lanes)
        g_no_y = ps._cuda_backward(cu, *index_stream, G.to(device), r_nr, *dev_case, covariance, mixture, False,
                                   lanes)
        assert g_no_y[0].shape == (0, Dy)
        for a, b, c in zip(g_saved, g_recomp, g_no_y):
            assert torch.equal(a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8)), what
            if c.numel():
                assert torch.equal(c.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8)), what
        for name, a, b in zip(("y", "logits", "means", "scale", "rho"), g_saved, g_cpu):
            assert_rows_close(a, b, grad_tol(dtype, Dy), f"{what} grad {name}", row_scale=lp_cpu)
        if masked is not None:
            drop = ~mask
            assert (lp.cpu()[drop] == 0).all() and (r.cpu()[drop] == 0).all()
            for a in g_saved:
                if a.numel():
                    assert (a.cpu()[drop] == 0).all()


# ----------------------------------------------------------------------------- autograd / torch


@needs_device
@pytest.mark.parametrize("mask", [None, "bool"], ids=lambda m: f"mask-{m}")
@pytest.mark.parametrize("covariance,mixture", FORMS, ids=FORM_IDS)
def test_gradcheck_on_device(covariance, mixture, mask):
    y, logits, means, scale, rho, m = make_case(covariance, mixture, 6, 3, 3, F64, seed=9, masked=mask)
    if m is not None:  # gradcheck perturbs every input: keep the masked rows finite here
        y, logits, means = (torch.nan_to_num(t, nan=0.3) for t in (y, logits, means))
        scale = torch.nan_to_num(scale, nan=1.0)
        rho = None if rho is None else torch.nan_to_num(rho, nan=0.1)
    if covariance == "full":
        scale = torch.tril(scale.nan_to_num(0.0))
    inputs = [t.to(DEV).requires_grad_() for t in (y, logits, means, scale, rho) if t is not None]
    mask_dev = None if m is None else m.to(DEV)

    def f(*a):
        return per_sample_log_prob(*a[:4], a[4] if len(a) > 4 else None, covariance=covariance, mixture=mixture,
                                   mask=mask_dev, backend="fused")

    assert torch.autograd.gradcheck(f, inputs)


@needs_device
@pytest.mark.parametrize("save", [True, False], ids=["saved", "recomputed"])
@pytest.mark.parametrize("mask", [None, "bool", "float"], ids=lambda m: f"mask-{m}")
@pytest.mark.parametrize("covariance,mixture", FORMS, ids=FORM_IDS)
def test_opcheck_on_device(covariance, mixture, mask, save):
    y, logits, means, scale, rho, m = make_case(covariance, mixture, 5, 3, 3, F64, seed=10, masked=mask)
    args = to(DEV, y, logits, means, scale, rho, m)
    for t in args[:5]:
        if t is not None:
            t.requires_grad_()
    torch.library.opcheck(per_sample_log_prob_op, (*args, covariance, mixture, save))
    with torch.no_grad():
        _, resp = per_sample_log_prob_op(*args, covariance, mixture, save)
    G = torch.randn(5, dtype=F64).to(DEV)
    torch.library.opcheck(
        per_sample_log_prob_backward_op, (G, resp, *[None if t is None else t.detach() for t in args], covariance,
                                          mixture, True)
    )


@needs_device
def test_torch_compile_fullgraph_on_device():
    y, logits, means, scale, rho, _ = to(DEV, *make_case("correlated2d", "joint", 16, 4, 2, F32, seed=11))
    means.requires_grad_()

    def loss(y, logits, means, scale, rho):
        return -per_sample_log_prob(y, logits, means, scale, rho, covariance="correlated2d", backend="fused").mean()

    compiled = torch.compile(loss, fullgraph=True, backend="aot_eager")
    got = compiled(y, logits, means, scale, rho)
    want = loss(y, logits, means, scale, rho)
    torch.testing.assert_close(got, want)
    (g_got,) = torch.autograd.grad(got, means)
    (g_want,) = torch.autograd.grad(want, means)
    torch.testing.assert_close(g_got, g_want)


@needs_gpu
def test_fused_is_available_and_used(monkeypatch):
    assert ps.fused_available("cuda") and ps.fused_available(DEV)

    def no_fallback(*a, **k):
        raise AssertionError("backend='auto' fell back to plain torch on CUDA")

    monkeypatch.setattr(ps, "per_sample_log_prob_torch", no_fallback)
    y, logits, means, scale, _, _ = to(DEV, *make_case("diag", "joint", 8, 3, 2, F32))
    lp = per_sample_log_prob(y, logits, means, scale)
    assert lp.device.type == "cuda"


@needs_gpu
def test_ops_do_not_synchronise():
    y, logits, means, scale, _, mask = to(DEV, *make_case("full", "joint", 300, 4, 3, F32, masked="float"))
    means.requires_grad_()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for save in (True, False):
            lp = per_sample_log_prob(y, logits, means, scale, covariance="full", mask=mask,
                                     save_responsibilities=save)
            lp.sum().backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()


@needs_gpu
def test_non_default_stream_and_graph_capture():
    y, logits, means, scale, _, _ = to(DEV, *make_case("diag", "joint", 500, 20, 4, F32, seed=12))
    G = torch.randn(500, device=DEV)

    def step():
        lp, resp = per_sample_log_prob_op(y, logits, means, scale, None, None, "diag", "joint", True)
        grads = per_sample_log_prob_backward_op(G, resp, y, logits, means, scale, None, None, "diag", "joint", True)
        return (lp, resp, *grads)

    eager = step()
    torch.cuda.synchronize()
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        on_side = step()
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static = step()
    graph.replay()
    torch.cuda.synchronize()
    for a, b, c in zip(eager, on_side, static):
        assert torch.equal(a, b) and torch.equal(a, c)


@needs_gpu
@pytest.mark.skipif(_ON_CPU or not _HAS_GPU or torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_second_device():
    dev = torch.device("cuda", 1)
    case = make_case("diag", "joint", 50, 4, 3, F64)
    lp_cpu, _ = run(CPU, case, "diag", "joint", torch.ones(50, dtype=F64))
    y, logits, means, scale, _, _ = to(dev, *case)
    lp = per_sample_log_prob(y, logits, means, scale)
    assert lp.device == dev
    torch.testing.assert_close(lp.cpu(), lp_cpu, rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------------------- emulation


def _emulated_module():
    path = next(pathlib.Path(_EMU_DIR).glob("_cuda*.so"), None)
    if path is None:
        pytest.skip(f"no _cuda*.so in {_EMU_DIR}")
    spec = importlib.util.spec_from_file_location("_cuda", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@needs_emu
@pytest.mark.parametrize("lanes", [0, 1, 32], ids=["auto", "thread-per-row", "warp-per-row"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("covariance,mixture", FORMS, ids=FORM_IDS)
def test_emulated_cuda_path_matches_cpu(covariance, mixture, dtype, lanes):
    # The op's CUDA body (ps._cuda_forward / _cuda_backward: dtypes, pointers, argument
    # order, workspace) on the emulated kernels, with CPU tensors standing for device memory.
    _compare_backend_functions(_emulated_module(), CPU, covariance, mixture, dtype, lanes, (0, 0))


@needs_emu
def test_emulated_module_argument_errors():
    cu = _emulated_module()
    with pytest.raises(ValueError, match="lanes_per_row"):
        cu.per_sample_workspace_bytes("float32", "diag", "joint", 4, 3, 2, False, 7)
    with pytest.raises(ValueError, match="per_dim"):
        cu.per_sample_workspace_bytes("float32", "full", "per_dim", 4, 3, 2, False, 0)
    with pytest.raises(ValueError, match="covariance must be one of"):
        cu.per_sample_workspace_bytes("float32", "tied", "joint", 4, 3, 2, False, 0)
    with pytest.raises(ValueError, match="dtype"):
        cu.per_sample_workspace_bytes("float16", "diag", "joint", 4, 3, 2, False, 0)
    assert cu.per_sample_workspace_bytes("float64", "diag", "joint", 100, 3, 2, True, 0) == 0
    assert cu.per_sample_workspace_bytes("float64", "full", "joint", 100, 3, 2, True, 0) > 0
    y, logits, means, scale, _, _ = make_case("full", "joint", 4, 3, 2, F32)
    with pytest.raises(ValueError, match="workspace"):
        cu.per_sample_log_prob(0, 0, "float32", "full", "joint", 4, 3, 2, y.data_ptr(), logits.data_ptr(),
                               means.data_ptr(), scale.data_ptr(), 0, 0, y.data_ptr(), 0, 0, 0, 0)
