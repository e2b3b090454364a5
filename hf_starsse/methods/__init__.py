"""Post-hoc builders of the paper's other basin-exploration baselines over a finished member 0.

Each builder starts from a fine-tuned `save_pretrained` folder (e.g. member 0 of a Local DE / StarSSE run) and writes a
run folder in the layout of `hf_starsse.run_folder` (`members/member-<i>/` + `ensemble.json`), so the evaluator, soups
and `push_to_hub` treat them like any other ensemble:

- `fge`: Fast Geometric Ensembling (Garipov et al. 2018), [`build_fge`].
- `swa` / `swag`: SWA mean and SWAG samples (Izmailov et al. 2018; Maddox et al. 2019), [`build_swag`].
- `csgld`: cyclical SGLD (Zhang et al. 2020), [`build_csgld`].
- `laplace`: KFAC Laplace through `laplace-torch` (Ritter et al. 2018), [`build_laplace`].
- `spro`: a simplex of models around member 0 (Benton et al. 2021), [`build_spro`].
"""

from .csgld import CSGLDConfig, build_csgld
from .fge import FGEConfig, build_fge
from .laplace import LaplaceConfig, build_laplace, laplace_predictive_metrics
from .spro import SPROConfig, build_spro
from .swag import SWAGConfig, SWAGMoments, build_swag

__all__ = [
    "CSGLDConfig",
    "FGEConfig",
    "LaplaceConfig",
    "SPROConfig",
    "SWAGConfig",
    "SWAGMoments",
    "build_csgld",
    "build_fge",
    "build_laplace",
    "build_spro",
    "build_swag",
    "laplace_predictive_metrics",
]
