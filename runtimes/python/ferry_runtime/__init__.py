"""ferry's Python runtime: loads a Launch callable (cloudpickle) or zip bundle and serves it over
ferry's model contract — POST /predict with a task's input, GET /readyz, listening on $PORT.

The bundle is described by environment variables (see `settings.py`); the artifact is a local
file, fetched beforehand by ferry (`ferry dev`, or the worker pod's init container)."""
