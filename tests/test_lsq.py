"""Tests for pdbjax.lsq: least_squares_box (convergence status, bounds, saddle escape, scipy parity) and
least_squares_scalar (scipy parity, bounds, status, vmap).

The oracle is ``scipy.optimize.least_squares`` (trust-region reflective, the method behind the reference
code's ``curve_fit(..., bounds=...)``) with its default tolerances ``ftol = xtol = gtol = 1e-8``, the
ones the solver mirrors. The PDBLS problem itself is tested against scipy in ``tests/test_estimate.py``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.optimize import least_squares, minimize_scalar

from pdbjax.lsq import Status, least_squares_box, least_squares_scalar

X = np.linspace(0.0, 3.0, 40)
MIX = (0.3, 1.0, 4.0)  # t, a, b of the exponential mixture below
MIX_LB, MIX_UB = np.array([0.0, 0.5, 0.5]), np.array([1.0, 6.0, 6.0])
CONVERGED = {Status.GTOL, Status.FTOL, Status.XTOL}


def _mixture(theta, x):
    """``t exp(-a x) + (1 - t) exp(-b x)``: the same exchange symmetry as the PDB mixture."""
    t, a, b = theta[0], theta[1], theta[2]
    return t * jnp.exp(-a * x) + (1 - t) * jnp.exp(-b * x)


def _mixture_residual(x=X, truth=MIX):
    data = _mixture(jnp.asarray(truth), jnp.asarray(x))
    return lambda theta: data - _mixture(theta, jnp.asarray(x))


def _rosenbrock(z):
    return jnp.stack([10 * (z[1] - z[0] ** 2), 1 - z[0]])


def _solve(residual, x0, lb, ub, **kw):
    return jax.jit(lambda x: least_squares_box(residual, x, jnp.asarray(lb), jnp.asarray(ub), **kw))(jnp.asarray(x0))


def test_symmetric_start_escapes_the_single_component_saddle():
    """Started at t = 1/2, a = b (the box midpoint, like PDBLS's reference start) every Gauss-Newton step
    keeps a = b, and the best single exponential is a saddle of the two-component problem: the solver
    must leave it along negative curvature and reach the exact two-component fit."""
    with jax.enable_x64(True):
        res = _solve(_mixture_residual(), (MIX_LB + MIX_UB) / 2, MIX_LB, MIX_UB)
    assert bool(res.converged) and int(res.status) in CONVERGED, res
    assert float(res.cost) < 1e-20
    got = np.asarray(res.x)
    got = got if got[0] < 0.5 else np.array([1 - got[0], got[2], got[1]])  # the exchange symmetry
    np.testing.assert_allclose(got, MIX, rtol=1e-6)
    assert 0 < int(res.steps) < 100


def _mixture_derivatives(x=X):
    """Closed-form Jacobian and second derivatives of :func:`_mixture_residual` (``r = data - model``)."""
    x = jnp.asarray(x)

    def derivatives(theta):
        t, a, b = theta[0], theta[1], theta[2]
        ea, eb = jnp.exp(-a * x), jnp.exp(-b * x)
        zero = jnp.zeros_like(x)
        jac = jnp.stack([eb - ea, t * x * ea, (1 - t) * x * eb], axis=-1)
        curv = jnp.stack([
            jnp.stack([zero, x * ea, -x * eb], axis=-1),
            jnp.stack([x * ea, -t * x**2 * ea, zero], axis=-1),
            jnp.stack([-x * eb, zero, -(1 - t) * x**2 * eb], axis=-1),
        ], axis=-2)
        return jac, curv

    return derivatives


def test_given_derivatives_replace_automatic_differentiation():
    """``derivatives=`` (closed forms) solves the saddle-start problem as automatic differentiation does,
    and is the only source of derivatives then: a residual that cannot be differentiated (its JVP raises)
    still solves."""
    start = (MIX_LB + MIX_UB) / 2
    smooth = _mixture_residual()

    @jax.custom_jvp
    def opaque(theta):
        return smooth(theta)

    @opaque.defjvp
    def _(primals, tangents):
        raise AssertionError("the solver differentiated the residual instead of using derivatives=")

    with jax.enable_x64(True):
        auto = _solve(smooth, start, MIX_LB, MIX_UB)
        given = _solve(opaque, start, MIX_LB, MIX_UB, derivatives=_mixture_derivatives())
    # the same minimum to the solver's 1e-8 tolerances (the two stop at different steps: other rounding),
    # so a cost of order (1e-8)^2 per residual
    assert bool(given.converged) and float(given.cost) < 1e-12, given
    np.testing.assert_allclose(np.asarray(given.x), np.asarray(auto.x), rtol=1e-7)


def test_derivatives_of_the_wrong_shape_are_refused():
    """A ``derivatives`` that does not return ``(m, n)`` and ``(m, n, n)`` arrays is named before anything runs."""
    exact = _mixture_derivatives()
    transposed = lambda theta: (exact(theta)[0].T, exact(theta)[1])  # noqa: E731
    with pytest.raises(ValueError, match=r"Jacobian \(40, 3\) and second derivatives \(40, 3, 3\); got shapes \(\(3, 40\)"):
        _solve(_mixture_residual(), (MIX_LB + MIX_UB) / 2, MIX_LB, MIX_UB, derivatives=transposed)


def test_active_bound_is_exact_and_projected_gradient_vanishes():
    """A line fit whose slope is boxed below its free optimum (2): the slope sits exactly on its bound and
    the intercept is the least-squares intercept given that slope."""
    x = np.linspace(0.0, 1.0, 11)
    y = 2.0 * x + 0.5 + 0.01 * np.sin(7 * x)
    with jax.enable_x64(True):
        res = _solve(lambda th: jnp.asarray(y) - (th[0] * jnp.asarray(x) + th[1]), [0.5, 0.0], [0.0, -5.0], [1.0, 5.0])
    assert bool(res.converged)
    assert float(res.x[0]) == 1.0
    # stopped by a 1e-8 tolerance (here XTOL): the free intercept is exact to about that, the cost to its
    # square, and the projected gradient is ~1e-8 of |J_c| |r| (J_c = -10 * ones in unit-box coordinates)
    np.testing.assert_allclose(float(res.x[1]), np.mean(y - x), rtol=1e-7)
    assert float(res.grad_norm) < 1e-7 * 10 * np.sqrt(x.size) * np.sqrt(2 * float(res.cost))
    np.testing.assert_allclose(float(res.cost), 0.5 * np.sum((y - x - np.mean(y - x)) ** 2), rtol=1e-10)


@pytest.mark.parametrize(
    "name, residual, x0, lb, ub",
    [
        ("rosenbrock", _rosenbrock, [-1.2, 1.0], [-2.0, -2.0], [2.0, 2.0]),
        ("rosenbrock-active", _rosenbrock, [-1.2, 1.0], [-2.0, -2.0], [0.5, 2.0]),
        ("mixture-noisy", lambda th: _mixture_residual()(th) + 1e-3 * jnp.sin(11 * jnp.asarray(X)), [0.6, 1.5, 3.0], MIX_LB, MIX_UB),
    ],
)
def test_cost_no_worse_than_scipy_trf(name, residual, x0, lb, ub):
    """Same start, same box, same tolerances: the cost is at most scipy's (to rounding), and converged."""
    with jax.enable_x64(True):
        res = _solve(residual, x0, lb, ub)
        want = least_squares(lambda z: np.asarray(residual(jnp.asarray(z))), x0, bounds=(lb, ub), method="trf")
    assert want.success, name
    assert bool(res.converged), (name, res)
    assert float(res.cost) <= want.cost * (1 + 1e-6) + 1e-14, (name, float(res.cost), want.cost)
    assert np.all(np.asarray(res.x) >= lb) and np.all(np.asarray(res.x) <= ub)


def test_equal_bounds_fix_a_variable():
    """lb = ub holds that variable at the bound exactly (whatever the start says); the others are solved
    as with it known, here from a start in the truth's basin."""
    lb, ub = MIX_LB.copy(), MIX_UB.copy()
    lb[0] = ub[0] = MIX[0]
    with jax.enable_x64(True):
        res = _solve(_mixture_residual(), [0.9, 1.5, 3.5], lb, ub)
    assert bool(res.converged) and float(res.x[0]) == MIX[0]
    np.testing.assert_allclose(np.asarray(res.x), MIX, rtol=1e-6)  # the exact data: the truth is the minimum


def test_step_budget_reports_not_converged():
    with jax.enable_x64(True):
        res = _solve(_rosenbrock, [-1.2, 1.0], [-2.0, -2.0], [2.0, 2.0], max_steps=3)
    assert int(res.steps) == 3 and int(res.status) == Status.MAX_STEPS and not bool(res.converged)
    assert float(res.cost) < 0.5 * float(jnp.sum(_rosenbrock(jnp.array([-1.2, 1.0])) ** 2))  # it did descend


def test_non_finite_start_is_reported():
    res = _solve(lambda th: jnp.log(th) - 1.0, [0.0], [0.0], [5.0])  # log 0 = -inf at the start
    assert int(res.status) == Status.NON_FINITE and not bool(res.converged) and int(res.steps) == 0
    assert float(res.x[0]) == 0.0


def test_vmap_over_starts_equals_single_solves():
    """A masked while_loop: each member of a vmapped batch stops at its own step, as if solved alone."""
    residual = _mixture_residual()
    starts = np.array([[0.5, 3.25, 3.25], [0.2, 0.6, 5.0], [0.9, 2.0, 2.5]])
    with jax.enable_x64(True):
        batch = jax.jit(jax.vmap(lambda x: least_squares_box(residual, x, jnp.asarray(MIX_LB), jnp.asarray(MIX_UB))))(jnp.asarray(starts))
        singles = [_solve(residual, x0, MIX_LB, MIX_UB) for x0 in starts]
    assert len(set(np.asarray(batch.steps).tolist())) > 1  # the members did stop at different steps
    for i, one in enumerate(singles):
        for field in one._fields:
            np.testing.assert_allclose(np.asarray(getattr(batch, field))[i], np.asarray(getattr(one, field)), rtol=1e-12, err_msg=field)


def test_float32_converges():
    """float32: ftol/gtol of 1e-8 are below the cost's resolution; the solve ends by XTOL or GTOL at the
    float32 optimum instead of running out of steps."""
    res = _solve(_mixture_residual(), (MIX_LB + MIX_UB) / 2, MIX_LB.astype(np.float32), MIX_UB.astype(np.float32))
    assert res.x.dtype == jnp.float32
    assert bool(res.converged), res
    got = np.asarray(res.x, np.float64)
    got = got if got[0] < 0.5 else np.array([1 - got[0], got[2], got[1]])
    np.testing.assert_allclose(got, MIX, rtol=2e-3)


def test_looser_tolerances_stop_sooner():
    """ftol/xtol/gtol are the stopping rules: at 1e-3 the same solve stops sooner, at a higher cost."""
    with jax.enable_x64(True):
        tight = _solve(_rosenbrock, [-1.2, 1.0], [-2.0, -2.0], [2.0, 2.0])
        loose = _solve(_rosenbrock, [-1.2, 1.0], [-2.0, -2.0], [2.0, 2.0], ftol=1e-3, xtol=1e-3, gtol=1e-3)
    assert bool(tight.converged) and bool(loose.converged)
    assert int(loose.steps) < int(tight.steps) and float(tight.cost) <= float(loose.cost)


# ------------------------------------------------------------------------------ least_squares_scalar

SCALAR = {  # residual of a scalar, start, lower and upper bound
    "interior": (lambda a: jnp.exp(-a * X) - jnp.exp(-1.7 * X) + 0.05 * jnp.sin(7 * X), 3.0, 0.1, 5.0),
    "upper bound": (lambda a: jnp.exp(-a * X) - jnp.exp(-9.0 * X), 1.0, 0.1, 5.0),
    "lower bound": (lambda a: jnp.exp(-a * X) - jnp.exp(-0.01 * X), 1.0, 0.1, 5.0),
    # cost 6.0 at the minimum x = 1.47 (Gauss-Newton converges only linearly), 15.5 on the bound 0.1
    "large residual": (lambda a: jnp.sin(a * X) - 0.5 - jnp.cos(X), 1.0, 0.1, 3.0),
}


def _solve_scalar(residual, x0, lb, ub, dtype=np.float64, **kw):
    lb, ub = jnp.asarray(lb, dtype), jnp.asarray(ub, dtype)
    return jax.jit(lambda x: least_squares_scalar(residual, x, lb, ub, **kw))(jnp.asarray(x0, dtype))


@pytest.mark.parametrize("name", list(SCALAR))
def test_scalar_cost_no_worse_than_scipy_bounded(name):
    """The local minimum downhill from the start, to scipy's bounded Brent at xatol = 1e-12 (float64):
    same cost to rounding, inside the box, converged in few steps (Newton with the exact second derivative)."""
    residual, x0, lb, ub = SCALAR[name]
    with jax.enable_x64(True):
        res = _solve_scalar(residual, x0, lb, ub)
        cost = lambda a: 0.5 * float(np.sum(np.asarray(residual(jnp.asarray(a))) ** 2))  # noqa: E731
        # scipy searches the whole box: on the multimodal case, only the start's basin [1, 3].
        want = minimize_scalar(cost, bounds=(x0, ub) if name == "large residual" else (lb, ub), method="bounded",
                               options={"xatol": 1e-12})
    assert bool(res.converged) and int(res.status) in CONVERGED, (name, res)
    assert float(res.cost) <= want.fun * (1 + 1e-9) + 1e-15, (name, float(res.cost), want.fun)
    assert lb <= float(res.x) <= ub and int(res.steps) <= 10
    if name.endswith("bound"):  # exactly on the bound, with a zero projected gradient
        assert float(res.x) == (ub if name.startswith("upper") else lb) and float(res.grad_norm) == 0.0


def test_scalar_float32_converges_to_the_float64_minimum():
    """float32: 64 eps (not 1e-8) bounds the attainable step; the solve still converges, near float64's x."""
    residual, x0, lb, ub = SCALAR["large residual"]
    res32 = _solve_scalar(residual, x0, lb, ub, np.float32)
    with jax.enable_x64(True):
        res64 = _solve_scalar(residual, x0, lb, ub)
    assert res32.x.dtype == jnp.float32 and bool(res32.converged), res32
    np.testing.assert_allclose(float(res32.x), float(res64.x), rtol=1e-5)  # measured 2e-7


def test_scalar_step_budget_and_non_finite_start_are_reported():
    residual, x0, lb, ub = SCALAR["interior"]
    with jax.enable_x64(True):
        budget = _solve_scalar(residual, x0, lb, ub, max_steps=1)
        bad = _solve_scalar(lambda a: jnp.log(a - 1.0) * jnp.ones(3), 1.0, 1.0, 5.0)  # log 0 at the start
    assert int(budget.status) == Status.MAX_STEPS and not bool(budget.converged) and int(budget.steps) == 1
    assert int(bad.status) == Status.NON_FINITE and not bool(bad.converged) and int(bad.steps) == 0


def test_scalar_point_box_returns_its_point():
    """lb = ub: nothing to solve; the point itself, converged (GTOL), without a step."""
    residual = SCALAR["interior"][0]
    with jax.enable_x64(True):
        res = _solve_scalar(residual, 3.0, 2.0, 2.0)
    assert float(res.x) == 2.0 and int(res.status) == Status.GTOL and bool(res.converged) and int(res.steps) == 0


@pytest.mark.parametrize("lb, ub, want", [(-2.0, 2.0, 1.0), (-2.0, 3.0, -1.0), (-3.0, 2.0, 1.0)])
def test_scalar_start_at_a_maximum_goes_downhill(lb, ub, want):
    """cost = (x^2 - 1)^2 / 2 from x0 = 0, its maximum (cost' = 0): it was returned as GTOL, converged. It now
    goes to the minimum on the side of the end of lower cost (x = 1 on a symmetric box: the tie goes up)."""
    sol = least_squares_scalar(lambda x: jnp.atleast_1d(x**2 - 1.0), 0.0, lb, ub)
    assert bool(sol.converged) and float(sol.cost) < 1e-10
    np.testing.assert_allclose(float(sol.x), want, atol=1e-5)  # float32 solve to xtol near |x| = 1


def test_scalar_vmap_equals_single_solves():
    residual, _, lb, ub = SCALAR["large residual"]
    starts = np.array([1.0, 1.3, 2.5])
    with jax.enable_x64(True):
        batch = jax.jit(jax.vmap(lambda x: least_squares_scalar(residual, x, jnp.asarray(lb), jnp.asarray(ub))))(jnp.asarray(starts))
        singles = [_solve_scalar(residual, x0, lb, ub) for x0 in starts]
    for i, one in enumerate(singles):
        for field in one._fields:
            np.testing.assert_allclose(np.asarray(getattr(batch, field))[i], np.asarray(getattr(one, field)), rtol=1e-12, err_msg=field)


def test_scalar_plateau_above_the_start_is_not_a_minimum():
    """Gaussians fitted to a bump: far from the data the model underflows to 0, so cost' = 0 exactly at the
    far bound, where the cost is far above the start's. That bound used to be returned as the minimum
    (GTOL: PUB-Kernel's sigma^2 at 4x or 1/4 of the truth on tall matrices); the solve must find the bump."""
    x = jnp.linspace(-1.0, 1.0, 401)
    data = jnp.exp(-0.5 * ((x - 0.3) / 0.05) ** 2)
    res = lambda a: jnp.exp(-0.5 * ((x - a) / 0.05) ** 2) - data  # noqa: E731
    for lb, ub in ((0.0, 20.0), (-20.0, 0.5)):  # the far bound on either side of the start
        start = 0.28 if ub > 1 else 0.32
        _, g_far = jax.value_and_grad(lambda a: 0.5 * jnp.sum(res(a) ** 2))(jnp.float32(ub if ub > 1 else lb))
        assert float(g_far) == 0.0  # the plateau this test is about
        sol = least_squares_scalar(res, start, lb, ub)
        assert bool(sol.converged) and abs(float(sol.x) - 0.3) < 1e-3, (lb, ub, float(sol.x))
        assert float(sol.cost) <= 0.5 * float(jnp.sum(res(jnp.float32(start)) ** 2))
