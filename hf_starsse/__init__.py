"""hf_starsse: ensembles in transfer learning (Local DE, Global DE, SSE, StarSSE) on the Hugging Face stack."""

__version__ = "0.1.0.dev0"

from ._torchvision_compat import ensure_torchvision_importable

ensure_torchvision_importable()  # before transformers' vision code imports torchvision

from .cyclic_schedule import cycle_boundaries, get_cyclic_cosine_schedule  # noqa: E402
from .ensemble import Ensemble  # noqa: E402
from .ensemble_config import ENSEMBLE_STRATEGIES, EnsembleTrainingArguments  # noqa: E402
from .ensemble_plan import MemberPlan, describe_plan, plan_members  # noqa: E402
from .ensemble_trainer import EnsembleTrainer, EnsembleTrainOutput  # noqa: E402
from .hub import push_to_hub  # noqa: E402
from .manifest import EnsembleManifest, MemberRecord, member_dir  # noqa: E402
from .modeling_clip_classifier import CLIPVisionForImageClassification  # noqa: E402  (registers it with the Auto classes)
from .modeling_ensemble import EnsembleConfig, EnsembleForImageClassification  # noqa: E402  (registers Auto classes)
from .soups import greedy_soup, uniform_soup  # noqa: E402

__all__ = [
    "CLIPVisionForImageClassification",
    "ENSEMBLE_STRATEGIES",
    "Ensemble",
    "EnsembleConfig",
    "EnsembleForImageClassification",
    "greedy_soup",
    "push_to_hub",
    "uniform_soup",
    "EnsembleManifest",
    "EnsembleTrainOutput",
    "EnsembleTrainer",
    "EnsembleTrainingArguments",
    "MemberPlan",
    "describe_plan",
    "plan_members",
    "MemberRecord",
    "cycle_boundaries",
    "ensure_torchvision_importable",
    "get_cyclic_cosine_schedule",
    "member_dir",
]
