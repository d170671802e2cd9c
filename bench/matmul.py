"""float32 CPU products: torch's own (MKL) vs oneDNN (``r2.model.matmul.linear``), side by side.

torch's CPU ``addmm`` / ``mm`` call MKL, whose AVX-512 code is for Intel processors (on an AMD
CPU with AVX-512 it runs at the AVX2 rate); oneDNN chooses by the instruction set. The shapes are those of
one training step of ``bench/train_step.py`` (4 x 32 clips of ViT-B/32 features, C = 256) and of
CLIP ViT-B/32 running on those 128 frames. Each product alternates between the two for
``--rounds`` rounds; printed: the median time of each and their ratio, and the largest
difference relative to the largest value of the result.

    python bench/matmul.py [--rounds 30]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from r2.model import matmul

# (what, rows M, inner K, columns N, form): "linear" x (M, K) @ W (N, K)^T; "t" x (K, M)^T @ y (K, N)
SHAPES = [
    ("first stage, a block: forward", 1350, 770, 256, "linear"),
    ("first stage, a block: g^T (m * x)", 256, 1350, 770, "t"),
    ("C-width linear over the N tokens", 6400, 256, 256, "linear"),
    ("C-width linear over B T S", 1536, 256, 256, "linear"),
    ("temporal FFN", 128, 256, 1024, "linear"),
    ("CLIP ViT-B/32: q / k / v / out", 6400, 768, 768, "linear"),
    ("CLIP ViT-B/32: MLP up", 6400, 768, 3072, "linear"),
    ("CLIP ViT-B/32: MLP down", 6400, 3072, 768, "linear"),
]


def operands(m, k, n, form, generator):
    if form == "linear":
        return torch.randn(m, k, generator=generator), torch.randn(n, k, generator=generator)
    # a^T b with a (K, M), b (K, N): a weight gradient, both operands transposed views
    return torch.randn(k, m, generator=generator).t(), torch.randn(k, n, generator=generator).t()


def timed(fn, x, w) -> float:
    t0 = time.perf_counter()
    fn(x, w)
    return time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=30)
    args = ap.parse_args()
    if not matmul.onednn_in_use():
        raise SystemExit("this torch build has no oneDNN (torch.backends.mkldnn), or R2_ONEDNN=0 is set")
    g = torch.Generator().manual_seed(0)
    print(f"float32 on the CPU, {torch.get_num_threads()} threads, CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}; median of {args.rounds} alternated rounds")
    print(f"{'product':<38}{'M x K x N':>18}{'torch':>11}{'oneDNN':>11}{'ratio':>8}{'rel. diff':>11}")
    mkl = torch.nn.functional.linear
    for what, m, k, n, form in SHAPES:
        x, w = operands(m, k, n, form, g)
        for fn in (mkl, matmul.linear):  # warm-up: oneDNN builds its kernel for the shape once
            fn(x, w)
        times = {mkl: [], matmul.linear: []}
        for i in range(args.rounds):
            for fn in (mkl, matmul.linear) if i % 2 else (matmul.linear, mkl):
                times[fn].append(timed(fn, x, w))
        a, b = (statistics.median(times[f]) for f in (mkl, matmul.linear))
        ref = mkl(x, w)
        diff = float((matmul.linear(x, w) - ref).abs().max() / ref.abs().max())
        print(f"{what:<38}{f'{m} x {k} x {n}':>18}{a * 1e3:>8.2f} ms{b * 1e3:>8.2f} ms{a / b:>7.2f}x{diff:>11.1e}")


if __name__ == "__main__":
    main()
