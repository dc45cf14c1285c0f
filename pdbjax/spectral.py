r"""Spectral core of the PDB model: Stieltjes transform, density, edges, spike map, moments.

Conventions (``shared/spec/pdb-model.md`` sections 1-5). A weight matrix ``W`` is ``N x p`` with
``p <= N`` and ``c = p / N``; its eigenvalues are ``lambda_j = s_j^2`` (squared singular values, no
``1/N``). The model is ``W = X Sigma^{1/2}`` with ``X`` i.i.d. of variance ``1/N``; the bulk population
law is the two-atom measure

.. math::  H = t\,\delta_{\sigma_1^2} + (1 - t)\,\delta_{\sigma_2^2},

and PUB (Marchenko-Pastur) is ``t = 1``. Everything here is a pure function of arrays: the population
fields, ``c`` and the evaluation points broadcast against each other with NumPy rules, so one call
evaluates many populations at once; all functions run under ``jit``/``vmap`` on CPU, GPU and TPU
(fixed iteration counts, no ``roots``/non-symmetric ``eig``). The dtype follows the inputs: call
with float64 arrays inside ``jax.enable_x64(True)`` for double precision.

Derivatives. Every public function is differentiable (``grad``, ``jacrev``, ``jvp``, ``jacfwd``, also
under ``jit``/``vmap``, in float32 and float64, and to second order) with respect to ``c``, ``t``,
``sigma1_sq``, ``sigma2_sq`` and its evaluation point (``z``, ``x``, ``alpha`` or ``lam``). The result
is the derivative of the function that the iterations converge to, not of the iterations:

* the roots found by bisection (critical points, the zero of ``g''`` that splits the gap between the
  atoms, the solution of ``g(alpha) = lam``) carry the implicit-function derivative
  ``d root = -(df/dtheta . d theta) / (df/dx)`` (:func:`_root`); the bracket only selects the root;
* :func:`stieltjes` carries the implicit derivative of the Silverstein equation,
  ``dm = -(dF/dtheta . d theta) / (dF/dm)`` (:func:`_silverstein_root`);
* :func:`moments` is a polynomial; :func:`density` follows from :func:`stieltjes`, and :func:`cdf`
  from its edges, quadrature nodes and density (it is the derivative of the quadrature).

Where a derivative does not exist the result is NaN, not a wrong number (``grad`` traces its
arguments, so it cannot raise):

* ``t`` at ``t = 0`` or ``t = 1`` when ``sigma1_sq != sigma2_sq``: moving ``t`` off the bound gives the
  other atom a small weight, which splits off a bulk of its own, so the support jumps. The
  ``t``-derivative of :func:`critical_points`, :func:`edges`, :func:`lambda_plus`, :func:`spike_map`,
  :func:`spike_inverse` and :func:`cdf` is NaN there, and it spreads as a NaN in a Jacobian does: in
  reverse mode (``grad``, ``jacrev``) to the whole ``t`` column, i.e. to every output differentiated
  in the same call; in forward mode (``jvp``, ``jacfwd``) to every derivative computed in the same
  call, unless ``t`` is not differentiated at all (a symbolic zero tangent, e.g. ``t`` closed over
  or not in ``argnums``). :func:`stieltjes`, :func:`density` and :func:`moments` are analytic in ``t``
  and give the one-sided derivative. With ``sigma1_sq == sigma2_sq`` (e.g. :meth:`PDB.pub`) ``H`` does
  not depend on ``t`` and its derivative is 0.
* At ``c = 1`` and ``t in {0, 1}`` (otherwise) the parameters cannot cross the bound: the derivative
  is the one-sided one (that of the analytic continuation).
* NaN outputs (padding, inadmissible points, invalid parameters) have zero derivative, and they
  contribute exactly zero to the derivative with respect to inputs shared with valid entries once
  masked out of a loss (``jnp.where(jnp.isfinite(y), y, 0)`` or ``jnp.nansum``).
* Some derivatives grow without bound: the middle critical points as two bulks merge
  (``g'' -> 0`` there), :func:`spike_inverse` next to an edge, :func:`density` within a few ``eta`` of an
  edge. At a double root itself (two bulks exactly touching) the gap roots are NaN outputs anyway and
  the root derivative is set to 0 there. :func:`density` has a kink at ``x = 0`` and :func:`cdf` in
  ``x`` at its quadrature nodes (linear interpolation).

Invalid input (``c`` outside ``(0, 1]``, a variance ``<= 0``, ``t`` outside ``[0, 1]``, non-finite values)
raises ``ValueError`` when the arguments are concrete; under ``jit`` (traced arguments) the affected
outputs are NaN instead.

References:
  Silverstein & Choi (1995), "Analysis of the limiting spectral distribution of large dimensional
  random matrices", J. Multivariate Anal. 54 (support theorem, eq. 1.6).
  Bai & Yao (2012), "On sample eigenvalues in a generalized spiked population model", JMVA 106.
  Wu, Zhu & Li (2025), "Weight matrices compression based on PDB model in deep neural networks", ICML.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.custom_derivatives import SymbolicZero

from pdbjax import exported
from pdbjax._validate import is_traced
from pdbjax.precision import float_dtype

Array = jax.Array
ArrayLike = jax.typing.ArrayLike

__all__ = [
    "PDB",
    "stieltjes",
    "density",
    "cdf",
    "critical_points",
    "edges",
    "lambda_plus",
    "spike_map",
    "spike_inverse",
    "moments",
    "silverstein_z",
    "silverstein_z_derivatives",
    "check_population",
]

_BISECT_ITERS = 96
_FIXED_ITERS = 32
_CONT_STAGES = 32
_NEWTON_ITERS = 3
_POLISH_ITERS = 4
_CUBIC_NEWTON = 3


@exported.register
class PDB(NamedTuple):
    r"""Bulk population ``H = t delta(sigma1_sq) + (1 - t) delta(sigma2_sq)`` (a pytree).

    Every field may carry batch dimensions; fields broadcast against each other.

    Attributes:
      t: weight of the first atom, in ``[0, 1]``.
      sigma1_sq: first population variance ``sigma_1^2 > 0`` (units of the eigenvalues).
      sigma2_sq: second population variance ``sigma_2^2 > 0``.
    """

    t: ArrayLike
    sigma1_sq: ArrayLike
    sigma2_sq: ArrayLike

    @classmethod
    def pub(cls, sigma_sq: ArrayLike) -> "PDB":
        """The PUB (Marchenko-Pastur) population ``H = delta(sigma_sq)``: ``t = 1``."""
        sigma_sq = jnp.asarray(sigma_sq)
        return cls(jnp.ones_like(sigma_sq), sigma_sq, sigma_sq)


# --------------------------------------------------------------------------------------------------
# Input handling


def _prepare(pop: PDB, c: ArrayLike, *points: ArrayLike):
    """Cast population, ratio and evaluation points to one float dtype and validate them.

    Returns ``(t, s1, s2, c, valid, *points)`` with ``valid`` a boolean mask of valid parameters, used
    to put NaN in the outputs under ``jit``. Invalid parameters are replaced by a harmless valid
    population (``t = 1/2``, ``s1 = s2 = 1``, ``c = 1/2``) before any computation, so that their
    masked outputs contribute exact zeros, not ``0 * NaN``, to the gradient of shared inputs. The
    atoms are not merged here: see :func:`_merge_atoms`.
    """
    real_points = [p for p in points if not jnp.iscomplexobj(p)]
    dtype = float_dtype(*pop, c, *real_points)
    t, s1, s2, c = (jnp.asarray(v, dtype) for v in (*pop, c))
    valid = (
        (c > 0) & (c <= 1) & (t >= 0) & (t <= 1) & (s1 > 0) & (s2 > 0)
        & jnp.isfinite(c) & jnp.isfinite(s1) & jnp.isfinite(s2)
    )
    if not is_traced(t, s1, s2, c):
        check_population(PDB(t, s1, s2), c)
    t, s1, s2, c = (jnp.where(valid, v, safe) for v, safe in ((t, 0.5), (s1, 1.0), (s2, 1.0), (c, 0.5)))
    cast = [jnp.asarray(p, jnp.result_type(dtype, 1j) if jnp.iscomplexobj(p) else dtype) for p in points]
    return (t, s1, s2, c, valid, *cast)


def check_population(pop: PDB, c: ArrayLike) -> None:
    """Raise ``ValueError`` naming the first invalid entry of a concrete population: ``c = p / N`` in
    ``(0, 1]``, ``t`` in ``[0, 1]``, ``sigma1_sq`` and ``sigma2_sq`` finite and positive.

    Traced functions of this module cannot raise; they give NaN where these checks fail.

    >>> check_population(PDB(0.5, 1.0, 2.0), 0.25)  # valid: returns None
    >>> check_population(PDB(0.5, 1.0, -2.0), 0.25)
    Traceback (most recent call last):
    ValueError: sigma2_sq must be a finite positive variance; got -2.0
    """
    t, s1, s2, c = (np.asarray(v) for v in (*pop, c))
    checks = [
        (~((c > 0) & (c <= 1)), "c = p / N must lie in (0, 1]", c),
        (~((t >= 0) & (t <= 1)), "t must lie in [0, 1]", t),
        (~(np.isfinite(s1) & (s1 > 0)), "sigma1_sq must be a finite positive variance", s1),
        (~(np.isfinite(s2) & (s2 > 0)), "sigma2_sq must be a finite positive variance", s2),
    ]
    for bad, message, value in checks:
        if np.any(bad):
            first = np.asarray(value)[bad] if np.ndim(value) else value
            raise ValueError(f"{message}; got {float(np.ravel(first)[0])!r}")


def _nan_where_invalid(valid: Array, x: Array) -> Array:
    return jnp.where(valid, x, complex(jnp.nan, jnp.nan) if jnp.iscomplexobj(x) else jnp.nan)


def _merged_plain(t, s1, s2):
    """Degenerate atoms merged: ``t = 1`` uses ``sigma1_sq`` for both atoms, ``t = 0`` uses ``sigma2_sq``."""
    return jnp.where(t <= 0, s2, s1), jnp.where(t >= 1, s1, s2)


@jax.custom_jvp
def _merge_atoms(t, s1, s2):
    """:func:`_merged_plain` for the functions whose root brackets need distinct atoms or one atom.

    Its derivative with respect to ``t`` is NaN at ``t in {0, 1}`` when ``s1 != s2``: there an atom of
    weight ``0`` (or ``1 - t -> 0``) would split off a bulk of its own, so the support, critical points
    and spike maps jump and have no ``t``-derivative. A symbolic-zero ``t`` tangent (``t`` not being
    differentiated) leaves the other derivatives finite.
    """
    return _merged_plain(t, s1, s2)


@functools.partial(_merge_atoms.defjvp, symbolic_zeros=True)
def _merge_atoms_jvp(primals, tangents):
    t, s1, s2 = primals
    dt, ds1, ds2 = (jnp.zeros(jnp.shape(p), jnp.result_type(p)) if isinstance(d, SymbolicZero) else d
                    for p, d in zip(primals, tangents))
    d1, d2 = jnp.where(t <= 0, ds2, ds1), jnp.where(t >= 1, ds1, ds2)
    if not isinstance(tangents[0], SymbolicZero):
        jump = jnp.where(((t <= 0) | (t >= 1)) & (s1 != s2), jnp.nan, 0.0).astype(d1.dtype)
        d1, d2 = d1 + jump * dt, d2 + jump * dt
    out = _merge_atoms(t, s1, s2)
    return out, tuple(jnp.broadcast_to(d, o.shape).astype(o.dtype) for d, o in zip((d1, d2), out))


# --------------------------------------------------------------------------------------------------
# The map g (z as a function of alpha = -1/m) and its derivatives; roots with implicit derivatives


def _g(alpha, t, s1, s2, c):
    r"""``g(a) = a + c a [t s1 / (a - s1) + (1 - t) s2 / (a - s2)]``: inverse of ``-1/m`` on the real line."""
    return alpha + c * alpha * (t * s1 / (alpha - s1) + (1 - t) * s2 / (alpha - s2))


def _dg(alpha, t, s1, s2, c):
    r"""``g'(a) = 1 - c t s1^2 / (a - s1)^2 - c (1 - t) s2^2 / (a - s2)^2``, as squares of the scale-free
    ratios ``s / (a - s)`` (``s^2`` and ``(a - s)^2`` over- or underflow float32 for eigenvalues beyond 1e+-19)."""
    r1, r2 = s1 / (alpha - s1), s2 / (alpha - s2)
    return 1 - c * t * r1 * r1 - c * (1 - t) * r2 * r2


def _d2g(alpha, t, s1, s2, c):
    r"""``g''(a) = 2 c t s1^2 / (a - s1)^3 + 2 c (1 - t) s2^2 / (a - s2)^3``, from the same ratios (``(a - s)^3``
    overflows float32 from eigenvalues of 1e13)."""
    r1, r2 = s1 / (alpha - s1), s2 / (alpha - s2)
    return 2 * c * t * r1 * r1 / (alpha - s1) + 2 * c * (1 - t) * r2 * r2 / (alpha - s2)


def _g_minus(alpha, t, s1, s2, c, lam):
    """``g(alpha) - lam``: its zero is the population spike of a sample outlier ``lam``."""
    return _g(alpha, t, s1, s2, c) - lam


def _bisect(f, lo: Array, hi: Array, increasing: bool | Array) -> Array:
    """Root of ``f`` in ``(lo, hi)`` by a fixed number of bisection steps (f changes sign once)."""

    def body(_, bracket):
        lo, hi = bracket
        mid = 0.5 * (lo + hi)
        below = (f(mid) < 0) == increasing
        return jnp.where(below, mid, lo), jnp.where(below, hi, mid)

    lo, hi = lax.fori_loop(0, _BISECT_ITERS, body, (lo, hi))
    return 0.5 * (lo + hi)


@functools.partial(jax.custom_jvp, nondiff_argnums=(0, 1))
def _root(f, increasing: bool, lo: Array, hi: Array, *params: Array) -> Array:
    r"""Zero ``x`` of ``f(x, *params)`` in ``(lo, hi)`` by bisection, differentiable in ``params``.

    ``f`` is elementwise in ``x`` and changes sign once in the bracket (from negative to positive when
    ``increasing``). The bracket only selects the root and carries no derivative; the derivative is
    the implicit-function one, ``dx = -(df/dparams . dparams) / (df/dx)`` at the root (it is set to 0
    where ``df/dx`` is 0 or not finite, which happens only at roots whose output is masked, e.g. the
    gap roots of a merged bulk, or at a double root). ``f`` must be smooth at the returned ``x``
    (callers keep brackets away from the poles of ``g``). Works under ``jit``/``vmap`` and to any
    order (the rule calls :func:`_root` again).
    """
    shape = jnp.broadcast_shapes(jnp.shape(lo), jnp.shape(hi), *(jnp.shape(p) for p in params))
    lo, hi = jnp.broadcast_to(lo, shape), jnp.broadcast_to(hi, shape)
    return _bisect(lambda x: f(x, *params), lo, hi, increasing)


@_root.defjvp
def _root_jvp(f, increasing, primals, tangents):
    lo, hi, *params = primals
    x = _root(f, increasing, lo, hi, *params)
    dfdx = jax.jvp(lambda y: f(y, *params), (x,), (jnp.ones_like(x),))[1]
    dfdp = jax.jvp(lambda *p: f(x, *p), tuple(params), tuple(tangents[2:]))[1]
    ok = jnp.isfinite(dfdx) & (dfdx != 0)
    return x, jnp.where(ok, -1 / jnp.where(ok, dfdx, 1), 0) * dfdp


def _critical(t, s1, s2, c):
    """The real zeros of ``g'`` as ``(a1, a2, a3, a4, separated)`` (merged atoms, see :func:`_merge_atoms`).

    ``g'`` is decreasing on ``(0, s_lo)`` (from ``1 - c`` to ``-inf``), increasing on ``(s_hi, inf)`` and
    concave on ``(s_lo, s_hi)``, so there is one zero ``a1`` below ``s_lo``, one zero ``a4`` above
    ``s_hi`` (at most ``s_hi (1 + sqrt c)``), and two zeros ``a2 < a3`` between the atoms exactly when
    the maximum of ``g'`` there (at the zero ``a_max`` of ``g''``) is positive (two separated bulks).
    ``a2, a3`` are finite placeholders otherwise (mask them with ``separated``); with a single atom
    (``s1 == s2``) their bracket is moved off the pole to ``(3 s, 4 s)`` so that every root, and its
    derivative, stays finite.
    """
    s_lo, s_hi = jnp.minimum(s1, s2), jnp.maximum(s1, s2)
    params = (t, s1, s2, c)
    one_atom = s_hi <= s_lo
    gap_lo, gap_hi = jnp.where(one_atom, 3 * s_hi, s_lo), jnp.where(one_atom, 4 * s_hi, s_hi)
    a1 = _root(_dg, False, jnp.zeros_like(s_lo), s_lo, *params)
    a4 = _root(_dg, True, s_hi, s_hi * (1 + jnp.sqrt(c)), *params)
    a_max = _root(_d2g, False, gap_lo, gap_hi, *params)
    separated = ~one_atom & (_dg(a_max, *params) > 0)
    a2 = _root(_dg, True, gap_lo, a_max, *params)
    a3 = _root(_dg, False, a_max, gap_hi, *params)
    return a1, a2, a3, a4, separated


def _stack_sorted(values) -> Array:
    """Stack on a new last axis and sort ascending, NaN last."""
    return jnp.sort(jnp.stack(values, axis=-1), axis=-1)


# --------------------------------------------------------------------------------------------------
# Public functions


def critical_points(pop: PDB, c: ArrayLike) -> Array:
    r"""Real critical points ``alpha_i`` of ``g`` (zeros of ``g'``), ascending, NaN-padded to 4.

    They solve the quartic
    ``(a - s1)^2 (a - s2)^2 - c t s1^2 (a - s2)^2 - c (1 - t) s2^2 (a - s1)^2 = 0``
    (spec section 4). Two values for a merged bulk, four for two separated bulks.

    Differentiable with respect to ``c``, ``t``, ``sigma1_sq`` and ``sigma2_sq``: each ``alpha_i`` is a
    simple zero of ``g'``, so ``d alpha_i = -(d g' / d theta . d theta) / g''(alpha_i)``. NaN-padded
    entries carry no derivative. ``d alpha_2``, ``d alpha_3`` grow without bound as two separated bulks
    approach merging (``g''(alpha_{2,3}) -> 0``). The ``t``-derivative is NaN at ``t in {0, 1}`` when
    ``sigma1_sq != sigma2_sq``.

    Returns:
      Array of shape ``broadcast(pop, c).shape + (4,)``.
    """
    (_, _, _, _, valid), (a1, a2, a3, a4, separated) = _with_critical(pop, c)
    gap = [jnp.where(separated, a, jnp.nan) for a in (a2, a3)]
    return _nan_where_invalid(valid[..., None], _stack_sorted([a1, *gap, a4]))


def _with_critical(pop: PDB, c: ArrayLike, *points: ArrayLike):
    """``((t, s1, s2, c, valid, *points), (a1, a2, a3, a4, separated))``: the prepared arguments with merged
    atoms, and the critical points of ``g`` (finite placeholders for a merged bulk)."""
    t, s1, s2, c, valid, *points = _prepare(pop, c, *points)
    s1, s2 = _merge_atoms(t, s1, s2)
    return (t, s1, s2, c, valid, *points), _critical(t, s1, s2, c)


def _edge_values(t, s1, s2, c):
    """``(beta_1, beta_2, beta_3, beta_4, separated)`` with finite placeholders for a merged bulk."""
    a1, a2, a3, a4, separated = _critical(t, s1, s2, c)
    b1, b2, b3, b4 = (_g(a, t, s1, s2, c) for a in (a1, a2, a3, a4))
    return b1, b2, b3, b4, separated


def edges(pop: PDB, c: ArrayLike) -> Array:
    r"""Support edges ``beta_i = g(alpha_i)`` of the bulk law, ascending, NaN-padded to 4.

    ``[beta_1, beta_2]`` is a merged bulk; ``[beta_1, beta_2] U [beta_3, beta_4]`` two separated bulks
    (Silverstein-Choi). For ``t = 1`` this is the Marchenko-Pastur support
    ``sigma^2 (1 -+ sqrt c)^2``.

    Differentiable with respect to ``c``, ``t``, ``sigma1_sq`` and ``sigma2_sq``; since
    ``g'(alpha_i) = 0``, ``d beta_i = dg/dtheta (alpha_i) . d theta``. NaN-padded entries carry no
    derivative; the ``t``-derivative is NaN at ``t in {0, 1}`` when ``sigma1_sq != sigma2_sq``.

    Example (two separated bulks, variances 1 and 10 in equal shares, ``c = 0.1``):

    >>> import numpy as np
    >>> from pdbjax import PDB, edges
    >>> np.round(np.asarray(edges(PDB(0.5, 1.0, 10.0), 0.1)), 2)
    array([ 0.56,  1.43,  6.09, 15.03]...)
    """
    (t, s1, s2, c, valid), crit = _with_critical(pop, c)
    b1, b2, b3, b4 = (_g(a, t, s1, s2, c) for a in crit[:4])
    gap = [jnp.where(crit[4], b, jnp.nan) for b in (b2, b3)]
    return _nan_where_invalid(valid[..., None], _stack_sorted([b1, *gap, b4]))


def lambda_plus(pop: PDB, c: ArrayLike) -> Array:
    r"""The noise boundary ``lambda_+ = max_i beta_i = g(alpha_max)`` (upper edge of the bulk).

    Differentiable with respect to ``c``, ``t``, ``sigma1_sq`` and ``sigma2_sq``
    (``d lambda_+ = dg/dtheta (alpha_max) . d theta``); the ``t``-derivative is NaN at ``t in {0, 1}``
    when ``sigma1_sq != sigma2_sq``.

    Example (one bulk: Marchenko-Pastur's ``(1 + sqrt c)^2``):

    >>> from pdbjax import PDB, lambda_plus
    >>> float(lambda_plus(PDB.pub(1.0), 0.25))
    2.25
    """
    (t, s1, s2, c, valid), crit = _with_critical(pop, c)
    return _nan_where_invalid(valid, _g(crit[3], t, s1, s2, c))


def spike_map(alpha: ArrayLike, pop: PDB, c: ArrayLike) -> Array:
    r"""Sample location ``lambda = g(alpha)`` of a population spike ``alpha`` (Bai-Yao).

    A spike produces an outlier only where ``g'(alpha) > 0``: above the largest critical point
    (outlier above ``lambda_+``), between the two middle critical points of separated bulks (outlier
    in the gap), or below the smallest one when ``c < 1`` (outlier below the bulk). Elsewhere the spike
    is absorbed by the bulk and the result is NaN.

    Differentiable with respect to ``alpha``, ``c``, ``t``, ``sigma1_sq`` and ``sigma2_sq`` at admissible
    ``alpha`` (the admissible set only selects; ``d lambda = g'(alpha) d alpha + dg/dtheta . d theta``).
    NaN entries carry no derivative (and ``t`` at ``{0, 1}``: module docstring).
    """
    (t, s1, s2, c, valid, alpha), (a1, a2, a3, a4, separated) = _with_critical(pop, c, alpha)
    admissible = (alpha > a4) | (separated & (alpha > a2) & (alpha < a3)) | ((alpha > 0) & (alpha < a1))
    # Inadmissible alpha may sit on a pole of g: evaluate a finite stand-in there (double where).
    alpha = jnp.where(admissible, alpha, 2 * jnp.maximum(s1, s2))
    return _nan_where_invalid(valid & admissible, _g(alpha, t, s1, s2, c))


def spike_inverse(lam: ArrayLike, pop: PDB, c: ArrayLike) -> Array:
    r"""Population value ``alpha`` of a sample outlier ``lam``: the admissible root of ``g(alpha) = lam``.

    ``lam > lambda_+`` gives the root in ``(alpha_max, lam)``; ``lam`` in the gap ``(beta_2, beta_3)`` of
    separated bulks the root in ``(alpha_2, alpha_3)``; ``0 < lam < beta_1`` the root in
    ``(0, alpha_1)``. ``g`` is increasing on each interval, so the root is found by bisection. NaN where
    ``lam`` lies inside the support. PUB closed form:
    ``alpha = (lam + s (1 - c) + sqrt((lam + s (1 - c))^2 - 4 lam s)) / 2``.

    Differentiable with respect to ``lam``, ``c``, ``t``, ``sigma1_sq`` and ``sigma2_sq`` outside the
    support: ``d alpha = (d lam - dg/dtheta . d theta) / g'(alpha)`` (implicit function theorem; the
    interval only selects the root). It grows like ``1 / sqrt(lam - beta)`` next to an edge ``beta``.
    NaN entries carry no derivative (and ``t`` at ``{0, 1}``: module docstring).
    """
    (t, s1, s2, c, valid, lam), (a1, a2, a3, a4, separated) = _with_critical(pop, c, lam)
    g = lambda a: _g(a, t, s1, s2, c)  # noqa: E731
    above = lam > g(a4)
    in_gap = separated & (lam > g(a2)) & (lam < g(a3))
    below = (lam > 0) & (lam < g(a1))
    lo = jnp.where(above, a4, jnp.where(in_gap, a2, 0.0))
    hi = jnp.where(above, jnp.maximum(lam, a4), jnp.where(in_gap, a3, a1))
    root = _root(_g_minus, True, lo, hi, t, s1, s2, c, lam)
    return _nan_where_invalid(valid & (above | in_gap | below), root)


def stieltjes(z: ArrayLike, pop: PDB, c: ArrayLike) -> Array:
    r"""Companion Stieltjes transform ``m(z)`` of the ``N x N`` matrix ``W W^T`` (spec section 3).

    ``m`` is the Herglotz solution (``Im m > 0`` for ``Im z > 0``) of

    .. math::  z = -\frac{1}{m} + c \left[\frac{t s_1}{1 + s_1 m} + \frac{(1 - t) s_2}{1 + s_2 m}\right].

    Solved by the damped fixed point ``m <- (m + T(m)) / 2``, ``T(m) = -1 / (z - c \int \tau dH / (1 + \tau m))``
    at a height ``Im z >= max(s1, s2)`` where it contracts fast, then continued down to ``Im z`` along a
    geometric path with Newton steps on the same equation (a Newton step that leaves the upper half
    plane or does not reduce the residual is replaced by a fixed-point step, which stays Herglotz).
    A real ``z`` is treated as ``z + i 0^+`` (``Im z`` raised to ``1e-12 max(s1, s2)``).

    Differentiable with respect to ``z`` (holomorphic; for a real-valued loss differentiate
    ``m.real``/``m.imag``), ``c``, ``t``, ``sigma1_sq`` and ``sigma2_sq``, including ``t`` at ``0`` and
    ``1`` (the equation is polynomial in ``t``): ``dm = -(dF/dtheta . d theta) / (dF/dm)`` with ``F``
    the Silverstein equation at the computed root; the iteration is not differentiated.
    """
    t, s1, s2, c, valid, z = _prepare(pop, c, jnp.asarray(z) + 0j)
    return _nan_where_invalid(valid, _stieltjes(z, t, s1, s2, c))


def _population_term(m, t, s1, s2, c):
    r"""``c int tau dH(tau) / (1 + tau m) = c [t s1 / (1 + s1 m) + (1 - t) s2 / (1 + s2 m)]``."""
    return c * (t * s1 / (1 + s1 * m) + (1 - t) * s2 / (1 + s2 * m))


def silverstein_z(m: ArrayLike, t: ArrayLike, s1: ArrayLike, s2: ArrayLike, c: ArrayLike) -> Array:
    r"""The Silverstein equation solved for ``z`` (spec section 3): the one home of its formula.

    .. math::  z(m) = -\frac{1}{m} + c \left[\frac{t s_1}{1 + s_1 m} + \frac{(1 - t) s_2}{1 + s_2 m}\right].

    Its inverse is the companion Stieltjes transform ``m(z)`` (:func:`stieltjes`); on the real line,
    ``g(a) = z(-1/a)`` locates spikes and edges (:func:`spike_map`, :func:`edges`); PDBLS fits the
    population by least squares on ``u_i - z(m_n(u_i))`` (:func:`pdbjax.fit_pdb`). Elementwise, no
    validation (the callers validate), holomorphic in ``m``.

    >>> float(silverstein_z(-0.5, 1.0, 1.0, 1.0, 0.25))  # Marchenko-Pastur: -1/m + c / (1 + m)
    2.5
    """
    return -1 / m + _population_term(m, t, s1, s2, c)


def silverstein_z_derivatives(m: ArrayLike, t: ArrayLike, s1: ArrayLike, s2: ArrayLike, c: ArrayLike) -> tuple[Array, Array]:
    r"""First and second derivatives of :func:`silverstein_z` in the population ``theta = (t, s1, s2)``.

    With ``a_k = 1 / (1 + s_k m)``,

    .. math::  \partial_t z = c (s_1 a_1 - s_2 a_2), \quad \partial_{s_1} z = c\, t\, a_1^2, \quad
               \partial_{s_2} z = c (1 - t)\, a_2^2,

    .. math::  \partial_t^2 z = 0, \quad \partial_t \partial_{s_1} z = c\, a_1^2, \quad
               \partial_t \partial_{s_2} z = -c\, a_2^2, \quad \partial_{s_1} \partial_{s_2} z = 0, \quad
               \partial_{s_1}^2 z = -2 c\, t\, m\, a_1^3, \quad \partial_{s_2}^2 z = -2 c (1 - t)\, m\, a_2^3.

    Returns ``(J, T)`` with ``J[..., j] = dz / d theta_j`` (shape ``(..., 3)``) and
    ``T[..., j, k] = d^2 z / d theta_j d theta_k`` (shape ``(..., 3, 3)``), the arguments broadcast
    together: the exact derivatives PDBLS's least squares takes (:func:`pdbjax.fit_pdb`), without
    differentiating the formula at every use. Elementwise, no validation (as :func:`silverstein_z`).

    >>> J, T = silverstein_z_derivatives(-0.5, 0.5, 1.0, 1.0, 0.25)  # a_1 = a_2 = 2
    >>> [round(float(v), 6) for v in J], round(float(T[1, 1]), 6)
    ([0.0, 0.5, 0.5], 1.0)
    """
    m, t, s1, s2, c = jnp.broadcast_arrays(*(jnp.asarray(v) for v in (m, t, s1, s2, c)))
    a1, a2 = 1 / (1 + s1 * m), 1 / (1 + s2 * m)
    d_t1, d_t2 = c * a1**2, -c * a2**2
    d_11, d_22 = -2 * c * t * m * a1**3, -2 * c * (1 - t) * m * a2**3
    zero = jnp.zeros_like(m)
    J = jnp.stack([c * (s1 * a1 - s2 * a2), t * d_t1, (t - 1) * d_t2], axis=-1)
    T = jnp.stack([
        jnp.stack([zero, d_t1, d_t2], axis=-1),
        jnp.stack([d_t1, d_11, zero], axis=-1),
        jnp.stack([d_t2, zero, d_22], axis=-1),
    ], axis=-2)
    return J, T


def _silverstein(m, z, t, s1, s2, c):
    """``F(m) = z - z(m)`` (:func:`silverstein_z`); zero at ``m = m(z)`` (holomorphic in ``m``, ``z``)."""
    return z - silverstein_z(m, t, s1, s2, c)


def _stieltjes(z, t, s1, s2, c):
    """``m(z)`` with unmerged atoms (a weight-0 atom drops out exactly); the scale uses the merged ones.

    Solved in units of ``r``, the power of two at or above the larger variance: ``m(z; H) = m(z / r; H / r) / r``
    exactly, and no power of the units over- or underflows (float32 eigenvalues of 1e18 did)."""
    scale = jnp.maximum(*_merged_plain(t, s1, s2))
    r = jnp.ldexp(jnp.ones((), scale.dtype), jnp.frexp(scale)[1])
    z, s1, s2, scale = z / r, s1 / r, s2 / r, scale / r
    z = jnp.real(z) + 1j * jnp.maximum(jnp.imag(z), 1e-12 * scale)
    return _silverstein_root(z, t, s1, s2, c, scale) / r


@jax.custom_jvp
def _silverstein_root(z, t, s1, s2, c, scale):
    """Herglotz zero of :func:`_silverstein` at ``Im z > 0``; ``scale`` (no derivative) sets the path."""
    x, y_target = jnp.real(z), jnp.imag(z)
    y_start = jnp.maximum(y_target, scale)

    def fixed_step(m, zz):
        return -1 / (zz - _population_term(m, t, s1, s2, c))

    def newton_step(m, zz):
        f = _silverstein(m, zz, t, s1, s2, c)
        df = -1 / m**2 + c * (t * s1**2 / (1 + s1 * m) ** 2 + (1 - t) * s2**2 / (1 + s2 * m) ** 2)
        m_new = m - f / df
        ok = (
            jnp.isfinite(m_new) & (jnp.imag(m_new) >= 0)
            & (jnp.abs(_silverstein(m_new, zz, t, s1, s2, c)) <= jnp.abs(f))
        )
        return jnp.where(ok, m_new, fixed_step(m, zz))

    z0 = x + 1j * y_start
    m = lax.fori_loop(0, _FIXED_ITERS, lambda _, m: 0.5 * (m + fixed_step(m, z0)), -1 / z0)
    log_ratio = jnp.log(y_target / y_start)

    def stage(k, m):
        zk = x + 1j * (y_start * jnp.exp(log_ratio * (k + 1) / _CONT_STAGES))
        return lax.fori_loop(0, _NEWTON_ITERS, lambda _, m: newton_step(m, zk), m)

    m = lax.fori_loop(0, _CONT_STAGES, stage, m)
    # Polish at the target point: near z = 0 the last stage alone leaves m under-converged.
    return lax.fori_loop(0, _POLISH_ITERS, lambda _, m: newton_step(m, z), m)


@_silverstein_root.defjvp
def _silverstein_root_jvp(primals, tangents):
    z, t, s1, s2, c, scale = primals
    m = _silverstein_root(z, t, s1, s2, c, scale)
    dfdm = jax.jvp(lambda mm: _silverstein(mm, z, t, s1, s2, c), (m,), (jnp.ones_like(m),))[1]
    dfdp = jax.jvp(lambda *p: _silverstein(m, *p), (z, t, s1, s2, c), tuple(tangents[:5]))[1]
    ok = jnp.isfinite(dfdm) & (dfdm != 0)
    return m, jnp.where(ok, -1 / jnp.where(ok, dfdm, 1), 0) * dfdp


def _default_eta(s1, s2):
    return 1e-8 * jnp.maximum(s1, s2)


def density(x: ArrayLike, pop: PDB, c: ArrayLike, eta: ArrayLike | None = None) -> Array:
    r"""Density of the bulk eigenvalues of ``W^T W`` (the ``p``-side law), at real ``x``.

    ``f(x) = Im s(x + i eta) / pi`` with ``s(z) = (m(z) + (1 - c) / z) / c``, which removes the atom of
    mass ``1 - c`` that the companion ``m`` carries at 0. ``eta`` defaults to ``1e-8 max(s1, s2)``
    (of the atoms in use: ``sigma1_sq`` alone when ``t = 1``, ``sigma2_sq`` alone when ``t = 0``).
    Zero for ``x <= 0``. Integrates to 1.

    Differentiable with respect to ``x``, ``c``, ``t`` (also at ``t in {0, 1}``: one-sided, with the
    default ``eta`` held fixed), ``sigma1_sq``, ``sigma2_sq`` and ``eta``, through :func:`stieltjes`. It
    is the derivative of the ``eta``-smoothed density: within a few ``eta`` of an edge the slope is
    ``O(eta^{-1/2})``, and ``f`` is not differentiable at ``x = 0``.
    """
    t, s1, s2, c, valid, x = _prepare(pop, c, x)
    eta = _default_eta(*_merged_plain(t, s1, s2)) if eta is None else jnp.asarray(eta, x.dtype)
    z = x + 1j * eta
    s = (_stieltjes(z, t, s1, s2, c) + (1 - c) / z) / c
    f = jnp.where(x > 0, jnp.maximum(jnp.imag(s) / jnp.pi, 0.0), 0.0)
    return _nan_where_invalid(valid, f)


def _density_on_line(x, t, s1, s2, c):
    r"""The density at real ``x`` in the limit ``eta -> 0``, in closed form (the quadrature nodes of :func:`cdf`).

    With ``a = -1/m``, the Silverstein equation ``x = g(a)`` (:func:`_g`) times ``(a - s1)(a - s2)`` is the
    monic cubic

    .. math::  a^3 + (c h_1 - s_1 - s_2 - x) a^2 + (s_1 s_2 (1 - c) + x (s_1 + s_2)) a - x s_1 s_2 = 0,
               \qquad h_1 = t s_1 + (1 - t) s_2,

    (a weight-0 atom only adds the real root ``a = s_i``). Inside the support it has one complex pair,
    and ``m(x + i0) = -1/a`` with ``Im a > 0``: ``f(x) = Im m / (pi c) = Im a / (pi c |a|^2)``. The pair
    comes from Cardano's formula in its stable form: for the depressed cubic ``y^3 + P y + Q`` with
    ``D = Q^2/4 + P^3/27 > 0``, ``u = cbrt(-Q/2 - sign(Q) sqrt(D))``, ``v = -P / (3u)``, the pair is
    ``-(u + v)/2 +- i (sqrt(3)/2) |u - v|`` with ``|u - v| = 2 sqrt(D) / (u^2 + uv + v^2)`` (no
    cancellation). ``D <= 0`` (three real roots: outside the support) gives ``0``. Computed on
    ``x / r``, ``s_i / r`` with ``r = max(s1, s2)``, so no power of the units overflows.
    """
    r = jnp.maximum(s1, s2)
    x, s1, s2 = x / r, s1 / r, s2 / r
    b = c * (t * s1 + (1 - t) * s2) - s1 - s2 - x
    k = s1 * s2 * (1 - c) + x * (s1 + s2)
    d = -x * s1 * s2
    P = k - b**2 / 3
    Q = 2 * b**3 / 27 - b * k / 3 + d
    D = Q**2 / 4 + P**3 / 27
    pair = (D > 0) & (x > 0)
    S = jnp.sqrt(jnp.where(pair, D, 1.0))
    u = jnp.cbrt(-Q / 2 - jnp.where(Q >= 0, S, -S))
    v = -P / (3 * u)
    im = jnp.sqrt(3.0) * S / (u**2 + u * v + v**2)
    a = (-(u + v) / 2 - b / 3) + 1j * im
    for _ in range(_CUBIC_NEWTON):  # Cardano's pair is off by ~eps |b| when |a| << |b| (near x = 0)
        a = a - ((a + b) * a * a + k * a + d) / ((3 * a + 2 * b) * a + k)
    f = jnp.imag(a) / (jnp.pi * c * jnp.abs(a) ** 2)
    return jnp.where(pair & jnp.isfinite(f), f, 0.0) / r


def cdf(x: ArrayLike, pop: PDB, c: ArrayLike, num: int = 2049) -> Array:
    r"""Distribution function ``F(x) = int_0^x f`` of the bulk law.

    Integrates the density (its ``eta -> 0`` limit, in closed form: ``_density_on_line``) over each bulk
    interval with Gauss-Chebyshev quadrature of the second kind in the variable ``u`` where
    ``lambda = (beta_lo + beta_hi)/2 + (beta_hi - beta_lo)/2 cos u`` (the density has square-root zeros
    at the edges, so the integrand is smooth in ``u``; at ``c = 1`` the density diverges like ``lambda^-1/2``
    at the lower edge 0 instead, and ``F`` is off by up to about ``5e-4`` near it, against ``1e-6`` elsewhere:
    a bug hunt's quadrature oracle, Marchenko-Pastur at ``c = 1``), on ``num`` equally spaced nodes
    ``u_i = i pi / (num - 1)``, then interpolates the cumulative masses linearly in ``u`` (node
    ``floor(u / du)``: the grid is uniform, so no search). Both intervals of two separated bulks are
    one stacked computation. ``x`` must carry the evaluation points on its LAST axis; population
    fields broadcast against ``x[..., 0]``. Exact ``0`` below the support and ``1`` above it.

    Differentiable with respect to ``x``, ``c``, ``t``, ``sigma1_sq`` and ``sigma2_sq``: the derivative
    of this quadrature (edges, nodes and density all move with the parameters). In ``x`` it is the
    slope of the linear interpolant, i.e. ``f(x)`` up to the ``O(1/num)`` interpolation error, and it
    is not differentiable at the nodes and edges. The ``t``-derivative is NaN at ``t in {0, 1}`` when
    ``sigma1_sq != sigma2_sq``.
    """
    if isinstance(num, bool) or not isinstance(num, (int, np.integer)) or num < 2:
        raise ValueError(f"num must be an int >= 2 (quadrature nodes); got {num!r}")
    t, s1, s2, c, valid, x = _prepare(pop, c, x)
    batch = jnp.broadcast_shapes(t.shape, s1.shape, s2.shape, c.shape, x.shape[:-1])
    t_, s1_, s2_, c_ = (jnp.broadcast_to(v, batch)[..., None] for v in (t, s1, s2, c))
    atom1, atom2 = _merge_atoms(t_, s1_, s2_)  # a weight-0 atom drops out exactly (no rounding-level derivative)
    b1, b2, b3, b4, separated = _edge_values(t_, atom1, atom2, c_)
    b2, b3 = jnp.where(separated, b2, b4), jnp.where(separated, b3, b4)
    # The two intervals [b1, b2] and [b3, b4] (empty for one bulk) on a leading axis of size 2.
    lo, hi = jnp.stack([b1, b3]), jnp.stack([b2, b4])
    half, mid = (hi - lo) / 2, (hi + lo) / 2
    du = math.pi / (num - 1)
    u = jnp.arange(num, dtype=x.dtype) * du
    f = _density_on_line(mid - half * jnp.cos(u), t_, atom1, atom2, c_)
    w = f * half * jnp.sin(u)
    cum = jnp.concatenate([jnp.zeros_like(w[..., :1]), jnp.cumsum((w[..., 1:] + w[..., :-1]) * du / 2, -1)], -1)
    q = (mid - x) / jnp.where(half > 0, half, 1.0)
    inside = (q > -1) & (q < 1)  # arccos' is infinite at +-1: keep it out of the gradient
    arg = jnp.where(
        inside,
        jnp.arccos(jnp.where(inside, q, 0.0)),
        jnp.where(q >= 1, 0.0, jnp.where(q <= -1, jnp.pi, jnp.nan)),
    )
    node = arg / du
    i = jnp.where(jnp.isfinite(node), jnp.clip(jnp.floor(node), 0, num - 2), 0).astype(jnp.int32)
    left, right = jnp.take_along_axis(cum, i, -1), jnp.take_along_axis(cum, i + 1, -1)
    mass = left + (node - i) * (right - left)  # NaN where arg is NaN
    total = cum[0, ..., -1:] + cum[1, ..., -1:]
    out = (mass[0] + jnp.where(separated, mass[1], 0.0)) / total
    out = jnp.where(x <= b1, 0.0, jnp.where(x >= b4, 1.0, out))
    return _nan_where_invalid(jnp.broadcast_to(valid, batch)[..., None], out)


@functools.cache
def _partitions(k: int) -> tuple[tuple[int, int, tuple[int, ...]], ...]:
    """``(coefficient, size - 1, (i_1, ..., i_k))`` for every partition of ``k`` into ``i_j`` parts equal to
    ``j`` (``size = sum_j i_j``), with ``coefficient = k! / ((k + 1 - size)! prod_j i_j!)``.

    >>> _partitions(3)
    ((1, 0, (0, 0, 1)), (3, 1, (1, 1, 0)), (1, 2, (3, 0, 0)))
    """
    out = []

    def parts(rest: int, largest: int, chosen: tuple[int, ...]) -> None:
        if rest == 0:
            mult = tuple(chosen.count(j) for j in range(1, k + 1))
            size = sum(mult)
            coef = math.factorial(k) // (math.factorial(k + 1 - size) * math.prod(math.factorial(i) for i in mult))
            out.append((coef, size - 1, mult))
        for j in range(min(rest, largest), 0, -1):
            parts(rest - j, j, (*chosen, j))

    parts(k, k, ())
    return tuple(out)


def moments(pop: PDB, c: ArrayLike, k: int = 3) -> Array:
    r"""Moments ``gamma_1..gamma_k`` of the bulk law, ``gamma_n = lim (1/p) tr (W^T W)^n``.

    With the population moments ``h_j = t s1^j + (1 - t) s2^j``, the moments of the generalised
    Marchenko-Pastur law are the sum over the partitions of ``n`` into ``i_j`` parts equal to ``j``
    (Yin 1986; Bai & Silverstein 2010, chapter 3)

    .. math:: \gamma_n = \sum_{i_1 + 2 i_2 + \dots + n i_n = n} \frac{n!\, c^{s - 1}}{(n + 1 - s)!\, i_1! \cdots i_n!}
              h_1^{i_1} \cdots h_n^{i_n}, \qquad s = i_1 + \dots + i_n,

    the power-series solution of the Silverstein equation. In particular ``gamma_1 = h_1``,
    ``gamma_2 = h_2 + c h_1^2``, ``gamma_3 = h_3 + 3 c h_1 h_2 + c^2 h_1^3`` (spec section 5).

    A polynomial in ``t``, ``sigma1_sq``, ``sigma2_sq`` and ``c``: differentiable everywhere, including
    ``t in {0, 1}`` and ``c = 1`` (one-sided there).

    Returns:
      Array of shape ``broadcast(pop, c).shape + (k,)``.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1; got {k}")
    t, s1, s2, c, valid = _prepare(pop, c)
    t, s1, s2, c = jnp.broadcast_arrays(t, s1, s2, c)
    h = [t * s1**j + (1 - t) * s2**j for j in range(1, k + 1)]

    def gamma(n: int) -> Array:
        return sum(coef * c**e * math.prod((h[j] ** i for j, i in enumerate(mult) if i), start=1)
                   for coef, e, mult in _partitions(n))

    return _nan_where_invalid(valid[..., None], jnp.stack([gamma(n) for n in range(1, k + 1)], -1))
