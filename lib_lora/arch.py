"""Model families (sd1, sd2, sdxl) as data: block ids, kohya prefixes, latent scale, metadata names."""

from __future__ import annotations

from dataclasses import dataclass

from .errors import UnsupportedArchError


def _block_ids(n_in: int, n_out: int) -> tuple[str, ...]:
    return (
        tuple(f"IN{i:02d}" for i in range(n_in)) + ("M00",) + tuple(f"OUT{i:02d}" for i in range(n_out))
    )


@dataclass(frozen=True)
class Arch:
    """What differs between model families, as plain values."""

    name: str
    title: str
    unet_block_ids: tuple[str, ...]
    te_prefixes: tuple[str, ...]
    latent_scale: float
    latent_channels: int
    default_resolution: int
    ss_base_model_version: str
    modelspec_architecture: str

    @property
    def text_encoder_count(self) -> int:
        return len(self.te_prefixes)


SD1 = Arch(
    name="sd1",
    title="SD 1.x",
    unet_block_ids=_block_ids(12, 12),
    te_prefixes=("lora_te",),
    latent_scale=0.18215,
    latent_channels=4,
    default_resolution=512,
    ss_base_model_version="sd_v1",
    modelspec_architecture="stable-diffusion-v1",
)
SD2 = Arch(
    name="sd2",
    title="SD 2.x",
    unet_block_ids=_block_ids(12, 12),
    te_prefixes=("lora_te",),
    latent_scale=0.18215,
    latent_channels=4,
    default_resolution=768,
    ss_base_model_version="sd_v2",
    modelspec_architecture="stable-diffusion-v2-768-v",
)
SDXL = Arch(
    name="sdxl",
    title="SDXL",
    unet_block_ids=_block_ids(9, 9),
    te_prefixes=("lora_te1", "lora_te2"),
    latent_scale=0.13025,
    latent_channels=4,
    default_resolution=1024,
    ss_base_model_version="sdxl_base_v1-0",
    modelspec_architecture="stable-diffusion-xl-v1-base",
)

ARCHS: dict[str, Arch] = {a.name: a for a in (SD1, SD2, SDXL)}


def get_arch(name: str) -> Arch:
    """The family called `name` (sd1, sd2, sdxl); raises UnsupportedArchError naming the known ones."""
    try:
        return ARCHS[name]
    except KeyError:
        raise UnsupportedArchError(f"unknown model family {name!r}; expected one of {sorted(ARCHS)}") from None
