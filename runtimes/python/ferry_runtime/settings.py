"""What the runtime serves, read once from the environment ferry sets."""

import json
import os
from dataclasses import dataclass
from typing import Any, Optional

CLOUDPICKLE = "cloudpickle_artifact"
ZIP = "zip_artifact"

FLAVOR = "FERRY_BUNDLE_FLAVOR"
ARTIFACT = "FERRY_BUNDLE_ARTIFACT"
LOAD_PREDICT_FN = "FERRY_BUNDLE_LOAD_PREDICT_FN"
LOAD_MODEL_FN = "FERRY_BUNDLE_LOAD_MODEL_FN"
APP_CONFIG = "FERRY_BUNDLE_APP_CONFIG"
PORT = "PORT"


class SettingsError(Exception):
    """The environment does not describe a bundle the runtime can serve."""


@dataclass(frozen=True)
class Settings:
    flavor: str
    artifact: str
    port: int
    # Module paths (`package.module.function`) of a zip bundle's functions.
    load_predict_fn: Optional[str] = None
    load_model_fn: Optional[str] = None
    app_config: Optional[Any] = None


def from_env(env=os.environ) -> Settings:
    def required(name):
        value = env.get(name)
        if not value:
            raise SettingsError(f"{name} is not set")
        return value

    flavor = required(FLAVOR)
    if flavor not in (CLOUDPICKLE, ZIP):
        raise SettingsError(f"{FLAVOR}={flavor!r} is not {CLOUDPICKLE} or {ZIP}")
    try:
        port = int(env.get(PORT, "5005"))
    except ValueError as error:
        raise SettingsError(f"{PORT} is not a port number") from error
    config_text = env.get(APP_CONFIG)
    try:
        app_config = json.loads(config_text) if config_text else None
    except json.JSONDecodeError as error:
        raise SettingsError(f"{APP_CONFIG} is not JSON: {error}") from error
    zip_fns = {}
    if flavor == ZIP:
        zip_fns = {"load_predict_fn": required(LOAD_PREDICT_FN), "load_model_fn": required(LOAD_MODEL_FN)}
    return Settings(flavor=flavor, artifact=required(ARTIFACT), port=port, app_config=app_config, **zip_fns)
