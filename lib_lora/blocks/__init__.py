"""Block weights: block ids of modules (mapping.py), presets, and the prompt syntax."""
