"""Text-encoder training on the real A1111 SDXL (tiny-sdxl, the full set; headless Chromium, the Train tab): its second
text encoder is open_clip, whose attention is fused (nn.MultiheadAttention). A short run with the text encoders
trained writes a LoRA whose file has q/k/v/out_proj modules of that encoder; A1111's built-in Lora, with the LoRA at
text-encoder weight 1 and UNet weight 0, changes the image; the image without LoRA is pixel-identical before and
after the run (the host's weights were restored bit for bit); no traceback names LoRA Studio.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hosts import BASE_PROMPT
from safetensors import safe_open
from test_real_recipes import open_train_tab, start
from ui import field_input

FIELDS = {"resolution": "64", "network_dim": "4", "network_alpha": "4", "train_batch_size": "1",
          "max_train_steps": "2", "learning_rate": "0.01", "conv_dim": "", "conv_alpha": ""}
"""A short run at a learning rate high enough to move a random model; the form's default trains the encoders."""


@pytest.fixture(scope="module")
def a1111_sdxl(request: pytest.FixtureRequest, host_pool: Any) -> Any:
    """A1111 1.10.1 on tiny-sdxl (the full set), started."""
    from conftest import _running, selected_hosts

    if "a1111-sdxl" not in selected_hosts(request.config):
        pytest.skip("a1111-sdxl is not among the selected hosts (the full set, or --hosts=a1111-sdxl)")
    return _running(host_pool, "a1111-sdxl")


def te2_attention_modules(path: Path) -> set[str]:
    """The fused-attention projections of the second text encoder the file has a LoRA for."""
    with safe_open(str(path), framework="pt") as handle:
        keys = list(handle.keys())
    return {key.split(".")[0].rsplit("_", 2)[-2] for key in keys
            if key.startswith("lora_te2_") and "_self_attn_" in key}


def test_sdxl_text_encoders_train_on_a1111_and_its_lora_applies_them(a1111_sdxl: Any, host_page: Any) -> None:
    from lib_lora.tiny.images import generate_dataset

    host = a1111_sdxl
    dataset = host.workdir / "datasets" / "lstetrain"
    if not dataset.is_dir():
        generate_dataset(dataset, count=2, seed=7, repeats=1, name="tinychar", sizes=((64, 64),))
    before = host.txt2img()
    mark = host.log_mark()
    page, watch = host_page(host)
    open_train_tab(page, dataset)
    field_input(page, "lora_studio_train_output_name").fill("lssdxlte")
    for name, value in FIELDS.items():
        field_input(page, f"lora_studio_train_{name}").fill(value)
    text = start(page)
    assert "Done:" in text, text
    saved = Path(field_input(page, "lora_studio_train_output").input_value())
    assert saved.is_file() and host.lora_dir.resolve() in saved.resolve().parents
    assert te2_attention_modules(saved) >= {"q", "k", "v", "out"}, "the open_clip encoder's attention was trained"

    after = host.txt2img(fresh=True)
    assert np.array_equal(after.image, before.image), "the base weights changed"
    host.refresh_loras()
    te_only = host.txt2img(prompt=f"{BASE_PROMPT} <lora:{saved.stem}:1:0>", fresh=True)
    assert not np.array_equal(te_only.image, before.image), "A1111's Lora did not apply the text-encoder LoRA"
    assert host.extension_tracebacks(mark) == []
    assert watch.ours() == []
