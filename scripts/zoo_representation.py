"""Clean features (input of the last linear layer), logits and clean accuracy of one RobustBench
zoo model on the first n test images (dra.analysis.robustbench_zoo.measure_zoo_model)."""

import argparse

import torch

from dra.analysis.robustbench_zoo import measure_zoo_model


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--name", required=True, help="the model's RobustBench name")
    parser.add_argument("--model-dir", required=True, help="RobustBench's model_dir holding cifar10/Linf/<name>.pt")
    parser.add_argument("--test-store", required=True, help="the CIFAR-10 test image store")
    parser.add_argument("--n", type=int, required=True, help="first n test images")
    parser.add_argument("--batch-size", type=int, required=True,
                        help="images per batch on the device (the rule passes the GPU plan's, dra.gpu_plan)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--out", required=True, help="the .npz written")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    measure_zoo_model(args.name, args.model_dir, args.test_store, args.n, args.batch_size, device, args.out)


if __name__ == "__main__":
    main()
