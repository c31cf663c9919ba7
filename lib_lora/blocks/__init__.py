"""Block weights: presets, the prompt syntax, sessions and grids (block ids of modules live in unet_blocks.py)."""
