"""A stand-in for A1111 1.10.1's built-in Lora extension: its data shapes and merge contract, over models.py's trees.

What each piece mirrors (extensions-builtin/Lora and modules/extra_networks.py at v1.10.1):
- `NetworkOnDisk`, `Network`, `NetworkWeights`, `NetworkModule` (network.py): the attribute names our glue reads
  (`name`, `mentioned_name`, `te_multiplier`, `unet_multiplier`, `dyn_dim`, `modules`, `mtime`; a module's
  `network`, `network_key`, `sd_key`, `sd_module`, `alpha`, `scale`, `dim`) and `multiplier()` (te when
  `'transformer' in sd_key[:20]`, else unet), `calc_scale()`, `finalize_updown()` (`updown * scale * multiplier()`).
- `NetworkModuleLora` (network_lora.py): `calc_updown` = up @ down reshaped to the layer (linear, 1×1 and k×k conv).
- `BuiltinLora` (networks.py): `assign_network_names_to_compvis_modules`, `load_network`, `load_networks`
  (networks still in `loaded_networks` under the same name are reused; else `networks_in_memory`; a file newer
  than the network is read again; `lora_in_memory_limit` 0 purges the memory after each load),
  `network_apply_weights` (a CPU copy of the weight before the first change; when `network_current_names`
  differs from `wanted_names`, copy the backup back, add each network's `calc_updown`, remember `wanted_names`)
  and `network_restore_weights_from_backup`. `apply_weights_in(root)` does for each layer of `root` what the
  built-in's patched `forward` does before computing.
- `ExtraNetworkLora.activate` (extra_networks_lora.py): `float(te)`, `float(unet)`, `int(dyn)`: `<lora:x:0.8:NCNF>`
  raises ValueError, as in A1111.
- `ExtraNetworkParams`, `parse_prompt(s)`, `ExtraNetworks.activate` (modules/extra_networks.py): tags found with
  the same pattern; a failing handler is reported and called again with no networks (so every LoRA is
  dropped); then the scripts' `after_extra_networks_activate`.

Counters for tests: `loads` (file reads, by name), `merges` (layers re-merged), `merged_layers` (their names).
Left out: LyCORIS types, DoRA, biases, bundled embeddings, hashes and aliases, `lora_functional`, fp8/fp16 copies,
nn.MultiheadAttention (models.py has no open_clip). Keys are matched to layers by lib_lora.networks.keys (A1111
converts the kohya name with its own table; both reach the same layer), then named by the layer's
`network_layer_name`. On the SDXL stand-in the second text encoder is an HF CLIP (models.py), whose names lack
A1111's open_clip `transformer`, so this stand-in's `multiplier()` reads unet for it: keep te == unet when a test
relies on the built-in's own choice there.
"""

from __future__ import annotations

import os
import re
from collections import Counter, defaultdict, namedtuple
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

from lib_lora.hosts.a1111 import A1111Host
from lib_lora.networks.keys import build_target_index

NetworkWeights = namedtuple("NetworkWeights", ["network_key", "sd_key", "w", "sd_module"])


class NetworkOnDisk:
    """A LoRA file the built-in listed: `name` (file stem) and `filename`."""

    def __init__(self, name: str, filename: str | Path) -> None:
        self.name = name
        self.filename = str(filename)
        self.alias = name
        self.shorthash = ""


class Network:
    """A loaded LoRA: its modules by compvis layer name and the multipliers of the current activation."""

    def __init__(self, name: str, network_on_disk: NetworkOnDisk) -> None:
        self.name = name
        self.network_on_disk = network_on_disk
        self.te_multiplier = 1.0
        self.unet_multiplier = 1.0
        self.dyn_dim = None
        self.modules: dict[str, NetworkModule] = {}
        self.bundle_embeddings: dict[str, Any] = {}
        self.mtime: float | None = None
        self.mentioned_name: str | None = None


class NetworkModule:
    """One layer's part of a network (network.py `NetworkModule`)."""

    def __init__(self, net: Network, weights: NetworkWeights) -> None:
        self.network = net
        self.network_key = weights.network_key
        self.sd_key = weights.sd_key
        self.sd_module = weights.sd_module
        self.shape = self.sd_module.weight.shape
        self.dim: int | None = None
        self.bias = weights.w.get("bias")
        self.alpha = weights.w["alpha"].item() if "alpha" in weights.w else None
        self.scale = weights.w["scale"].item() if "scale" in weights.w else None

    def multiplier(self) -> float:
        if "transformer" in self.sd_key[:20]:
            return self.network.te_multiplier
        return self.network.unet_multiplier

    def calc_scale(self) -> float:
        if self.scale is not None:
            return self.scale
        if self.dim is not None and self.alpha is not None:
            return self.alpha / self.dim
        return 1.0

    def finalize_updown(self, updown: torch.Tensor, orig_weight: torch.Tensor) -> tuple[torch.Tensor, None]:
        return updown.reshape(orig_weight.shape) * self.calc_scale() * self.multiplier(), None

    def calc_updown(self, orig_weight: torch.Tensor) -> tuple[torch.Tensor, None]:
        raise NotImplementedError


class NetworkModuleLora(NetworkModule):
    """A LoRA/LoCon module: `lora_down.weight` [r, in(, k, k)], `lora_up.weight` [out, r(, 1, 1)]."""

    def __init__(self, net: Network, weights: NetworkWeights) -> None:
        super().__init__(net, weights)
        self.up = weights.w["lora_up.weight"]
        self.down = weights.w["lora_down.weight"]
        self.dim = self.down.shape[0]

    def calc_updown(self, orig_weight: torch.Tensor) -> tuple[torch.Tensor, None]:
        up = self.up.to(orig_weight.device, dtype=torch.float32)
        down = self.down.to(orig_weight.device, dtype=torch.float32)
        updown = up.flatten(1) @ down.flatten(1)
        return self.finalize_updown(updown, orig_weight)


class BuiltinLora:
    """The built-in's `networks` module for one sd_model stand-in; install it as `sys.modules["networks"]`."""

    def __init__(self, sd_model: Any, lora_files: dict[str, Path]) -> None:
        self.sd_model = sd_model
        self.available_networks = {name: NetworkOnDisk(name, path) for name, path in lora_files.items()}
        self.loaded_networks: list[Network] = []
        self.networks_in_memory: dict[str, Network] = {}
        self.lora_in_memory_limit = 0
        self.loads: Counter[str] = Counter()
        self.merges = 0
        self.merged_layers: list[str] = []
        self.not_found: list[str] = []
        self.assign_network_names_to_compvis_modules(sd_model)
        self._index = build_target_index(A1111Host(sd_model))

    @staticmethod
    def assign_network_names_to_compvis_modules(sd_model: Any) -> None:
        """Name every layer as A1111 does: text encoders (SDXL: `{i}_` per embedder), then `sd_model.model`."""
        mapping: dict[str, nn.Module] = {}
        if sd_model.is_sdxl:
            roots = [(f"{i}_", embedder.wrapped) for i, embedder in enumerate(sd_model.conditioner.embedders)
                     if hasattr(embedder, "wrapped")]
        else:
            roots = [("", sd_model.cond_stage_model.wrapped)]
        roots.append(("", sd_model.model))
        for prefix, root in roots:
            for name, module in root.named_modules():
                network_name = prefix + name.replace(".", "_")
                mapping[network_name] = module
                module.network_layer_name = network_name
        sd_model.network_layer_mapping = mapping

    def load_network(self, name: str, network_on_disk: NetworkOnDisk) -> Network:
        self.loads[name] += 1
        net = Network(name, network_on_disk)
        net.mtime = os.path.getmtime(network_on_disk.filename)
        matched: dict[str, NetworkWeights] = {}
        for key_network, weight in load_file(network_on_disk.filename).items():
            module_key, _, network_part = key_network.partition(".")
            target = self._index.lookup(module_key)
            if target is None or target.rows is not None:
                continue
            sd_key = target.module.network_layer_name
            if sd_key not in matched:
                matched[sd_key] = NetworkWeights(key_network, sd_key, {}, target.module)
            matched[sd_key].w[network_part] = weight
        for sd_key, weights in matched.items():
            if "lora_up.weight" not in weights.w or "lora_down.weight" not in weights.w:
                raise AssertionError(f"no module type in this stand-in accepts {sorted(weights.w)}")
            net.modules[sd_key] = NetworkModuleLora(net, weights)
        return net

    def load_networks(self, names: list[str], te_multipliers: list[float] | None = None,
                      unet_multipliers: list[float] | None = None, dyn_dims: list[int | None] | None = None) -> None:
        already_loaded = {net.name: net for net in self.loaded_networks if net.name in names}
        self.loaded_networks.clear()
        for i, name in enumerate(names):
            net = already_loaded.get(name)
            on_disk = self.available_networks.get(name)
            if on_disk is None:
                self.not_found.append(name)
                continue
            if net is None:
                net = self.networks_in_memory.get(name)
            if net is None or os.path.getmtime(on_disk.filename) > net.mtime:
                net = self.load_network(name, on_disk)
                self.networks_in_memory.pop(name, None)
                self.networks_in_memory[name] = net
            net.mentioned_name = name
            net.te_multiplier = te_multipliers[i] if te_multipliers else 1.0
            net.unet_multiplier = unet_multipliers[i] if unet_multipliers else 1.0
            net.dyn_dim = dyn_dims[i] if dyn_dims else 1.0
            self.loaded_networks.append(net)
        while len(self.networks_in_memory) > self.lora_in_memory_limit:
            self.networks_in_memory.pop(next(iter(self.networks_in_memory)))

    @staticmethod
    def network_restore_weights_from_backup(layer: nn.Module) -> None:
        backup = getattr(layer, "network_weights_backup", None)
        if backup is not None:
            layer.weight.copy_(backup)

    def network_apply_weights(self, layer: nn.Module) -> None:
        name = getattr(layer, "network_layer_name", None)
        if name is None or not isinstance(getattr(layer, "weight", None), torch.Tensor):
            return
        current = getattr(layer, "network_current_names", ())
        wanted = tuple((x.name, x.te_multiplier, x.unet_multiplier, x.dyn_dim) for x in self.loaded_networks)
        if getattr(layer, "network_weights_backup", None) is None and wanted != ():
            if current != ():
                raise RuntimeError(f"{name} - no backup weights found and current weights are not unchanged")
            layer.network_weights_backup = layer.weight.to("cpu", copy=True)
        if current != wanted:
            self.merges += 1
            self.merged_layers.append(name)
            self.network_restore_weights_from_backup(layer)
            for net in self.loaded_networks:
                module = net.modules.get(name)
                if module is not None:
                    with torch.no_grad():
                        updown, _ = module.calc_updown(layer.weight)
                        layer.weight.copy_((layer.weight.to(updown.dtype) + updown).to(layer.weight.dtype))
            layer.network_current_names = wanted

    def apply_weights_in(self, root: nn.Module) -> None:
        """What the built-in's patched forwards do when `root` runs: bring every layer to the wanted set."""
        with torch.no_grad():
            for module in root.modules():
                self.network_apply_weights(module)


class ExtraNetworkParams:
    """modules/extra_networks.py: a tag's items; `named` when an item splits at '=' into exactly two parts."""

    def __init__(self, items: list[Any] | None = None) -> None:
        self.items = items or []
        self.positional: list[Any] = []
        self.named: dict[str, str] = {}
        for item in self.items:
            parts = item.split("=", 2) if isinstance(item, str) else [item]
            if len(parts) == 2:
                self.named[parts[0]] = parts[1]
            else:
                self.positional.append(item)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ExtraNetworkParams) and self.items == other.items

    def __repr__(self) -> str:
        return f"ExtraNetworkParams({self.items!r})"


RE_EXTRA_NET = re.compile(r"<(\w+):([^>]+)>")


def parse_prompt(prompt: str) -> tuple[str, dict[str, list[ExtraNetworkParams]]]:
    found: dict[str, list[ExtraNetworkParams]] = defaultdict(list)

    def take(match: re.Match[str]) -> str:
        found[match.group(1)].append(ExtraNetworkParams(items=match.group(2).split(":")))
        return ""

    return RE_EXTRA_NET.sub(take, prompt), found


def parse_prompts(prompts: list[str]) -> tuple[list[str], dict[str, list[ExtraNetworkParams]]]:
    """Tags removed from every prompt; the extra-network data of the first prompt only, as A1111 keeps."""
    cleaned, data = [], None
    for prompt in prompts:
        text, parsed = parse_prompt(prompt)
        data = parsed if data is None else data
        cleaned.append(text)
    return cleaned, data if data is not None else defaultdict(list)


class ExtraNetworkLora:
    """extra_networks_lora.py: the `lora` handler (alias `lyco`)."""

    def __init__(self, builtin: BuiltinLora) -> None:
        self.builtin = builtin

    def activate(self, p: Any, params_list: list[ExtraNetworkParams]) -> None:
        names, te_multipliers, unet_multipliers, dyn_dims = [], [], [], []
        for params in params_list:
            names.append(params.positional[0])
            te = float(params.positional[1]) if len(params.positional) > 1 else 1.0
            te = float(params.named.get("te", te))
            unet = float(params.positional[2]) if len(params.positional) > 2 else te
            unet = float(params.named.get("unet", unet))
            dyn = int(params.positional[3]) if len(params.positional) > 3 else None
            dyn = int(params.named["dyn"]) if "dyn" in params.named else dyn
            te_multipliers.append(te)
            unet_multipliers.append(unet)
            dyn_dims.append(dyn)
        self.builtin.load_networks(names, te_multipliers, unet_multipliers, dyn_dims)


class ExtraNetworks:
    """modules/extra_networks.py `activate`: each handler with its tags, failures reported, then the scripts."""

    def __init__(self, builtin: BuiltinLora) -> None:
        handler = ExtraNetworkLora(builtin)
        self.registry = {"lora": handler}
        self.aliases = {"lyco": handler}
        self.errors: list[str] = []

    def activate(self, p: Any, extra_network_data: dict[str, list[ExtraNetworkParams]]) -> None:
        activated = []
        for name, params_list in extra_network_data.items():
            handler = self.registry.get(name) or self.aliases.get(name)
            if handler is None:
                continue
            try:
                handler.activate(p, params_list)
                activated.append(handler)
            except Exception as error:  # A1111: errors.display(...), generation goes on
                self.errors.append(f"activating extra network {name}: {error!r}")
        for name, handler in self.registry.items():
            if handler in activated:
                continue
            try:
                handler.activate(p, [])
            except Exception as error:
                self.errors.append(f"activating extra network {name}: {error!r}")
        if p.scripts is not None:
            p.scripts.after_extra_networks_activate(p, batch_number=p.iteration, prompts=p.prompts, seeds=p.seeds,
                                                    subseeds=p.subseeds, extra_network_data=extra_network_data)
