r"""Box-constrained nonlinear least squares to a tolerance: :func:`least_squares_box` (projected
Levenberg-Marquardt, described here) and, for one parameter, :func:`least_squares_scalar` (bracketed Newton).

Minimises ``0.5 ||r(x)||^2`` subject to ``lb <= x <= ub``. Variables are rescaled to the unit box
``y = (x - lb) / (ub - lb)``, so parameters of different units are treated alike. Each step solves the
damped linear least-squares subproblem on the free variables ``F`` for the velocity ``v``,

.. math::  \begin{bmatrix} J_F \\ \sqrt{\mu}\, I \end{bmatrix} v_F \simeq
           -\begin{bmatrix} r \\ 0 \end{bmatrix},
           \qquad \mu = \lambda \max_j \|J_j\|^2,

by a QR factorisation of the stacked matrix (never the normal equations ``J^T J + mu I``, whose
condition number is the square of ``J``'s: the Jacobian is rank deficient at the symmetric starting
point of PDBLS), and, with the same factors, the geodesic acceleration ``a`` from the right-hand side
``-[r_vv; 0]``, where ``r_vv = d^2/ds^2 r(y + s v) = sum_jk T_jk v_j v_k`` at ``s = 0``, with
``T_jk = d^2 r / dy_j dy_k``. ``J`` and ``T`` come from the caller's ``derivatives`` (closed forms, as
PDBLS passes) or from forward-mode automatic differentiation of ``residual``.
The trial point is ``y+ = clip(y + v + a / 2, 0, 1)``; it is accepted when the cost decreases and
``2 ||a|| <= 0.75 ||v||``. The acceleration follows curved valleys of the cost, where plain
Levenberg-Marquardt crawls (PDBLS on eigenvalues of order ``1e-3``). A variable on a bound whose
gradient ``g = J^T r`` points out of the box is held fixed (the projected-gradient active set). The
damping follows the gain ratio ``rho = (cost - cost+) / (cost - 0.5 ||r + J v'||^2)`` with
``v' = clip(y + v) - y`` (Nielsen's rule: ``lambda`` times ``max(1/3, 1 - (2 rho - 1)^3)`` after a
success, times ``nu = 2, 4, 8, ...`` after successive failures).

Convergence, with the tolerances of scipy's ``least_squares`` (``ftol = xtol = gtol = 1e-8``):

* ``GTOL``: ``max_{j in F} |J_j^T r| / (||J_j|| ||r||) <= gtol``: the residual is orthogonal to every
  free Jacobian column to ``gtol`` (MINPACK's scale-free form of the test, where scipy bounds the
  gradient's absolute size; an exact fit ``r = 0`` passes);
* ``FTOL``: an accepted step with ``rho > 1/4`` lowered the cost by less than ``ftol * cost``;
* ``XTOL``: a trial step (accepted or not) shorter than ``xtol (xtol + ||y||)``; this is how a problem
  whose cost is flat to rounding ends (e.g. in float32, where ``1e-8`` is below the cost's resolution).

Each test certifies a first-order point only, and a least-squares cost can be stationary at a saddle:
PDBLS started at ``t = 1/2, sigma1_sq = sigma2_sq`` descends along the single-bulk manifold
``sigma1_sq = sigma2_sq``, which every Gauss-Newton step leaves invariant, to a point that is a saddle
of the two-bulk problem. So a point that passes a test is also checked at second order: when the exact
Hessian ``H = J^T J + sum_i r_i nabla^2 r_i`` on the free variables has an eigenvalue below
``-sqrt(eps) max_j ||J_j||^2``, the solver moves to the lowest of the points ``y +- 2^-k w``
(``k = 0..15``, clipped to the box) along its eigenvector ``w`` if that lowers the cost, and resumes.
A point that passes a test and has no such descent direction ends the solve with ``converged = True``;
otherwise the solve ends after ``max_steps`` steps (an escape counts as one) with ``converged = False``
(status ``MAX_STEPS``).

Two nested ``lax.while_loop``: Levenberg-Marquardt steps to a first-order point inside, the
second-order check (a Hessian and its ``eigh``) once per such point outside. Both run under ``jit`` and
``vmap`` (a batch of problems or starting points runs until its slowest member stops; finished members
are frozen). This is the bounded problem
that scipy's ``curve_fit(..., bounds=...)`` solves with its trust-region-reflective method, with the
same stopping rules.

References:
  Moré (1978), "The Levenberg-Marquardt algorithm: implementation and theory" (QR of the augmented
  system, MINPACK's ``gtol``).
  Nielsen (1999), "Damping parameter in Marquardt's method", IMM-REP-1999-05, DTU.
  Transtrum & Sethna (2012), "Improvements to the Levenberg-Marquardt algorithm for nonlinear
  least-squares minimization", arXiv:1201.5885 (geodesic acceleration, ``2 ||a|| / ||v|| <= 0.75``).
  Kanzow, Yamashita & Fukushima (2004), "Levenberg-Marquardt methods with strong local convergence
  properties for solving nonlinear equations with convex constraints", JCAM 172 (projected LM).
  Nocedal & Wright (2006), "Numerical Optimization", 2nd ed., section 4.3 (negative curvature).
"""

from __future__ import annotations

import enum
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

__all__ = ["BoxLSQResult", "Status", "least_squares_box", "least_squares_scalar"]

_LAMBDA_RANGE = (1e-12, 1e12)  # bounds of the relative damping lambda
_GEODESIC_RATIO = 0.75  # largest accepted 2 ||a|| / ||v||
_ESCAPE_STEPS = 16  # trial lengths 2^-k, k = 0..15, along a direction of negative curvature
_RUNNING = -1


class Status(enum.IntEnum):
    """Why :func:`least_squares_box` stopped (scipy ``least_squares`` numbering for 0-3)."""

    MAX_STEPS = 0  # the step budget ran out: not converged
    GTOL = 1  # the residual is orthogonal to the free Jacobian columns
    FTOL = 2  # relative cost reduction below ftol
    XTOL = 3  # step below xtol
    NON_FINITE = 4  # the residual at the starting point is not finite: not converged


class BoxLSQResult(NamedTuple):
    """Solution of :func:`least_squares_box` (a pytree; every field gains the ``vmap`` axes).

    Attributes:
      x: the last accepted point, inside ``[lb, ub]``.
      cost: ``0.5 ||r(x)||^2``.
      grad_norm: infinity norm of the projected gradient at ``x``, in unit-box coordinates.
      steps: iterations taken (int32), at most ``max_steps``.
      converged: ``status`` is ``GTOL``, ``FTOL`` or ``XTOL`` (a local minimum: no descent direction of
        negative curvature was left).
      status: :class:`Status` code (int32).
    """

    x: jax.Array
    cost: jax.Array
    grad_norm: jax.Array
    steps: jax.Array
    converged: jax.Array
    status: jax.Array


class _State(NamedTuple):
    y: jax.Array  # point in unit-box coordinates
    r: jax.Array  # residual at y
    cost: jax.Array
    lam: jax.Array  # relative damping
    nu: jax.Array  # growth factor of lam after a failure
    steps: jax.Array
    status: jax.Array  # _RUNNING or a Status


def _unit_box(x0, lb, ub):
    """``(dtype, lb, width, y0)``: the common float dtype, ``x = lb + y * width`` with ``width = ub - lb``
    (0 where ``lb = ub``: that variable is held at ``lb``), and the start ``x0`` clipped into ``y in [0, 1]``."""
    dtype = jnp.result_type(x0, lb, ub, float)
    x0, lb, ub = (jnp.asarray(v, dtype) for v in (x0, lb, ub))
    width = jnp.where(ub > lb, ub - lb, 0.0)
    y0 = jnp.clip((x0 - lb) / jnp.where(width > 0, width, 1.0), 0.0, 1.0) * (width > 0)
    return dtype, lb, width, y0


def least_squares_box(
    residual: Callable[[jax.Array], jax.Array],
    x0: jax.Array,
    lb: jax.Array,
    ub: jax.Array,
    max_steps: int = 100,
    damping0: float = 1e-3,
    *,
    ftol: float = 1e-8,
    xtol: float = 1e-8,
    gtol: float = 1e-8,
    derivatives: Callable[[jax.Array], tuple[jax.Array, jax.Array]] | None = None,
) -> BoxLSQResult:
    """Solve ``min 0.5 ||residual(x)||^2`` on the box ``[lb, ub]`` from ``x0`` (one problem).

    ``residual`` maps a parameter vector of shape ``(n,)`` to residuals of shape ``(m,)``; non-finite
    residuals count as an infinite cost (the step is rejected). ``derivatives(x)``, when given, returns
    the residual's exact Jacobian ``(m, n)`` and second derivatives ``(m, n, n)`` at ``x`` (other shapes:
    ``ValueError``); otherwise both come from ``jax.jacfwd``. ``damping0`` is the initial relative
    damping ``lambda``; ``max_steps`` caps the iterations. A variable with ``lb = ub`` is held there.
    ``vmap`` over problems or starts.
    """
    dtype, lb, width, y0 = _unit_box(x0, lb, ub)  # lb = ub fixes a variable: a zero Jacobian column, no step
    eps = jnp.finfo(dtype).eps
    if derivatives is not None:  # shapes only (traced once, nothing runs)
        (m,), (n,) = jax.eval_shape(residual, lb).shape, lb.shape
        got = tuple(v.shape for v in jax.eval_shape(derivatives, lb))
        if got != ((m, n), (m, n, n)):
            raise ValueError(f"derivatives must return the residual's Jacobian {(m, n)} and second derivatives "
                             f"{(m, n, n)}; got shapes {got}")

    def unit_residual(y):
        return residual(lb + y * width)

    def cost_of(r):
        c = 0.5 * jnp.sum(r**2)
        return jnp.where(jnp.isfinite(c), c, jnp.inf)

    def unit_cost(y):
        return cost_of(unit_residual(y))

    def fixed_set(y, g):
        return ((y <= 0) & (g > 0)) | ((y >= 1) & (g < 0))

    def unit_derivatives(y):
        """``(J, T)`` in unit-box coordinates (chain rule: ``dx_j / dy_j = width_j``)."""
        x = lb + y * width
        if derivatives is None:
            jac_x = jax.jacfwd(residual)
            jac, curv = jac_x(x), jax.jacfwd(jac_x)(x)
        else:
            jac, curv = derivatives(x)
        return jac * width, curv * width[:, None] * width[None, :]

    def velocity_acceleration(jac, curv, r, free, mu):
        """``v`` and ``a`` from one QR of ``[J_F; sqrt(mu) I]`` (fixed variables get 0)."""
        n = jac.shape[1]
        aug = jnp.concatenate([jnp.where(free[None, :], jac, 0.0), jnp.sqrt(mu) * jnp.eye(n, dtype=dtype)])
        q, upper = jnp.linalg.qr(aug)

        def solve(b):
            rhs = jnp.concatenate([-b, jnp.zeros(n, dtype)])
            return jnp.where(free, jax.scipy.linalg.solve_triangular(upper, q.T @ rhs), 0.0)

        v = solve(r)
        r_vv = jnp.einsum("ijk,j,k->i", curv, v, v)
        return v, solve(r_vv)

    def escape(y, r, cost):
        """Lowest point along the most negative curvature direction of the exact Hessian on ``F`` (``r``, ``cost``: at ``y``)."""
        jac, curv = unit_derivatives(y)
        free = ~fixed_set(y, jac.T @ r)
        jac_scale = jnp.max(jnp.sum(jac**2, axis=0))
        hess = jac.T @ jac + jnp.einsum("i,ijk->jk", r, curv)  # nabla^2 (0.5 ||r||^2)
        hess = jnp.where(free[:, None] & free[None, :], hess, 0.0) + jnp.diag(jnp.where(free, 0.0, jac_scale + 1))
        evals, evecs = jnp.linalg.eigh(hess)
        length = 2.0 ** -jnp.arange(_ESCAPE_STEPS, dtype=dtype)
        trials = jnp.clip(y + jnp.concatenate([length, -length])[:, None] * evecs[:, 0], 0.0, 1.0)
        costs = jax.vmap(unit_cost)(trials)
        best = jnp.argmin(costs)
        found = (evals[0] < -jnp.sqrt(eps) * jac_scale) & (costs[best] < cost)
        return found, trials[best], costs[best]

    def lm_body(s: _State) -> _State:
        jac, curv = unit_derivatives(s.y)
        g = jac.T @ s.r
        free = ~fixed_set(s.y, g)
        col = jnp.linalg.norm(jac, axis=0)
        denom = col * jnp.sqrt(2 * s.cost)
        cosine = jnp.max(jnp.where(free & (denom > 0), jnp.abs(g) / jnp.where(denom > 0, denom, 1.0), 0.0))
        gtol_ok = (cosine <= gtol) | (s.cost == 0)

        mu = s.lam * jnp.maximum(jnp.max(col**2), jnp.finfo(dtype).tiny)
        v, a = velocity_acceleration(jac, curv, s.r, free, mu)
        y_try = jnp.clip(s.y + v + 0.5 * a, 0.0, 1.0)
        r_try = unit_residual(y_try)
        cost_try = cost_of(r_try)
        predicted = s.cost - 0.5 * jnp.sum((s.r + jac @ (jnp.clip(s.y + v, 0.0, 1.0) - s.y)) ** 2)
        actual = s.cost - cost_try
        rho = jnp.where(predicted > 0, actual / jnp.where(predicted > 0, predicted, 1.0), 0.0)
        accept = (actual > 0) & (2 * jnp.linalg.norm(a) <= _GEODESIC_RATIO * jnp.linalg.norm(v))
        ftol_ok = accept & (actual < ftol * s.cost) & (rho > 0.25)
        xtol_ok = jnp.linalg.norm(y_try - s.y) < xtol * (xtol + jnp.linalg.norm(s.y))

        take = accept & ~gtol_ok
        lam = jnp.where(accept, s.lam * jnp.maximum(1 / 3, 1 - (2 * rho - 1) ** 3), s.lam * s.nu)
        code = jnp.where(gtol_ok, Status.GTOL, jnp.where(ftol_ok, Status.FTOL, jnp.where(xtol_ok, Status.XTOL, _RUNNING)))
        return _State(
            y=jnp.where(take, y_try, s.y),
            r=jnp.where(take, r_try, s.r),
            cost=jnp.where(take, cost_try, s.cost),
            lam=jnp.clip(lam, *_LAMBDA_RANGE).astype(dtype),
            nu=jnp.where(accept, 2.0, 2 * s.nu).astype(dtype),
            steps=s.steps + 1,
            status=code.astype(jnp.int32),
        )

    def running(s: _State):
        return (s.status == _RUNNING) & (s.steps < max_steps)

    def solve_and_check(s: _State) -> _State:
        """Levenberg-Marquardt to a first-order point, then one second-order check (may resume)."""
        s = lax.while_loop(running, lm_body, s)
        stationary = (s.status == Status.GTOL) | (s.status == Status.FTOL) | (s.status == Status.XTOL)
        found, y_esc, cost_esc = escape(s.y, s.r, s.cost)
        escaped = stationary & found & (s.steps < max_steps)
        return _State(
            y=jnp.where(escaped, y_esc, s.y),
            r=jnp.where(escaped, unit_residual(y_esc), s.r),
            cost=jnp.where(escaped, cost_esc, s.cost),
            lam=jnp.where(escaped, damping0, s.lam).astype(dtype),
            nu=jnp.where(escaped, 2.0, s.nu).astype(dtype),
            steps=s.steps + escaped.astype(jnp.int32),
            status=jnp.where(escaped, _RUNNING, s.status).astype(jnp.int32),
        )

    r0 = unit_residual(y0)
    cost0 = cost_of(r0)
    status0 = jnp.where(jnp.isfinite(cost0), _RUNNING, Status.NON_FINITE).astype(jnp.int32)
    # Every field of the state depends on the start, so that under vmap the loops' state is batched from
    # the first step: JAX batches a loop body again each time a field of its state turns out batched, and
    # now does so fewer times (PDBLS: 4 batchings of its loops instead of 6; tracing, not the arithmetic).
    one = jnp.where(status0 == _RUNNING, 1.0, 1.0).astype(dtype)
    state0 = _State(y0, r0, cost0, damping0 * one, 2 * one, (0 * status0).astype(jnp.int32), status0)
    out = lax.while_loop(running, solve_and_check, state0)
    status = jnp.where(out.status == _RUNNING, Status.MAX_STEPS, out.status).astype(jnp.int32)
    g = unit_derivatives(out.y)[0].T @ out.r
    grad_norm = jnp.max(jnp.abs(jnp.where(fixed_set(out.y, g), 0.0, g)))
    converged = (status == Status.GTOL) | (status == Status.FTOL) | (status == Status.XTOL)
    return BoxLSQResult(lb + out.y * width, out.cost, grad_norm, out.steps, converged, status)


class _Scalar(NamedTuple):
    y: jax.Array  # point in unit-box coordinates
    lo: jax.Array  # bracket of the minimiser: cost' < 0 at lo (or lo = 0), > 0 at hi (or hi = 1)
    hi: jax.Array
    cost: jax.Array
    g: jax.Array  # d cost / dy
    h: jax.Array  # d^2 cost / dy^2
    steps: jax.Array
    status: jax.Array


def least_squares_scalar(
    residual: Callable[[jax.Array], jax.Array], x0: jax.Array, lb: jax.Array, ub: jax.Array, max_steps: int = 60,
    *, xtol: float = 1e-8,
) -> BoxLSQResult:
    r"""Solve ``min 0.5 ||residual(x)||^2`` over a scalar ``x`` in ``[lb, ub]`` (one problem; ``vmap`` it).

    Safeguarded Newton on the derivative of the cost (``rtsafe``: Newton inside a bracket, bisection
    where Newton would leave it or the curvature is not positive). With ``y = (x - lb) / (ub - lb)``,
    ``cost' = r . r_y`` and ``cost'' = r_y . r_y + r . r_yy`` come from one forward-over-forward ``jvp``
    of the residual: the exact second derivative, so the iteration converges quadratically also where
    the residual at the minimum is not small (where Gauss-Newton, and so :func:`least_squares_box`,
    converges only linearly). Downhill from the start ``y0`` lies one end ``e`` of the box (from a maximum,
    ``cost' = 0`` and ``cost'' < 0``, the end of the lower cost): if ``cost'``
    points out of the box there, that bound is the minimum (status ``GTOL``: the projected gradient
    vanishes); otherwise ``y0`` and ``e`` bracket a stationary point, which stays bracketed by the sign of
    ``cost'`` at each iterate (a local solve from ``y0``, like :func:`least_squares_box`'s). A point whose
    cost is above the start's lies past the first minimum downhill from ``y0``, whatever ``cost'`` says
    there (a plateau where the model underflows, e.g. Gaussians far from the data, has ``cost' = 0``; a
    multimodal cost can point anywhere): it closes the bracket from the far side and is never returned,
    so the end ``e`` is the minimum only at a cost no higher than the start's. The solve
    stops with ``XTOL`` when the last step, the next Newton step or the bracket is shorter than
    ``tol (tol + |y|)`` with ``tol = max(xtol, 64 eps)`` (``eps`` of the dtype: the rounding of ``cost'``
    limits the attainable step in float32), with ``GTOL`` when ``cost' = 0``, otherwise after
    ``max_steps`` steps (``MAX_STEPS``); a non-finite cost at the start is ``NON_FINITE``, and a solve
    that ends on a non-finite cost has not converged. ``grad_norm`` is ``|cost'|`` in unit coordinates
    (0 on an active bound).

    ``x0``, ``lb`` and ``ub`` are scalars; the result's ``x`` is a scalar in ``[lb, ub]`` (``lb`` itself, with
    ``GTOL`` and no step, when ``lb = ub``).

    Example (a decay rate whose data are not an exact exponential, so the residual at the minimum is not 0):

    >>> import jax.numpy as jnp
    >>> t = jnp.linspace(0.0, 3.0, 40)
    >>> data = jnp.exp(-1.7 * t) + 0.05 * jnp.sin(7 * t)
    >>> sol = least_squares_scalar(lambda a: jnp.exp(-a * t) - data, 3.0, 0.1, 5.0)
    >>> round(float(sol.x), 2), bool(sol.converged), Status(int(sol.status)).name
    (1.69, True, 'XTOL')
    """
    dtype, lb, width, y0 = _unit_box(x0, lb, ub)  # a point box: cost' = 0 at the start, which is returned
    tol = max(xtol, 64 * float(jnp.finfo(dtype).eps))
    zero, one = jnp.zeros((), dtype), jnp.ones((), dtype)

    def derivatives(y):
        """``(cost, cost', cost'')`` at ``y``; a non-finite cost is ``inf`` (its derivatives NaN)."""
        unit = lambda z: residual(lb + z * width)  # noqa: E731
        (r, r_y), (_, r_yy) = jax.jvp(lambda z: jax.jvp(unit, (z,), (one,)), (y,), (one,))
        cost = 0.5 * jnp.sum(r**2)
        return jnp.where(jnp.isfinite(cost), cost, jnp.inf), jnp.sum(r * r_y), jnp.sum(r_y**2) + jnp.sum(r * r_yy)

    def body(s: _Scalar) -> _Scalar:
        newton = s.y - s.g / jnp.where(s.h > 0, s.h, 1.0)
        use_newton = (s.h > 0) & (newton > s.lo) & (newton < s.hi)
        y = jnp.where(use_newton, newton, 0.5 * (s.lo + s.hi))
        cost, g, h = derivatives(y)
        past = ~(cost <= cost0)  # above the start's cost (or NaN): beyond the minimum, on e's side
        side = jnp.where(past, away, g)
        lo, hi = jnp.where(side < 0, y, s.lo), jnp.where(side > 0, y, s.hi)
        close = tol * (tol + jnp.abs(y))
        small = (jnp.abs(y - s.y) <= close) | ((h > 0) & (jnp.abs(g) <= h * close))
        small = (hi - lo <= tol) | (small & ~past)
        code = jnp.where((g == 0) & ~past, Status.GTOL, jnp.where(small, Status.XTOL, _RUNNING))
        return _Scalar(y, lo, hi, cost, g, h, s.steps + 1, code.astype(jnp.int32))

    def running(s: _Scalar):
        return (s.status == _RUNNING) & (s.steps < max_steps)

    cost0, g0, h0 = derivatives(y0)
    ends = [derivatives(zero), derivatives(one)]
    # At a maximum (cost' = 0, cost'' < 0) both sides are downhill: the side of the lower end is taken.
    top = (g0 == 0) & (h0 < 0)
    slope = jnp.where(top, jnp.where(ends[1][0] <= ends[0][0], -one, one), g0)  # the sign that cost' acts with at y0
    # Downhill from y0 lies the end e (1 if cost'(y0) < 0, else 0): if cost' there points out of the box,
    # that bound is the minimum; otherwise [y0, e] (or [e, y0]) brackets one.
    e = jnp.where(slope < 0, one, zero)
    away = jnp.where(slope < 0, one, -one)  # the sign of cost' past the minimum, towards e
    cost_e, g_e, h_e = (jnp.where(slope < 0, b, a) for a, b in zip(*ends))
    on_bound = jnp.where(slope < 0, g_e <= 0, g_e >= 0) & (cost_e <= cost0) & (slope != 0) & jnp.isfinite(cost0)
    status0 = jnp.where(~jnp.isfinite(cost0), Status.NON_FINITE, jnp.where((slope == 0) | on_bound, Status.GTOL, _RUNNING))
    s0 = _Scalar(
        y=jnp.where(on_bound, e, y0), lo=jnp.where(slope < 0, y0, zero), hi=jnp.where(slope > 0, y0, one),
        cost=jnp.where(on_bound, cost_e, cost0), g=jnp.where(on_bound, zero, g0), h=jnp.where(on_bound, h_e, h0),
        steps=jnp.zeros((), jnp.int32), status=status0.astype(jnp.int32),
    )
    out = lax.while_loop(running, body, s0)
    # Ended on a point past the minimum (the bracket closed on it): the bracket's other end, within tol, is the answer.
    past = ~(out.cost <= cost0)
    y_end = jnp.where(past, jnp.where(away > 0, out.lo, out.hi), out.y)
    cost_end, g_end, _ = derivatives(y_end)
    out = out._replace(y=y_end, cost=jnp.where(past, cost_end, out.cost), g=jnp.where(past, g_end, out.g))
    status = jnp.where(out.status == _RUNNING, Status.MAX_STEPS, out.status).astype(jnp.int32)
    converged = ((status == Status.GTOL) | (status == Status.XTOL)) & jnp.isfinite(out.cost)
    return BoxLSQResult(lb + out.y * width, out.cost, jnp.abs(out.g), out.steps, converged, status)
