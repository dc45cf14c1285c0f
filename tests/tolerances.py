"""Named test tolerances: each says why its size is right, and the message of a failure carries that reason.

Use ``assert_close(actual, desired, TOL)`` instead of a bare ``rtol=`` so that a reader (and a failing run)
sees what the tolerance stands for and the same reason gets the same number in every test file.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class Tol(NamedTuple):
    rtol: float
    atol: float
    reason: str


#: The same fit, batched with other partners: the least squares stops at relative tolerance 1e-8 and
#: XLA's reductions run in another order, so floats agree to about 1e-8; 1e-6 leaves a margin.
BATCH_PARTNERS = Tol(1e-6, 0.0, "same fit batched with other partners (solver tolerance 1e-8, reduction order)")
#: BATCH_PARTNERS for a figure that is a difference of nearly equal numbers (a relative moment error of 1e-5):
#: its relative error is meaningless there, its absolute one is that of the numbers it compares (1e-8), so 1e-8.
BATCH_PARTNERS_DIFFERENCE = Tol(1e-6, 1e-8, "same fit batched with other partners; a difference of nearly equal numbers")
#: One row of a vmap against the whole batch: identical arithmetic up to the last bits.
SAME_ARITHMETIC = Tol(1e-9, 0.0, "same arithmetic, one row of a vmap")
#: A float32 result against float64 arithmetic: float32's eps is 1.2e-7; 50 ulp covers a short chain.
FLOAT32 = Tol(1e-5, 0.0, "float32 against float64 arithmetic (eps 1.2e-7, a short chain of operations)")
#: A whole pipeline fit in float32 against the same fit in float64 (simulated PDB matrices): the SVD carries
#: relative errors ~1e-6 and the least squares stops at its float32 tolerance; measured at most 4e-4 relative
#: on lambda_plus (benchmarks/results/precision.md), so 1e-3.
FLOAT32_FIT = Tol(1e-3, 0.0, "PDBLS in float32 against float64 on simulated PDB matrices (measured <= 4e-4)")
#: Results gathered from other processes: the same matrices, batched with other partners, fitted in float32
#: (the pipeline's default precision). Batch partners change XLA's reduction order, and the float32 least
#: squares stops within its tolerance: measured up to 1.5e-4 relative on sigma2_sq and 1e-4 on lambda_plus
#: (6 simulated spectra fitted alone and in one batch), so 5e-4; the fit residual (~2e-3, dimensionless) sits at
#: the solver's floor and moves by up to 4e-6 absolute, so atol 1e-5 (the simulated tests' values are O(1)).
#: Also the same matrices fitted in one process in chunks of another size (other partners, another batch size).
OTHER_PROCESS = Tol(5e-4, 1e-5, "same matrices fitted in float32, batched with other partners (another process or chunk)")

#: The same float32 fits compiled as one program with the other figures instead of one program each: XLA may
#: fuse and order reductions differently, and the float32 least squares stops within its tolerance (as for
#: OTHER_PROCESS). Measured identical on MiniLM-L6 and the simulated matrices of tests/test_figures.py.
ONE_PROGRAM = Tol(5e-4, 1e-5, "same float32 fits compiled into one program with the other figures")


def assert_close(actual, desired, tol: Tol, err_msg: str = "") -> None:
    """``numpy.testing.assert_allclose`` with ``tol``'s bounds; a failure names the tolerance's reason."""
    np.testing.assert_allclose(actual, desired, rtol=tol.rtol, atol=tol.atol,
                               err_msg=f"{err_msg} [tolerance: {tol.reason}]".strip())
