"""Generation with an unchanged LoRA set and block presets, against generation without LoRAs, same run.

An SD1.5-size UNet and CLIP-L with random weights (tiny VAE; CPU, float32) behind a DiffusersHost, two
rank-32 kohya LoRAs with block presets (`<lora:a:0.8:CHAR> <lora:b:0.6:NCNF>`), rendered through
`LoraSession` — the path the Block Weight tab and `python -m lib_lora generate` use:
1. the first generation with the set (parse, load, one merge) against a generation without LoRAs;
2. the second and later generations with the unchanged set (parse, resolve, nothing merged) against a
   generation without LoRAs (target ≤ 1.02×). Rounds alternate the two so drift hits both alike.

    MALLOC_MMAP_THRESHOLD_=131072 .venv/bin/python bench/bench_block_session.py [--rounds 3] [--steps 4]

(The fixed mmap threshold: see bench_lora_apply.py — merged weights keep backups alive, which otherwise changes
glibc's allocator behaviour for the activations.)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from lib_lora.blocks.apply import LoraLibrary  # noqa: E402
from lib_lora.blocks.presets import PresetBook  # noqa: E402
from lib_lora.blocks.session import LoraSession  # noqa: E402
from lib_lora.hosts.base import GenerationRequest  # noqa: E402
from lib_lora.hosts.diffusers import DiffusersHost  # noqa: E402
from lib_lora.networks.files import save_lora_file  # noqa: E402
from lib_lora.networks.keys import build_target_index  # noqa: E402
from lib_lora.networks.random_files import random_lora_state_dict  # noqa: E402
from lib_lora.tiny.full_size import build_full_text_encoders, build_full_unet  # noqa: E402


def timed(run) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def sd15_size_pipeline():
    """A StableDiffusionPipeline with the full-size SD1.5 UNet and CLIP-L (random, float32); tiny VAE and tokenizer."""
    from lib_lora.tiny.diffusers_models import build_tiny_sd1_pipeline

    tiny = build_tiny_sd1_pipeline()
    (clip_l,) = build_full_text_encoders("sd1", dtype=torch.float32)
    pipe = type(tiny)(vae=tiny.vae, text_encoder=clip_l, tokenizer=tiny.tokenizer,
                      unet=build_full_unet("sd1", dtype=torch.float32), scheduler=tiny.scheduler,
                      safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--size", type=int, default=256, help="image side in pixels (256 = 32x32 latents)")
    parser.add_argument("--rank", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: least noise on a shared VM)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    host = DiffusersHost(sd15_size_pipeline(), model_name="sd15-random")
    index = build_target_index(host)
    with tempfile.TemporaryDirectory() as folder:
        for seed, name in enumerate(("a", "b")):
            tensors = random_lora_state_dict(index, rank=args.rank, alpha=args.rank / 2, seed=seed, roots=("unet",))
            save_lora_file(Path(folder) / f"{name}.safetensors", tensors, {"ss_base_model_version": "sd_v1"})
        session = LoraSession(host, LoraLibrary([folder]), PresetBook.builtin(), model_name="sd15-random")
        request = GenerationRequest(prompt="a cat", steps=args.steps, width=args.size, height=args.size, seed=1)
        with_loras = replace(request, prompt="a cat <lora:a:0.8:CHAR> <lora:b:0.6:NCNF>")

        session.generate(request)  # warm-up: first-call allocations, kernels
        plain = [timed(lambda: session.generate(request))]
        first = timed(lambda: session.generate(with_loras))
        second: list[float] = []
        for _ in range(args.rounds):
            second.append(timed(lambda: session.generate(with_loras)))
            session.unmerge()  # the plain round must not see merged weights; re-merge happens in `again`
            plain.append(timed(lambda: session.generate(request)))
            again = session.generate(with_loras)
            assert again.merge is not None and again.merge.rebuilt > 0
        session.unmerge()

    base = statistics.median(plain)
    repeat = statistics.median(second)
    print(f"model: SD1.5-size UNet (random), {args.size}px, {args.steps} steps, threads={args.threads}, "
          f"2 LoRAs rank {args.rank} with CHAR/NCNF")
    print(f"generation without LoRAs (median of {len(plain)}):       {base:8.3f} s")
    print(f"first generation with the set (one merge):        {first:8.3f} s   {first / base:5.3f}x")
    print(f"later generations, unchanged set (median of {len(second)}): {repeat:8.3f} s   {repeat / base:5.3f}x"
          f"   (target <= 1.02x)")


if __name__ == "__main__":
    main()
