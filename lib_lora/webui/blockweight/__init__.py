"""Per-block LoRA strength inside A1111 and Forge Neo, driven by the always-on script."""
