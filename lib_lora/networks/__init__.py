"""LoRA files and maths, host-agnostic.

keys.py     kohya module names <-> host module paths (diffusers and LDM UNets, HF CLIP and open_clip encoders)
formats/    one module per network type (lora/locon, loha, lokr, full) behind one NetworkModule base class that
            does scale, DoRA and the multiplier once; an ordered registry parses a state dict into modules
files.py    safetensors/pickle reading with validation, kohya-format writing, A1111's hash, atomic writes
metadata/   the one writer of every ss_*/modelspec/lora_studio_* key (LoraMetadata and its records), and reading
loaded.py   a file loaded once (LoraNetwork): parsed modules, metadata, format, identity
attach.py   merge into host weights with exact backup (bit-identical unmerge), and hook-based attach
tools/      info, resize (SVD), merge, bake into a checkpoint, extract from two checkpoints (pure, no diffusers)
"""
