"""What block weights cost on a running Forge Neo, through its HTTP API (the user's path).

Usage: python bench/bench_neo_block_weights.py --url http://127.0.0.1:7861 --lora NAME [--rounds 4] [--block 3]
       [--pid SERVER_PID]

The server must run with LoRA Studio installed and the LoRA `NAME` in its LoRA folder (tests/realhost/README or
the real-host suite starts one). Each round runs a block of plain `<lora:NAME:1>` images, then a block of the same
LoRA with a preset (`<lora:NAME:1:NCNF>`); the first image of a block loads the set and is set apart, the others
are the repeated generation with an unchanged set. Then the preset changes on every image (NCNF, OUTD, NCNF, …):
each of those reloads the LoRA and re-merges it into the weights. Rounds alternate so that drift of the machine
shows in both sides alike.

Prints per side the median seconds per image, the ratio weighted/plain for an unchanged set (the target is
≤ 1.02), and the extra milliseconds a changed set costs over an unchanged one. With `--pid` (the server's process,
Linux) the same figures are also given in the server's CPU seconds per image (user + system, from /proc), which
other work on the machine disturbs far less than wall time.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import statistics
import time
import urllib.request

PAYLOAD = {"width": 64, "height": 64, "steps": 4, "seed": 42, "sampler_name": "Euler", "cfg_scale": 7}


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU seconds of process `pid` so far, with its waited-for children (0 without a pid)."""
    if pid is None:
        return 0.0
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return sum(int(value) for value in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def generate(url: str, prompt: str, pid: int | None = None, cpu: list[float] | None = None) -> float:
    """Seconds for one txt2img through the API (the image is decoded to be sure one came back); with `pid`, the
    server's CPU seconds for it are appended to `cpu`."""
    cpu_before = cpu_seconds(pid)
    body = json.dumps({"prompt": prompt, **PAYLOAD}).encode()
    request = urllib.request.Request(f"{url}/sdapi/v1/txt2img", data=body,
                                     headers={"Content-Type": "application/json"})
    start = time.perf_counter()
    with urllib.request.urlopen(request, timeout=900) as response:
        answer = json.load(response)
    elapsed = time.perf_counter() - start
    if not base64.b64decode(answer["images"][0]):
        raise RuntimeError("no image came back")
    if cpu is not None:
        cpu.append(cpu_seconds(pid) - cpu_before)
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--lora", required=True)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--block", type=int, default=3, help="images per block, the first set apart")
    parser.add_argument("--pid", type=int, default=None, help="the server's process id: also measure its CPU time")
    args = parser.parse_args()
    plain, weighted = f"a cat <lora:{args.lora}:1>", f"a cat <lora:{args.lora}:1:NCNF>"
    times: dict[str, list[float]] = {"plain": [], "weighted": [], "changed": []}
    cpu: dict[str, list[float]] = {side: [] for side in times}
    generate(args.url, "a cat")  # the checkpoint is loaded on the first generation
    for round_index in range(args.rounds):
        for side, prompt in (("plain", plain), ("weighted", weighted)):
            block_cpu: list[float] = []
            block = [generate(args.url, prompt, args.pid, block_cpu) for _ in range(args.block)]
            times[side] += block[1:]
            cpu[side] += block_cpu[1:]
        for index in range(args.block):
            preset = ("OUTD", "NCNF")[(round_index + index) % 2]
            times["changed"].append(generate(args.url, f"a cat <lora:{args.lora}:1:{preset}>", args.pid,
                                             cpu["changed"]))
        print(f"round {round_index + 1}: " + ", ".join(f"{side} {statistics.median(v):.2f} s"
                                                        for side, v in times.items()), flush=True)
    print(f"\nimages: {', '.join(f'{side} {len(v)}' for side, v in times.items())}")
    report("wall", times)
    if args.pid is not None:
        report("server CPU", cpu)


def report(what: str, seconds: dict[str, list[float]]) -> None:
    """Medians per side, the unchanged-set ratio and the changed set's extra milliseconds, in `what` seconds."""
    medians = {side: statistics.median(values) for side, values in seconds.items()}
    for side, value in medians.items():
        print(f"{what}: {side:9s} median {value:.3f} s/image")
    print(f"{what}: unchanged block-weighted set / plain LoRA: {medians['weighted'] / medians['plain']:.3f}x")
    print(f"{what}: a changed set costs {1000 * (medians['changed'] - medians['weighted']):.0f} ms more than an "
          "unchanged one (reload + re-merge)")


if __name__ == "__main__":
    main()
