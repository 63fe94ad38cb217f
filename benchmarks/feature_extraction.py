"""Cost of DRA targets: extracting EDM features vs reading them from a feature store.

Prints, for NVIDIA's CIFAR-10 DDPM++ config (random weights, CPU):
1. images/s of feature extraction at the bottleneck (hooks stop the U-Net there) against a
   full denoiser forward, the baseline;
2. per training step, computing the DRA target online (the extractor on a batch) against
   gathering it from a float16 feature store memory map at random indices, with the ratio.

    python benchmarks/feature_extraction.py --threads 2
"""

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from dra.data.store import FeatureStoreWriter, open_feature_store
from dra.diffusion.edm import CIFAR10_DDPMPP_KWARGS, EDMPrecond, one_hot_labels
from dra.diffusion.features import DiffusionFeatureExtractor


def best_of(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--layer", default="model.dec.8x8_in1")
    parser.add_argument("--store-size", type=int, default=200_000, help="rows of the synthetic feature store")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    net = EDMPrecond(**CIFAR10_DDPMPP_KWARGS).eval()
    extractor = DiffusionFeatureExtractor(net, args.layer, sigma=0.1)
    batch = args.batch_size
    images = torch.rand(batch, 3, 32, 32)
    labels = torch.randint(0, 10, (batch,))
    with torch.no_grad():
        full = best_of(lambda: net(images * 2 - 1, torch.full((batch,), 0.1), one_hot_labels(labels, 10)), args.repeats)
        hooked = best_of(lambda: extractor(images, labels, range(batch)), args.repeats)
    print(f"CIFAR-10 DDPM++ (random weights), CPU, {args.threads} thread(s), batch {batch}")
    print(f"  full denoiser forward (baseline): {batch / full:8.1f} images/s")
    print(f"  features at {args.layer}:   {batch / hooked:8.1f} images/s   ({full / hooked:.2f}x the baseline)")

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "features"
        dim = extractor.dims[args.layer]
        rng = np.random.default_rng(0)
        meta = dict(layer=args.layer, sigma=0.1, extra_view=False, diffusion_model="random", image_store="none")
        with FeatureStoreWriter(path, args.store_size, 1, dim, meta=meta) as writer:
            for lo in range(0, args.store_size, 50_000):
                hi = min(args.store_size, lo + 50_000)
                writer.write(lo, rng.standard_normal((hi - lo, 1, dim)).astype(np.float16))
        store = open_feature_store(path)

        def gather():
            index = np.sort(rng.choice(args.store_size, batch, replace=False))
            return torch.from_numpy(store.features[index].astype(np.float32))

        stored = best_of(gather, max(args.repeats, 20))
    print(f"DRA target per training step (batch {batch}):")
    print(f"  online extraction: {hooked * 1e3:10.2f} ms")
    print(f"  feature store gather ({args.store_size} x {dim} float16 memmap): {stored * 1e3:10.3f} ms")
    print(f"  online / stored = {hooked / stored:.0f}x")


if __name__ == "__main__":
    main()
