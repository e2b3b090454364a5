"""Peak memory of `uniform_soup` for K = 2, 5, 10 members of a ~50 MB model, against loading every member first.

Each measurement runs in a fresh subprocess (side by side, same machine, same files): the child imports torch and
hf_starsse, resets its peak-RSS counter (`/proc/self/clear_refs`), builds the soup and reports the growth of its peak
RSS (`VmHWM`) over its RSS before the soup. Memory-mapped safetensors pages that are touched count in RSS, so the
figure is what the process really holds. Linux only.

    PYTHONPATH=. python benchmarks/soup_memory.py            # prints the table, exits 1 if the claim fails

Claim checked: the streaming soup's peak stays <= 2.5 x one model and does not grow with K; the naive soup (load all
members, then average) is printed next to it for comparison.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

SIZES = (2, 5, 10)


def _status(field: str) -> int:
    """A `/proc/self/status` field in bytes (e.g. VmRSS, VmHWM)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def child(members: list[str], mode: str) -> None:
    import hf_starsse  # noqa: F401, I001

    import torch
    from safetensors.torch import load_file

    from hf_starsse.soups import uniform_soup

    torch.zeros(1).add_(1)  # warm the allocator
    before = _status("VmRSS")
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        reset = True
    except OSError:
        reset = False
    start_peak = _status("VmHWM")
    if mode == "stream":
        soup = uniform_soup(members)
    else:  # naive: every member in memory, then the mean
        states = [load_file(m + "/model.safetensors") for m in members]
        soup = {k: torch.stack([s[k].float() for s in states]).mean(0) for k in states[0]}
    peak = _status("VmHWM")
    size = sum(t.numel() * t.element_size() for t in soup.values())
    print(json.dumps({"peak_growth": peak - before, "soup_bytes": size, "reset": reset, "start_peak": start_peak}))


def make_members(folder: Path, k: int) -> list[str]:
    import hf_starsse  # noqa: F401, I001

    import torch
    from transformers import ResNetConfig, ResNetForImageClassification

    torch.manual_seed(0)
    config = ResNetConfig(
        embedding_size=64, hidden_sizes=[64, 128, 256, 512], depths=[2, 2, 2, 2], layer_type="basic", num_labels=1000
    )
    model = ResNetForImageClassification(config)
    base = {k: v.clone() for k, v in model.state_dict().items()}
    paths = []
    for i in range(k):
        with torch.no_grad():
            for key, value in model.state_dict().items():
                if value.is_floating_point():
                    value.copy_(base[key] + 0.01 * i * torch.randn_like(value))
        path = folder / f"member-{i}"
        model.save_pretrained(path)
        paths.append(str(path))
    return paths


def run(members: list[str], mode: str) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--child", mode, *members], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--child", choices=("stream", "naive"), help=argparse.SUPPRESS)
    parser.add_argument("members", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.members, args.child)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        members = make_members(Path(tmp), max(SIZES))
        model_bytes = Path(members[0], "model.safetensors").stat().st_size
        print(f"model: ResNet-18-sized, {model_bytes / 2**20:.1f} MiB per member (safetensors, float32)")
        print(f"{'K':>3} | {'streaming peak':>15} | {'x one model':>11} | {'naive peak':>11} | {'x one model':>11}")
        rows = []
        for k in SIZES:
            stream = run(members[:k], "stream")
            naive = run(members[:k], "naive")
            rows.append((k, stream["peak_growth"], naive["peak_growth"]))
            print(
                f"{k:>3} | {stream['peak_growth'] / 2**20:>11.1f} MiB | "
                f"{stream['peak_growth'] / model_bytes:>11.2f} | "
                f"{naive['peak_growth'] / 2**20:>7.1f} MiB | {naive['peak_growth'] / model_bytes:>11.2f}"
            )
        if not stream["reset"]:
            print("note: /proc/self/clear_refs was not writable: peaks include the import-time peak")
    worst = max(r[1] for r in rows) / model_bytes
    growth = rows[-1][1] / rows[0][1]
    ok = worst <= 2.5 and growth <= 1.15
    print(
        f"streaming: worst peak {worst:.2f} x one model (claim <= 2.5), K=10 / K=2 peak ratio {growth:.2f} "
        f"(claim: no growth, <= 1.15); naive K=10 / K=2 ratio {rows[-1][2] / rows[0][2]:.2f} -> "
        f"{'OK' if ok else 'FAILED'}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
