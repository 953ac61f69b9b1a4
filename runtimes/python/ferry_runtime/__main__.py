"""`python -m ferry_runtime`: load the bundle the environment names, then serve it on $PORT."""

import os
import sys

from . import load, server, settings


def main() -> int:
    try:
        config = settings.from_env()
        predict_fn = load.load(config)
    except (settings.SettingsError, load.LoadError) as error:
        print(f"ferry runtime: {error}", file=sys.stderr)
        return 2
    # In a pod the forwarder reaches the model over the pod's loopback; the host can be widened.
    host = os.environ.get("FERRY_RUNTIME_HOST", "127.0.0.1")
    print(f"ferry runtime: serving {config.flavor} on {host}:{config.port}", file=sys.stderr)
    server.serve(predict_fn, config.port, host).serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
