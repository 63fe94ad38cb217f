"""Throughput of our AutoAttack wrapper against pyautoattack called directly.

Same small CNN, same points, same seed: images/s of
  (a) pyautoattack's run_standard_evaluation on the whole set (the baseline),
  (b) dra.evaluation.autoattack.evaluate_autoattack in one chunk (checks, recomputed flags),
  (c) the wrapper in 2 resumable chunks with the state file written after each,
and the ratio of each to the baseline (> 1 means faster than calling pyautoattack directly).

    python benchmarks/eval_overhead.py --n 16 --threads 1
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from dra.evaluation.autoattack import evaluate_autoattack


def small_cnn(num_classes: int = 10) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        nn.Flatten(), nn.Linear(32, num_classes),
    ).eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=16)
    parser.add_argument("--size", type=int, default=16, help="image side")
    parser.add_argument("--eps", type=float, default=1 / 255)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from pyautoattack import AutoAttack

    model = small_cnn()
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(args.n, 3, args.size, args.size, generator=generator)
    with torch.no_grad():
        labels = model(images).argmax(1)  # clean accuracy 100%: every point goes through the attacks

    began = time.perf_counter()
    adversary = AutoAttack(model, norm="Linf", eps=args.eps, version="standard", device="cpu", seed=0)
    x_adv, _ = adversary.run_standard_evaluation(images, labels, batch_size=args.n)
    with torch.no_grad():
        direct_robust = (model(x_adv).argmax(1) == labels).float().mean().item()
    baseline = time.perf_counter() - began

    rows = [("pyautoattack direct", baseline, 100 * direct_robust)]
    with tempfile.TemporaryDirectory() as folder:
        for name, chunk, state in (("wrapper, 1 chunk", args.n, None),
                                   ("wrapper, 2 chunks + state", max(1, args.n // 2), Path(folder) / "aa.npz")):
            began = time.perf_counter()
            result = evaluate_autoattack(model, images, labels, args.eps, seed=0, batch_size=args.n,
                                         state_path=state, device="cpu", chunk_size=chunk)
            rows.append((name, time.perf_counter() - began, result.robust_accuracy))

    print(f"{'run':<28}{'seconds':>10}{'images/s':>12}{'vs direct':>12}{'robust %':>11}")
    for name, seconds, robust in rows:
        print(f"{name:<28}{seconds:>10.2f}{args.n / seconds:>12.3f}{baseline / seconds:>11.2f}x{robust:>11.2f}")


if __name__ == "__main__":
    main()
