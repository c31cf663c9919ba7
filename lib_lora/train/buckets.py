"""Aspect-ratio buckets, pure: the bucket sizes for a pixel budget, each image's bucket, the resize and crop into it.

Sizes are (width, height) in pixels, as sd-scripts writes them. The rules are sd-scripts' BucketManager's: every
bucket has at most the area of `resolution`, sides are multiples of `bucket_reso_steps` within the (rounded)
min/max sides; an image goes to the bucket nearest its aspect ratio (its own size when that is a bucket), is
resized to cover the bucket and cropped. With `bucket_no_upscale` each image gets its own bucket, never larger
than itself (here strictly: sd-scripts' rounding can enlarge an image by a few pixels, ours floors).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from PIL import Image

from .errors import ConfigError, TrainingError

Size = tuple[int, int]


@dataclass(frozen=True)
class BucketPlan:
    """How one image becomes a training crop: resize it to `resized`, then cut `bucket` out of that."""

    bucket: Size
    resized: Size
    aspect_error: float
    """Bucket aspect minus image aspect (width / height); sd-scripts reports the mean of its absolute value."""


def bucket_limits(min_reso: int, max_reso: int, step: int) -> tuple[int, int]:
    """sd-scripts' adjustment of the side limits: min rounded down, max rounded up to multiples of `step`."""
    return max(step, min_reso - min_reso % step), -(-max_reso // step) * step


def bucket_resolutions(resolution: Size, *, min_reso: int, max_reso: int, step: int) -> list[Size]:
    """Every bucket for the pixel budget width×height: sides multiples of `step` within the limits, sorted.

    The square bucket nearest the budget is always there; then, for each width from the smallest side up, the
    tallest height that keeps the area within the budget, and its transpose.
    """
    if step <= 0 or step % 8:
        raise ConfigError("bucket_reso_steps", step, "must be a positive multiple of 8")
    low, high = bucket_limits(min_reso, max_reso, step)
    width, height = resolution
    if not low <= min(width, height) or max(width, height) > high:
        raise ConfigError("resolution", resolution,
                          f"sides must lie between min_bucket_reso ({low}) and max_bucket_reso ({high})")
    budget = width * height
    square = math.isqrt(budget) // step * step
    sizes = {(square, square)}
    for side in range(low, high + 1, step):
        other = min(high, budget // side // step * step)
        if other >= low:
            sizes.update({(side, other), (other, side)})
    return sorted(sizes)


def nearest_bucket(image_size: Size, buckets: list[Size]) -> Size:
    """The image's own size when it is a bucket, else the bucket nearest its aspect ratio (the first of equals)."""
    if image_size in buckets:
        return image_size
    aspect = image_size[0] / image_size[1]
    return min(buckets, key=lambda b: abs(b[0] / b[1] - aspect))


def cover_size(image_size: Size, bucket: Size) -> Size:
    """The image's size scaled (up or down, aspect kept, rounded) so that it covers `bucket` exactly on one side."""
    width, height = image_size
    bucket_width, bucket_height = bucket
    if width * bucket_height > bucket_width * height:  # wider than the bucket: match heights
        return (2 * width * bucket_height + height) // (2 * height), bucket_height
    return bucket_width, (2 * height * bucket_width + width) // (2 * width)


def plan_in_buckets(image_size: Size, buckets: list[Size]) -> BucketPlan:
    """Resize to cover the nearest bucket (enlarging when needed), then crop to it."""
    bucket = nearest_bucket(image_size, buckets)
    return BucketPlan(bucket, cover_size(image_size, bucket), bucket[0] / bucket[1] - image_size[0] / image_size[1])


def plan_no_upscale(image_size: Size, *, max_area: int, step: int) -> BucketPlan:
    """A bucket of the image's own shape: shrunk to `max_area` when larger, sides floored to `step`, never enlarged.

    A shrunk image matches its bucket exactly on one side (whichever keeps the aspect better), as sd-scripts does.
    """
    width, height = image_size
    if width * height <= max_area:
        candidates = [((width - width % step, height - height % step), (width, height))]
    else:
        scale = math.sqrt(max_area / (width * height))
        candidates = []
        bucket_width = int(width * scale) // step * step
        while bucket_width > 0 and bucket_width * (height * bucket_width // width) > max_area:
            bucket_width -= step  # float rounding of `scale` must not break the area budget
        if bucket_width > 0:
            resized_height = height * bucket_width // width
            candidates.append(((bucket_width, resized_height - resized_height % step), (bucket_width, resized_height)))
        bucket_height = int(height * scale) // step * step
        while bucket_height > 0 and bucket_height * (width * bucket_height // height) > max_area:
            bucket_height -= step
        if bucket_height > 0:
            resized_width = width * bucket_height // height
            candidates.append(((resized_width - resized_width % step, bucket_height), (resized_width, bucket_height)))
    aspect = width / height
    candidates = [(b, r) for b, r in candidates if b[0] > 0 and b[1] > 0]
    if not candidates:
        raise TrainingError(f"an image of {width}×{height} pixels is smaller than one bucket step ({step} pixels)")
    bucket, resized = min(candidates, key=lambda c: (abs(c[0][0] / c[0][1] - aspect), -c[0][0] * c[0][1]))
    return BucketPlan(bucket, resized, bucket[0] / bucket[1] - aspect)


@dataclass(frozen=True)
class Bucketing:
    """The bucket rules of one DataConfig; `plan(size)` places an image."""

    resolution: Size
    enabled: bool
    no_upscale: bool
    step: int
    buckets: tuple[Size, ...]

    @classmethod
    def create(cls, resolution: Size, *, enable_bucket: bool, min_bucket_reso: int, max_bucket_reso: int,
               bucket_reso_steps: int, bucket_no_upscale: bool) -> Bucketing:
        """Without buckets every image is cropped to `resolution` (one bucket), as sd-scripts does."""
        if not enable_bucket:
            buckets: tuple[Size, ...] = (tuple(resolution),)  # type: ignore[assignment]
        elif bucket_no_upscale:
            buckets = ()
        else:
            buckets = tuple(bucket_resolutions(resolution, min_reso=min_bucket_reso, max_reso=max_bucket_reso,
                                               step=bucket_reso_steps))
        return cls(tuple(resolution), enable_bucket, enable_bucket and bucket_no_upscale,  # type: ignore[arg-type]
                   bucket_reso_steps, buckets)

    def plan(self, image_size: Size) -> BucketPlan:
        if self.no_upscale:
            return plan_no_upscale(image_size, max_area=self.resolution[0] * self.resolution[1], step=self.step)
        return plan_in_buckets(image_size, list(self.buckets))


def crop_offset(plan: BucketPlan, rng: random.Random | None = None) -> tuple[int, int]:
    """(left, top) of the crop: centred, or uniformly random when `rng` is given (random_crop)."""
    spare_x = plan.resized[0] - plan.bucket[0]
    spare_y = plan.resized[1] - plan.bucket[1]
    if rng is None:
        return spare_x // 2, spare_y // 2
    return rng.randint(0, spare_x), rng.randint(0, spare_y)


def resize_and_crop(image: Image.Image, plan: BucketPlan, offset: tuple[int, int]) -> Image.Image:
    """The image resized to `plan.resized` (Lanczos) and cropped to `plan.bucket` at `offset`."""
    if image.size != plan.resized:
        image = image.resize(plan.resized, Image.Resampling.LANCZOS)
    left, top = offset
    if (left, top) == (0, 0) and image.size == plan.bucket:
        return image
    return image.crop((left, top, left + plan.bucket[0], top + plan.bucket[1]))
