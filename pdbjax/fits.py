"""Result pytrees of the estimators: :class:`PDBFit` and :class:`PUBFit`, and their status codes.

Results are values, not exceptions: a matrix that cannot be fitted inside a batch gets ``ok = False``
and a ``reason`` code (an ``int32`` leaf, so it survives ``jit``/``vmap``); :func:`reason_text` turns
it into words for reports and errors.
"""

from __future__ import annotations

import enum
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from pdbjax import exported
from pdbjax.spectral import PDB

__all__ = ["PDBFit", "PUBFit", "Reason", "reason_text", "demote", "fit_result"]

Array = jax.Array


class Reason(enum.IntEnum):
    """Status codes stored in the ``reason`` field of a fit (``int32`` leaves; compare with ``==``).

    ``Reason(code).text`` is the message reports print. Code 6 (an old "no valid support edges") is
    retired: a fit whose edges are not finite is ``NOT_CONVERGED``. ``ONE_BULK``: :func:`pdbjax.filter_matrix`
    and :func:`pdbjax.compress` set it on a row that the rank rule ``"auto"`` leaves as it is (an ok fit with
    ``bulks == 1``). ``OUT_OF_RANGE``: :func:`pdbjax.compress` sets it on a row whose compressed weights
    overflow the leaf's storage dtype (that weight is left unchanged), :func:`pdbjax.fit_pdb` on a row whose
    float64 fit does not survive the cast back to the input's dtype (e.g. float32 eigenvalues near 1e-40).
    """

    OK = 0
    NON_FINITE = 1
    ALL_ZERO = 2
    TOO_SMALL = 3
    NO_BULK = 4
    NOT_CONVERGED = 5
    POOR_FIT = 7
    NEGATIVE = 8
    OUT_OF_RANGE = 9
    ONE_BULK = 10

    @property
    def text(self) -> str:
        return _TEXT[self]


_TEXT = {
    Reason.OK: "ok",
    Reason.NON_FINITE: "matrix has NaN or Inf entries",
    Reason.ALL_ZERO: "matrix is all zeros",
    Reason.TOO_SMALL: "fewer than 8 eigenvalues (p < 8)",
    Reason.NO_BULK: "no bulk: rank deficient, no spread, or fewer than 8 eigenvalues left after removing the spikes",
    Reason.NOT_CONVERGED: "least squares did not converge to a valid population",
    Reason.POOR_FIT: "no PDB population satisfies the Silverstein equation on the bulk (heavy-tailed or otherwise non-PDB spectrum)",
    Reason.NEGATIVE: "negative eigenvalues: not the squared singular values of a real matrix",
    Reason.OUT_OF_RANGE: "values outside the range of the dtype (compressed weights that overflow the storage dtype, "
                         "or fitted values that underflow the input dtype)",
    Reason.ONE_BULK: "one bulk: rank rule 'auto' keeps it whole ('upper-bulk' or 'spikes' keep only the outliers)",
}


def demote(code: Array, failed: Array, reason: Reason) -> Array:
    """``reason`` where ``code`` is still ``OK`` and ``failed`` holds; ``code`` otherwise (the first failure
    found is the one reported), as ``int32``."""
    return jnp.where((code == Reason.OK) & failed, reason, code).astype(jnp.int32)


def reason_text(code: int | Array) -> str:
    """Human-readable text of a status code."""
    value = int(np.asarray(code))
    try:
        return Reason(value).text
    except ValueError:
        return f"unknown status {value}"


@exported.register
class PDBFit(NamedTuple):
    """PDBLS fit of one matrix (or a batch: every field carries the leading batch axes).

    Attributes:
      K: spike count ``K0`` removed before fitting (int32): EDA/EDB within the reference window, widened in
        ``mode="scaled"`` where the count reaches it (:mod:`pdbjax.estimate`).
      t, sigma1_sq, sigma2_sq: the bulk population, relabelled so that ``t >= 0.5``.
      c: bulk ratio ``c_K = (p - K) / N``.
      edges: support edges ``beta_1..beta_4`` ascending, NaN-padded (shape ``(..., 4)``).
      critical: critical points ``alpha_1..alpha_4`` of ``g`` ascending, NaN-padded.
      lambda_plus: noise boundary ``max(edges)``.
      residual: root-mean-square residual ``u_i - z(s_i)`` of the Silverstein equation on the fitting
        grid, each grid segment (``(-10, 0)``, ``(0, l_min / 2)``, ``(5 l_max, 10 l_max)``) relative to
        its own RMS ``u`` (dimensionless; above ``estimate.POOR_FIT_RESIDUAL`` the row is ``POOR_FIT``),
        of the two-atom least-squares fit (before the one-bulk decision).
      bulks: 2 when the two-atom population is identified, 1 when the bulk is one Marchenko-Pastur
        bulk (spec section 10; then ``t = 1`` and ``sigma1_sq = sigma2_sq = sigma^2``, the fitted
        population mean); 0 where the fit is not ok.
      sphericity: John's sphericity statistic of the bulk eigenvalues, standardised so that it is
        approximately ``N(0, 1)`` for one bulk (see :func:`pdbjax.estimate.fit_pdb`); computed even when
        the fit is not ok (NaN only for unusable spectra).
      ok: whether the fit is usable; when False the population fields are NaN (``K`` and
        ``sphericity`` still describe the spectrum where it could be screened).
      reason: :class:`Reason` code.
    """

    K: Array
    t: Array
    sigma1_sq: Array
    sigma2_sq: Array
    c: Array
    edges: Array
    critical: Array
    lambda_plus: Array
    residual: Array
    bulks: Array
    sphericity: Array
    ok: Array
    reason: Array

    @property
    def population(self) -> PDB:
        return PDB(self.t, self.sigma1_sq, self.sigma2_sq)

    def rescale(self, factor) -> "PDBFit":
        """The same fit for eigenvalues multiplied by ``factor`` (batch-shaped): every field in
        eigenvalue units (variances, edges, critical points, ``lambda_plus``) is multiplied by it."""
        return _rescale(self, factor, ("sigma1_sq", "sigma2_sq", "edges", "critical", "lambda_plus"))


@exported.register
class PUBFit(NamedTuple):
    """PUB (single bulk, Marchenko-Pastur) fit: ``Sigma = diag(alpha_1..alpha_K, sigma^2 I)``.

    Attributes:
      K: number of eigenvalues above the threshold (int32).
      sigma_sq: bulk variance ``sigma^2``.
      c: bulk ratio used for the fit.
      lambda_plus: Marchenko-Pastur upper edge ``sigma^2 (1 + sqrt c)^2``.
      threshold: the boundary used to count ``K`` (BEMA: ``lambda_plus`` plus the Tracy-Widom
        correction; Kernel: ``lambda_plus``).
      ok, reason: as in :class:`PDBFit`.
    """

    K: Array
    sigma_sq: Array
    c: Array
    lambda_plus: Array
    threshold: Array
    ok: Array
    reason: Array

    @property
    def population(self) -> PDB:
        return PDB.pub(self.sigma_sq)

    def rescale(self, factor) -> "PUBFit":
        """The same fit for eigenvalues multiplied by ``factor`` (see :meth:`PDBFit.rescale`)."""
        return _rescale(self, factor, ("sigma_sq", "lambda_plus", "threshold"))


def fit_result(cls: type, code: Array, masked: dict[str, Array], **fields: Array):
    """``cls(**masked, **fields, ok=code == OK, reason=code)`` with every ``masked`` field NaN where the fit is
    not ok (the fits' rule: a population is never reported for a row that failed)."""
    ok = code == Reason.OK
    nan = {k: jnp.where(jnp.reshape(ok, ok.shape + (1,) * (jnp.ndim(v) - ok.ndim)), v, jnp.nan) for k, v in masked.items()}
    return cls(**nan, **fields, ok=ok, reason=code)


def _rescale(fit, factor, fields: tuple[str, ...]):
    """Multiply the named fields of ``fit`` by ``factor``, broadcasting it over their trailing axes."""
    batch = np.ndim(factor)

    def mul(x):
        return x * np.reshape(factor, np.shape(factor) + (1,) * (np.ndim(x) - batch))

    return fit._replace(**{name: mul(getattr(fit, name)) for name in fields})
