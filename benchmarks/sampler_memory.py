"""Memory and speed of drawing DM-AT batches: our memory-mapped stores vs DM-AT's in-RAM arrays.

Builds a synthetic npz in DM-AT's format (np.savez layout, written in chunks) of 1M random
images (and 5M with --with-5m), converts it to a store, then in separate subprocesses draws
the same DM-AT batches (batch 512, unsup fraction 0.7, DM-AT README.md) two ways, timing two
passes of --batches different batches (the first maps store pages for the first time):

  ours : open_image_store (read-only memmaps) for the 50k real and the synthetic store,
         DMATBatchSampler indices, gather each batch.
  dmat : DM-AT's way (core/data/semisup.py): np.load the npz fully, np.concatenate with a 50k real
         array in RAM, labels extended into a Python list, index the combined array.

Each child reports its peak RSS (getrusage ru_maxrss; this includes file-backed pages of the
memory maps it touched), its private and mapped-file RSS after drawing (/proc/self/status
RssAnon, RssFile), setup time and batches/s. Files are written under --workdir
and removed afterwards unless --keep.

    python benchmarks/sampler_memory.py            # 1M, a few minutes
    python benchmarks/sampler_memory.py --with-5m  # adds 5M (31 GB of disk; dmat only if RAM allows)
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
REAL_SIZE = 50_000  # CIFAR train; the first 1024 are DM-AT's validation images (core/data/semisup.py)
VALIDATION = 1024
IMAGE_SHAPE = (32, 32, 3)


def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def write_npz_in_chunks(path: Path, n: int, seed: int, chunk: int = 100_000) -> None:
    """An np.savez-format archive (stored zip64 members image.npy, label.npy) without holding it in RAM."""
    rng = np.random.default_rng(seed)
    tmp = path.with_name(path.name + ".tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
        with archive.open("image.npy", "w", force_zip64=True) as member:
            np.lib.format.write_array_header_1_0(
                member, {"descr": "|u1", "fortran_order": False, "shape": (n, *IMAGE_SHAPE)}
            )
            for start in range(0, n, chunk):
                count = min(chunk, n - start)
                member.write(
                    rng.integers(0, 256, size=(count, *IMAGE_SHAPE), dtype=np.uint8).tobytes()
                )
        with archive.open("label.npy", "w", force_zip64=True) as member:
            np.lib.format.write_array_header_1_0(
                member, {"descr": "<i8", "fortran_order": False, "shape": (n,)}
            )
            member.write(rng.integers(0, 10, size=n, dtype=np.int64).tobytes())
    tmp.replace(path)


def build(workdir: Path, sizes: list[int]) -> dict:
    from dra.data.store import ImageStoreWriter
    from dra.data.synthetic import convert_synthetic

    workdir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    real_images = rng.integers(0, 256, size=(REAL_SIZE, *IMAGE_SHAPE), dtype=np.uint8)
    real_labels = rng.integers(0, 10, size=REAL_SIZE, dtype=np.int64)
    np.save(workdir / "real_images.npy", real_images)
    np.save(workdir / "real_labels.npy", real_labels)
    with ImageStoreWriter(
        workdir / "real_store", REAL_SIZE, 32, 32, 10, meta={"source": "benchmark"}
    ) as writer:
        writer.write(0, real_images, real_labels)
    timings = {}
    for n in sizes:
        npz = workdir / f"synthetic_{n}.npz"
        started = time.perf_counter()
        write_npz_in_chunks(npz, n, seed=n)
        written = time.perf_counter()
        convert_synthetic([npz], workdir / f"store_{n}", num_classes=10)
        timings[n] = {"write_npz_s": written - started, "convert_s": time.perf_counter() - written}
    return timings


# ---------------------------------------------------------------------------------------------
# children


def _batches(n_synthetic: int, count: int, batch_size: int):
    from dra.data.sampler import DMATBatchSampler

    sampler = DMATBatchSampler(
        REAL_SIZE - VALIDATION, n_synthetic, batch_size, 0.7, REAL_SIZE, seed=1
    )
    drawn, epoch = [], 0
    while len(drawn) < count:
        drawn.extend(sampler.epoch(epoch))
        epoch += 1
    return drawn[:count]


def _timed_passes(draw, batches, count: int) -> dict:
    """Time two passes of ``count`` batches: the first touches pages for the first time."""
    result, checksum = {}, 0
    for name, chunk in (("first", batches[:count]), ("second", batches[count:])):
        started = time.perf_counter()
        for real_idx, synthetic_idx in chunk:
            images, labels = draw(real_idx, synthetic_idx)
            checksum += int(images[:, 0, 0, 0].sum()) + int(labels.sum())
        result[f"{name}_batches_per_s"] = count / (time.perf_counter() - started)
    # measured while the arrays are still alive
    result["anon_rss_mb"] = _status_mb("RssAnon")
    result["file_rss_mb"] = _status_mb("RssFile")
    result["checksum"] = checksum
    return result


def child_ours(workdir: Path, n: int, count: int, batch_size: int) -> dict:
    from dra.data.store import open_image_store

    started = time.perf_counter()
    real = open_image_store(workdir / "real_store")
    synthetic = open_image_store(workdir / f"store_{n}")
    batches = _batches(len(synthetic), 2 * count, batch_size)
    setup = time.perf_counter() - started

    def draw(real_idx, synthetic_idx):
        images = np.concatenate(
            [real.images[VALIDATION + real_idx], synthetic.images[synthetic_idx]]
        )
        labels = np.concatenate(
            [real.labels[VALIDATION + real_idx], synthetic.labels[synthetic_idx]]
        )
        return images, labels

    return {"setup_s": setup, **_timed_passes(draw, batches, count)}


def child_dmat(workdir: Path, n: int, count: int, batch_size: int) -> dict:
    started = time.perf_counter()
    real_images = np.load(workdir / "real_images.npy")
    real_labels = list(np.load(workdir / "real_labels.npy"))
    aux = np.load(workdir / f"synthetic_{n}.npz")
    aux_images, aux_labels = aux["image"], aux["label"]
    data = np.concatenate((real_images, aux_images), axis=0)
    targets = real_labels
    targets.extend(aux_labels)
    del aux_images, aux_labels, aux
    batches = _batches(n, 2 * count, batch_size)
    setup = time.perf_counter() - started

    def draw(real_idx, synthetic_idx):
        index = np.concatenate([VALIDATION + real_idx, REAL_SIZE + synthetic_idx])
        return data[index], np.array(
            [targets[i] for i in index]
        )  # DM-AT's __getitem__ reads the list

    return {"setup_s": setup, **_timed_passes(draw, batches, count)}


def run_child(method: str, workdir: Path, n: int, count: int, batch_size: int) -> dict:
    command = [
        sys.executable,
        __file__,
        "--child",
        method,
        "--workdir",
        str(workdir),
        "--n",
        str(n),
        "--batches",
        str(count),
        "--batch-size",
        str(batch_size),
    ]
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    if result.returncode != 0:
        raise RuntimeError(f"{method} child for {n} images failed:\n{result.stderr}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def _build_in_child(workdir: Path, sizes: list[int]) -> dict[int, dict]:
    command = [sys.executable, __file__, "--child", "build", "--workdir", str(workdir), "--sizes"]
    result = subprocess.run(
        command + [str(n) for n in sizes], stdout=subprocess.PIPE, text=True, cwd=REPO
    )
    if result.returncode != 0:
        raise RuntimeError("building the benchmark files failed (see stderr above)")
    return {
        int(n): timing for n, timing in json.loads(result.stdout.strip().splitlines()[-1]).items()
    }


def _best(results: list[dict]) -> dict:
    best = dict(results[0])
    for key in ("first_batches_per_s", "second_batches_per_s"):
        best[key] = max(result[key] for result in results)
    best["setup_s"] = min(result["setup_s"] for result in results)
    for key in ("peak_rss_mb", "anon_rss_mb", "file_rss_mb"):
        best[key] = max(result[key] for result in results)  # memory: the worst run
    return best


def _available_mb() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--workdir", type=Path, default=REPO / "results" / "bench" / "sampler_memory"
    )
    parser.add_argument("--with-5m", action="store_true", help="also measure a 5M-image set")
    parser.add_argument("--batches", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument(
        "--repeats", type=int, default=2, help="alternating runs per method; best speed kept"
    )
    parser.add_argument("--keep", action="store_true", help="keep the generated files")
    parser.add_argument("--child", choices=["build", "ours", "dmat"], help=argparse.SUPPRESS)
    parser.add_argument("--sizes", type=int, nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child == "build":
        print(json.dumps(build(args.workdir, args.sizes)))
        return
    if args.child:
        measure = child_ours if args.child == "ours" else child_dmat
        result = measure(args.workdir, args.n, args.batches, args.batch_size)
        result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps(result))
        return

    sizes = [1_000_000] + ([5_000_000] if args.with_5m else [])
    try:
        # Built in a child too: a forked child starts with its parent's peak RSS (Linux keeps
        # ru_maxrss across fork and exec), so the parent must stay small.
        timings = _build_in_child(args.workdir, sizes)
        rows = []
        for n in sizes:
            # DM-AT holds the npz pixels twice during np.concatenate (DM-AT core/data/semisup.py).
            needed_mb = 2 * n * 3080 / 2**20 + 1024
            run_dmat = needed_mb < 0.8 * _available_mb()
            if not run_dmat:
                print(
                    f"[dmat at {n:,} skipped: needs ~{needed_mb:,.0f} MB, {_available_mb():,.0f} MB available]"
                )
            # Alternating repeats, best kept: the machine is shared, so one run can be slowed by others.
            runs = {"ours": [], "dmat": []}
            for _ in range(args.repeats):
                runs["ours"].append(
                    run_child("ours", args.workdir, n, args.batches, args.batch_size)
                )
                if run_dmat:
                    runs["dmat"].append(
                        run_child("dmat", args.workdir, n, args.batches, args.batch_size)
                    )
            ours, dmat = _best(runs["ours"]), _best(runs["dmat"]) if run_dmat else None
            if dmat is not None:
                assert dmat["checksum"] == ours["checksum"], "the two ways drew different batches"
            rows.append((n, ours, dmat))
    finally:
        if not args.keep:
            shutil.rmtree(args.workdir, ignore_errors=True)

    print(
        f"\n{args.batches} DM-AT batches of {args.batch_size} (358 synthetic + 154 real), 50k real images"
    )
    for n, timing in timings.items():
        print(
            f"build {n:>9,}: write npz {timing['write_npz_s']:.1f} s, convert to store {timing['convert_s']:.1f} s"
        )
    header = (
        f"{'synthetic':>10} {'method':>6} {'peak RSS MB':>12} {'private MB':>11} {'mapped file MB':>15} "
        f"{'setup s':>8} {'batches/s 1st':>14} {'batches/s 2nd':>14}"
    )
    print(header)
    print("-" * len(header))
    for n, ours, dmat in rows:
        for name, result in (("ours", ours), ("dmat", dmat)):
            if result is not None:
                print(
                    f"{n:>10,} {name:>6} {result['peak_rss_mb']:>12.0f} {result['anon_rss_mb']:>11.0f} "
                    f"{result['file_rss_mb']:>15.0f} {result['setup_s']:>8.2f} "
                    f"{result['first_batches_per_s']:>14.0f} {result['second_batches_per_s']:>14.0f}"
                )
        if dmat is not None:
            print(
                f"{n:>10,} {'ratio':>6} {dmat['peak_rss_mb'] / ours['peak_rss_mb']:>11.1f}x "
                f"{dmat['anon_rss_mb'] / ours['anon_rss_mb']:>10.1f}x {'':>15} "
                f"{dmat['setup_s'] / ours['setup_s']:>7.0f}x "
                f"{ours['first_batches_per_s'] / dmat['first_batches_per_s']:>13.2f}x "
                f"{ours['second_batches_per_s'] / dmat['second_batches_per_s']:>13.2f}x"
            )
            totals = [
                result["setup_s"]
                + args.batches / result["first_batches_per_s"]
                + args.batches / result["second_batches_per_s"]
                for result in (ours, dmat)
            ]
            print(
                f"{n:>10,} {2 * args.batches} batches including setup: ours {totals[0]:.2f} s, dmat {totals[1]:.2f} s"
            )
    print(
        "ratio = dmat / ours for memory and setup time, ours / dmat for batches/s (>1: ours faster)."
    )
    print(
        "private = RssAnon (cannot be dropped); mapped file = RssFile, page cache of the memory maps the"
    )
    print(
        "process touched (shared by data-loader workers, dropped by the kernel under pressure); peak RSS"
    )
    print("(getrusage) counts both.")
    if len(rows) > 1:
        first, second = rows[0][1], rows[1][1]
        print(
            f"ours 5M / 1M: peak RSS {second['peak_rss_mb'] / first['peak_rss_mb']:.2f}, "
            f"private {second['anon_rss_mb'] / first['anon_rss_mb']:.2f}"
        )


if __name__ == "__main__":
    main()
