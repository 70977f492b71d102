"""How biased is each MI estimator? Correlated Gaussians with known MI, several dims and levels.

For d independent pairs (x_k, y_k) with correlation rho, I(X; Y) = -(d/2) log(1 - rho^2); rho is
chosen for each target MI. Each neural estimator trains `auto`'s critic (`mimkd.estimate.estimate_mi`
with the width, steps and learning rate given here; cross-fitted halves) and reports its bound on
held-out rows. Prints a table of estimates, biases and seconds. Expect: InfoNCE saturates at
log(K + 1) (K negatives per held-out row), NWJ/DV/MINE get high-variance at high MI, SMILE trades a
little bias for variance (Song & Ermon 2020). `benchmarks/mi_bmi.py` covers non-Gaussian tasks.

    python benchmarks/mi_gaussian.py                   # d 1 5 20 x MI 0.5 2 5 10, a few minutes
    python benchmarks/mi_gaussian.py --dims 1 --mi 1 --steps 2000 --estimators infonce smile
"""

from __future__ import annotations

import argparse
import math
import time

import torch

from mimkd.estimate import ESTIMATORS, estimate_mi


def correlated_gaussians(dims: int, mi_nats: float, n: int, seed: int):
    generator = torch.Generator().manual_seed(seed)
    rho = math.sqrt(-math.expm1(-2 * mi_nats / dims))
    noise_scale = math.exp(-mi_nats / dims)  # sqrt(1 - rho^2) without cancellation
    x = torch.randn(n, dims, generator=generator)
    y = rho * x + noise_scale * torch.randn(n, dims, generator=generator)
    return x, y


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dims", type=int, nargs="+", default=[1, 5, 20])
    parser.add_argument("--mi", type=float, nargs="+", default=[0.5, 2.0, 5.0, 10.0])
    parser.add_argument(
        "--estimators", nargs="+", default=["infonce", "nwj", "mine", "smile", "jsd-dv"]
    )
    parser.add_argument("--samples", type=int, default=10000, help="pairs (half train, half eval)")
    parser.add_argument("--steps", type=int, default=500, help="critic training steps")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (1: these small matmuls gain nothing from more on a busy machine)",
    )
    args = parser.parse_args(argv)
    unknown = sorted(set(args.estimators) - set(ESTIMATORS.names()))
    if unknown:
        parser.error(f"unknown estimators {unknown}; choose from {ESTIMATORS.names()}")
    torch.set_num_threads(args.threads)

    header = f"{'d':>3} {'true MI':>8} " + " ".join(f"{name:>16}" for name in args.estimators)
    print(f"estimate (bias) in nats; {args.samples} pairs, {args.steps} steps, h={args.hidden}")
    print(header)
    print("-" * len(header))
    started = time.perf_counter()
    seconds = dict.fromkeys(args.estimators, 0.0)
    for dims in args.dims:
        for mi_nats in args.mi:
            x, y = correlated_gaussians(dims, mi_nats, args.samples, args.seed)
            cells = []
            for name in args.estimators:
                result = estimate_mi(
                    x,
                    y,
                    name,
                    hidden=args.hidden,
                    steps=args.steps,
                    batch_size=args.batch_size,
                    lr=args.lr,
                    seed=args.seed,
                    bootstrap=0,
                    progress=False,
                )
                seconds[name] += result.seconds
                cells.append(f"{result.mi_nats:7.2f} ({result.mi_nats - mi_nats:+6.2f})")
            print(f"{dims:>3} {mi_nats:>8.2f} " + " ".join(f"{cell:>16}" for cell in cells))
    print("-" * len(header))
    print("seconds per estimator: " + ", ".join(f"{k} {v:.0f}" for k, v in seconds.items()))
    print(f"total {time.perf_counter() - started:.0f} s on {torch.get_num_threads()} thread(s)")


if __name__ == "__main__":
    main()
