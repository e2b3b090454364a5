"""hf_starsse: ensembles in transfer learning (Local DE, Global DE, SSE, StarSSE) on the Hugging Face stack."""

from ._torchvision_compat import ensure_torchvision_importable

ensure_torchvision_importable()  # before transformers' vision code imports torchvision

from .cyclic_schedule import cycle_boundaries, get_cyclic_cosine_schedule  # noqa: E402
from .ensemble_config import ENSEMBLE_STRATEGIES, EnsembleTrainingArguments  # noqa: E402
from .manifest import EnsembleManifest, MemberRecord, member_dir  # noqa: E402

__version__ = "0.1.0.dev0"

__all__ = [
    "ENSEMBLE_STRATEGIES",
    "EnsembleManifest",
    "EnsembleTrainingArguments",
    "MemberRecord",
    "cycle_boundaries",
    "ensure_torchvision_importable",
    "get_cyclic_cosine_schedule",
    "member_dir",
]
