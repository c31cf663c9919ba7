"""Applying and removing LoRAs at generation: our merge against diffusers' load/fuse/unfuse/unload, same run.

On an SD1.5-size UNet with random weights (CPU, float32), 5 rank-32 kohya LoRAs on kohya's default targets:
1. apply + remove: WeightMerger.apply + restore (in place, and with swap_storage)  vs  load_lora_weights ×5 +
   fuse_lora + unfuse_lora + unload_lora_weights (target: ours ≤ 0.5× diffusers);
2. re-applying the unchanged set, against our first apply (target ≤ 1%);
3. UNet steps with the 5 LoRAs merged, against the same steps without (target ≤ 1.01×): the arithmetic is
   the same, so this shows the merged weights carry no cost (layout, hooks left behind), timed on one thread.

    .venv/bin/python bench/bench_lora_apply.py [--loras 5] [--rank 32] [--repeats 3]
    MALLOC_MMAP_THRESHOLD_=131072 .venv/bin/python bench/bench_lora_apply.py   # for the step comparison (3.)

Why the variable: glibc moves its mmap threshold up as big blocks are freed, so after the apply/restore cycles
the plain state (backups freed) serves activations from cached memory while the merged state (backups held)
page-faults them in; that made merged steps look 1.2x slower here although the arithmetic is identical. A fixed
threshold gives both states the same allocator behaviour.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lib_lora.networks.attach import WeightMerger  # noqa: E402
from lib_lora.networks.keys import build_target_index_for  # noqa: E402
from lib_lora.networks.loaded import as_applied, network_from_state_dict  # noqa: E402
from lib_lora.networks.random_files import random_lora_state_dict  # noqa: E402
from lib_lora.tiny.clip import build_tiny_text_encoder  # noqa: E402
from lib_lora.tiny.full_size import build_full_unet  # noqa: E402


def timed(run) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def diffusers_pipeline(unet: torch.nn.Module):
    """A StableDiffusionPipeline around the full-size UNet (tiny text encoder and VAE: the LoRAs are UNet-only)."""
    from lib_lora.tiny.diffusers_models import build_tiny_sd1_pipeline

    tiny = build_tiny_sd1_pipeline()
    pipe = type(tiny)(vae=tiny.vae, text_encoder=tiny.text_encoder, tokenizer=tiny.tokenizer, unet=unet,
                      scheduler=tiny.scheduler, safety_checker=None, feature_extractor=None,
                      requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loras", type=int, default=5)
    parser.add_argument("--rank", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--latent", type=int, default=32, help="latent side for the step timing (32 = 256 px)")
    parser.add_argument("--steps", type=int, default=4, help="timed UNet steps per round and state")
    args = parser.parse_args()
    torch.manual_seed(0)

    unet = build_full_unet("sd1", dtype=torch.float32)
    index = build_target_index_for(unet, "diffusers", [build_tiny_text_encoder()], "sd1")
    state_dicts = [random_lora_state_dict(index, rank=args.rank, alpha=args.rank / 2, seed=i, roots=("unet",))
                   for i in range(args.loras)]
    loras = [as_applied(network_from_state_dict(sd, name=f"lora{i}")) for i, sd in enumerate(state_dicts)]
    modules = len(loras[0].modules)
    before = [p.detach().clone() for p in list(unet.parameters())[:16]]

    # 1 + 2: ours, merging in place (the default) and with swapped storage
    ours, swapped, first_apply, reapply = [], [], [], []
    for _ in range(args.repeats):
        merger = WeightMerger(index)
        apply = lambda merger=merger: merger.apply(loras)  # noqa: E731
        first_apply.append(timed(apply))
        reapply.append(timed(apply))
        ours.append(first_apply[-1] + timed(merger.restore))
        swapping = WeightMerger(index, swap_storage=True)
        swapped.append(timed(lambda swapping=swapping: swapping.apply(loras)) + timed(swapping.restore))
    assert all(torch.equal(a, b) for a, b in zip(before, unet.parameters()))

    # 3: UNet steps with and without the merged LoRAs: rounds interleaved, one warm-up step after each switch
    # (the first step after rewriting ~2 GB of weights pays for cold caches), per-step CPU time, medians, on ONE
    # thread: on this 2-core VM two OpenMP threads make step CPU times swing ±25% between runs whatever the
    # weights (measured: one thread gives equal times for plain and merged weights, run after run).
    x = torch.randn(1, 4, args.latent, args.latent)
    context = torch.randn(1, 77, 768)
    t = torch.tensor([500])

    def step() -> float:
        start = time.process_time()
        with torch.no_grad():
            unet(x, t, encoder_hidden_states=context)
        return time.process_time() - start

    plain, merged = [], []
    merger = WeightMerger(index)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    for _ in range(args.repeats):
        step()
        plain += [step() for _ in range(args.steps)]
        merger.apply(loras)
        step()
        merged += [step() for _ in range(args.steps)]
        merger.restore()
    torch.set_num_threads(threads)

    # 1: diffusers (peft layers), last: it leaves the UNet changed (unfuse subtracts, peft state stays behind)
    pipe = diffusers_pipeline(unet)
    names = [f"lora{i}" for i in range(args.loras)]

    def diffusers_cycle() -> None:
        for name, sd in zip(names, state_dicts):
            pipe.load_lora_weights(dict(sd), adapter_name=name)
        pipe.fuse_lora(adapter_names=names, lora_scale=1.0)
        pipe.unfuse_lora()
        pipe.unload_lora_weights()

    theirs = [timed(diffusers_cycle) for _ in range(args.repeats)]

    best = min
    print(f"SD1.5-size UNet (diffusers layout), CPU float32, {args.loras} LoRAs × {modules} modules, "
          f"rank {args.rank}, best of {args.repeats}")
    print(f"apply + remove, ours (in place, the default):  {best(ours) * 1e3:9.1f} ms")
    print(f"apply + remove, ours (swap_storage=True):      {best(swapped) * 1e3:9.1f} ms")
    print(f"load + fuse + unfuse + unload, diffusers+peft: {best(theirs) * 1e3:9.1f} ms")
    print(f"ratio ours / diffusers: {best(ours) / best(theirs):.3f} in place, {best(swapped) / best(theirs):.3f} "
          "swapping  (target <= 0.5)")
    print(f"first apply {best(first_apply) * 1e3:.1f} ms, re-apply unchanged {best(reapply) * 1e3:.2f} ms: "
          f"ratio {best(reapply) / best(first_apply):.4f}  (target <= 0.01)")
    print(f"UNet step at {args.latent}x{args.latent} latents, one thread, median of {len(plain)}: without "
          f"{statistics.median(plain):.3f} s, with merged LoRAs {statistics.median(merged):.3f} s: ratio "
          f"{statistics.median(merged) / statistics.median(plain):.3f}  (target <= 1.01)")
    if "MALLOC_MMAP_THRESHOLD_" not in os.environ:
        print("note: without MALLOC_MMAP_THRESHOLD_ set, the step ratio reflects glibc's allocator state (see the "
              "docstring); run again with MALLOC_MMAP_THRESHOLD_=131072 for the step comparison")


if __name__ == "__main__":
    main()
