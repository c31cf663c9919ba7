"""CPU convolutions of a training step: oneDNN (torch's default) vs the im2col + GEMM kernel, per shape (issue #6).

Collects every 2-D convolution an SD1.5-size UNet (random, float32) runs at the given size, then times each
distinct shape forward + backward as training runs it (frozen weight: input gradient only) with both kernels in
this process, alternating, median of the repeats. Prints a row per shape with the ratio and the per-step totals,
weighted by how often the shape occurs, for all convolutions and for those `train/cpu_convs.py` routes (maps of at
most SMALL_MAP_PIXELS pixels).

    .venv/bin/python bench/bench_cpu_convs.py [--size 256] [--repeats 5] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lib_lora.tiny.full_size import build_full_unet  # noqa: E402
from lib_lora.train.cpu_convs import SMALL_MAP_PIXELS  # noqa: E402

Shape = tuple[int, int, int, int, int, int, int]  # in, out, kernel, stride, padding, height, width


def step_convolutions(size: int) -> Counter[Shape]:
    """The convolutions one UNet forward at `size` px runs, by shape, with how often each occurs."""
    unet = build_full_unet("sd1", dtype=torch.float32)
    seen: Counter[Shape] = Counter()

    def record(module, args) -> None:
        x = args[0]
        seen[(module.in_channels, module.out_channels, module.kernel_size[0], module.stride[0], module.padding[0],
              x.shape[-2], x.shape[-1])] += 1

    for module in unet.modules():
        if isinstance(module, torch.nn.Conv2d):
            module.register_forward_pre_hook(record)
    side = size // 8
    with torch.no_grad():
        unet(torch.randn(1, 4, side, side), torch.tensor([500]), encoder_hidden_states=torch.randn(1, 77, 768))
    return seen


def time_shape(shape: Shape, repeats: int) -> tuple[float, float]:
    """Median seconds of forward + input-gradient backward: (oneDNN, im2col + GEMM)."""
    cin, cout, kernel, stride, padding, height, width = shape
    weight = torch.randn(cout, cin, kernel, kernel) * 0.02
    bias = torch.zeros(cout)
    x = torch.randn(1, cin, height, width)

    def onednn(inp):
        return F.conv2d(inp, weight, bias, stride, padding)

    def im2col(inp):
        return torch._C._nn.thnn_conv2d(inp, weight, [kernel, kernel], bias, [stride, stride], [padding, padding])

    times: dict[str, list[float]] = {"onednn": [], "im2col": []}
    for index in range(repeats + 1):  # the first round warms both up
        for name, conv in (("onednn", onednn), ("im2col", im2col))[:: 1 if index % 2 else -1]:
            inp = x.clone().requires_grad_(True)
            start = time.perf_counter()
            out = conv(inp)
            out.backward(torch.ones_like(out))
            if index:
                times[name].append(time.perf_counter() - start)
    return statistics.median(times["onednn"]), statistics.median(times["im2col"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256, help="image side in pixels (256 = 32x32 latents)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    shapes = step_convolutions(args.size)
    print(f"SD1.5-size UNet convolutions at {args.size} px, forward + input-gradient backward, threads={args.threads},"
          f" median of {args.repeats}")
    print(f"{'in -> out':>13s} {'k/s':>5s} {'map':>7s} {'x':>3s} {'oneDNN ms':>10s} {'im2col ms':>10s} {'ratio':>6s}")
    totals = {"all": [0.0, 0.0], "routed": [0.0, 0.0]}
    for shape, count in sorted(shapes.items(), key=lambda item: (-item[0][5], item[0][:2])):
        onednn, im2col = time_shape(shape, args.repeats)
        cin, cout, kernel, stride, _, height, width = shape
        routed = height * width <= SMALL_MAP_PIXELS
        for key in ("all", "routed") if routed else ("all",):
            totals[key][0] += count * onednn
            totals[key][1] += count * im2col
        print(f"{cin:5d} -> {cout:4d} {kernel:3d}/{stride:1d} {height:3d}x{width:<3d} {count:3d} {onednn * 1e3:10.1f} "
              f"{im2col * 1e3:10.1f} {onednn / im2col:6.2f}{'  routed' if routed else ''}")
    for key, (onednn, im2col) in totals.items():
        print(f"per step, {key + ' convolutions':22s}: oneDNN {onednn:.3f} s, im2col {im2col:.3f} s")
    routed_onednn, routed_im2col = totals["routed"]
    chosen = totals["all"][0] - routed_onednn + routed_im2col
    print(f"per step with the routing (maps <= {SMALL_MAP_PIXELS} px through im2col): {chosen:.3f} s vs oneDNN "
          f"everywhere {totals['all'][0]:.3f} s: {totals['all'][0] / chosen:.3f}x")


if __name__ == "__main__":
    main()
