"""hf_starsse: ensembles in transfer learning (Local DE, Global DE, SSE, StarSSE) on the Hugging Face stack.

`import hf_starsse` is cheap: it imports no torch, torchvision or transformers. It arranges (see `_import_hooks`)
that the first `import torchvision` goes through the compatibility shim (`_torchvision_compat`), and that the
ensemble and CLIP classifier classes are registered with transformers' Auto classes as soon as those are in use. The
public names below are imported on first access (`from hf_starsse import EnsembleTrainer`), like transformers'
`_LazyModule`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from . import _import_hooks

__version__ = "0.1.0.dev0"

_import_hooks.install()  # before transformers' vision code imports torchvision

# public name -> submodule that defines it
_LAZY_ATTRIBUTES = {
    "cycle_boundaries": "cyclic_schedule",
    "get_cyclic_cosine_schedule": "cyclic_schedule",
    "Ensemble": "ensemble",
    "ENSEMBLE_STRATEGIES": "ensemble_config",
    "EnsembleTrainingArguments": "ensemble_config",
    "MemberPlan": "ensemble_plan",
    "describe_plan": "ensemble_plan",
    "plan_members": "ensemble_plan",
    "EnsembleTrainer": "ensemble_trainer",
    "EnsembleTrainOutput": "ensemble_trainer",
    "push_to_hub": "hub",
    "EnsembleManifest": "manifest",
    "MemberRecord": "manifest",
    "member_dir": "manifest",
    "CLIPVisionForImageClassification": "modeling_clip_classifier",
    "EnsembleConfig": "modeling_ensemble",
    "EnsembleForImageClassification": "modeling_ensemble",
    "greedy_soup": "soups",
    "uniform_soup": "soups",
    "ensure_torchvision_importable": "_torchvision_compat",
}

__all__ = [
    "CLIPVisionForImageClassification",
    "ENSEMBLE_STRATEGIES",
    "Ensemble",
    "EnsembleConfig",
    "EnsembleForImageClassification",
    "EnsembleManifest",
    "EnsembleTrainOutput",
    "EnsembleTrainer",
    "EnsembleTrainingArguments",
    "MemberPlan",
    "MemberRecord",
    "cycle_boundaries",
    "describe_plan",
    "ensure_torchvision_importable",
    "get_cyclic_cosine_schedule",
    "greedy_soup",
    "member_dir",
    "plan_members",
    "push_to_hub",
    "uniform_soup",
]

if TYPE_CHECKING:
    from ._torchvision_compat import ensure_torchvision_importable
    from .cyclic_schedule import cycle_boundaries, get_cyclic_cosine_schedule
    from .ensemble import Ensemble
    from .ensemble_config import ENSEMBLE_STRATEGIES, EnsembleTrainingArguments
    from .ensemble_plan import MemberPlan, describe_plan, plan_members
    from .ensemble_trainer import EnsembleTrainer, EnsembleTrainOutput
    from .hub import push_to_hub
    from .manifest import EnsembleManifest, MemberRecord, member_dir
    from .modeling_clip_classifier import CLIPVisionForImageClassification
    from .modeling_ensemble import EnsembleConfig, EnsembleForImageClassification
    from .soups import greedy_soup, uniform_soup


def __getattr__(name: str) -> Any:
    if name in _LAZY_ATTRIBUTES:
        value = getattr(importlib.import_module(f".{_LAZY_ATTRIBUTES[name]}", __name__), name)
        globals()[name] = value  # later accesses skip this function
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY_ATTRIBUTES))
