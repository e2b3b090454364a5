"""Fine-tune a Local DE / Global DE / SSE / StarSSE ensemble from a recipe, on 1 GPU, N GPUs, several machines or CPU.

The same code path as `hf-starsse train` (`hf_starsse.train_entry`). Launch:

    # 1 GPU
    accelerate launch --config_file recipes/accelerate_configs/single_gpu.yaml recipes/train.py \
        --config recipes/resnet50_byol_cifar100.yaml --ensemble_strategy star_sse
    # N GPUs on one machine (DDP; per_device_train_batch_size is per GPU: divide it by N to keep the global batch)
    accelerate launch --config_file recipes/accelerate_configs/multi_gpu.yaml --num_processes 8 recipes/train.py \
        --config recipes/resnet50_byol_cifar100.yaml --per_device_train_batch_size 32
    # several machines: run on every machine, with its --machine_rank
    accelerate launch --config_file recipes/accelerate_configs/multi_gpu.yaml --num_machines 2 --num_processes 16 \
        --machine_rank 0 --main_process_ip 10.0.0.1 --main_process_port 29500 recipes/train.py --config ...
    # 2 CPU processes over gloo (note: `--cpu --num_processes 2` would silently run ONE process)
    accelerate launch --config_file recipes/accelerate_configs/cpu.yaml recipes/train.py --config ... --use_cpu true
    # print the resolved plan without training
    python recipes/train.py --config recipes/resnet50_byol_cifar100.yaml --dry_run

Every field of the recipe can be overridden on the command line (`--learning_rate 0.01`); `--help` lists them all.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

import hf_starsse  # noqa: E402,F401  (first: torchvision compatibility)
from hf_starsse.train_entry import cli_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(cli_main(prog="recipes/train.py"))
