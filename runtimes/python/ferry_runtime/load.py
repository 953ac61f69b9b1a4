"""Turns a bundle artifact into a predict function, as Launch's server does: the model is
`load_model_fn()` and the predict function `load_predict_fn(model)`; with an app_config, each
is given it: as Launch's server passes it (`load_model_fn(app_config)`,
`load_predict_fn(app_config, model)`), or by keyword where a function takes `app_config` after
the model (`load_predict_fn(model, app_config=...)`, as the client's documentation shows)."""

import importlib
import inspect
import os
import pickle
import sys
import tempfile
import zipfile
from typing import Any, Callable

from . import settings as settings_module


class LoadError(Exception):
    """The artifact cannot be loaded into a predict function."""


def _parameters(fn: Callable) -> list:
    try:
        return list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return []


def _takes_app_config(fn: Callable) -> bool:
    return any(p.name == "app_config" for p in _parameters(fn))


def _positional_count(fn: Callable) -> int:
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return sum(1 for p in _parameters(fn) if p.kind in kinds and p.name != "app_config")


def build_predict_fn(load_model_fn: Callable, load_predict_fn: Callable, app_config: Any) -> Callable:
    """The predict function of a bundle's two loaders."""
    if app_config is None:
        return load_predict_fn(load_model_fn())
    if _takes_app_config(load_model_fn):
        model = load_model_fn(app_config=app_config)
    elif _positional_count(load_model_fn) >= 1:
        model = load_model_fn(app_config)
    else:
        model = load_model_fn()
    names = [p.name for p in _parameters(load_predict_fn)]
    if names[:1] == ["app_config"] or ("app_config" not in names and _positional_count(load_predict_fn) >= 2):
        return load_predict_fn(app_config, model)
    if "app_config" in names:
        return load_predict_fn(model, app_config=app_config)
    return load_predict_fn(model)


def _load_cloudpickle(path: str):
    # Functions pickled by cloudpickle unpickle with the standard library once cloudpickle is
    # importable (the pickle names its helpers).
    try:
        import cloudpickle  # noqa: F401
    except ImportError as error:
        raise LoadError("callable bundles need cloudpickle in the runtime's environment") from error
    with open(path, "rb") as artifact:
        bundle = pickle.load(artifact)
    if not isinstance(bundle, dict) or "load_predict_fn" not in bundle or "load_model_fn" not in bundle:
        raise LoadError("the artifact is not a callable bundle (load_model_fn and load_predict_fn)")
    return bundle["load_model_fn"], bundle["load_predict_fn"]


def _function(module_path: str) -> Callable:
    module_name, _, name = module_path.rpartition(".")
    if not module_name:
        raise LoadError(f"{module_path!r} is not a module path such as package.module.function")
    try:
        function = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError) as error:
        raise LoadError(f"cannot load {module_path}: {error}") from error
    return function


def _load_zip(path: str, load_model_fn: str, load_predict_fn: str, into: str):
    try:
        with zipfile.ZipFile(path) as archive:
            archive.extractall(into)
    except zipfile.BadZipFile as error:
        raise LoadError(f"the artifact is not a zip file: {error}") from error
    sys.path.insert(0, into)
    return _function(load_model_fn), _function(load_predict_fn)


def load(settings: "settings_module.Settings") -> Callable:
    """The bundle's predict function."""
    if not os.path.isfile(settings.artifact):
        raise LoadError(f"artifact {settings.artifact} does not exist")
    if settings.flavor == settings_module.CLOUDPICKLE:
        load_model_fn, load_predict_fn = _load_cloudpickle(settings.artifact)
    else:
        into = tempfile.mkdtemp(prefix="ferry-bundle-")
        load_model_fn, load_predict_fn = _load_zip(
            settings.artifact, settings.load_model_fn, settings.load_predict_fn, into
        )
    return build_predict_fn(load_model_fn, load_predict_fn, settings.app_config)
