"""Tiny models built offline from configs with random weights: tests, the demo and benchmarks share them.

Nothing here downloads anything. Modules: clip (generated CLIP vocabulary and text encoders),
diffusers_models (SD1/SDXL pipelines), ldm_models (LDM-layout UNets and VAE), tagger (a WD14-contract ONNX
model), images (a generated dataset), full (full-size architectures for benchmarks).
"""
