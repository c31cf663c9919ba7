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

from .optim import optimizer_package

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

    @property
    def package(self) -> str | None:
        """The pip package the recipe's optimizer needs beyond torch (None: nothing more)."""
        return optimizer_package(str(self.values.get("optimizer_type", "AdamW")))


RECIPES: dict[str, Recipe] = {
    "character-sd1": Recipe(
        title="Character (SD1.x)",
        description="A character from 50+ images: LoRA dim 16 / alpha 4 on the character blocks IN04-IN07 and "
                    "OUT03-OUT06 only, DAdaptLion (from the dadaptation package) at learning rate 1, about 5000 "
                    "steps. Fold the physical-feature tags into the trigger word; keep clothing, 1girl and "
                    "directions.",
        source="a practitioner's recipe for character LoRAs on SD1 (4000-6000 steps, dim 16, alpha = dim/4, "
               "DAdaptation at learning rate 1, blocks IN04-07 and OUT03-06; DAdaptLion over Prodigy)",
        values={**_COMMON, "resolution": "512", "network_module": "networks.lora", "network_dim": 16,
                "network_alpha": 4, "network_args": ["train_blocks=IN04-IN07,OUT03-OUT06"],
                "optimizer_type": "DAdaptLion", "optimizer_args": _DADAPT_ARGS, "learning_rate": 1.0,
                "max_train_steps": 5000},
    ),
    "character-sdxl": Recipe(
        title="Character (SDXL)",
        description="A character on SDXL: LoRA dim 8 / alpha 2, UNet only with cached text-encoder outputs "
                    "(so captions are not shuffled), DAdaptLion (from the dadaptation package) at learning rate "
                    "1, about 5000 steps at 1024 px. Never use full_fp16/full_bf16 here: practitioners found it "
                    "learns nothing.",
        source="a practitioner's recipe for character LoRAs on SDXL (4000-6000 steps, dim 8, alpha = dim/4, "
               "DAdaptation at learning rate 1, no full_fp16/bf16; UNet only, cached latents and text-encoder "
               "outputs)",
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
        source="a practitioner's style LoRAs (a figure style at dim 64 / alpha 32, 4088 steps; keep tokens 0, "
               "captions shuffled, AdamW) and their comparison of dims (16 is enough for characters and styles)",
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
        source="a practitioner's object and situation LoRAs (a rifle in 9000+ steps, a scene at dim 32 / alpha 8 "
               "with conv the same), summed up as 9000 steps or more at dim 32-16",
        values={**_COMMON, "resolution": "512", "network_module": "networks.lora", "network_dim": 32,
                "network_alpha": 8, "network_args": ["conv_dim=32", "conv_alpha=8"], "optimizer_type": "AdamW",
                "learning_rate": 1e-4, "max_train_steps": 9000},
    ),
    "background": Recipe(
        title="Background",
        description="A background or scenery: LoRA with convolutions dim 32 / alpha 8, AdamW at 1e-4, about "
                    "4000 steps (backgrounds learn quickly). Keep the tags of people in the images, or it will "
                    "not combine with character LoRAs.",
        source="a practitioner's background LoRAs (cherry blossoms at dim 32 / alpha 8 with conv the same in 3840 "
               "steps, an island village in 5824 steps), summed up as dim 32 or less, 5000 steps or less",
        values={**_COMMON, "resolution": "512", "network_module": "networks.lora", "network_dim": 32,
                "network_alpha": 8, "network_args": ["conv_dim=32", "conv_alpha=8"], "optimizer_type": "AdamW",
                "learning_rate": 1e-4, "max_train_steps": 4000},
    ),
}
"""Recipe name → Recipe, in the order the Train tab lists them."""
