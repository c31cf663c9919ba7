"""A minimal fake of the WebUI's `modules` package: only the attributes lib_lora/hosts/a1111.py touches.

- `modules.shared`: `sd_model`, `opts` (CLIP_stop_at_last_layers, sdxl_crop_top/left: read by the stand-in
  models as A1111 reads them), `cmd_opts` (lowvram).
- `modules.devices`: `device`, `dtype`, `dtype_unet`, `dtype_vae`, `autocast()` (a nullcontext, as A1111's is
  when the dtype is float32).
- `modules.prompt_parser`: `SdConditioning`, the prompt list carrying width/height.
There is no `modules.processing`: `generate()` needs the real WebUI.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from contextlib import nullcontext
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest
import torch


class SdConditioning(list):
    """`modules.prompt_parser.SdConditioning`: a list of prompts with the size and sign of the conditioning."""

    def __init__(
        self,
        prompts: Sequence[str],
        is_negative_prompt: bool = False,
        width: int | None = None,
        height: int | None = None,
        copy_from: Any = None,
    ) -> None:
        super().__init__(prompts)
        copy_from = copy_from if copy_from is not None else SimpleNamespace()
        self.is_negative_prompt = is_negative_prompt or getattr(copy_from, "is_negative_prompt", False)
        self.width = width or getattr(copy_from, "width", None)
        self.height = height or getattr(copy_from, "height", None)


def make_opts(**overrides: Any) -> SimpleNamespace:
    """`shared.opts` with A1111's defaults for the settings the stand-ins read."""
    return SimpleNamespace(
        **{"CLIP_stop_at_last_layers": 1, "sdxl_crop_top": 0, "sdxl_crop_left": 0, **overrides}
    )


def install_fake_modules(
    monkeypatch: pytest.MonkeyPatch, sd_model: Any, opts: SimpleNamespace, *, lowvram: bool = False
) -> SimpleNamespace:
    """Put `modules` and its `shared`, `devices`, `prompt_parser` into sys.modules (undone by monkeypatch)."""
    package = ModuleType("modules")
    package.__path__ = []  # a package with no submodules on disk: `from modules import processing` fails
    shared = ModuleType("modules.shared")
    shared.sd_model = sd_model
    shared.opts = opts
    shared.cmd_opts = SimpleNamespace(lowvram=lowvram)
    devices = ModuleType("modules.devices")
    devices.device = torch.device("cpu")
    devices.dtype = devices.dtype_unet = devices.dtype_vae = torch.float32
    devices.autocast = lambda disable=False: nullcontext()
    prompt_parser = ModuleType("modules.prompt_parser")
    prompt_parser.SdConditioning = SdConditioning
    for name, module in (("shared", shared), ("devices", devices), ("prompt_parser", prompt_parser)):
        setattr(package, name, module)
        monkeypatch.setitem(sys.modules, f"modules.{name}", module)
    monkeypatch.setitem(sys.modules, "modules", package)
    return SimpleNamespace(modules=package, shared=shared, devices=devices, prompt_parser=prompt_parser)
