"""Per registry entry, in 3D and 2D: parameters, FLOPs, forward+backward time and peak memory.

    python -m benchmarks.models [--repeats 5] [--models unet,fcn]

Inputs: one default 3D training patch (80 x 64 x 48) or, in 2D, 48 slices of 80 x 64 (the
same voxels), 10 classes, default widths, CPU. Time is the fastest of the repeats (the least
disturbed by other jobs on a shared machine). Each measurement runs in a child process, so
ru_maxrss is that model's own peak; memory is the peak minus the RSS before the first pass.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

PATCH = (80, 64, 48)
NUM_CLASSES = 10


def input_shape(dims: int) -> tuple[int, ...]:
    """One 3D patch, or its 48 slices as a 2D batch."""
    return (1, 1, *PATCH) if dims == 3 else (PATCH[2], 1, *PATCH[:2])


def rss_bytes() -> int:
    """This process's resident memory now."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def measure(name: str, dims: int, repeats: int) -> dict:
    """Figures for one model, measured in this process."""
    import torch
    import torch.nn.functional as F
    from torch.utils.flop_counter import FlopCounterMode

    from medseg.nets.registry import build_network
    from medseg.runtime import tune_allocator

    tune_allocator()  # as the CLI does
    torch.manual_seed(0)
    model = build_network(name, 1, NUM_CLASSES, spatial_dims=dims)
    image = torch.randn(input_shape(dims))
    label = torch.randint(0, NUM_CLASSES, (image.shape[0], *image.shape[2:]))
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(image)
    before, seconds = rss_bytes(), []
    for _ in range(repeats + 1):  # the first pass warms up and is not timed
        start = time.perf_counter()
        F.cross_entropy(model(image), label).backward()
        seconds.append(time.perf_counter() - start)
        model.zero_grad(set_to_none=True)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kB on Linux
    return {"model": name, "dims": dims, "params": sum(p.numel() for p in model.parameters()),
            "gflops": counter.get_total_flops() / 1e9,
            "seconds": min(seconds[1:]), "peak_mb": (peak - before) / 2**20}


def markdown(rows: list[dict]) -> str:
    """The figures as a Markdown table."""
    lines = ["| model | dims | parameters | forward GFLOPs | forward+backward s (fastest) "
             "| peak MB |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['dims']}D | {r['params'] / 1e6:.2f} M | {r['gflops']:.1f} | "
              f"{r['seconds']:.2f} | {r['peak_mb']:.0f} |" for r in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--models", help="comma-separated names (default: every entry)")
    parser.add_argument("--one", nargs=2, metavar=("NAME", "DIMS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one[0], int(args.one[1]), args.repeats)))
        return
    from medseg.nets.registry import NETWORKS

    rows = []
    for name in args.models.split(",") if args.models else NETWORKS:
        for dims in (3, 2):
            child = subprocess.run(
                [sys.executable, "-m", "benchmarks.models", "--one", name, str(dims),
                 "--repeats", str(args.repeats)], capture_output=True, text=True, check=True)
            rows.append(json.loads(child.stdout.strip().splitlines()[-1]))
            print(f"{name} {dims}D: {rows[-1]}", file=sys.stderr, flush=True)
    print(markdown(rows))


if __name__ == "__main__":
    main()
