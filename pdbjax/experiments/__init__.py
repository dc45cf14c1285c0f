"""The paper's experiments and example models, apart from the library core.

* :mod:`pdbjax.experiments.minilm` -- all-MiniLM-L6-v2 (a 6-layer BERT sentence encoder) as a Flax NNX
  model with its tokenizer, a sentence corpus and an embedding-agreement measure, to compress a real
  pretrained transformer with :func:`pdbjax.compress`.
"""
