"""TrainData on the A1111 host (stand-in `shared.sd_model`, SD1 and SDXL): escaped captions, cached encodings."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lib_lora.hosts.a1111 import A1111Host
from lib_lora.tiny.images import generate_dataset
from lib_lora.train.data import TrainData
from lib_lora.train.data_config import DataConfig
from lib_lora.train.latent_cache import cache_seed, encode_pixels

pytestmark = pytest.mark.hostcompat
pytest_plugins = ("webui_standin.fixtures",)  # a1111_host, sd_model, standin_arch, webui, webui_opts

CAPTION = r"tinychar, star (symbol), \(already escaped\), [brackets]"
ESCAPED = r"tinychar, star \(symbol\), \(already escaped\), \[brackets\]"


def test_captions_reach_a1111_escaped_and_cached_encodings_match_the_host(a1111_host: A1111Host,
                                                                         tmp_path: Path) -> None:
    dataset = generate_dataset(tmp_path, count=2, seed=0, repeats=1, name="tinychar", sizes=((32, 32),))
    dataset.caption_paths[0].write_text(CAPTION, encoding="utf-8")
    config = DataConfig(train_data_dir=str(dataset.root), resolution=32, caption_extension=".txt",
                        train_batch_size=2)
    data = TrainData(config, a1111_host, seed=5, cache_text_encoder_outputs=True)
    data.prepare()
    (batch,) = list(data.batches(0))
    first = batch.keys.index(dataset.images[0].relative_to(dataset.root).as_posix())
    assert batch.captions[first] == ESCAPED

    direct = a1111_host.encode_prompts(batch.captions, size=batch.sizes[0])
    assert torch.allclose(batch.conditioning.context, direct.context.cpu(), atol=1e-6)
    assert batch.conditioning.extra.keys() == direct.extra.keys()
    for name, tensor in direct.extra.items():
        assert torch.allclose(batch.conditioning.extra[name], tensor.cpu(), atol=1e-6)

    key = dataset.images[0].relative_to(dataset.root).as_posix()  # the ldm VAE is slow on CPU: check one image
    seed = cache_seed(5, data.latent_key(key))
    expected = encode_pixels(a1111_host, image_pixels(dataset.images[0])[None], seed=seed)
    assert data.cached_latent(key).shape == (4, 4, 4)
    assert torch.allclose(data.cached_latent(key), expected[0], atol=1e-5)


def image_pixels(path: Path) -> torch.Tensor:
    """A 32×32 image as the VAE must see it at resolution 32 (no resize, no crop): alpha on white, [-1, 1]."""
    image = Image.open(path).convert("RGBA")
    image = Image.alpha_composite(Image.new("RGBA", image.size, "white"), image).convert("RGB")
    return torch.from_numpy(np.asarray(image, dtype=np.float32).copy()).permute(2, 0, 1) / 127.5 - 1
