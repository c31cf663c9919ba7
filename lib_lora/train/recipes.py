"""Recipe presets: starting values for common kinds of LoRA, taken from the practitioners' notes we grew from.

Each recipe is a set of sd-scripts options (TrainConfig.from_dict reads it) with where its values come from:
`shared/seeds/001_*` ("いろいろLoRA作成記録"), whose general setting is AdamW, 512×512, caption shuffle with one
kept token and no regularisation images (§ 学習について). A recipe never sets the data folder, output name or
samples; those are the user's.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

# The DAdaptation settings the notes use for DAdaptLion and Prodigy (§ アズサ, § DAdaptLion vs Prodigy).
_DADAPT_ARGS = ["betas=0.9,0.999", "weight_decay=0", "d0=1e-06"]
_COMMON: dict[str, Any] = {"caption_extension": ".txt", "shuffle_caption": True, "keep_tokens": 1}


@dataclass(frozen=True)
class Recipe:
    """A named set of option values with a one-paragraph description and its source in the notes."""

    title: str
    description: str
    source: str
    values: Mapping[str, Any] = field(default_factory=dict)


RECIPES: dict[str, Recipe] = {
    "character-sd1": Recipe(
        title="Character (SD1.x)",
        description="A character from 50+ images: LoRA dim 16 / alpha 4 on the character blocks IN04-IN07 and "
                    "OUT03-OUT06 only, DAdaptLion at learning rate 1, about 5000 steps. Fold the physical-feature "
                    "tags into the trigger word; keep clothing, 1girl and directions.",
        source="seed note 001 § キャラLoRAの最適解(SD1.X) (4000-6000 steps, Dim16, alpha = dim/4, DAdaptation "
               "at LR 1, IN04-07 and OUT03-06), § キャラは層別でOUT03-06だけでいいかも, § DAdaptLion vs Prodigy",
        values={**_COMMON, "resolution": "512", "network_module": "networks.lora", "network_dim": 16,
                "network_alpha": 4, "network_args": ["train_blocks=IN04-IN07,OUT03-OUT06"],
                "optimizer_type": "DAdaptLion", "optimizer_args": _DADAPT_ARGS, "learning_rate": 1.0,
                "max_train_steps": 5000},
    ),
    "character-sdxl": Recipe(
        title="Character (SDXL)",
        description="A character on SDXL: LoRA dim 8 / alpha 2, UNet only with cached text-encoder outputs "
                    "(so captions are not shuffled), DAdaptLion at learning rate 1, about 5000 steps at 1024 px. "
                    "Never use full_fp16/full_bf16 here: the notes found it learns nothing.",
        source="seed note 001 § キャラLoRAの最適解(SDXL) (4000-6000 steps, Dim8, alpha = dim/4, DAdaptation at "
               "LR 1, no full_fp16/bf16), § SDXL (unet_only, cache_latents, cache_text_encoder_outputs)",
        values={"caption_extension": ".txt", "resolution": "1024", "network_module": "networks.lora",
                "network_dim": 8, "network_alpha": 2, "network_train_unet_only": True,
                "cache_text_encoder_outputs": True, "optimizer_type": "DAdaptLion", "optimizer_args": _DADAPT_ARGS,
                "learning_rate": 1.0, "max_train_steps": 5000},
    ),
    "style": Recipe(
        title="Style",
        description="A drawing style: LoRA dim 16 / alpha 8, AdamW at 1e-4 (it learns less of what is not the "
                    "style), about 4000 steps, captions shuffled with no kept token. For a change of colouring "
                    "only, network_train_unet_only also works and touches composition less.",
        source="seed note 001 § 画風 ねんどろいど (Dim64/Alpha32, 4088 steps), § タグについて 画風 (keep tokens 0, "
               "shuffle on, AdamW), § 次元数の比較 (dim 16 is enough for characters and styles)",
        values={"caption_extension": ".txt", "shuffle_caption": True, "keep_tokens": 0, "resolution": "512",
                "network_module": "networks.lora", "network_dim": 16, "network_alpha": 8,
                "optimizer_type": "AdamW", "learning_rate": 1e-4, "max_train_steps": 4000},
    ),
    "object": Recipe(
        title="Object or situation",
        description="A held object or a situation (an effect, an action): LoRA with convolutions (LoCon) dim 32 "
                    "/ alpha 8, AdamW at 1e-4, 9000 steps: these need many steps before the prompt responds. "
                    "Give contradictory or overlapping tags one name. Next to a character LoRA, apply it with the "
                    "NCNF block preset.",
        source="seed note 001 § 小物類 M4 Carbine (9000+ steps), § 構図・シチュエーション ラーメン (Dim32/Alpha8, "
               "conv the same) and まとめ (9000 steps or more, dim 32-16)",
        values={**_COMMON, "resolution": "512", "network_module": "networks.lora", "network_dim": 32,
                "network_alpha": 8, "network_args": ["conv_dim=32", "conv_alpha=8"], "optimizer_type": "AdamW",
                "learning_rate": 1e-4, "max_train_steps": 9000},
    ),
    "background": Recipe(
        title="Background",
        description="A background or scenery: LoRA with convolutions dim 32 / alpha 8, AdamW at 1e-4, about "
                    "4000 steps (backgrounds learn quickly). Keep the tags of people in the images, or it will "
                    "not combine with character LoRAs.",
        source="seed note 001 § 背景 桜 (Dim32/Alpha8 with conv the same, 3840 steps), 竹富島 (5824 steps) and "
               "まとめ (dim 32 or less, 5000 steps or less)",
        values={**_COMMON, "resolution": "512", "network_module": "networks.lora", "network_dim": 32,
                "network_alpha": 8, "network_args": ["conv_dim=32", "conv_alpha=8"], "optimizer_type": "AdamW",
                "learning_rate": 1e-4, "max_train_steps": 4000},
    ),
}
"""Recipe name → Recipe, in the order the Train tab lists them."""
