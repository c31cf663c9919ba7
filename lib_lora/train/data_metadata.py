"""The dataset part of sd-scripts' ss_* metadata, from TrainData's prepared images: folders, tags, buckets."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from .caption_rules import tag_frequency

if TYPE_CHECKING:
    from .data import PreparedImage


def folder_counts(images: Sequence[PreparedImage], *, reg: bool) -> dict[str, dict[str, int]]:
    """ss_dataset_dirs / ss_reg_dataset_dirs: per folder, its repeats and image count."""
    counts: dict[str, dict[str, int]] = {}
    for image in images:
        if image.item.is_reg == reg:
            entry = counts.setdefault(image.item.subset, {"n_repeats": image.item.repeats, "img_count": 0})
            entry["img_count"] += 1
    return counts


def tag_frequencies(images: Sequence[PreparedImage]) -> dict[str, dict[str, int]]:
    """ss_tag_frequency: per folder, how often each tag occurs in its captions."""
    by_folder: dict[str, list[str]] = {}
    for image in images:
        by_folder.setdefault(image.item.subset, []).append(image.item.caption)
    return {folder: tag_frequency(captions) for folder, captions in by_folder.items()}


def bucket_info(images: Sequence[PreparedImage]) -> dict[str, object]:
    """ss_bucket_info: each bucket's size and uses per epoch, and the mean aspect error of the used images."""
    counts: dict[tuple[int, int], int] = {}
    for image in images:
        if image.uses:
            counts[image.plan.bucket] = counts.get(image.plan.bucket, 0) + image.uses
    used = [image for image in images if image.uses]
    mean_error = sum(abs(image.plan.aspect_error) for image in used) / len(used) if used else 0.0
    buckets = {str(i): {"resolution": list(bucket), "count": counts[bucket]}
               for i, bucket in enumerate(sorted(counts))}
    return {"buckets": buckets, "mean_img_ar_error": mean_error}
