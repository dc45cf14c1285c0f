"""The paper's experiments and example models, apart from the library core.

* :mod:`pdbjax.experiments.data` -- MNIST / Fashion-MNIST / CIFAR-10 loaders that need no network,
  label noise and preprocessing.
* :mod:`pdbjax.experiments.models` -- the paper's networks in Flax NNX (FCNN, VGG16, ResNet18).
* :mod:`pdbjax.experiments.train` -- the reference training recipe and ``.npz`` checkpoints.
* :mod:`pdbjax.experiments.finetune` -- one epoch of optax fine-tuning of a factored network (the
  recovery step after ``compress(..., factored=True)``).
* :mod:`pdbjax.experiments.demo` -- the end-to-end demo behind ``pdbjax demo`` / ``make demo``.
* :mod:`pdbjax.experiments.minilm` -- all-MiniLM-L6-v2 (a 6-layer BERT sentence encoder) as a Flax NNX
  model with its tokenizer, a sentence corpus and an embedding-agreement measure, to compress a real
  pretrained transformer with :func:`pdbjax.compress`.

They used to live at ``pdbjax.data``, ``pdbjax.models``, ``pdbjax.train`` and ``pdbjax.demo``.
"""
