"""What network to train: sd-scripts' network options (`--network_*`) and their `network_args`, validated.

`NetworkConfig` keeps sd-scripts' names and meanings so a TOML carries over: `network_module` is
"networks.lora" (kohya's LoRA, LoCon with conv_dim) or "lycoris.kohya" (then `algo` = lora/locon/loha/lokr and
LyCORIS's defaults: conv layers trained at conv_dim = network_dim, `dora_wd=True` for DoRA).
`network_args` stays the plain {key: string} sd-scripts writes into `ss_network_args`; `NetworkConfig.args`
is its typed reading (NetworkArgs), checked once in `__post_init__`. Settings that need the model family
(per-block lists, the blocks of `train_blocks`) are checked when the network is created.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..bounds import MAX_LIST_VALUES, check_option
from ..errors import ConfigError

NETWORK_MODULES: tuple[str, ...] = ("networks.lora", "lycoris.kohya")
ALGOS: tuple[str, ...] = ("lora", "locon", "loha", "lokr")
LYCORIS_PRESETS: tuple[str, ...] = ("full", "full-lin", "attn-mlp", "unet-only", "unet-transformer-only",
                                    "unet-convblock-only")
LR_WEIGHT_CURVES: tuple[str, ...] = ("cosine", "sine", "linear", "reverse_linear", "zeros")

NETWORK_HELP: dict[str, str] = {
    "network_module": "networks.lora (LoRA; LoCon with conv_dim) or lycoris.kohya (algo=lora|locon|loha|lokr in "
                      "network_args)",
    "network_dim": "rank of each LoRA module (16 is plenty for most characters and styles)",
    "network_alpha": "alpha: the update is scaled by alpha/dim; 0 means alpha = dim (no scaling)",
    "network_dropout": "neuron dropout on the LoRA's rank activations while training (e.g. 0.1); LoRA/LoCon only",
    "network_args": "extra options as key=value: conv_dim, conv_alpha, algo, dora_wd, rank_dropout, "
                    "module_dropout, block_dims, down_lr_weight, loraplus_lr_ratio, train_blocks, …",
    "network_train_unet_only": "train only the UNet (recommended for SDXL; lets text-encoder outputs be cached)",
    "network_train_text_encoder_only": "train only the text encoder(s)",
    "network_weights": "start from this LoRA file instead of from zero",
    "dim_from_weights": "take each module's rank and alpha from network_weights",
    "scale_weight_norms": "after each step, scale down any module whose update norm exceeds this (1.0 is usual)",
}
"""One line per NetworkConfig field: the words the command line and the Train tab both show."""

NETWORK_ARGS_HELP: dict[str, str] = {
    "conv_dim": "rank for 3×3 convolutions (LoCon / C3Lier); unset with networks.lora: convolutions are not trained",
    "conv_alpha": "alpha for 3×3 convolutions (networks.lora default 1, lycoris.kohya default network_alpha)",
    "algo": "lycoris.kohya algorithm: lora, locon, loha or lokr",
    "preset": "lycoris.kohya module preset: " + ", ".join(LYCORIS_PRESETS),
    "dora_wd": "True: DoRA (weight-decomposed) training on top of the algo (LyCORIS's name)",
    "wd_on_output": "DoRA magnitude per output row (True, LyCORIS ≥3.2 default) or per input column (False)",
    "rank_dropout": "drop this fraction of ranks (LoRA) or update rows (LoHa/LoKr/DoRA) per step",
    "module_dropout": "skip a whole module with this probability per step",
    "factor": "LoKr: Kronecker factor (-1 = as square as possible)",
    "decompose_both": "LoKr: also factor the small Kronecker matrix into two low-rank matrices",
    "full_matrix": "LoKr: keep the large Kronecker matrix full (no low-rank factors)",
    "block_dims": "per-block rank, 25 values for SD1/SD2 (IN00..IN11, M00, OUT00..OUT11), 23 for SDXL",
    "block_alphas": "per-block alpha, same layout as block_dims",
    "conv_block_dims": "per-block rank of 3×3 convolutions, same layout as block_dims",
    "conv_block_alphas": "per-block alpha of 3×3 convolutions, same layout as block_dims",
    "down_lr_weight": "learning-rate factor per down block (12 SD1, 9 SDXL) or cosine/sine/linear/reverse_linear/"
                      "zeros, optionally +base (e.g. sine+0.5)",
    "mid_lr_weight": "learning-rate factor of the middle block (1 value SD1, 3 SDXL)",
    "up_lr_weight": "learning-rate factor per up block, as down_lr_weight",
    "block_lr_zero_threshold": "block learning-rate factors at or below this become 0: those blocks get no modules",
    "loraplus_lr_ratio": "LoRA+: the up matrices learn this many times faster (≈16)",
    "loraplus_unet_lr_ratio": "LoRA+ ratio for the UNet only",
    "loraplus_text_encoder_lr_ratio": "LoRA+ ratio for the text encoder(s) only",
    "train_blocks": "train only these UNet blocks: a Block Weight preset name (CHAR: blocks at 0 are skipped) or a "
                    "list like IN04-IN07,OUT03-OUT06",
}
"""One line per supported `network_args` key."""

# LyCORIS options we do not implement, with the value that means "off" (accepted as a no-op).
_UNSUPPORTED_OFF_VALUES: dict[str, str] = {
    "use_tucker": "false", "use_cp": "false", "use_conv_cp": "false", "disable_conv_cp": "true",
    "use_scalar": "false", "rs_lora": "false", "bypass_mode": "false", "train_norm": "false",
    "rank_dropout_scale": "false", "unbalanced_factorization": "false", "rescaled": "false",
}
_FLOAT = r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?"
_BLOCK_LIST_ITEM = re.compile(r"(BASE|IN\d\d|M00|OUT\d\d)(?:-(BASE|IN\d\d|M00|OUT\d\d))?")
_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off", "none", "")


@dataclass(frozen=True)
class NetworkArgs:
    """The typed reading of `network_args`; per-block values stay as written until the arch is known."""

    algo: str = "lora"
    preset: str = "full"
    conv_dim: int | None = None
    conv_alpha: float | None = None
    dora_wd: bool = False
    wd_on_output: bool = True
    rank_dropout: float | None = None
    module_dropout: float | None = None
    factor: int = -1
    decompose_both: bool = False
    full_matrix: bool = False
    block_dims: tuple[int, ...] | None = None
    block_alphas: tuple[float, ...] | None = None
    conv_block_dims: tuple[int, ...] | None = None
    conv_block_alphas: tuple[float, ...] | None = None
    down_lr_weight: str | None = None
    mid_lr_weight: str | None = None
    up_lr_weight: str | None = None
    block_lr_zero_threshold: float = 0.0
    loraplus_lr_ratio: float | None = None
    loraplus_unet_lr_ratio: float | None = None
    loraplus_text_encoder_lr_ratio: float | None = None
    train_blocks: str | None = None

    @property
    def has_block_lr(self) -> bool:
        return any(v is not None for v in (self.down_lr_weight, self.mid_lr_weight, self.up_lr_weight))


@dataclass
class NetworkConfig:
    """sd-scripts' network options; validates itself (ConfigError names the setting, the value and why)."""

    network_module: str = "networks.lora"
    network_dim: int = 4
    network_alpha: float = 1.0
    network_dropout: float | None = None
    network_args: dict[str, str] = field(default_factory=dict)
    network_train_unet_only: bool = False
    network_train_text_encoder_only: bool = False
    network_weights: str | None = None
    dim_from_weights: bool = False
    scale_weight_norms: float | None = None

    def __post_init__(self) -> None:
        self.network_args = parse_network_args(self.network_args)
        if self.network_module not in NETWORK_MODULES:
            raise ConfigError("network_module", self.network_module, f"expected one of {', '.join(NETWORK_MODULES)}"
                              f"{_close(self.network_module, NETWORK_MODULES)}")
        for name in ("network_dim", "network_alpha", "network_dropout", "scale_weight_norms"):
            check_option(name, getattr(self, name))
        for name in ("network_train_unet_only", "network_train_text_encoder_only", "dim_from_weights"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(name, getattr(self, name), "expected true or false")
        if self.network_train_unet_only and self.network_train_text_encoder_only:
            raise ConfigError("network_train_text_encoder_only", True,
                              "cannot be combined with network_train_unet_only = true (nothing would be trained)")
        if self.network_weights is not None and not isinstance(self.network_weights, str):
            raise ConfigError("network_weights", self.network_weights, "expected a file path")
        if self.dim_from_weights and not self.network_weights:
            raise ConfigError("dim_from_weights", True, "needs network_weights (the file to take the ranks from)")
        args = self.args
        if self.network_dropout and (args.algo in ("loha", "lokr") or args.dora_wd):
            what = "DoRA" if args.dora_wd else f"algo={args.algo}"
            raise ConfigError("network_dropout", self.network_dropout,
                              f"neuron dropout needs LoRA activations, which {what} does not have (LyCORIS ignores "
                              "it); use rank_dropout or module_dropout in network_args")

    @property
    def args(self) -> NetworkArgs:
        """`network_args` read into typed values (ConfigError for anything invalid)."""
        return _read_args(self.network_args, self.network_module)

    @property
    def algo(self) -> str:
        """lora, locon, loha or lokr (networks.lora: lora, or locon when conv_dim is set)."""
        args = self.args
        if self.network_module == "networks.lora":
            return "locon" if args.conv_dim else "lora"
        return args.algo


def parse_network_args(value: Mapping[str, object] | Iterable[str] | str | None) -> dict[str, str]:
    """{key: value string} from sd-scripts' ["k=v", ...] (or one "k=v k=v" string) or a mapping.

    Mapping values are written as sd-scripts would receive them: lists/tuples joined with commas, booleans
    "True"/"False". Keys are stripped; an item without "=", an empty key or a repeated key raises ConfigError.
    """
    if value is None:
        return {}
    if isinstance(value, Mapping):
        return {_arg_key(str(k)): _arg_text(v) for k, v in value.items()}
    items = value.split() if isinstance(value, str) else list(value)
    parsed: dict[str, str] = {}
    for item in items:
        if not isinstance(item, str) or "=" not in item:
            raise ConfigError("network_args", item, "each item must be key=value, e.g. conv_dim=8")
        key, text = item.split("=", 1)
        key = _arg_key(key)
        if key in parsed:
            raise ConfigError("network_args", item, f"{key} is given twice")
        parsed[key] = text.strip()
    return parsed


def format_network_args(args: Mapping[str, str]) -> list[str]:
    """sd-scripts' ["k=v", ...] form of `args` (parse_network_args reads it back equal)."""
    return [f"{key}={text}" for key, text in args.items()]


def _arg_key(key: str) -> str:
    key = key.strip()
    if not key:
        raise ConfigError("network_args", key, "empty key in key=value")
    return key


def _arg_text(value: object) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(_arg_text(v) for v in value)
    return str(value).strip()


# --- reading the args ----------------------------------------------------------------------------------------


def _read_args(raw: Mapping[str, str], module: str) -> NetworkArgs:
    lycoris = module == "lycoris.kohya"
    known = set(NETWORK_ARGS_HELP) - ({"algo", "preset", "dora_wd", "wd_on_output", "factor", "decompose_both",
                                       "full_matrix"} if not lycoris else set())
    for key, text in raw.items():
        if key in known:
            continue
        where = f"network_args.{key}"
        if key in _UNSUPPORTED_OFF_VALUES and lycoris:
            if text.lower() == _UNSUPPORTED_OFF_VALUES[key]:
                continue
            raise ConfigError(where, text, "this LyCORIS option is not supported by LoRA Studio")
        if key in NETWORK_ARGS_HELP:
            raise ConfigError(where, text, "needs network_module = lycoris.kohya (networks.lora has no such option)")
        if key == "dropout":
            raise ConfigError(where, text, "set network_dropout instead")
        raise ConfigError(where, text, f"unknown network argument{_close(key, sorted(known))}")
    algo = raw.get("algo", "lora").lower() or "lora"
    if algo == "dora":
        raise ConfigError("network_args.algo", algo, "DoRA is LyCORIS's dora_wd=True on top of an algo: write "
                                                     "algo=locon (or lora, loha, lokr) and dora_wd=True")
    if algo not in ALGOS:
        raise ConfigError("network_args.algo", algo, f"expected one of {', '.join(ALGOS)}{_close(algo, ALGOS)}")
    preset = raw.get("preset", "full")
    if preset not in LYCORIS_PRESETS:
        raise ConfigError("network_args.preset", preset, f"expected one of {', '.join(LYCORIS_PRESETS)}")
    values: dict[str, Any] = {
        "algo": algo,
        "preset": preset,
        "conv_dim": _opt(raw, "conv_dim", _int_text),
        "conv_alpha": _opt(raw, "conv_alpha", _float_text),
        "dora_wd": _bool_text(raw, "dora_wd", False),
        "wd_on_output": _bool_text(raw, "wd_on_output", True),
        "rank_dropout": _fraction_text(raw, "rank_dropout"),
        "module_dropout": _fraction_text(raw, "module_dropout"),
        "factor": _opt(raw, "factor", _int_text),
        "decompose_both": _bool_text(raw, "decompose_both", False),
        "full_matrix": _bool_text(raw, "full_matrix", False),
        "block_dims": _list_text(raw, "block_dims", int),
        "block_alphas": _list_text(raw, "block_alphas", float),
        "conv_block_dims": _list_text(raw, "conv_block_dims", int),
        "conv_block_alphas": _list_text(raw, "conv_block_alphas", float),
        "block_lr_zero_threshold": _opt(raw, "block_lr_zero_threshold", _float_text) or 0.0,
        "train_blocks": _train_blocks_text(raw.get("train_blocks")),
    }
    if values["factor"] is None:
        values["factor"] = -1
    if values["factor"] == 0:
        raise ConfigError("network_args.factor", values["factor"], "expected -1 (automatic) or a positive integer")
    if values["conv_dim"] == 0:
        values["conv_dim"] = None
    for key in ("down_lr_weight", "mid_lr_weight", "up_lr_weight"):
        values[key] = _lr_weight_text(raw, key)
    for key in ("loraplus_lr_ratio", "loraplus_unet_lr_ratio", "loraplus_text_encoder_lr_ratio"):
        values[key] = _opt(raw, key, _float_text)
    return NetworkArgs(**values)


def _opt(raw: Mapping[str, str], key: str, read) -> Any:
    """The value of `key` read by `read` and checked against its range (bounds.NETWORK_ARG_BOUNDS); None unset."""
    text = raw.get(key)
    if text is None or text.lower() in ("none", ""):
        return None
    value = read(f"network_args.{key}", text)
    check_option(f"network_args.{key}", value)
    return value


def _int_text(where: str, text: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise ConfigError(where, text, "expected a whole number") from None


def _float_text(where: str, text: str) -> float:
    if not re.fullmatch(_FLOAT, text.strip()):
        raise ConfigError(where, text, "expected a number")
    return float(text)


def _bool_text(raw: Mapping[str, str], key: str, default: bool) -> bool:
    text = raw.get(key)
    if text is None:
        return default
    if text.lower() in _TRUE:
        return True
    if text.lower() in _FALSE:
        return False
    raise ConfigError(f"network_args.{key}", text, "expected True or False")


def _fraction_text(raw: Mapping[str, str], key: str) -> float | None:
    return _opt(raw, key, _float_text) or None


def _list_text(raw: Mapping[str, str], key: str, kind: type) -> tuple | None:
    """sd-scripts' comma-separated per-block values (lengths are checked once the model family is known)."""
    text = raw.get(key)
    if text is None:
        return None
    where = f"network_args.{key}"
    _check_list_length(where, text)
    read = _int_text if kind is int else _float_text
    values = tuple(read(where, part) for part in text.split(","))
    if any(v < 0 for v in values):
        raise ConfigError(where, text, "values must not be negative")
    for value in values:
        check_option(where, value)
    return values


def _lr_weight_text(raw: Mapping[str, str], key: str) -> str | None:
    """A list of numbers (empty entries = 0, as sd-scripts) or a curve name with an optional +base."""
    text = raw.get(key)
    if text is None:
        return None
    text = text.strip()
    curve = re.fullmatch(rf"([a-z_]+)(?:\+({_FLOAT}))?", text)
    if curve:
        if curve.group(1) not in LR_WEIGHT_CURVES or key == "mid_lr_weight":
            allowed = "numbers" if key == "mid_lr_weight" else f"numbers or one of {', '.join(LR_WEIGHT_CURVES)}"
            raise ConfigError(f"network_args.{key}", text, f"expected {allowed}")
        return text
    _check_list_length(f"network_args.{key}", text)
    for part in text.split(","):
        if part.strip():
            value = _float_text(f"network_args.{key}", part)
            if value < 0:
                raise ConfigError(f"network_args.{key}", text, "learning-rate factors must not be negative")
            check_option(f"network_args.{key}", value)
    return text


def _train_blocks_text(text: str | None) -> str | None:
    """A preset name, a literal block-weight vector or a block list; the blocks themselves need the arch."""
    if text is None or not text.strip():
        return None
    text = text.strip()
    _check_list_length("network_args.train_blocks", text)
    items = [item.strip() for item in text.split(",")]
    if any(_BLOCK_LIST_ITEM.fullmatch(item) for item in items):
        bad = [item for item in items if not _BLOCK_LIST_ITEM.fullmatch(item)]
        if bad:
            raise ConfigError("network_args.train_blocks", text,
                              f"{bad[0]!r} is not a block (BASE, IN00.., M00, OUT00..) or a range like IN04-IN07")
    return text


# --- checks ------------------------------------------------------------------------------------------------


def _close(word: str, choices: Iterable[str]) -> str:
    matches = difflib.get_close_matches(word, list(choices), n=3)
    return f" (did you mean {', '.join(matches)}?)" if matches else ""


def _check_list_length(key: str, text: str) -> None:
    """ConfigError for a comma list of more than MAX_LIST_VALUES values (counted before anything is parsed)."""
    count = text.count(",") + 1
    if count > MAX_LIST_VALUES:
        raise ConfigError(key, text, f"{count} values; a per-block list has at most {MAX_LIST_VALUES} "
                                     "(25 for SD1/SD2 block_dims, 23 for SDXL)")
