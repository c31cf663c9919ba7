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
    "slider": Recipe(
        title="Concept slider (iLECO)",
        description="Erase or strengthen a concept, or turn one into another, from prompts alone: no images. Use it "
                    "when a word is too weak, too strong or unwanted, or for a slider LoRA used at -1..1. Set "
                    "slider_prompt (and slider_target; empty erases) under Training mode, or give a LECO prompts "
                    "file. LoRA dim 4 / alpha 8 (alpha above rank suits iLECO), UNet only, AdamW at 1e-4, 500 "
                    "steps. It cannot make what the model does not know.",
        source="a practitioner's notes on LECO (erase or strengthen concepts; slider LoRAs; iLECO, the fast "
               "version) and traintrain's advice for iLECO (about 500 iterations, learning rate 1e-3 to 1e-4, alpha "
               "above rank)",
        values={"training_mode": "slider", "resolution": "512", "network_module": "networks.lora", "network_dim": 4,
                "network_alpha": 8, "network_train_unet_only": True, "optimizer_type": "AdamW",
                "learning_rate": 1e-4, "max_train_steps": 500},
    ),
    "copy-machine": Recipe(
        title="Difference: copy machine (two images)",
        description="A LoRA of only what differs between two images of the same size (closed eyes, another "
                    "outfit colour), without their style or composition. Use it when you have the image and the "
                    "image changed. Pass 1 overfits a copy LoRA (rank 16) to the original and merges it; pass 2 "
                    "learns the target at rank 4, the file you get. Set difference_original and difference_target "
                    "under Training mode. AdamW at 1e-3 (8-bit AdamW does not work well here), batch 2, "
                    "500 steps a pass.",
        source="a practitioner's notes on copy-machine learning (overfit one image, merge it, learn the one that "
               "differs; a low dim is enough for one image) and traintrain's Difference mode (batch 1-3, rank 4 in "
               "the second pass, learning rate about 1e-3, AdamW not AdamW8bit)",
        values={"training_mode": "difference", "difference_method": "two_pass", "resolution": "512",
                "network_module": "networks.lora", "network_dim": 4, "network_alpha": 4,
                "network_train_unet_only": True, "copy_network_dim": 16, "copy_network_alpha": 16,
                "copy_max_train_steps": 500, "optimizer_type": "AdamW", "learning_rate": 1e-3,
                "train_batch_size": 2, "max_train_steps": 500},
    ),
    "direct-difference": Recipe(
        title="Difference: direct (ADDifT)",
        description="The same kind of LoRA as the copy machine in one pass: both images get the same noise, and the "
                    "LoRA learns what turns one into the other; it works as a slider at -1..1. Use it for many "
                    "pairs (a folder: name.png beside name_target.png) or when the copy machine is too slow. "
                    "min_timestep/max_timestep choose what it learns: high timesteps for pose and composition, "
                    "low ones for detail and colour.",
        source="a practitioner's notes on difference learning (train on the base and take the difference; "
               "said to suit SDXL better) and traintrain's ADDifT and Multi-ADDifT modes (paired noise and "
               "timesteps, pairs by name suffix)",
        values={"training_mode": "difference", "difference_method": "direct", "resolution": "512",
                "network_module": "networks.lora", "network_dim": 4, "network_alpha": 4,
                "network_train_unet_only": True, "optimizer_type": "AdamW", "learning_rate": 1e-3,
                "train_batch_size": 2, "max_train_steps": 500},
    ),
    "rounds": Recipe(
        title="Train and merge in rounds (style change)",
        description="Change a model's style further than one LoRA does: train, merge into the working weights, "
                    "train again at half the learning rate, five rounds; one LoRA of the whole change is saved "
                    "(at rank 8, with the error of that cut). Use it with a large style dataset. LoRA dim 8 / "
                    "alpha 3, UNet only, AdamW, warm-up 250 steps, cosine with 2 restarts.",
        source="a practitioner's imitation of ReLoRA with sd-scripts (5 rounds: 1e-4 for 6 epochs merged at 0.7, "
               "then 5e-5, 2.5e-5, 1.25e-5 and 6e-6 for 4 epochs each merged at 0.9; dim 8 / alpha 3, warm-up 250, "
               "cosine_with_restarts with 2 cycles, UNet only)",
        values={**_COMMON, "training_mode": "rounds", "resolution": "1024", "network_module": "networks.lora",
                "network_dim": 8, "network_alpha": 3, "network_train_unet_only": True, "optimizer_type": "AdamW",
                "learning_rate": 1e-4, "lr_scheduler": "cosine_with_restarts", "lr_scheduler_num_cycles": 2,
                "lr_warmup_steps": 250, "rounds_rank": 8,
                "rounds": ["learning_rate=1e-4,epochs=6,merge=0.7", "learning_rate=5e-5,epochs=4,merge=0.9",
                           "learning_rate=2.5e-5,epochs=4,merge=0.9", "learning_rate=1.25e-5,epochs=4,merge=0.9",
                           "learning_rate=6e-6,epochs=4,merge=0.9"]},
    ),
}
"""Recipe name → Recipe, in the order the Train tab lists them."""
