"""The loader check's tables against the real loaders: for each file, the modules the A1111 or Forge Neo table says
the host applies are the count the host itself reports in `Lora modules matched` (which the extension reads from
the built-in's own load: `lib_lora.webui.blockweight.matching`).

Files: the plain test LoRA (every attention target), the same with a Flux LoRA's modules added (fewer than half of
its keys: Neo loads the rest), and one SD module beside two Flux ones (more than half unmatched: Neo skips it,
A1111 applies the one). A table's count of modules is that of the modules with a key it applies.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from checks import prompt_with
from loras import lora_targets, random_lora
from results import infotext_fields

from lib_lora.networks.loaders import a1111, forge_neo
from lib_lora.networks.matching import module_names, module_of

MATCHED_FIELD = "Lora modules matched"
FLUX = ("lora_unet_double_blocks_0_img_attn_qkv", "lora_unet_single_blocks_0_linear1")
TABLES = {"a1111": a1111, "neo": forge_neo}


def _flux_modules() -> dict[str, np.ndarray]:
    tensors: dict[str, np.ndarray] = {}
    for name in FLUX:
        tensors.update({f"{name}.lora_down.weight": np.zeros((4, 64), np.float16),
                        f"{name}.lora_up.weight": np.zeros((192, 4), np.float16),
                        f"{name}.alpha": np.array(4.0, np.float16)})
    return tensors


def _write(folder: Path, name: str, tensors: dict[str, np.ndarray]) -> tuple[str, list[str]]:
    from safetensors.numpy import save_file

    save_file(tensors, str(folder / f"{name}.safetensors"))
    return name, list(tensors)


def _table_count(table, keys: list[str], arch: str) -> tuple[int, int]:  # noqa: ANN001
    """(modules with a key the table applies, modules of the file)."""
    report = table.check(keys, arch)
    failed = {failure.key for failure in report.failures}
    return len({module_of(key) for key in keys if key not in failed}), len(module_names(keys))


@pytest.mark.smoke
def test_the_tables_count_what_the_host_applies(host, loras) -> None:  # noqa: ANN001
    table = TABLES[host.kind]
    plain = random_lora(lora_targets(host.checkpoint)[1], seed=5)  # the keys of loras.plain, other values
    one = module_of(next(iter(plain)))
    files = [
        (loras.plain, list(plain)),
        _write(host.lora_dir, "lsloaderflux", {**plain, **_flux_modules()}),
        _write(host.lora_dir, "lsloadermostlyflux", {**{k: v for k, v in plain.items() if k.startswith(one + ".")},
                                                      **_flux_modules()}),
    ]
    host.refresh_loras()
    for name, keys in files:
        result = host.txt2img(prompt=prompt_with(f"<lora:{name}:1>"))
        value = infotext_fields(result.infotext).get(MATCHED_FIELD, "")
        found = re.search(rf"(?:^|; ){re.escape(name)}: (\d+) of (\d+)", value)
        assert found, f"{name}: no {MATCHED_FIELD} count in {result.infotext}"
        expected = _table_count(table, keys, loras.arch)
        assert (int(found[1]), int(found[2])) == expected, f"{host.name} {name}: host {found[0]}, table {expected}"
