"""K-means codebooks of WavLM features: load the released ones, train your own, measure distances.

A codebook is a float tensor ``[K, D]``: K cluster centres of D-dimensional features. The released
codebooks (nicolvisser/WavLM-codebooks) cluster WavLM Large layer-11 features (D = 1024) into
K in {100, 200, 500, 1000, 2000} centres; each file holds ``{"codebook": FloatTensor[K, 1024]}``.

With ``DPSLM_WEIGHTS=random-tiny``, :func:`load_codebook` instead builds a seeded ``[K, 64]``
codebook matched to the random-tiny WavLM's features (see :func:`dpslm_utils.random_tiny.write_codebook`).

Codebooks of weight-free features (:mod:`dpslm_utils.features`) ship with the package
(:func:`feature_codebook`, made by ``data/make_fbank_codebook.py``). Codebooks you train are saved by
:func:`save_codebook` in the release layout plus a record of the features they cluster.
"""

from __future__ import annotations

import importlib.resources
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from . import checkpoints, registry
from .checks import MAX_SEED, check_int

CODEBOOK_DIM = 1024
"""Feature size of the released codebooks (WavLM Large's hidden size)."""

_DISTANCE_CHUNK_ELEMENTS = 1 << 22
"""Largest [rows, K] block of distances :func:`nearest` holds at once (16 MiB in float32)."""


def check_vectors(x: object, name: str) -> Tensor:
    """Return ``x`` if it is a finite floating-point ``[N, D]`` tensor, else raise TypeError/ValueError."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape [N, D], got {type(x).__name__}")
    if x.dim() != 2:
        raise ValueError(f"{name} must have shape [N, D] (2-D), got shape {list(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    if not torch.isfinite(x.sum(dtype=torch.promote_types(x.dtype, torch.float32))):  # fast: no [N, D] mask
        problem = "contains NaN or infinite values" if not torch.isfinite(x).all() else "has values too large to use"
        raise ValueError(f"{name} {problem}")
    return x


def check_codebook(codebook: object) -> Tensor:
    """Return ``codebook`` if it is a finite floating-point ``[K, D]`` tensor with K >= 1."""
    codebook = check_vectors(codebook, "codebook")
    if codebook.shape[0] == 0:
        raise ValueError("the codebook is empty (K = 0 entries)")
    return codebook


def squared_distances(features: Tensor, codebook: Tensor) -> Tensor:
    """Squared Euclidean distances ``‖x_n − c_k‖²``: ``[N, D]``, ``[K, D]`` -> ``[N, K]`` (>= 0).

    Same values as ``torch.cdist(features, codebook) ** 2``, computed as ``‖x‖² − 2x·c + ‖c‖²`` (one
    matrix product) after shifting both sets by the codebook mean, which leaves the distances
    unchanged but keeps the norms small, so that less precision is lost to cancellation.
    """
    mean = codebook.mean(dim=0)
    x, c = features - mean, codebook - mean
    norms = x.square().sum(dim=1, keepdim=True) + c.square().sum(dim=1)
    return norms.addmm_(x, c.T, alpha=-2.0).clamp_min_(0.0)


def nearest(features: Tensor, codebook: Tensor) -> tuple[Tensor, Tensor]:
    """Nearest codebook entry of every row: ``(indices: LongTensor[N], squared_distances: [N])``.

    Distances are computed in blocks of rows, so memory stays bounded for any N (e.g. N = 100k,
    K = 1000, D = 1024). Ties go to the lowest index.
    """
    rows = max(1, _DISTANCE_CHUNK_ELEMENTS // codebook.shape[0])
    results = [squared_distances(block, codebook).min(dim=1) for block in features.split(rows)]
    return torch.cat([r.indices for r in results]), torch.cat([r.values for r in results])


# ---------------------------------------------------------------------------------------------
# Released codebooks
# ---------------------------------------------------------------------------------------------


def codebook_from_checkpoint(path: str | os.PathLike, device: torch.device | str | None = None) -> Tensor:
    """Read a codebook file in the release layout ``{"codebook": FloatTensor[K, D]}`` -> ``[K, D]``."""
    return read_codebook(path, device)[0]


def read_codebook(path: str | os.PathLike, device: torch.device | str | None = None) -> tuple[Tensor, dict[str, Any]]:
    """A codebook file in the release layout -> ``(codebook [K, D], its other entries)``.

    The other entries are empty for a released codebook; a file of :func:`save_codebook` has
    ``"features"`` (the settings of the features it clusters) and what it was trained on.
    """
    ckpt = checkpoints.load_checkpoint(path)
    family = "WavLM-codebooks k-means codebook"
    checkpoints.require_keys(ckpt, ("codebook",), path, family)
    codebook = ckpt["codebook"]
    if not (isinstance(codebook, Tensor) and codebook.dim() == 2 and codebook.is_floating_point()):
        found = list(codebook.shape) if isinstance(codebook, Tensor) else type(codebook).__name__
        raise checkpoints.CheckpointError(
            f"{path} is not a {family} checkpoint: 'codebook' must be a float tensor [K, D], found {found}"
        )
    return codebook.to(device), {key: value for key, value in ckpt.items() if key != "codebook"}


def save_codebook(path: str | os.PathLike, codebook: Tensor, features: dict[str, Any], **details: Any) -> None:
    """Write ``{"codebook": [K, D] float32, "features": features, **details}`` atomically.

    ``features`` is the encoder's ``settings`` (e.g. ``feature_encoder("mfcc").settings``), so that a
    reader can refuse other features; ``details`` are JSON-like values (seed, frames, ...). The file
    loads with :func:`codebook_from_checkpoint` like a released one.
    """
    codebook = check_codebook(codebook).detach().to("cpu", torch.float32).contiguous()
    checkpoints.save_atomically({"codebook": codebook, "features": dict(features), **details}, Path(path))


# ---------------------------------------------------------------------------------------------
# Shipped codebooks of weight-free features
# ---------------------------------------------------------------------------------------------

SHIPPED_CODEBOOKS: dict[tuple[str, int], str] = {("fbank", 100): "fbank_k100.pt"}
"""(features, k) -> file in ``dpslm_utils/feature_codebooks/``: k-means codebooks of weight-free features
trained on the project's own audio (bundled examples + the toy language's training split) by
``data/make_fbank_codebook.py``."""


def feature_codebook(features: str = "fbank", k: int = 100, device: torch.device | str | None = None) -> Tensor:
    """A codebook of weight-free features shipped with the package: ``[k, D]``, no download, no training.

    ``feature_codebook("fbank")``: 100 centres of ``feature_encoder("fbank")`` log-mel frames ``[100, 80]``,
    the codebook for hearing units offline (:func:`dpslm_utils.resynthesize_units`).
    """
    if (features, k) not in SHIPPED_CODEBOOKS:
        shipped = ", ".join(f"({name!r}, k={size})" for name, size in SHIPPED_CODEBOOKS)
        raise ValueError(f"no shipped codebook for {features!r} features with k={k!r}; shipped: {shipped}. "
                         "Train one with dpslm.train_codebook or `dpslm train-codebook`")
    resource = importlib.resources.files(__package__) / "feature_codebooks" / SHIPPED_CODEBOOKS[features, k]
    with importlib.resources.as_file(resource) as path:
        return codebook_from_checkpoint(path, device)


def load_codebook(k: int = 500, layer: int = 11, device: torch.device | str | None = None) -> Tensor:
    """The released k-means codebook of WavLM Large ``layer`` features: ``FloatTensor[k, 1024]``.

    ``k`` is one of 100, 200, 500, 1000, 2000 (only layer 11 was released). Downloaded once into the
    cache. With ``DPSLM_WEIGHTS=random-tiny`` a seeded ``[k, 64]`` codebook for the random-tiny
    WavLM is returned instead.
    """
    with checkpoints.pretrained_path(registry.codebook_file(k, layer), "codebook", k=k) as path:
        return codebook_from_checkpoint(path, device)


# ---------------------------------------------------------------------------------------------
# Training: k-means++ initialisation + Lloyd iterations
# ---------------------------------------------------------------------------------------------


def train_codebook(
    features: Tensor,
    k: int,
    iterations: int = 100,
    seed: int = 0,
    device: torch.device | str | None = None,
) -> Tensor:
    """K-means on ``features [N, D]`` -> codebook ``[k, D]`` (float32, on ``device``, default the features').

    k-means++ initialisation (seeded by ``seed``), then at most ``iterations`` Lloyd steps (assign
    every frame to its nearest centre, move every centre to the mean of its frames), stopping early
    once no assignment changes. The inertia Σ‖x − nearest centre‖² never increases from one step to
    the next. A centre left without frames is moved onto the frame farthest from its centre.
    ``iterations=0`` returns the k-means++ initialisation.
    """
    features = check_vectors(features, "features")
    k = check_int("k", k, minimum=1)
    if k > features.shape[0]:
        raise ValueError(f"cannot fit k={k} centres to only {features.shape[0]} feature vectors (need k <= N)")
    iterations = check_int("iterations", iterations, minimum=0)
    seed = check_int("seed", seed, 0, MAX_SEED)

    x = features.detach().to(device=features.device if device is None else device, dtype=torch.float32)
    offset = x.mean(dim=0)  # work on centred data: smaller norms, more accurate distances
    x = x - offset
    generator = torch.Generator(device=x.device).manual_seed(seed)
    centres = _kmeans_plus_plus(x, int(k), generator)
    assignment = None
    for _ in range(iterations):
        new_assignment, distances = nearest(x, centres)
        if assignment is not None and torch.equal(new_assignment, assignment):
            break
        assignment = new_assignment
        centres = _cluster_means(x, assignment, distances, centres)
    return centres + offset


def _kmeans_plus_plus(x: Tensor, k: int, generator: torch.Generator) -> Tensor:
    """k-means++ seeding: each new centre is a frame drawn with probability ∝ its squared distance
    to the nearest centre chosen so far (uniformly while every frame coincides with a centre). [k, D]"""
    chosen = [int(torch.randint(x.shape[0], (1,), generator=generator, device=x.device))]
    x_norms = x.square().sum(dim=1)
    closest = torch.full_like(x_norms, float("inf"))
    for _ in range(k - 1):
        centre = x[chosen[-1]]
        closest = torch.minimum(closest, (x_norms - 2.0 * (x @ centre) + centre.square().sum()).clamp_min(0.0))
        weights = torch.where(closest.sum() > 0, closest, torch.ones_like(closest))
        chosen.append(int(torch.multinomial(weights, 1, generator=generator)))
    return x[chosen].clone()


def _cluster_means(x: Tensor, assignment: Tensor, distances: Tensor, centres: Tensor) -> Tensor:
    """One Lloyd update -> new centres ``[K, D]``: the mean of each centre's frames; centres without
    frames move onto the frames farthest from their centres. ``x [N, D]``, ``assignment [N]`` (centre
    of each frame), ``distances [N]`` (squared distance to it), ``centres [K, D]``."""
    k = centres.shape[0]
    counts = torch.bincount(assignment, minlength=k)
    sums = torch.zeros_like(centres).index_add_(0, assignment, x)
    means = sums / counts.clamp_min(1).unsqueeze(1).to(x.dtype)
    empty = torch.nonzero(counts == 0).squeeze(1)
    if empty.numel() > 0:
        means[empty] = x[distances.topk(empty.numel()).indices]
    return means
