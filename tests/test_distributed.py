"""pdbjax.distributed: two local CPU processes of a jax.distributed job give the single-process results.

The two-process test starts this file as a script twice (``python tests/test_distributed.py worker ...``);
each worker joins the job, runs the distributed calls on the same tree and writes what it got to JSON
and ``.npz`` files that the test compares with :func:`pdbjax.analyze` / :func:`pdbjax.compress` run here.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from tolerances import OTHER_PROCESS, assert_close

import pdbjax
from pdbjax import distributed
from pdbjax.api import LowRank
from pdbjax.distributed import _named_nodes, _spec, assign
from pdbjax.tree import path_name

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAYER_AXIS = {"blocks": 0}
# Options of each call (small, so the two workers compile little): analyze without the PUB baselines,
# compress with the default PDB rule (dense) and with a fixed-rank SVD stored as LowRank factors.
ANALYZE = dict(layer_axis=LAYER_AXIS, on_error="skip", baselines=False)
COMPRESS = dict(layer_axis=LAYER_AXIS, on_error="skip")
FACTORED = dict(layer_axis=LAYER_AXIS, on_error="skip", rank=4, factored=True)
# Same matrices, other batch partners: each process stacks only its own leaves, and XLA's CPU kernels may
# round a batch of another size differently in the last bits (here they came out bitwise equal). Counts
# (K, keep, ranks), names and statuses must match exactly. Importing pdbjax starts no JAX backend, so the
# workers can still call jax.distributed.initialize after these imports.
TIMEOUT_S = 240


def make_tree():
    """Three (48, 32) kernels and a stacked (3, 96, 48) one; one more (48, 32) kernel holds a NaN, one is all zeros; biases.

    The stacked leaf costs more than the others together, so process 0 gets it and process 1 the rest:
    each worker compiles one matrix shape (process 1 cannot use the persistent compilation cache, which
    JAX writes and keys by process 0's devices).
    """

    def mat(seed, a, b):
        return np.array(pdbjax.simulate(jax.random.PRNGKey(seed), a, b, pdbjax.PDB(0.7, 1.0, 4.0), spikes=(60.0, 40.0)))

    bad = mat(9, 48, 32)
    bad[3, 5] = np.nan
    return {
        "blocks": {"kernel": np.stack([mat(3 + i, 96, 48) for i in range(3)])},
        "c_bad": {"kernel": bad},  # skipped (on_error="skip") or a ValueError naming it; between two ok leaves

        "dense0": {"kernel": mat(0, 48, 32), "bias": np.zeros(32, np.float32)},
        "dense1": {"kernel": mat(1, 48, 32)},
        "proj": {"kernel": mat(2, 48, 32), "bias": np.zeros(32, np.float32)},
        "zero": {"kernel": np.zeros((48, 32), np.float32)},  # fitted as "unchanged": stays dense under factored=True
    }


def flat_arrays(tree) -> dict[str, np.ndarray]:
    """``{name: array}`` of a (possibly LowRank-holding) tree, LowRank factors as ``name/a``, ``name/b``."""
    return {path_name(path): np.asarray(x) for path, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


# --------------------------------------------------------------------------------------------------
# The worker (run as a script)


def worker(coordinator: str, process_id: int, out_dir: str) -> None:
    distributed.initialize(coordinator, num_processes=2, process_id=process_id)

    tree = make_tree()
    result: dict = {"process_count": jax.process_count(), "writer": distributed.is_writer()}
    report = distributed.analyze(tree, **ANALYZE)
    result["analyze"] = report.rows
    new, creport = distributed.compress(tree, **COMPRESS)
    result["compress"] = [creport.rows, creport.totals]
    newf, freport = distributed.compress(tree, method="svd", **FACTORED)
    result["factored"] = [freport.rows, freport.totals]
    jax_tree = {"dense0": {"kernel": jnp.asarray(tree["dense0"]["kernel"])}, "zero": {"kernel": jnp.zeros((48, 32))}}
    jax_new = distributed.compress(jax_tree, method="svd", **FACTORED)[0]  # JAX leaves give JAX factors, as in one process
    result["jax_leaf_types"] = sorted({type(x).__name__ for x in jax.tree_util.tree_leaves(jax_new)})
    np.savez(os.path.join(out_dir, f"dense{process_id}.npz"), **flat_arrays(new))
    np.savez(os.path.join(out_dir, f"factored{process_id}.npz"), **flat_arrays(newf))
    errors = {}
    try:  # bad input: the selection raises the same ValueError on every process, before any collective
        distributed.analyze(tree, layer_axis=LAYER_AXIS)
    except ValueError as err:
        errors["bad_leaf"] = str(err)

    def fail_on_1(done, total):
        if jax.process_index() == 1:
            raise ValueError("progress failed on purpose")

    try:  # an error inside one process's share reaches the other instead of leaving it waiting
        distributed.analyze(tree, **ANALYZE, progress=fail_on_1)
    except ValueError as err:
        errors["share"] = str(err)
    clean = {k: v for k, v in tree.items() if k != "c_bad"}
    try:  # bad input on one process only: its error reaches the other with the selection's digest
        distributed.analyze(tree if process_id else clean, layer_axis=LAYER_AXIS, baselines=False)
    except ValueError as err:
        errors["bad_leaf_on_1"] = str(err)

    class Custom(Exception):
        pass

    for name, failure in (("agree_builtin", FileNotFoundError("no such checkpoint")), ("agree_custom", Custom("custom")),
                          ("agree_unicode", UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte"))):
        try:  # the caller's own failure before a call (reading its input), met at distributed.agree
            distributed.agree(failure if process_id else None)
            errors[name] = "no error"
        except Exception as err:  # noqa: BLE001 - the test records the type
            errors[name] = f"{type(err).__name__}: {err}"
    distributed.agree()  # nothing failed: returns on every process
    try:  # a budget is allocated over all matrices: refused across processes (each would allocate its share)
        distributed.compress(tree, **{**COMPRESS, "budget": 0.5})
    except ValueError as err:
        errors["budget"] = str(err)
    try:  # processes that disagree on the options (or the tree) are told so, all of them
        distributed.analyze(tree, **{**ANALYZE, "mode": "reference" if process_id else "scaled"})
    except ValueError as err:
        errors["mismatch"] = str(err)
    try:  # also when the options are NumPy scalars of other values
        distributed.compress(tree, **{**COMPRESS, "method": "svd", "rank": np.int64(2 if process_id else 6)})
    except ValueError as err:
        errors["mismatch_numpy"] = str(err)
    try:  # and when one process only passes a budget (it must not raise alone and leave the other waiting)
        distributed.compress(tree, **{**COMPRESS, "budget": 0.5 if process_id else None})
    except ValueError as err:
        errors["mismatch_budget"] = str(err)
    result["errors"] = errors
    with open(os.path.join(out_dir, f"result{process_id}.json"), "w") as f:
        json.dump(result, f)


# --------------------------------------------------------------------------------------------------
# Tests


@pytest.fixture(scope="module")
def tree():
    return make_tree()


def on_cpu():
    """Run here on the CPU, as the workers do (JAX_PLATFORMS=cpu), also on a machine with an accelerator."""
    return jax.default_device(jax.devices("cpu")[0])


@pytest.fixture(scope="module")
def single(tree):
    """The single-process results the distributed ones must equal."""
    with on_cpu():
        return {
            "analyze": pdbjax.analyze(tree, **ANALYZE),
            "compress": pdbjax.compress(tree, **COMPRESS),
            "factored": pdbjax.compress(tree, method="svd", **FACTORED),
        }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_processes(single, tmp_path_factory):
    """Run two workers (after ``single``, so they find its compiles in the persistent cache)."""
    out = tmp_path_factory.mktemp("distributed")
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    if jax.config.jax_compilation_cache_dir:
        env["JAX_COMPILATION_CACHE_DIR"] = jax.config.jax_compilation_cache_dir
        env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = str(jax.config.jax_persistent_cache_min_compile_time_secs)
    coordinator = f"127.0.0.1:{_free_port()}"
    start = time.monotonic()
    procs = [
        subprocess.Popen([sys.executable, os.path.abspath(__file__), "worker", coordinator, str(i), str(out)],
                         cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for i in range(2)
    ]
    logs = []
    try:
        for p in procs:
            logs.append(p.communicate(timeout=max(1.0, TIMEOUT_S - (time.monotonic() - start)))[0])
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
        pytest.fail(f"the two workers did not finish within {TIMEOUT_S} s")
    for i, (p, log) in enumerate(zip(procs, logs)):
        assert p.returncode == 0, f"worker {i} exited with {p.returncode}:\n{log[-4000:]}"
    results = []
    for i in range(2):
        with open(out / f"result{i}.json") as f:
            results.append(json.load(f))
        results[i]["dense"] = dict(np.load(out / f"dense{i}.npz"))
        results[i]["factored_params"] = dict(np.load(out / f"factored{i}.npz"))
    return results


def assert_rows_match(got: list[dict], want: list[dict]) -> None:
    assert [r["name"] for r in got] == [r["name"] for r in want]
    for g, w in zip(got, want):
        assert set(g) == set(w), g["name"]
        for key in w:
            assert_value_match(g[key], w[key], f"{w['name']}: {key}")


def assert_value_match(got, want, where: str) -> None:
    if isinstance(want, float) and isinstance(got, float):
        assert_close(got, want, OTHER_PROCESS, where)
    elif isinstance(want, list) and isinstance(got, list) and len(got) == len(want):
        for g, w in zip(got, want):
            assert_value_match(g, w, where)
    elif isinstance(want, dict) and isinstance(got, dict) and set(got) == set(want):
        for k in want:
            assert_value_match(got[k], want[k], f"{where}.{k}")
    else:  # ints (K, keep, ranks, counts), strings (status), None, bools: exactly
        assert got == want, where


def assert_params_match(got: dict[str, np.ndarray], want) -> None:
    want = flat_arrays(want)
    assert sorted(got) == sorted(want)
    for name in want:
        assert got[name].dtype == want[name].dtype and got[name].shape == want[name].shape, name
        assert_close(got[name], want[name], OTHER_PROCESS, name)


def test_two_processes_report_equals_single_process(two_processes, single):
    for result in two_processes:  # every process returns the full report
        assert result["process_count"] == 2
        assert_rows_match(result["analyze"], single["analyze"].rows)
    # tree order in both (compress put skipped rows first across processes)
    assert [r["name"] for r in single["analyze"]][:4] == ["blocks/kernel[0]", "blocks/kernel[1]", "blocks/kernel[2]", "c_bad/kernel"]
    assert [r["status"] for r in single["analyze"]][2:4] == ["ok", "skipped: contains NaN or Inf values"]
    assert [r["writer"] for r in two_processes] == [True, False]


@pytest.mark.parametrize("kind", ["compress", "factored"])
def test_two_processes_compress_equals_single_process(two_processes, single, kind):
    new, report = single[kind]
    params_key = "dense" if kind == "compress" else "factored_params"
    for result in two_processes:  # every process returns the full new params and report
        rows, totals = result[kind]
        assert_rows_match(rows, report.rows)
        assert totals == report.totals
        assert_params_match(result[params_key], new)
    assert any(r["status"] == "ok" for r in report)


def test_two_processes_give_jax_factors_for_jax_leaves(two_processes):
    for result in two_processes:
        assert result["jax_leaf_types"] == ["ArrayImpl"]


def test_two_processes_raise_clear_errors(two_processes):
    for result in two_processes:
        assert "c_bad/kernel" in result["errors"]["bad_leaf"] and "NaN" in result["errors"]["bad_leaf"]
    assert two_processes[0]["errors"]["share"] == "process 1: progress failed on purpose"
    assert two_processes[1]["errors"]["share"] == "progress failed on purpose"
    one, zero = two_processes[1]["errors"], two_processes[0]["errors"]
    assert "c_bad/kernel" in one["bad_leaf_on_1"] and "NaN" in one["bad_leaf_on_1"]
    assert zero["bad_leaf_on_1"] == "process 1: " + one["bad_leaf_on_1"]
    assert one["agree_builtin"] == "FileNotFoundError: no such checkpoint"
    assert zero["agree_builtin"] == "FileNotFoundError: process 1: no such checkpoint"
    assert one["agree_custom"] == "Custom: custom" and zero["agree_custom"] == "RuntimeError: process 1: custom"
    for result in two_processes:
        assert result["errors"]["budget"].startswith("budget= allocates over all matrices at once")
    assert one["agree_unicode"].startswith("UnicodeDecodeError: 'utf-8' codec can't decode byte 0xff")
    assert zero["agree_unicode"] == "RuntimeError: process 1: " + one["agree_unicode"]  # its type needs 5 arguments
    for result in two_processes:
        for key in ("mismatch", "mismatch_numpy", "mismatch_budget"):
            assert result["errors"][key].startswith("processes [1] selected other matrices or passed other options"), key


def test_one_process_is_the_single_process_call(tree, single):
    with on_cpu():
        report = distributed.analyze(tree, **ANALYZE)
        new, creport = distributed.compress(tree, **COMPRESS)
    assert report == single["analyze"]
    assert creport == single["compress"][1]
    got, want = flat_arrays(new), flat_arrays(single["compress"][0])
    assert list(got) == list(want)
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)
    with pytest.raises(ValueError, match="c_bad/kernel"):
        distributed.analyze(tree, layer_axis=LAYER_AXIS)
    with pytest.raises(TypeError):
        distributed.analyze(tree, not_an_option=1)
    assert distributed.is_writer()


def test_named_nodes_reads_the_new_leaves_of_any_tree():
    """What compress sends from a share: new leaves by name, unwrapped from NNX Variables, LowRank kept."""
    model = nnx.Linear(4, 3, rngs=nnx.Rngs(0))
    got = _named_nodes(nnx.state(model), {"kernel"})
    assert list(got) == ["kernel"]
    np.testing.assert_array_equal(got["kernel"], np.asarray(model.kernel.get_value()))
    tree = {"a": {"kernel": LowRank(jnp.ones((4, 2), jnp.bfloat16), np.ones((2, 3), np.float32))}, "b": np.zeros(3)}
    got = _named_nodes(tree, {"a/kernel"})
    assert list(got) == ["a/kernel"] and isinstance(got["a/kernel"], LowRank)
    assert _spec(got["a/kernel"]) == [[[4, 2], "bfloat16"], [[2, 3], "float32"]]


def test_assign_is_balanced_and_deterministic():
    assert assign([4, 1, 3, 3, 0], 2) == [0, 0, 1, 1, 0]
    assert assign([], 3) == []
    costs = [0, 3 * 96 * 48**2, 48 * 32**2, 48 * 32**2, 48 * 32**2]  # make_tree: bad, blocks, dense0, dense1, proj
    assert assign(costs, 2) == [1, 0, 1, 1, 1]
    costs = [7, 5, 5, 4, 4, 3, 3, 3, 1]
    for n in (1, 2, 3, 4, 9, 12):
        owner = assign(costs, n)
        loads = [sum(c for c, o in zip(costs, owner) if o == p) for p in range(n)]
        assert max(loads) - min(loads) <= max(costs)
    with pytest.raises(ValueError):
        assign([1], 0)


def test_cli_two_processes_write_the_single_process_report(tree, tmp_path):
    """``pdbjax analyze --coordinator``: two CLI processes, process 0 writes the report, equal to one process's."""
    path = tmp_path / "w.npz"
    np.savez(path, **{f"{k}/kernel": tree[k]["kernel"] for k in ("dense0", "dense1", "proj")})
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    base = [sys.executable, "-m", "pdbjax", "analyze", str(path), "--no-baselines", "--quiet"]
    single = subprocess.run(base + ["--json", str(tmp_path / "one.json")], env=env, capture_output=True, text=True,
                            timeout=TIMEOUT_S)
    assert single.returncode == 0, single.stderr
    coordinator = f"127.0.0.1:{_free_port()}"
    procs = [subprocess.Popen(base + ["--json", str(tmp_path / f"two{i}.json"), "--coordinator", coordinator,
                                      "--num-processes", "2", "--process-id", str(i)],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
    logs = [p.communicate(timeout=TIMEOUT_S)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], logs
    # process 1 neither writes nor prints the report (Gloo's own connection line may appear)
    assert not (tmp_path / "two1.json").exists() and "dense0/kernel" not in logs[1] and "dense0/kernel" in logs[0]
    with open(tmp_path / "one.json") as f, open(tmp_path / "two0.json") as g:
        want, got = json.load(f), json.load(g)
    assert_rows_match(got["rows"] if isinstance(got, dict) else got, want["rows"] if isinstance(want, dict) else want)


def test_cli_a_process_whose_input_fails_stops_the_other(tree, tmp_path):
    """Process 1 cannot open its input: both processes end with one line each, soon, instead of process 0
    waiting on the collectives until JAX's timeouts (30-300 s) end it."""
    path = tmp_path / "w.npz"
    np.savez(path, **{f"{k}/kernel": tree[k]["kernel"] for k in ("dense0", "dense1")})
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    coordinator = f"127.0.0.1:{_free_port()}"
    procs = [subprocess.Popen([sys.executable, "-m", "pdbjax", "analyze", str(path if i == 0 else tmp_path / "missing.npz"),
                               "--no-baselines", "--quiet", "--coordinator", coordinator, "--num-processes", "2",
                               "--process-id", str(i)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    try:
        logs = [p.communicate(timeout=90)[1] for p in procs]  # a process start, JAX's and Gloo's set-up: seconds
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
        pytest.fail("process 0 kept waiting for process 1, which had failed")
    assert [p.returncode for p in procs] == [2, 2], logs
    assert f"pdbjax: error: {tmp_path / 'missing.npz'}: no such file or directory" in logs[1]
    assert f"pdbjax: error: the job stopped: process 1: {tmp_path / 'missing.npz'}: no such file" in logs[0], logs[0]


@pytest.mark.parametrize("argv, message", [
    (["--num-processes", "2"], "need --coordinator"),
    (["--coordinator", "127.0.0.1:1"], "needs --num-processes"),
    (["--coordinator", "127.0.0.1:1", "--num-processes", "2", "--process-id", "2"], "0..1"),
])
def test_cli_process_options_are_checked(tmp_path, capsys, argv, message):
    from pdbjax.cli import main

    np.savez(tmp_path / "w.npz", k=np.ones((4, 4), np.float32))
    assert main(["analyze", str(tmp_path / "w.npz"), *argv]) == 2
    assert message in capsys.readouterr().err


if __name__ == "__main__" and sys.argv[1:2] == ["worker"]:
    worker(sys.argv[2], int(sys.argv[3]), sys.argv[4])
