"""Benchmark: K ensemble members trained one after another vs vectorised (torch.func) vs member-parallel processes.

Same K, steps, model, batch size and optimizer (SGD, momentum 0.9) for every mode, measured side by side in one run:

    PYTHONPATH=. python benchmarks/parallel_members.py                      # small CNN (~1.1M params, BN), CPU
    PYTHONPATH=. python benchmarks/parallel_members.py --processes 2        # + 2 member-parallel processes
    PYTHONPATH=. python benchmarks/parallel_members.py --device cuda --model resnet18 --batch-size 128

Every mode trains the same K members (each its own batches) for `--steps` optimizer steps, after `--warmup-steps`
untimed steps. Sequential and vectorised are timed step by step, alternately (see `run_paired`), so that a change of
load on a shared machine hits both alike; member-parallel processes run as blocks right after, next to a sequential
block. Printed: wall time, training samples/s (K x steps x batch / wall), sequential / mode, and the
process CPU time (all threads; all processes for member-parallel) with its ratio: on a machine shared with other jobs
the CPU time is the steadier figure.

CPU notes (what the profile shows, see the issue-6 report): under `vmap` a convolution of M members is one grouped
convolution, which oneDNN runs no faster (often slower, badly so for 3 input channels per group) than M separate
ones, and BatchNorm's batching rule applies the affine weight/bias as extra broadcast passes. Activations are M times
larger: above glibc's 32 MB mmap threshold every step maps fresh pages and page-faults them in; run with
`GLIBC_TUNABLES=glibc.malloc.mmap_threshold=4294967296:glibc.malloc.trim_threshold=4294967296` (or jemalloc /
tcmalloc, as PyTorch's CPU tuning guide advises) to compare without that cost. `--threads 1` gives steadier figures
on a machine whose cores are shared with other jobs.
"""

from __future__ import annotations

import hf_starsse  # noqa: F401  (first: makes torchvision importable for transformers' vision models)

import argparse
import copy
import os
import time
from statistics import median

# isort: split
from hf_starsse.vectorized_members import VectorizedMembers

import torch
from torch import nn


def small_cnn(num_classes: int = 10) -> nn.Module:
    """~1.1M-parameter conv net with BatchNorm for 32x32 inputs."""

    def block(cin, cout, stride):
        return [nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]

    return nn.Sequential(
        *block(3, 64, 1),
        *block(64, 128, 2),
        *block(128, 128, 1),
        *block(128, 256, 2),
        *block(256, 256, 1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(256, num_classes),
    )


def tiny_cnn(num_classes: int = 10) -> nn.Module:
    """~25k-parameter conv net with BatchNorm: small kernels, where per-op overhead weighs most."""
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
        nn.Conv2d(32, 64, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, num_classes),
    )  # fmt: skip


def resnet18(num_classes: int = 10) -> nn.Module:
    """A ResNet-18-size model (11.2M parameters), transformers' `ResNetForImageClassification`."""
    from transformers import ResNetConfig, ResNetForImageClassification

    config = ResNetConfig(
        num_channels=3, embedding_size=64, hidden_sizes=[64, 128, 256, 512], depths=[2, 2, 2, 2], layer_type="basic",
        num_labels=num_classes,
    )  # fmt: skip
    return ResNetForImageClassification(config)


MODELS = {
    "tiny_cnn": (tiny_cnn, False),
    "small_cnn": (small_cnn, False),
    "resnet18": (resnet18, True),
}  # name -> (factory, takes pixel_values=)


def make_data(args, device):
    """A pool of distinct batches per member: inputs [P, K, B, 3, H, W], labels [P, K, B]."""
    generator = torch.Generator().manual_seed(0)
    shape = (args.pool, args.members, args.batch_size, 3, args.image_size, args.image_size)
    x = torch.randn(shape, generator=generator)
    y = torch.randint(0, 10, shape[:3], generator=generator)
    if args.channels_last:
        x = x.flatten(0, 2).contiguous(memory_format=torch.channels_last).view(shape)
    return x.to(device), y.to(device)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def prepare(model, args, device):
    model = model.to(device).train()
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def run_sequential(start, member_indices, x, y, args, device, takes_dict):
    """Members one after another, each its own model and optimizer: how the authors' code runs the parallel stage."""
    wall = cpu = 0.0
    for member in member_indices:
        model = prepare(copy.deepcopy(start), args, device)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)

        def step(i, model=model, optimizer=optimizer, member=member):
            xb, yb = x[i % args.pool, member], y[i % args.pool, member]
            optimizer.zero_grad(set_to_none=True)
            out = model(pixel_values=xb).logits if takes_dict else model(xb)
            nn.functional.cross_entropy(out, yb).backward()
            optimizer.step()

        for i in range(args.warmup_steps):
            step(i)
        sync(device)
        start_wall, start_cpu = time.perf_counter(), time.process_time()
        for i in range(args.steps):
            step(i)
        sync(device)
        wall += time.perf_counter() - start_wall
        cpu += time.process_time() - start_cpu
    return wall, cpu


def run_paired(start, x, y, args, device, takes_dict):
    """Sequential and vectorised step by step, alternately: step i of all K members one after another, then step i of
    the vectorised members (the order swapped every step). On a machine shared with other jobs, a change of load then
    hits both modes alike. Returns per-step `(wall, cpu)` arrays for each mode."""
    models, optimizers = [], []
    for _ in range(args.members):
        models.append(prepare(copy.deepcopy(start), args, device))
        optimizers.append(torch.optim.SGD(models[-1].parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4))
    members = VectorizedMembers.from_model(prepare(copy.deepcopy(start), args, device), args.members)
    members.create_optimizer("sgd", learning_rate=0.01, momentum=0.9, weight_decay=1e-4)

    def sequential_step(i):
        for member, (model, optimizer) in enumerate(zip(models, optimizers)):
            xb, yb = x[i % args.pool, member], y[i % args.pool, member]
            optimizer.zero_grad(set_to_none=True)
            out = model(pixel_values=xb).logits if takes_dict else model(xb)
            nn.functional.cross_entropy(out, yb).backward()
            optimizer.step()

    def vectorized_step(i):
        xb, yb = x[i % args.pool], y[i % args.pool]
        members.training_step({"pixel_values": xb, "labels": yb} if takes_dict else (xb, yb))

    steps = {"sequential": sequential_step, "vectorized (torch.func)": vectorized_step}
    times = {name: ([], []) for name in steps}
    for i in range(-args.warmup_steps, args.steps):
        order = list(steps) if i % 2 == 0 else list(steps)[::-1]
        for name in order:
            sync(device)
            start_wall, start_cpu = time.perf_counter(), time.process_time()
            steps[name](i)
            sync(device)
            if i >= 0:
                times[name][0].append(time.perf_counter() - start_wall)
                times[name][1].append(time.process_time() - start_cpu)
    return times


def _process_worker(rank, num_processes, threads, start, x, y, args, takes_dict, barrier, results):
    torch.set_num_threads(threads)
    results[f"ready-{rank}"] = time.perf_counter()  # CLOCK_MONOTONIC: comparable across processes of one machine
    member_indices = list(range(rank, args.members, num_processes))  # round-robin, as the trainer assigns them
    barrier.wait()
    results[rank] = run_sequential(start, member_indices, x, y, args, torch.device("cpu"), takes_dict)


def run_processes(start, x, y, args, takes_dict):
    """Member-parallel: P processes of 1 thread each, each training its own members one after another.

    Returns `(wall of the timed steps, cpu of all processes' timed steps, total wall)`: the total runs from creating
    the processes to joining them, start-up (interpreter, imports with `--start-method spawn`, data transfer) included.
    """
    import torch.multiprocessing as mp

    context = mp.get_context(args.start_method)
    threads = 1
    launched = time.perf_counter()
    barrier = context.Barrier(args.processes + 1)
    manager = context.Manager()
    results = manager.dict()
    workers = [
        context.Process(
            target=_process_worker, args=(r, args.processes, threads, start, x, y, args, takes_dict, barrier, results)
        )
        for r in range(args.processes)
    ]
    for worker in workers:
        worker.start()
    barrier.wait()
    for worker in workers:
        worker.join()
    total = time.perf_counter() - launched
    if any(worker.exitcode != 0 for worker in workers):
        raise RuntimeError("A member-parallel worker process failed.")
    timed = [results[r] for r in range(args.processes)]
    startup = max(results[f"ready-{r}"] for r in range(args.processes)) - launched
    # wall: the slowest process's timed steps (the processes run at the same time); cpu: all processes together
    return max(w for w, _ in timed), sum(c for _, c in timed), total, startup


def run_sequential_block(start, x, y, args, device, takes_dict):
    """Sequential with as many threads as the processes have in total (`--processes` x 1): equal total threads."""
    threads = torch.get_num_threads()
    torch.set_num_threads(args.processes)
    launched = time.perf_counter()
    try:
        wall, cpu = run_sequential(start, range(args.members), x, y, args, device, takes_dict)
    finally:
        torch.set_num_threads(threads)
    return wall, cpu, time.perf_counter() - launched, 0.0


def format_row(name: str, wall: float, cpu: float, wall0: float, cpu0: float, samples: int) -> str:
    """One table row: wall s, samples/s, sequential wall / wall, cpu s, sequential cpu / cpu."""
    return f"{name:<34}{wall:>9.3f}{samples / wall:>12.1f}{wall0 / wall:>16.2f}x{cpu:>9.2f}{cpu0 / cpu:>10.2f}x"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=sorted(MODELS), default="small_cnn")
    parser.add_argument("--members", type=int, default=4, help="K members trained in each mode.")
    parser.add_argument("--steps", type=int, default=10, help="Timed optimizer steps per member.")
    parser.add_argument("--warmup-steps", type=int, default=2, help="Untimed steps per member before timing.")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--pool", type=int, default=2, help="Distinct batches per member, cycled.")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (CPU).")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--processes", type=int, default=0, help="Also run member-parallel with this many processes.")
    parser.add_argument("--repeats", type=int, default=3, help="Repeat the whole side-by-side comparison.")
    parser.add_argument(
        "--start-method",
        choices=("spawn", "fork", "forkserver"),
        default="spawn",
        help="How member-parallel processes start (spawn: fresh interpreters importing torch, as accelerate launch).",
    )
    args = parser.parse_args()
    for name in ("members", "steps", "batch_size", "image_size", "pool"):
        if getattr(args, name) < 1:
            raise ValueError(f"`--{name.replace('_', '-')}` should be positive, got {getattr(args, name)}.")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True

    factory, takes_dict = MODELS[args.model]
    torch.manual_seed(0)
    start = factory()
    x, y = make_data(args, device)
    params = sum(p.numel() for p in start.parameters())
    samples = args.members * args.steps * args.batch_size
    device_name = (
        torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu, {torch.get_num_threads()} threads"
    )
    print(
        f"model={args.model} ({params / 1e6:.2f}M params) K={args.members} steps={args.steps} batch={args.batch_size} "
        f"image={args.image_size} channels_last={args.channels_last} device={device_name} torch={torch.__version__}"
    )
    if hasattr(os, "getloadavg"):
        print("load average (1, 5, 15 min): " + ", ".join(f"{v:.2f}" for v in os.getloadavg()))
    header = f"{'mode':<34}{'wall s':>9}{'samples/s':>12}{'sequential/mode':>17}{'cpu s':>9}{'cpu ratio':>11}"
    totals: dict[str, list[float]] = {}
    for repeat in range(args.repeats):
        print(f"--- repeat {repeat + 1}/{args.repeats}: paired, step by step (sequential and vectorised alternately)")
        print(header)
        times = run_paired(start, x, y, args, device, takes_dict)
        wall0, cpu0 = sum(times["sequential"][0]), sum(times["sequential"][1])
        for name, (walls, cpus) in times.items():
            wall, cpu = sum(walls), sum(cpus)
            print(format_row(name, wall, cpu, wall0, cpu0, samples))
        step_ratios = [s / v for s, v in zip(times["sequential"][0], times["vectorized (torch.func)"][0])]
        print(f"per-step sequential/vectorized: median {median(step_ratios):.2f}x, min {min(step_ratios):.2f}x, "
              f"max {max(step_ratios):.2f}x over {len(step_ratios)} steps")  # fmt: skip
        if args.processes > 1 and device.type == "cpu":
            # processes cannot be interleaved with the others: run as blocks right after, sequential first
            n = args.processes
            print(
                f"--- repeat {repeat + 1}/{args.repeats}: blocks at equal total threads, sequential with {n} threads "
                f"then {n} processes x 1 thread ({args.start_method}); load1 {os.getloadavg()[0]:.1f}"
            )
            print(header + f"{'total s':>10}{'start-up s':>12}")
            blocks = {
                f"sequential, {n} threads": run_sequential_block(start, x, y, args, device, takes_dict),
                f"member-parallel {n} proc x 1 thread": run_processes(start, x, y, args, takes_dict),
            }
            wall0, cpu0, total0, _ = blocks[f"sequential, {n} threads"]
            for name, (wall, cpu, total, startup) in blocks.items():
                print(format_row(name, wall, cpu, wall0, cpu0, samples) + f"{total:>10.2f}{startup:>12.2f}")
                totals.setdefault(name, []).append(total)
    if totals:
        (seq_name, seq), (par_name, par) = totals.items()
        ratios = [s / p for s, p in zip(seq, par)]
        print(
            f"total wall incl. start-up over {len(seq)} interleaved repeats: {seq_name} min {min(seq):.2f} s median "
            f"{median(seq):.2f} s | {par_name} min {min(par):.2f} s median {median(par):.2f} s | sequential/parallel "
            f"min/min {min(seq) / min(par):.2f}x, median of pairs {median(ratios):.2f}x"
        )
    if hasattr(os, "getloadavg"):
        print("load average at the end (1, 5, 15 min): " + ", ".join(f"{v:.2f}" for v in os.getloadavg()))


if __name__ == "__main__":
    main()
