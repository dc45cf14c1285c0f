"""The working precision (:mod:`pdbjax.precision`): float32 pipelines need no float64 on the device and
give the ranks and fits of float64 pipelines."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from tolerances import BATCH_PARTNERS, FLOAT32_FIT, assert_close

import pdbjax
from pdbjax import precision


def _model() -> dict:
    """Three simulated layers with clear outliers, one and two bulks, two spectrum lengths."""
    key = jax.random.PRNGKey(3)
    layers = [(600, 200, pdbjax.PDB(0.6, 1.0, 6.0), [80.0, 40.0]), (500, 200, pdbjax.PDB.pub(2.0), [30.0]),
              (400, 120, pdbjax.PDB(0.7, 0.5, 3.0), [25.0])]
    params = {}
    for i, (n, p, pop, spikes) in enumerate(layers):
        key, k = jax.random.split(key)
        params[f"l{i}"] = {"kernel": np.asarray(pdbjax.simulate(k, n, p, pop, spikes=spikes))}
    return params


@pytest.fixture(scope="module")
def model():
    return _model()


def test_float32_pipeline_never_enters_64_bit_jax(model, monkeypatch):
    """analyze and compress (rule, budget, optimal shrinkage) in float32 never turn on x64, so they run
    as they are on a TPU, whose devices have no float64 (BEMA's quantiles are NumPy host constants)."""
    calls = []
    real = jax.enable_x64

    def spy(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(jax, "enable_x64", spy)
    report = pdbjax.analyze(model, precision="float32")
    pdbjax.compress(model, precision="float32")
    pdbjax.compress(model, budget=0.3, precision="float32")
    pdbjax.compress(model, shrink="optimal", precision="float32")
    assert all(row["status"] == "ok" for row in report.rows)
    assert calls == []
    pdbjax.analyze(model, precision="float64")
    assert calls, "the spy does not see float64 work: the test cannot fail"


def test_float32_and_float64_pipelines_agree(model):
    """Same status, K, bulk count and keep counts; lambda_plus within FLOAT32_FIT. Keep counts are compared
    only where float64's number is not at a rounding or edge threshold (no exact equality at a threshold)."""
    r32 = pdbjax.analyze(model, precision="float32").rows
    r64 = pdbjax.analyze(model, precision="float64").rows
    for a, b in zip(r32, r64):
        assert (a["status"], a["K"], a["bulks"]) == (b["status"], b["K"], b["bulks"]), a["name"]
        assert_close(a["lambda_plus"], b["lambda_plus"], FLOAT32_FIT, a["name"])
        eigs = np.linalg.svd(np.asarray(model[a["leaf"].split("/")[0]]["kernel"], np.float64), compute_uv=False) ** 2
        for rule, edge in (("spikes", "lambda_plus"), ("pub-bema", "lambda_plus_bema"), ("pub-kernel", "lambda_plus_kernel")):
            if np.min(np.abs(eigs / b[edge] - 1)) > 2 * FLOAT32_FIT.rtol:  # no eigenvalue at the edge
                assert a["rank_kept"][rule] == b["rank_kept"][rule], (a["name"], rule)
        if b["bulks"] == 2:
            w = b["t"] if b["sigma1_sq"] > b["sigma2_sq"] else 1 - b["t"]
            share = w * (b["p"] - b["n_outliers"])
            if abs(share - np.floor(share) - 0.5) > 0.05:  # not at a rounding boundary
                assert a["rank_kept"]["upper-bulk"] == b["rank_kept"]["upper-bulk"], a["name"]


def test_float64_compress_decides_in_float64(model, monkeypatch):
    """compress fetches the spectra and fits to the host between its passes; with precision="float64" the
    decisions (the new singular values) are still computed in float64, and analyze's fits agree with the
    matrix-level float64 fit (a float64 host array keeps its precision, :func:`pdbjax.precision.scope`)."""
    decided = []
    real = pdbjax.api.decide

    def spy(*args, **kwargs):
        decided.append(real(*args, **kwargs))
        return decided[-1]

    monkeypatch.setattr(pdbjax.api, "decide", spy)
    model64 = jax.tree_util.tree_map(lambda x: x.astype(np.float64), model)
    pdbjax.compress(model64, precision="float64")
    assert decided and all(d.shrunk.dtype == np.float64 for d in decided)
    row = pdbjax.analyze(model64, precision="float64", baselines=False).rows[0]
    direct = pdbjax.fit_pdb(pdbjax.eigenvalues(model64["l0"]["kernel"], precision="float64"), 600)
    assert_close([row["t"], row["sigma1_sq"], row["sigma2_sq"]], [direct.t, direct.sigma1_sq, direct.sigma2_sq], BATCH_PARTNERS)


def test_float64_weights_are_decomposed_unrounded(model):
    """With precision="float64" and JAX's 64-bit mode off, float64 leaves are stacked in float64 (they were
    rounded to float32 first: a rank-5 truncation 1.5e-7 away from NumPy's). Oracle: NumPy's float64 SVD;
    tolerance 1e-10 of the largest entry, float64 rounding of two SVD routines with room to spare."""
    W = np.asarray(model["l0"]["kernel"], np.float64) * (1 + 1e-9 * np.arange(200))  # not float32-representable
    U, s, Vt = np.linalg.svd(W, full_matrices=False)
    expected = (U[:, :5] * s[:5]) @ Vt[:5]
    out, _ = pdbjax.compress({"w": W}, where="w", method="svd", rank=5, precision="float64")
    np.testing.assert_allclose(out["w"], expected, rtol=0, atol=1e-10 * np.abs(expected).max())
    report = pdbjax.analyze({"w": W}, where="w", precision="float64", baselines=False)
    np.testing.assert_allclose(report.spectra["w"], s**2, rtol=0, atol=1e-10 * s[0] ** 2)


def test_precision_policy_names():
    with pytest.raises(ValueError, match="precision must be one of"):
        precision.check_precision("float16")
    assert precision.work_dtype(np.float16) == np.float32
