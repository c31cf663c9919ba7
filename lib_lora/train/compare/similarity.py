"""How close a LoRA's samples come to its training images: one number per set of samples, higher is closer.

Every image becomes a unit vector (an embedding); a sample's closeness is the cosine similarity to its nearest
training image, and a set's is the mean over its samples (`similarity`). Two embeddings:

- `ClipImageEmbedder`, where the host has a CLIP vision model (a diffusers pipeline's `image_encoder`, as
  IP-Adapter loads one): its image embedding, with the pipeline's own preprocessing (`feature_extractor`) or
  CLIP's. Cosine similarity of CLIP embeddings follows what the images show.
- `FeatureStatistic` otherwise: a cheap statistic of colours and layout, no model. The vector is two halves, each
  scaled by 1/√2 so the whole has unit length:
  - colour: the image's 4×4×4-bin RGB histogram (64 bins, counts summing to 1), square-rooted, so the dot product
    of two halves is the Bhattacharyya coefficient of the two colour distributions (1 = same colours);
  - layout: the image shrunk to 8×8 grey pixels (box filter), its mean taken off, scaled to unit length, so the
    dot product of two halves is the correlation of the two coarse layouts (1 = same light and dark places).
  The cosine similarity of two vectors is therefore (colour overlap + layout correlation) / 2, from −0.5 to 1.
  It tells apart colours and composition, not subjects: a hint, weighed as such by the recommendation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
from PIL import Image

HISTOGRAM_BINS = 4
"""Bins per RGB channel of the colour half (4³ = 64 bins)."""
LAYOUT_SIZE = 8
"""The layout half's image side in pixels (8×8 = 64 values)."""
STATISTIC_NAME = "colour and layout statistic"
CLIP_NAME = "CLIP image embedding"


class ImageEmbedder(Protocol):
    """Images → unit vectors [N, D] whose dot products say how alike the images are."""

    name: str

    def embed(self, images: Sequence[Image.Image]) -> np.ndarray: ...


class FeatureStatistic:
    """The colour-and-layout statistic of the module docstring: no model, a few milliseconds an image."""

    name = STATISTIC_NAME

    def embed(self, images: Sequence[Image.Image]) -> np.ndarray:
        return np.stack([statistic_vector(image) for image in images]) if images else np.zeros((0, 128))


def statistic_vector(image: Image.Image) -> np.ndarray:
    """One image's unit vector: √(colour histogram) and the centred 8×8 grey layout, each half of length 1/√2."""
    rgb = np.asarray(image.convert("RGB"), dtype=np.int64)
    bins = (rgb * HISTOGRAM_BINS) // 256
    index = (bins[..., 0] * HISTOGRAM_BINS + bins[..., 1]) * HISTOGRAM_BINS + bins[..., 2]
    counts = np.bincount(index.ravel(), minlength=HISTOGRAM_BINS ** 3).astype(np.float64)
    colour = np.sqrt(counts / max(counts.sum(), 1.0))
    grey = np.asarray(image.convert("L").resize((LAYOUT_SIZE, LAYOUT_SIZE), Image.Resampling.BOX), dtype=np.float64)
    layout = (grey - grey.mean()).ravel()
    norm = np.linalg.norm(layout)
    layout = layout / norm if norm > 0 else layout  # a flat image has no layout: that half adds nothing
    return np.concatenate([colour, layout]) / math.sqrt(2.0)


class ClipImageEmbedder:
    """A host's CLIP vision model: `model` (transformers CLIPVisionModel[WithProjection]) and `processor` (a
    CLIPImageProcessor); embeddings normalized to unit length."""

    name = CLIP_NAME

    def __init__(self, model: Any, processor: Any) -> None:
        self.model = model
        self.processor = processor

    def embed(self, images: Sequence[Image.Image]) -> np.ndarray:
        import torch

        if not images:
            return np.zeros((0, 1))
        parameter = next(self.model.parameters())
        pixels = self.processor(images=[image.convert("RGB") for image in images], return_tensors="pt")["pixel_values"]
        with torch.no_grad():
            output = self.model(pixel_values=pixels.to(parameter.device, parameter.dtype))
        embeds = getattr(output, "image_embeds", None)
        if embeds is None:
            embeds = output.pooler_output
        vectors = embeds.float().cpu().numpy().astype(np.float64)
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return vectors / np.where(norms > 0, norms, 1.0)


def image_embedder(host: Any) -> ImageEmbedder:
    """The host's CLIP vision model as a ClipImageEmbedder where it has one (`host.pipeline.image_encoder`, or
    `host.image_encoder`), else the FeatureStatistic."""
    owner = getattr(host, "pipeline", None) or host
    model = getattr(owner, "image_encoder", None) or getattr(host, "image_encoder", None)
    if model is None or not hasattr(model, "parameters"):
        return FeatureStatistic()
    processor = getattr(owner, "feature_extractor", None) or _clip_processor(model)
    return ClipImageEmbedder(model, processor)


def _clip_processor(model: Any) -> Any:
    """CLIP's own preprocessing (resize, centre crop, CLIP's mean and deviation) at the model's image size."""
    from transformers import CLIPImageProcessor

    size = int(getattr(getattr(model, "config", None), "image_size", 224))
    return CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})


def similarity(reference: np.ndarray, samples: np.ndarray) -> float:
    """The mean, over `samples` [N, D], of each one's cosine similarity to its nearest row of `reference` [M, D]
    (all unit vectors); ValueError when either is empty."""
    if len(reference) == 0 or len(samples) == 0:
        raise ValueError("similarity needs reference images and samples")
    return float((samples @ reference.T).max(axis=1).mean())
