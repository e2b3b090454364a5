"""Deferred work that `import hf_starsse` arranges without importing torch, torchvision or transformers itself.

Two things must happen before user code touches transformers' vision stack, yet importing that stack costs seconds
(`hf-starsse --help` should not pay for it):

- **torchvision**: `ensure_torchvision_importable` (the compatibility shim of `_torchvision_compat`) must run *instead
  of* the first plain `import torchvision`. A meta-path finder hands the import system a spec whose loader runs the
  shim (which imports the real torchvision) and returns the real module.
- **Auto classes**: `EnsembleConfig` / `EnsembleForImageClassification` and `CLIPVisionForImageClassification` must be
  registered with transformers' Auto classes once `transformers.models.auto` is in use. The finder watches the
  imports of `transformers.*` modules; after each one finishes it checks whether the auto module is loaded and no
  `transformers` module is half-initialised (importing our model modules then cannot hit a circular import), and if
  so imports `hf_starsse.modeling_ensemble` / `hf_starsse.modeling_clip_classifier`, which register themselves.

Both hooks remove themselves once done, so later imports pay nothing.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
from types import ModuleType

_AUTO_MODULES = ("transformers.models.auto.modeling_auto", "transformers.models.auto.configuration_auto")
_REGISTERING_MODULES = ("hf_starsse.modeling_ensemble", "hf_starsse.modeling_clip_classifier")


def _initializing(module: ModuleType | None) -> bool:
    return bool(getattr(getattr(module, "__spec__", None), "_initializing", False))


def _auto_registration_ready(just_loaded: str | None = None) -> bool:
    """The auto module is loaded and no `transformers` module (but `just_loaded`) is half-way through its import."""

    def busy(name: str, module: ModuleType | None) -> bool:
        return name != just_loaded and _initializing(module)

    if not any(name in sys.modules and not busy(name, sys.modules[name]) for name in _AUTO_MODULES):
        return False
    return not any(busy(n, m) for n, m in list(sys.modules.items()) if n.split(".")[0] == "transformers")


class _TorchvisionLoader(importlib.abc.Loader):
    """Runs the compatibility shim in place of the plain import and hands back the real `torchvision` module."""

    def __init__(self, finder: _HookFinder):
        self.finder = finder
        self.real_spec = None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        from ._torchvision_compat import ensure_torchvision_importable

        self.finder.torchvision_pending = False  # the shim's own `import torchvision` goes the normal way
        ensure_torchvision_importable()
        self.finder.remove_if_idle()
        module = sys.modules["torchvision"]
        self.real_spec = module.__spec__
        return module

    def exec_module(self, module: ModuleType) -> None:
        module.__spec__ = self.real_spec  # the import system set our spec on it; it was executed by the real one
        module.__loader__ = self.real_spec.loader


class _WatchingLoader(importlib.abc.Loader):
    """Executes a `transformers` module with its own loader, then gives the finder a chance to register."""

    def __init__(self, loader: importlib.abc.Loader, finder: _HookFinder):
        self.loader = loader
        self.finder = finder

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self.loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        spec = module.__spec__
        spec.loader = self.loader  # look like a plain import to anyone inspecting the module afterwards
        module.__loader__ = self.loader
        self.loader.exec_module(module)
        self.finder.after_transformers_import(just_loaded=spec.name)

    def __getattr__(self, name: str):  # get_source, get_resource_reader, is_package, ...
        return getattr(self.loader, name)


class _HookFinder(importlib.abc.MetaPathFinder):
    def __init__(self, torchvision_pending: bool, registration_pending: bool):
        self.torchvision_pending = torchvision_pending
        self.registration_pending = registration_pending

    def _other_finders_spec(self, fullname: str, path, target) -> importlib.machinery.ModuleSpec | None:
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                return spec
        return None

    def find_spec(self, fullname: str, path=None, target=None) -> importlib.machinery.ModuleSpec | None:
        if fullname == "torchvision" and self.torchvision_pending:
            spec = self._other_finders_spec(fullname, path, target)
            if spec is None:
                return None  # not installed: the plain ModuleNotFoundError
            loader = _TorchvisionLoader(self)
            wrapped = importlib.machinery.ModuleSpec(fullname, loader, origin=spec.origin, is_package=True)
            wrapped.submodule_search_locations = spec.submodule_search_locations
            wrapped.has_location = spec.has_location
            return wrapped
        if self.registration_pending and fullname.split(".")[0] == "transformers":
            spec = self._other_finders_spec(fullname, path, target)
            if spec is not None and spec.loader is not None and hasattr(spec.loader, "exec_module"):
                spec.loader = _WatchingLoader(spec.loader, self)
            return spec
        return None

    def after_transformers_import(self, just_loaded: str | None = None) -> None:
        if self.registration_pending and _auto_registration_ready(just_loaded):
            self.registration_pending = False
            self.remove_if_idle()
            for name in _REGISTERING_MODULES:
                importlib.import_module(name)  # a half-imported one registers itself when its import completes

    def remove_if_idle(self) -> None:
        if not self.torchvision_pending and not self.registration_pending and self in sys.meta_path:
            sys.meta_path.remove(self)


def install() -> None:
    """Arrange the torchvision shim and the Auto-class registration (idempotent; cheap: imports nothing heavy)."""
    for finder in sys.meta_path:
        if isinstance(finder, _HookFinder):
            return
    finder = _HookFinder(torchvision_pending="torchvision" not in sys.modules, registration_pending=True)
    sys.meta_path.insert(0, finder)
    if _auto_registration_ready():  # transformers' auto classes were imported before hf_starsse
        finder.after_transformers_import()
    finder.remove_if_idle()
