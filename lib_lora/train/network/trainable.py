"""The network being trained: trainable modules on the host's weights, attached by forward hooks.

`TrainableNetwork.create(config, host, seed=…)` picks the host weights (network_targets), builds one module per
weight with the algorithm of the ALGORITHMS registry, and optionally starts from `network_weights`.
`attached()` hooks every module onto its host module for the length of a `with` block (no module replaced, no
host weight written; all hooks removed in `finally`); modules on open_clip's fused attention are served by one hook
per attention (`fused_attention`). `kohya_state_dict()` is the file: kohya keys and
tensors that `lib_lora.networks` (and A1111, diffusers, ComfyUI) read back to the same ΔW.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from ...blocks.presets import PresetBook
from ...errors import LoraFormatError
from ...networks.formats import group_by_module, parse_modules
from ...networks.keys import TargetIndex, build_target_index
from ...networks.metadata import DYNAMIC, NetworkRecord
from ..errors import ConfigError, TrainingError
from ..fused_attention import fused_hook, split_fused
from .blocks import sdscripts_blocks
from .config import NetworkConfig
from .loha import LohaTrainable
from .lokr import LokrTrainable
from .lora import LoraTrainable
from .module import ModuleSpec, TrainableModule
from .targets import ModulePlan, plan_modules, refuse_unhookable

ALGORITHMS: dict[str, type[TrainableModule]] = {
    "lora": LoraTrainable,
    "locon": LoraTrainable,
    "loha": LohaTrainable,
    "lokr": LokrTrainable,
}
"""algo name -> module class (LoCon is LoRA on convolutions too)."""

_FILE_FORMAT_OF_ALGO = {"lora": "lora", "locon": "lora", "loha": "loha", "lokr": "lokr"}


class TrainableNetwork(nn.Module):
    """Trainable modules keyed by kohya name; `multiplier` scales them all (1.0 while training)."""

    def __init__(self, config: NetworkConfig, index: TargetIndex, modules: list[TrainableModule],
                 block_index: Mapping[str, int | None], lr_weights: tuple[float, ...] | None) -> None:
        super().__init__()
        self.config = config
        self.arch = index.arch
        self.lora_modules = nn.ModuleDict({m.lora_name: m for m in modules})
        self.multiplier = 1.0
        self._block_index = dict(block_index)
        self._lr_weights = lr_weights
        self._index = index
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    @classmethod
    def create(cls, config: NetworkConfig, host, *, seed: int, presets: PresetBook | None = None,
               ) -> TrainableNetwork:
        """The network `config` asks for on `host`'s UNet and text encoders, initialised from `seed`.

        With `network_weights` it starts from that file (its alpha kept; with `dim_from_weights` its modules,
        ranks and alphas). Parameters are float32 on the host's device. ConfigError for settings the host
        cannot take (wrong per-block lengths, neuron dropout on fused open_clip attention, a file that does not fit).
        """
        index = build_target_index(host)
        plans, lr_weights = plan_modules(config, index, presets=presets)
        file_tensors = _read_weights(config.network_weights) if config.network_weights else None
        if config.dim_from_weights:
            plans = _plans_from_weights(file_tensors, index, config)
            kept = {plan.target.key for plan in plans}
            file_tensors = {k: v for k, v in file_tensors.items()
                            if (target := index.lookup(k)) is not None and target.key in kept}
        if not plans:
            raise ConfigError("network_args", config.network_args, "no module to train: the settings leave no "
                                                                   "weight of this model selected")
        generator = torch.Generator().manual_seed(seed)
        algo_class = ALGORITHMS[config.algo]
        args = config.args
        modules = [algo_class(ModuleSpec(plan.target, plan.dim, plan.alpha, config.network_dropout,
                                         args.rank_dropout, args.module_dropout, args.dora_wd, args.wd_on_output,
                                         args.factor, args.decompose_both, args.full_matrix), generator)
                   for plan in plans]
        network = cls(config, index, modules, {p.target.key: p.block_index for p in plans}, lr_weights)
        network.to(host.device)
        if file_tensors is not None:
            network.load_kohya_state_dict(file_tensors)
        return network

    # -- attaching ------------------------------------------------------------------------------------------------
    @contextmanager
    def attached(self) -> Iterator[None]:
        """Hook every module onto its host module for the block; every hook is removed on exit, even on errors."""
        if self._handles:
            raise TrainingError("the network is already attached to the host")
        fused, plain = split_fused(self.lora_modules.values(), self._index)
        try:
            for module in plain:
                self._handles.append(module.target.module.register_forward_hook(self._hook(module), with_kwargs=True))
            for group in fused:  # open_clip attention: recomputed with W + ΔW (see fused_attention)
                hook = fused_hook(group, lambda: self.multiplier)
                self._handles.append(group.attention.register_forward_hook(hook, with_kwargs=True))
            yield
        finally:
            for handle in self._handles:
                handle.remove()
            self._handles.clear()

    def _hook(self, trainable: TrainableModule):
        def adjust(module: nn.Module, args: tuple, kwargs: dict, output: torch.Tensor) -> torch.Tensor:
            x = args[0] if args else next(iter(kwargs.values()))
            return trainable.adjusted_output(module, x, output, self.multiplier)

        return adjust

    # -- what is trained ------------------------------------------------------------------------------------------
    @property
    def trains_text_encoder(self) -> bool:
        return any(m.target.root != "unet" for m in self.lora_modules.values())

    @property
    def trains_unet(self) -> bool:
        return any(m.target.root == "unet" for m in self.lora_modules.values())

    def param_groups(self, *, unet_lr: float | None, text_encoder_lr: float | None,
                     learning_rate: float) -> list[dict]:
        """Optimizer groups as sd-scripts builds them: text encoder, then UNet (per block with *_lr_weight).

        Each group has "params", "lr" and a "name"; LoRA+ puts the output-side factors (LoRA `lora_up`, LoHa
        `hada_w*_a`, LoKr `lokr_w*_a`) in their own group at lr × ratio. Groups whose lr is 0 are left out and
        their parameters frozen (requires_grad False), so they cost no gradient.
        """
        args = self.config.args
        te_lr = text_encoder_lr if text_encoder_lr is not None else learning_rate
        unet_base = unet_lr if unet_lr is not None else learning_rate
        te_ratio = args.loraplus_text_encoder_lr_ratio or args.loraplus_lr_ratio
        unet_ratio = args.loraplus_unet_lr_ratio or args.loraplus_lr_ratio
        buckets: dict[tuple[str, float, float | None], list[TrainableModule]] = {}
        for module in sorted(self.lora_modules.values(), key=lambda m: m.target.root == "unet"):  # TE first
            if module.target.root != "unet":
                buckets.setdefault(("textencoder", te_lr, te_ratio), []).append(module)
                continue
            position = self._block_index.get(module.lora_name)
            if self._lr_weights is not None and position is not None:
                label = f"unet {sdscripts_blocks(self.arch)[position]}"
                buckets.setdefault((label, unet_base * self._lr_weights[position], unet_ratio), []).append(module)
            else:
                buckets.setdefault(("unet", unet_base, unet_ratio), []).append(module)
        groups: list[dict] = []
        for (label, lr, ratio), modules in buckets.items():
            plain, plus = [], []
            for module in modules:
                for name, param in module.named_parameters():
                    (plus if ratio is not None and name in module.plus_names else plain).append(param)
            for params, group_lr, suffix in ((plain, lr, ""), (plus, lr * (ratio or 1.0), " plus")):
                if not params:
                    continue
                if not group_lr:
                    for param in params:
                        param.requires_grad_(False)
                    continue
                groups.append({"params": params, "lr": group_lr, "name": label + suffix})
        return groups

    # -- files ----------------------------------------------------------------------------------------------------
    def kohya_state_dict(self, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
        """{`<kohya name>.<suffix>`: tensor} on the CPU, factors in `dtype` (their own when None), alpha float32."""
        return {f"{name}.{suffix}": tensor for name, module in self.lora_modules.items()
                for suffix, tensor in module.kohya_tensors(dtype).items()}

    def load_kohya_state_dict(self, tensors: Mapping[str, torch.Tensor]) -> None:
        """Load a kohya state dict (any spelling of the keys) into the matching modules.

        Modules the file lacks keep their values; modules of the file this network does not have, and tensors
        that do not fit, raise ConfigError (nothing is loaded then).
        """
        try:
            groups = group_by_module(tensors)
        except LoraFormatError as error:
            raise ConfigError("network_weights", error.key, error.reason) from None
        matched: list[tuple[TrainableModule, dict[str, torch.Tensor]]] = []
        unknown = []
        for key, group in groups.items():
            target = self._index.lookup(key)
            module = self.lora_modules[target.key] if target is not None and target.key in self.lora_modules \
                else None
            if module is None:
                unknown.append(key)
            else:
                matched.append((module, group))
        if unknown:
            raise ConfigError("network_weights", unknown[0],
                              f"{len(unknown)} module(s) of the file are not in this network (set dim_from_weights "
                              "= true to train exactly the file's modules)")
        snapshot = {name: p.detach().clone() for name, p in self.named_parameters()}
        alphas = {name: m.alpha for name, m in self.lora_modules.items()}
        try:
            for module, group in matched:
                module.load_kohya_tensors(group)
        except BaseException:
            with torch.no_grad():
                for name, param in self.named_parameters():
                    param.copy_(snapshot[name])
            for name, alpha in alphas.items():
                self.lora_modules[name].alpha = alpha
            raise

    def metadata(self) -> dict[str, str]:
        """sd-scripts' network keys (ss_network_module, _dim, _alpha, _args); dim and alpha are "Dynamic" when the
        modules' ranks come from the weights file."""
        config = self.config
        dynamic = config.dim_from_weights
        return NetworkRecord(config.network_module, DYNAMIC if dynamic else config.network_dim,
                             DYNAMIC if dynamic else config.network_alpha, dict(config.network_args)).to_metadata()

    @torch.no_grad()
    def apply_max_norm(self, max_norm: float) -> tuple[int, float]:
        """scale_weight_norms: scale each module's ΔW to norm ≤ max_norm; (modules scaled, mean norm after)."""
        results = [module.apply_max_norm(max_norm) for module in self.lora_modules.values()]
        scaled = sum(1 for was_scaled, _ in results if was_scaled)
        return scaled, sum(norm for _, norm in results) / max(len(results), 1)


def _read_weights(path: str) -> dict[str, torch.Tensor]:
    """The tensors of a LoRA file, read and validated by lib_lora.networks; ConfigError when it cannot be used."""
    from ...networks.files import load_lora_file

    if not Path(path).is_file():
        raise ConfigError("network_weights", path, "no such file")
    try:
        return dict(load_lora_file(Path(path)).tensors)
    except LoraFormatError as error:
        raise ConfigError("network_weights", path, str(error)) from None


def _plans_from_weights(tensors: Mapping[str, torch.Tensor] | None, index: TargetIndex,
                        config: NetworkConfig) -> list[ModulePlan]:
    """dim_from_weights: a plan per module of the file on the sides trained, with its rank and alpha; its kind
    must be the algo's."""
    try:
        modules = parse_modules(tensors or {})
    except LoraFormatError as error:
        raise ConfigError("network_weights", config.network_weights, str(error)) from None
    wanted = _FILE_FORMAT_OF_ALGO[config.algo]
    plans = []
    for key, module in modules.items():
        target = index.lookup(key)
        if target is None:
            raise ConfigError("network_weights", key, "the loaded model has no such module")
        if module.format != wanted or (module.dora_scale is not None) != config.args.dora_wd:
            kind = module.format + (" with DoRA" if module.dora_scale is not None else "")
            raise ConfigError("network_weights", key, f"is a {kind} module; this network trains {config.algo}"
                                                      f"{' with DoRA' if config.args.dora_wd else ''}")
        rank = module.rank or config.network_dim
        if (target.root == "unet" and config.network_train_text_encoder_only) or \
                (target.root != "unet" and config.network_train_unet_only):
            continue  # the file's modules on the side this run does not train
        plans.append(ModulePlan(target, rank, module.alpha if module.alpha is not None else float(rank), None))
    refuse_unhookable(plans, index, config)
    return plans
