"""gmmfast.torch on CUDA tensors: the CUDA kernels (gmmfast._cuda) against the CPU kernels.

Every op is run on the same inputs on the CPU and on the GPU through gmmfast.torch and
compared with tolerances justified by the arithmetic (see the constants below); plus
edge shapes, determinism, non-finite rows, torch.library.opcheck, CUDA-graph capture and
torch.compile(mode="reduce-overhead").

The whole module is skipped without a CUDA device (gmmfast.cuda_available() is False).
GMMFAST_CUDA_TESTS_ON_CPU=1 runs the same test code with the CPU standing in for the GPU
(both sides then run the CPU kernels): a check of the tests themselves on machines
without a GPU; the CUDA-only tests still skip.
"""

from __future__ import annotations

import math
import os

import pytest

torch = pytest.importorskip("torch")
import gmmfast  # noqa: E402
import gmmfast.torch as gt  # noqa: E402

_ON_CPU = os.environ.get("GMMFAST_CUDA_TESTS_ON_CPU") == "1"

pytestmark = pytest.mark.skipif(
    not (_ON_CPU or gmmfast.cuda_available()),
    reason="needs a CUDA device and gmmfast built with its CUDA kernels (gmmfast.cuda_available() is False)",
)
needs_gpu = pytest.mark.skipif(
    _ON_CPU or not gmmfast.cuda_available(), reason="needs a CUDA device (gmmfast.cuda_available() is False)"
)

DEV = torch.device("cpu") if _ON_CPU else torch.device("cuda")
CPU = torch.device("cpu")
F32, F64 = torch.float32, torch.float64
COV_TYPES = ["full", "tied", "diag", "spherical"]
OUTPUTS = ["sample", "log_resp", "weighted"]
DTYPES = [F32, F64]


# ----------------------------------------------------------------------------- tolerances
#
# Both backends compute in the data's dtype with the same formulas (centred at the means,
# log-sum-exp) and accumulate statistics in float64; they differ in the order of the
# floating-point operations only (GPU: 64-row tiles and 64-wide column tiles; CPU: SIMD
# lanes and up to 512-row tiles). So:
#  - log-densities: a D-term Mahalanobis sum has a relative rounding error ~ D·eps, on
#    values of magnitude |L| -> c·(D + 10)·eps·(1 + |L|) (log_resp: |L| + |lse|);
#  - statistics: each entry is a sum of N terms accumulated in float32 over <= 512 rows,
#    float64 beyond: error <~ 512·eps32 ~ 6e-5 relative to the sum of |terms|, which
#    we bound by the largest entry of the array (the data are not centred away);
#  - finalize is float64 on both sides, same operation order: ~1e-13 relative.


def lp_tol(dtype, D):
    eps = torch.finfo(dtype).eps
    return 10 * (D + 10) * eps


def assert_log_prob_close(got, X, lw, mu, U, cov, output):
    """got (device) vs the CPU op, entry-wise within lp_tol·(1 + scale) with scale = |want|,
    except for 'log_resp' = L - lse: a difference of two numbers of magnitude |L| + |lse|,
    which is then the scale of the rounding error (a far outlier row has L ~ -2000 and
    log_resp ~ -5)."""
    want = gt.log_prob(X, lw, mu, U, cov, output)
    got = got.cpu()
    assert got.dtype == want.dtype and got.shape == want.shape
    scale = want.abs().double()
    if output == "log_resp":
        L = gt.log_prob(X, lw, mu, U, cov, "weighted").double()
        lse = gt.log_prob(X, lw, mu, U, cov, "sample").double()
        scale = L.abs() + lse.abs()[:, None]
    finite = torch.isfinite(want)
    assert torch.equal(torch.isfinite(got), finite), "non-finite entries differ"
    err = (got.double() - want.double()).abs()[finite]
    bound = lp_tol(X.dtype, X.shape[1]) * (1.0 + scale[finite])
    assert bool((err <= bound).all()), f"{cov} {output}: max error {(err / bound).max().item():.3g} x tolerance"


def stats_rtol(dtype):
    return 2e-4 if dtype == F32 else 1e-10


def grad_rtol(dtype):
    return 1e-3 if dtype == F32 else 1e-9


def assert_scaled_close(got, want, rtol, what=""):
    """|got - want| <= rtol·(max|want| + |want|) entry-wise (NaN where want is NaN)."""
    got = got.detach().to(CPU, F64)
    want = want.detach().to(CPU, F64)
    assert got.shape == want.shape, (what, got.shape, want.shape)
    finite = torch.isfinite(want)
    assert torch.equal(torch.isfinite(got), finite), f"{what}: non-finite entries differ"
    scale = want[finite].abs().max().item() if finite.any() else 0.0
    err = (got[finite] - want[finite]).abs()
    bound = rtol * (scale + want[finite].abs()) + 1e-300
    assert bool((err <= bound).all()), f"{what}: max error {(err / bound).max().item():.3g} x tolerance"


# ----------------------------------------------------------------------------- data


def make_mixture(cov, K, D, dtype, seed=0, spread=3.0, offset=0.0):
    """A random, well-conditioned mixture (scikit-learn's precision-Cholesky form), CPU."""
    g = torch.Generator().manual_seed(seed)
    log_weights = torch.log_softmax(0.5 * torch.randn(K, generator=g, dtype=F64), 0)
    means = spread * torch.randn(K, D, generator=g, dtype=F64) + offset
    if cov in ("full", "tied"):
        shape = (K, D, D) if cov == "full" else (D, D)
        U = torch.triu(0.3 / math.sqrt(D) * torch.randn(*shape, generator=g, dtype=F64), 1)
        U = U + torch.diag_embed(0.8 + 0.4 * torch.rand(*shape[:-1], generator=g, dtype=F64))
    elif cov == "diag":
        U = 0.6 + torch.rand(K, D, generator=g, dtype=F64)
    else:
        U = 0.6 + torch.rand(K, generator=g, dtype=F64)
    return [t.to(dtype) for t in (log_weights, means, U)]


def make_data(means, N, seed=1, noise=1.0):
    """N rows near the components' means (plus one far outlier when N > 3), CPU."""
    g = torch.Generator().manual_seed(seed)
    K, D = means.shape
    comp = torch.randint(K, (N,), generator=g)
    X = means.double()[comp] + noise * torch.randn(N, D, generator=g, dtype=F64)
    if N > 3:
        X[2] += 25.0  # tiny but finite densities: exercises the log-sum-exp shift
    return X.to(means.dtype)


def to(device, *tensors):
    return [None if t is None else t.to(device) for t in tensors]


def problem(cov, N, D, K, dtype, seed=0, offset=0.0):
    lw, mu, U = make_mixture(cov, K, D, dtype, seed=seed, offset=offset)
    X = make_data(mu, N, seed=seed + 1)
    return X, lw, mu, U


SHAPES = [
    # (N, D, K): N not a multiple of the 64-row tile; D > 64 (several column tiles of the
    # dense kernels); K > 64 (several component groups, a partial last one)
    (1, 1, 1),
    (1, 3, 2),
    (65, 2, 3),
    (300, 5, 4),
    (257, 70, 3),
    (400, 3, 130),
    (129, 1, 1),
]


# ----------------------------------------------------------------------------- log_prob


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("cov", COV_TYPES)
@pytest.mark.parametrize("output", OUTPUTS)
def test_log_prob_matches_cpu(cov, dtype, output):
    X, lw, mu, U = problem(cov, 500, 6, 5, dtype, offset=50.0)
    got = gt.log_prob(*to(DEV, X, lw, mu, U), cov, output)
    assert got.device.type == DEV.type and got.dtype == dtype
    assert_log_prob_close(got, X, lw, mu, U, cov, output)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "N%d-D%d-K%d" % s)
@pytest.mark.parametrize("cov", COV_TYPES)
def test_log_prob_edge_shapes(cov, shape):
    N, D, K = shape
    for dtype in DTYPES:
        X, lw, mu, U = problem(cov, N, D, K, dtype, seed=N + D + K)
        for output in OUTPUTS:
            got = gt.log_prob(*to(DEV, X, lw, mu, U), cov, output)
            assert_log_prob_close(got, X, lw, mu, U, cov, output)


# ----------------------------------------------------------------------------- em_stats


def check_stats(got, want, dtype, what):
    rtol = stats_rtol(dtype)
    for name in ("nk", "s1", "s2"):
        g, w = getattr(got, name), getattr(want, name)
        assert g.dtype == F64 and g.device.type == DEV.type
        assert_scaled_close(g, w, rtol, f"{what} {name}")
    assert_scaled_close(got.weight_sum.reshape(1), want.weight_sum.reshape(1), rtol, f"{what} weight_sum")
    assert_scaled_close(
        got.log_likelihood.reshape(1), want.log_likelihood.reshape(1),
        2e-5 if dtype == F32 else 1e-11, f"{what} log_likelihood",
    )


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("cov", COV_TYPES)
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
def test_em_stats_matches_cpu(cov, dtype, weighted):
    X, lw, mu, U = problem(cov, 700, 6, 5, dtype, offset=50.0)
    centres = mu + 0.1  # statistics about centres other than the means
    sw = torch.rand(700, generator=torch.Generator().manual_seed(3)).to(dtype) + 0.25 if weighted else None
    want = gt.em_stats(X, lw, mu, U, cov, centres=centres, sample_weight=sw)
    got = gt.em_stats(*to(DEV, X, lw, mu, U), cov, centres=centres.to(DEV), sample_weight=to(DEV, sw)[0])
    check_stats(got, want, dtype, f"{cov} {dtype}")


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "N%d-D%d-K%d" % s)
@pytest.mark.parametrize("cov", COV_TYPES)
def test_em_stats_edge_shapes(cov, shape):
    N, D, K = shape
    for dtype in DTYPES:
        X, lw, mu, U = problem(cov, N, D, K, dtype, seed=N + 2 * D + K)
        want = gt.em_stats(X, lw, mu, U, cov)
        got = gt.em_stats(*to(DEV, X, lw, mu, U), cov)
        check_stats(got, want, dtype, f"{cov} {dtype} {shape}")


@pytest.mark.parametrize("cov", COV_TYPES)
def test_em_stats_large(cov):
    # Many row tiles per chunk and many chunks (the statistics pass's reduction tree).
    dtype = F32
    K, D = (64, 8) if cov in ("full", "tied") else (300, 16)
    X, lw, mu, U = problem(cov, 200_000, D, K, dtype, seed=11)
    want = gt.em_stats(X, lw, mu, U, cov)
    got = gt.em_stats(*to(DEV, X, lw, mu, U), cov)
    check_stats(got, want, dtype, f"{cov} large")


@pytest.mark.parametrize("cov", COV_TYPES)
def test_em_stats_given_signed_resp(cov):
    # The autograd backward path: responsibilities of any sign, times sample weights.
    for dtype in DTYPES:
        X, lw, mu, U = problem(cov, 300, 4, 3, dtype, seed=5)
        g = torch.Generator().manual_seed(6)
        W = torch.randn(300, 3, generator=g).to(dtype)
        sw = torch.rand(300, generator=g).to(dtype)
        want = torch.ops.gmmfast.log_prob_backward(W, X, lw, mu, U, cov, False, True)
        got = torch.ops.gmmfast.log_prob_backward(*to(DEV, W, X, lw, mu, U), cov, False, True)
        for a, b, name in zip(got, want, ("X", "log_weights", "means", "precisions_cholesky")):
            assert_scaled_close(a, b, grad_rtol(dtype), f"{cov} {dtype} grad {name}")
        want = torch.ops.gmmfast.log_prob_backward(sw, X, lw, mu, U, cov, True, True)
        got = torch.ops.gmmfast.log_prob_backward(*to(DEV, sw, X, lw, mu, U), cov, True, True)
        for a, b, name in zip(got, want, ("X", "log_weights", "means", "precisions_cholesky")):
            assert_scaled_close(a, b, grad_rtol(dtype), f"{cov} {dtype} per-sample grad {name}")


# ----------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("cov", COV_TYPES)
@pytest.mark.parametrize("output", OUTPUTS)
def test_autograd_matches_cpu(cov, dtype, output):
    X0, lw0, mu0, U0 = problem(cov, 300, 5, 4, dtype, seed=7)
    K = lw0.shape[0]
    g = torch.Generator().manual_seed(8)
    G = (torch.rand(300, generator=g) + 0.5) if output == "sample" else (torch.rand(300, K, generator=g) + 0.5)
    G = G.to(dtype)
    grads = []
    for device in (CPU, DEV):
        X, logits, mu, U = (t.to(device).clone().requires_grad_() for t in (X0, lw0, mu0, U0))
        out = gt.log_prob(X, torch.log_softmax(logits, 0), mu, U, cov, output)
        (out * G.to(device)).sum().backward()
        grads.append([X.grad, logits.grad, mu.grad, U.grad])
    for name, a, b in zip(("X", "logits", "means", "precisions_cholesky"), grads[1], grads[0]):
        assert a.device.type == DEV.type
        assert_scaled_close(a, b, grad_rtol(dtype), f"{cov} {dtype} {output} grad {name}")


@pytest.mark.parametrize("cov", COV_TYPES)
def test_gradcheck_on_device(cov):
    X = torch.randn(12, 3, dtype=F64, generator=torch.Generator().manual_seed(3)).to(DEV).requires_grad_()
    lw, mu, U = (t.to(DEV).requires_grad_() for t in make_mixture(cov, 2, 3, F64))
    for output in OUTPUTS:
        assert torch.autograd.gradcheck(lambda *a: gt.log_prob(*a, cov, output), (X, lw, mu, U))


# ----------------------------------------------------------------------------- finalize


@pytest.mark.parametrize("cov", COV_TYPES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_finalize_matches_cpu(cov, dtype):
    X, lw, mu, U = problem(cov, 600, 5, 4, F64, seed=9)
    st = gt.em_stats(X, lw, mu, U, cov)  # float64 statistics: the same input on both sides
    want = gt.finalize(st, 1e-6, dtype)
    st_dev = gt.TorchEMStats(*(t.to(DEV) if torch.is_tensor(t) else t for t in st))
    got = gt.finalize(st_dev, 1e-6, dtype)
    assert got.failed.device.type == DEV.type and got.failed.dtype == torch.int64 and got.failed.dim() == 0
    assert got.failed.item() == -1 == want.failed.item()
    for name in ("weights", "means", "covariances", "precisions_cholesky", "log_det_cholesky"):
        # float64 on both sides, same operation order; the GPU contracts a·b + c into fma
        # and its log differs from glibc's by <= 1 ulp
        assert_scaled_close(getattr(got, name), getattr(want, name), 1e-10, f"{cov} {name}")


def _finalize_op(st, reg_covar, cov):
    # nk_eps = 0: statistics collapsed onto their centres then give an exactly zero
    # covariance (with nk_eps > 0 it is a ~1e-32 rank-one matrix whose last pivot's sign
    # is rounding noise, on any backend).
    return torch.ops.gmmfast.finalize(st.nk, st.s1, st.s2, st.centres, reg_covar, 0.0, cov)


@pytest.mark.parametrize("cov", COV_TYPES)
def test_finalize_reports_failure_without_raising(cov):
    # All points identical, centred at that point, no regularisation: a zero covariance.
    X = torch.ones(10, 2, dtype=F64)
    lw, _, U = make_mixture(cov, 1, 2, F64)
    mu = torch.ones(1, 2, dtype=F64)
    st = gt.em_stats(*to(DEV, X, lw, mu, U), cov)
    failed = _finalize_op(st, 0.0, cov)[-1]
    assert failed.device.type == DEV.type and failed.dtype == torch.int64 and failed.dim() == 0
    assert failed.item() == 0
    assert _finalize_op(st, 1e-3, cov)[-1].item() == -1


@pytest.mark.parametrize("cov", ["full", "diag", "spherical"])
def test_finalize_first_failing_component(cov):
    # Component 2 of 4 collapses onto its centre: failed == 2 on both backends.
    X, lw, mu, U = problem(cov, 400, 3, 4, F64, seed=12)
    st = gt.em_stats(X, lw, mu, U, cov)
    s1, s2 = st.s1.clone(), st.s2.clone()
    s1[2] = 0.0
    s2[2] = 0.0
    bad = st._replace(s1=s1, s2=s2)
    want = _finalize_op(bad, 0.0, cov)[-1]
    got = _finalize_op(gt.TorchEMStats(*(t.to(DEV) if torch.is_tensor(t) else t for t in bad)), 0.0, cov)[-1]
    assert want.item() == 2 == got.item()


# ----------------------------------------------------------------------------- NaN rows


@pytest.mark.parametrize("cov", COV_TYPES)
def test_nonfinite_rows(cov):
    # A NaN row: NaN log-density for that row only; its responsibilities are zero, so the
    # statistics are those of the other rows, and the log-likelihood is NaN.
    if _ON_CPU and cov != "full":
        pytest.skip("the CPU kernels' diag/spherical/tied M-step multiplies r = 0 by the NaN row (NaN s1)")
    X, lw, mu, U = problem(cov, 200, 4, 3, F64, seed=13)
    Xbad = X.clone()
    Xbad[7, 1] = float("nan")
    out = gt.log_prob(*to(DEV, Xbad, lw, mu, U), cov).cpu()
    assert torch.isnan(out[7]) and torch.isfinite(torch.cat([out[:7], out[8:]])).all()
    got = gt.em_stats(*to(DEV, Xbad, lw, mu, U), cov)
    assert torch.isnan(got.log_likelihood).item()
    keep = torch.arange(200) != 7
    want = gt.em_stats(X[keep], lw, mu, U, cov)
    for name in ("nk", "s1", "s2"):
        assert_scaled_close(getattr(got, name), getattr(want, name), 1e-10, f"{cov} NaN row {name}")
    assert got.weight_sum.item() == 200.0


# ----------------------------------------------------------------------------- determinism


@pytest.mark.parametrize("cov", COV_TYPES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_bit_identical_reruns(cov, dtype):
    X, lw, mu, U = to(DEV, *problem(cov, 5000, 7, 9, dtype, seed=14))
    sw = torch.rand(5000, generator=torch.Generator().manual_seed(15)).to(dtype).to(DEV)

    def run():
        st = gt.em_stats(X, lw, mu, U, cov, sample_weight=sw)
        fin = gt.finalize(st)
        lp = gt.log_prob(X, lw, mu, U, cov, "log_resp")
        Xg = X.clone().requires_grad_()
        (gt.log_prob(Xg, lw, mu, U, cov) * sw).sum().backward()
        return [st.log_likelihood, st.weight_sum, st.nk, st.s1, st.s2, *fin, lp, Xg.grad]

    a, b = run(), run()
    for x, y in zip(a, b):
        assert x.dtype == y.dtype and x.shape == y.shape
        assert torch.equal(x.view(-1).view(torch.uint8) if x.dtype != torch.int64 else x,
                           y.view(-1).view(torch.uint8) if y.dtype != torch.int64 else y)


# ----------------------------------------------------------------------------- torch integration


@pytest.mark.parametrize("cov", COV_TYPES)
def test_opcheck_on_device(cov):
    X = torch.randn(70, 3, dtype=F64, generator=torch.Generator().manual_seed(6)).to(DEV)
    lw, mu, U = to(DEV, *make_mixture(cov, 2, 3, F64))
    for output in OUTPUTS:
        torch.library.opcheck(torch.ops.gmmfast.log_prob.default, (X, lw, mu, U, cov, output))
    G = torch.randn(70, dtype=F64).to(DEV)
    torch.library.opcheck(torch.ops.gmmfast.log_prob_backward.default, (G, X, lw, mu, U, cov, True, True))
    W = torch.randn(70, 2, dtype=F64).to(DEV)
    torch.library.opcheck(torch.ops.gmmfast.log_prob_backward.default, (W, X, lw, mu, U, cov, False, False))
    torch.library.opcheck(torch.ops.gmmfast.em_stats.default, (X, lw, mu, U, mu, None, cov))
    torch.library.opcheck(torch.ops.gmmfast.em_stats.default, (X, lw, mu, U, mu, G.abs(), cov))
    st = gt.em_stats(X, lw, mu, U, cov)
    torch.library.opcheck(torch.ops.gmmfast.finalize.default, (st.nk, st.s1, st.s2, st.centres, 1e-6, 1e-15, cov))


@needs_gpu
def test_ops_do_not_synchronise():
    # torch reports (here: raises on) every synchronising call made through torch; the
    # backend must make none (our kernels never synchronise either).
    X, lw, mu, U = to(DEV, *problem("full", 1000, 4, 3, F32))
    X.requires_grad_()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = gt.log_prob(X, lw, mu, U, "full")
        out.sum().backward()
        st = gt.em_stats(X.detach(), lw, mu, U, "full")
        gt.finalize(st)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()


@needs_gpu
def test_non_default_stream():
    X, lw, mu, U = to(DEV, *problem("diag", 3000, 8, 5, F32))
    want = gt.em_stats(X, lw, mu, U, "diag")
    torch.cuda.synchronize()
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        got = gt.em_stats(X, lw, mu, U, "diag")
        fin = gt.finalize(got)
    torch.cuda.current_stream().wait_stream(s)
    torch.cuda.synchronize()
    assert torch.equal(got.s2, want.s2) and torch.equal(got.nk, want.nk)
    assert fin.failed.item() == -1


@needs_gpu
@pytest.mark.skipif(_ON_CPU or not gmmfast.cuda_available() or torch.cuda.device_count() < 2,
                    reason="needs two CUDA devices")
def test_second_device():
    # The module's own CUDA runtime does not see torch's current device: the device index
    # is passed explicitly. Compute on cuda:1 while cuda:0 is current.
    dev = torch.device("cuda", 1)
    X, lw, mu, U = problem("full", 500, 4, 3, F64)
    want = gt.em_stats(X, lw, mu, U, "full")
    got = gt.em_stats(*to(dev, X, lw, mu, U), "full")
    assert got.s2.device == dev
    assert_scaled_close(got.s2, want.s2, 1e-10, "cuda:1 s2")


@needs_gpu
@pytest.mark.parametrize("cov", ["full", "diag"])
def test_cuda_graph_capture(cov):
    # Capture on a side stream (as torch.cuda.graph does): an op that used the legacy
    # default stream, allocated with cudaMalloc or synchronised would fail here.
    X, lw, mu, U = to(DEV, *problem(cov, 4000, 6, 5, F32))
    eps = 10 * torch.finfo(F32).eps

    def step():
        st = torch.ops.gmmfast.em_stats(X, lw, mu, U, mu, None, cov)
        fin = torch.ops.gmmfast.finalize(st[1], st[2], st[3], mu.double(), 1e-6, eps, cov)
        return (st[0], *fin, torch.ops.gmmfast.log_prob(X, lw, mu, U, cov, "sample"))

    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        eager = step()  # warm-up outside the capture
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static = step()
    graph.replay()
    torch.cuda.synchronize()
    for a, b in zip(static, eager):
        assert torch.equal(a, b)


@needs_gpu
def test_torch_compile_reduce_overhead():
    # mode="reduce-overhead" records CUDA graphs of the compiled region (captured on a
    # side stream); the result must match eager.
    cov = "full"
    X, lw, mu, U = to(DEV, *problem(cov, 3000, 5, 4, F32))
    eps = 10 * torch.finfo(F32).eps

    def em_step(X, lw, mu, U):
        st = torch.ops.gmmfast.em_stats(X, lw, mu, U, mu, None, cov)
        fin = torch.ops.gmmfast.finalize(st[1], st[2], st[3], mu.double(), 1e-6, eps, cov)
        return st[0], fin[0], fin[1], fin[3]

    def loss(X, lw, mu, U):
        return -gt.log_prob(X, lw, mu, U, cov).mean()

    eager = em_step(X, lw, mu, U)
    compiled = torch.compile(em_step, mode="reduce-overhead")
    for _ in range(3):  # warm-up, record, replay
        got = compiled(X, lw, mu, U)
    torch.cuda.synchronize()
    for a, b in zip(got, eager):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)

    mu_g = mu.clone().requires_grad_()
    eager_loss = loss(X, lw, mu_g, U)
    (eager_grad,) = torch.autograd.grad(eager_loss, mu_g)
    compiled_loss = torch.compile(loss, mode="reduce-overhead")
    for _ in range(3):
        got_loss = compiled_loss(X, lw, mu_g, U)
        (got_grad,) = torch.autograd.grad(got_loss, mu_g)
    torch.testing.assert_close(got_loss, eager_loss)
    torch.testing.assert_close(got_grad, eager_grad)


def test_backend_module_is_used():
    # The op layer routes device tensors to the CUDA backend (not a CPU fallback).
    if _ON_CPU:
        pytest.skip("CPU stand-in")
    from gmmfast.torch import _ops

    X = torch.zeros(3, 2, device=DEV)
    assert _ops._backend(X).__name__.endswith("_cuda_backend")
