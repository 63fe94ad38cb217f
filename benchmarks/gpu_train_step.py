"""Images per second of a WRN-28-10 TRADES-10 training step in five precision settings.

fp32 (TF32 off), TF32 (fp32 weights, TF32 matmuls and convolutions), bf16 autocast, bf16 +
channels_last, bf16 + channels_last + torch.compile; synthetic
data on the device, warm-up steps (and compilation) excluded from the timing. Printed as a
table with the ratio of each variant to fp32. Budget on an H200: about 5 minutes in all.

    python benchmarks/gpu_train_step.py                                   # CUDA, batch 512
    python benchmarks/gpu_train_step.py --device cpu --batch-size 8 --steps 2 --depth 10 --width 1   # smoke check
"""

from __future__ import annotations

import argparse
import contextlib
import time

import torch

from dra.models import create_classifier
from dra.attacks import uniform_ball_noise
from dra.training.loop import TrainingModule
from dra.training.losses import adversarial_examples, trades_outer_loss
from dra.training.schedules import build_optimizer

EPS, STEP, STEPS = 8 / 255, 2 / 255, 10
VARIANTS = {  # name: (bf16, channels_last, compile, tf32)
    "fp32": (False, False, False, False),
    "tf32": (False, False, False, True),
    "bf16": (True, False, False, False),
    "bf16+channels_last": (True, True, False, False),
    "bf16+channels_last+compile": (True, True, True, False),
}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(device: torch.device, depth: int, width: int, batch: int, steps: int, warmup: int,
            bf16: bool, channels_last: bool, compile_model: bool, tf32: bool = False) -> float:
    # PyTorch lets cuDNN convolutions use TF32 by default: fp32 here means TF32 off for both
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = tf32
    torch.manual_seed(0)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    classifier = create_classifier({"family": "wrn", "depth": depth, "width": width, "activation": "silu"}, 10,
                                   [0.4914, 0.4822, 0.4465], [0.2471, 0.2435, 0.2616])
    classifier = classifier.to(device, memory_format=memory_format)
    module = TrainingModule(classifier, None)
    optimizer = build_optimizer({"name": "sgd", "lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4},
                                module)
    train_forward, attack_forward = module, classifier
    if compile_model:
        train_forward, attack_forward = torch.compile(module), torch.compile(classifier)
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext
    x = torch.rand(batch, 3, 32, 32, device=device).contiguous(memory_format=memory_format)
    y = torch.randint(0, 10, (batch,), device=device)
    generator = torch.Generator(device=device).manual_seed(0)

    def step():
        with autocast():
            x_adv = adversarial_examples("trades", attack_forward, x, y, EPS, STEP, STEPS,
                                         uniform_ball_noise(x.shape, EPS, generator, device))
            logits_clean, logits_adv, _ = train_forward(x, x_adv)
        loss, _ = trades_outer_loss(logits_clean, logits_adv, y, 5.0, 0.1)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(warmup):
        step()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    synchronize(device)
    return batch * steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per variant (includes compilation)")
    parser.add_argument("--depth", type=int, default=28)
    parser.add_argument("--width", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("no CUDA device here; run with --device cpu --batch-size 8 --steps 2 for a smoke check")
        torch.backends.cudnn.benchmark = True  # as DM-AT (train-wa.py)
        name = torch.cuda.get_device_name(device)
    else:
        name = "cpu"
    results = {}
    for variant in args.variants:
        started = time.perf_counter()
        results[variant] = measure(device, args.depth, args.width, args.batch_size, args.steps, args.warmup,
                                   *VARIANTS[variant])
        print(f"  {variant}: {results[variant]:.1f} images/s "
              f"({time.perf_counter() - started:.0f} s incl. warm-up)", flush=True)
    print(f"\nWRN-{args.depth}-{args.width} TRADES-{STEPS} training step, batch {args.batch_size}, {name}, "
          f"{args.steps} timed steps after {args.warmup} warm-up steps")
    print(f"{'variant':<30}{'images/s':>12}{'vs fp32':>10}")
    reference = results.get("fp32")
    for variant, rate in results.items():
        ratio = f"{rate / reference:.2f}x" if reference else "-"
        print(f"{variant:<30}{rate:>12.1f}{ratio:>10}")


if __name__ == "__main__":
    main()
