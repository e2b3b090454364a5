"""Fingerprints of what a run is trained from: the base model, the training data and the label names.

They are recorded in the manifest (and in every `member.json`); resuming a run with another model, data or labels is
refused before training, naming the field that differs.

- `base_model`: `{"name", "revision"}` for a Hub checkpoint (`config._name_or_path` and the commit of its cached
  snapshot), or
  `{"name", "sha256"}` for a local folder (a hash of its weight files). Global DE: one per checkpoint.
- `train_data`: `{"source", "config", "split", "num_rows", "features", "fingerprint"}` (`fingerprint`: the
  `datasets` fingerprint when there is one; cheap, no pass over the data).
- `labels`: the `id2label` of the model's config.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".msgpack", ".h5")
FIELD_HINTS = {
    "base_model": "`model_name_or_path`",
    "train_data": "`dataset_name`",
    "labels": "the label names (`id2label`)",
}


def weights_sha256(folder: str | os.PathLike) -> str | None:
    """sha256 over the names and bytes of the weight files directly in `folder` (`None` when it has none)."""
    files = sorted(p for p in Path(folder).iterdir() if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES))
    if not files:
        return None
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode() + b"\0")
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def checkpoint_fingerprint(name_or_path: str, revision: str | None = None) -> dict[str, Any]:
    """A pre-trained checkpoint's fingerprint: its weights hash when it is a local folder, else name + revision."""
    if name_or_path and Path(name_or_path).is_dir():
        digest = weights_sha256(name_or_path)
        if digest is not None:
            return {"name": str(name_or_path), "sha256": digest}
    return {"name": str(name_or_path), "revision": revision or _cached_commit(str(name_or_path))}


def _cached_commit(repo_id: str) -> str | None:
    """The commit of the Hub cache's snapshot of `repo_id` (its `main` ref; no network), if it is cached."""
    try:
        from huggingface_hub import try_to_load_from_cache

        path = try_to_load_from_cache(repo_id, "config.json")
    except Exception:  # not a repo id, no cache: the name alone identifies it
        return None
    if isinstance(path, str) and Path(path).parent.parent.name == "snapshots":
        return Path(path).parent.name
    return None


def model_fingerprint(model: Any) -> dict[str, Any]:
    """[`checkpoint_fingerprint`] of the checkpoint a model was loaded from (`config._name_or_path`); a model built
    from a config alone is named by its class."""
    config = getattr(model, "config", None)
    name = getattr(config, "_name_or_path", "") or type(model).__name__
    return checkpoint_fingerprint(name, getattr(config, "_commit_hash", None))


def data_fingerprint(dataset: Any, info: dict[str, Any] | None = None) -> dict[str, Any]:
    """The training data's source, split, number of rows, features and `datasets` fingerprint (no pass over it).

    Args:
        dataset: The training dataset (a `datasets.Dataset` or any sized dataset).
        info (`dict`, *optional*): Values that override what the dataset tells (e.g. the dataset name and split given
            on the command line, and the fingerprint of the data before its lazy image transforms).
    """
    ds_info = getattr(dataset, "info", None)
    fingerprint = getattr(dataset, "_fingerprint", None)
    if (getattr(dataset, "format", None) or {}).get("type") == "custom":
        fingerprint = None  # with a lazy transform it also hashes the transform function, which may not be stable
    features = getattr(dataset, "features", None)
    split = getattr(dataset, "split", None)
    out = {
        "source": getattr(ds_info, "dataset_name", None) or getattr(ds_info, "builder_name", None),
        "config": getattr(ds_info, "config_name", None),
        "split": str(split) if split is not None else None,
        "num_rows": len(dataset) if hasattr(dataset, "__len__") else None,
        "features": str(features) if features is not None else type(dataset).__name__,
        "fingerprint": fingerprint,
    }
    out.update(info or {})
    return out


def labels_fingerprint(model: Any) -> dict[str, str] | None:
    """The model's `id2label` with string keys (as JSON stores it)."""
    id2label = getattr(getattr(model, "config", None), "id2label", None)
    if not id2label:
        return None
    return {str(k): str(v) for k, v in sorted(id2label.items(), key=lambda kv: int(kv[0]))}


def fingerprint_differences(on_disk: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """The fields of two fingerprint dicts that differ, as `field.key: on disk X vs now Y` (empty when they match).

    A base model with a weights hash on both sides is compared by the hash only (the same weights moved to another
    folder match); fields missing on disk (a run written before fingerprints) are not compared.
    """
    out = []
    for field in ("base_model", "train_data", "labels"):
        if field not in on_disk or field not in now:
            continue
        old, new = on_disk[field], now[field]
        if field == "base_model":
            out += _base_model_differences(old, new)
        elif field == "train_data" and isinstance(old, dict) and isinstance(new, dict):
            out += [_describe(f"{field}.{k}", old.get(k), new.get(k)) for k in old if old.get(k) != new.get(k)]
        elif old != new:
            out.append(_describe(field, old, new))
    return out


def _base_model_differences(old: Any, new: Any) -> list[str]:
    olds, news = (old if isinstance(old, list) else [old]), (new if isinstance(new, list) else [new])
    if len(olds) != len(news):
        return [_describe("base_model", old, new)]
    out = []
    for i, (a, b) in enumerate(zip(olds, news)):
        where = f"base_model[{i}]" if isinstance(old, list) else "base_model"
        keys = ("sha256",) if a.get("sha256") and b.get("sha256") else ("name", "revision", "sha256")
        out += [_describe(f"{where}.{k}", a.get(k), b.get(k)) for k in keys if a.get(k) != b.get(k)]
    return out


def _describe(name: str, old: Any, new: Any) -> str:
    def short(value: Any) -> str:
        text = repr(value)
        return text if len(text) <= 80 else text[:77] + "..."

    return f"`{name}`: {short(old)} on disk vs {short(new)} now"
