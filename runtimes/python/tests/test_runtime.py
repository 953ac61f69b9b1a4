"""The runtime end to end on 127.0.0.1: bundles made as the Launch client makes them (a
cloudpickled dict of the two loaders; a zip of directories named by their parent), loaded from
the environment ferry sets, and served over the model contract."""

import io
import json
import os
import pickle
import sys
import tempfile
import threading
import unittest
import urllib.error
import urllib.request
import zipfile

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from ferry_runtime import load, server, settings  # noqa: E402

try:
    import cloudpickle
except ImportError:  # the callable-bundle tests say so and skip
    cloudpickle = None


def running(predict_fn):
    """A served predict function; (base URL, stop)."""
    httpd = server.serve(predict_fn, 0)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{httpd.server_address[1]}", httpd.shutdown


def post(base, body: bytes, headers=None):
    request = urllib.request.Request(f"{base}/predict", data=body, headers=headers or {}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def load_model_fn():
    return lambda x: x * 2


def load_predict_fn(model):
    def predict(request):
        return {"doubled": model(request["n"])}

    return predict


class Settings(unittest.TestCase):
    def test_the_environment_describes_the_bundle(self):
        config = settings.from_env({
            settings.FLAVOR: settings.ZIP, settings.ARTIFACT: "/a.zip", settings.LOAD_PREDICT_FN: "m.p",
            settings.LOAD_MODEL_FN: "m.l", settings.APP_CONFIG: '{"k": 1}', settings.PORT: "6001",
        })
        self.assertEqual((config.port, config.app_config, config.load_predict_fn), (6001, {"k": 1}, "m.p"))

    def test_missing_or_wrong_settings_are_named(self):
        with self.assertRaisesRegex(settings.SettingsError, settings.FLAVOR):
            settings.from_env({})
        with self.assertRaisesRegex(settings.SettingsError, settings.LOAD_PREDICT_FN):
            settings.from_env({settings.FLAVOR: settings.ZIP, settings.ARTIFACT: "/a.zip"})
        with self.assertRaisesRegex(settings.SettingsError, "not JSON"):
            settings.from_env({settings.FLAVOR: settings.CLOUDPICKLE, settings.ARTIFACT: "/a", settings.APP_CONFIG: "{"})


class Loading(unittest.TestCase):
    def test_app_config_reaches_both_loaders_as_launch_passes_it(self):
        seen = {}

        def model_fn(app_config):
            seen["model"] = app_config
            return "model"

        def predict_fn(app_config, model):
            seen["predict"] = (app_config, model)
            return lambda request: request

        load.build_predict_fn(model_fn, predict_fn, {"t": 1})
        self.assertEqual(seen, {"model": {"t": 1}, "predict": ({"t": 1}, "model")})

    def test_app_config_goes_by_keyword_where_a_loader_names_it(self):
        predict = load.build_predict_fn(
            lambda: 3, lambda model, app_config=None: (lambda r: model * app_config["k"]), {"k": 2}
        )
        self.assertEqual(predict(None), 6)

    def test_a_zip_bundle_loads_its_functions_by_module_path(self):
        with tempfile.TemporaryDirectory() as tmp:
            artifact = os.path.join(tmp, "bundle.zip")
            with zipfile.ZipFile(artifact, "w") as archive:
                # The client's arcnames: each directory under its own name.
                archive.writestr("my_pkg/__init__.py", "")
                archive.writestr(
                    "my_pkg/inference.py",
                    "def load_model(app_config):\n    return app_config['offset']\n"
                    "def load_predict(app_config, model):\n    return lambda r: {'sum': r['n'] + model}\n",
                )
            config = settings.Settings(
                flavor=settings.ZIP, artifact=artifact, port=0, app_config={"offset": 10},
                load_predict_fn="my_pkg.inference.load_predict", load_model_fn="my_pkg.inference.load_model",
            )
            self.assertEqual(load.load(config)({"n": 5}), {"sum": 15})
            wrong = settings.Settings(
                flavor=settings.ZIP, artifact=artifact, port=0,
                load_predict_fn="my_pkg.inference.nothing", load_model_fn="my_pkg.inference.load_model",
            )
            with self.assertRaisesRegex(load.LoadError, "nothing"):
                load.load(wrong)

    @unittest.skipIf(cloudpickle is None, "SKIPPED: cloudpickle is not installed")
    def test_a_callable_bundle_unpickles_its_loaders(self):
        with tempfile.TemporaryDirectory() as tmp:
            artifact = os.path.join(tmp, "bundle.pkl")
            with open(artifact, "wb") as out:
                # By value, as the client pickles a user's functions.
                out.write(cloudpickle.dumps({"load_model_fn": lambda: 3, "load_predict_fn": lambda m: (lambda r: r["n"] * m)}))
            config = settings.Settings(flavor=settings.CLOUDPICKLE, artifact=artifact, port=0)
            self.assertEqual(load.load(config)({"n": 7}), 21)
            with open(artifact, "wb") as out:
                out.write(pickle.dumps([1, 2]))
            with self.assertRaisesRegex(load.LoadError, "not a callable bundle"):
                load.load(config)


class Serving(unittest.TestCase):
    def setUp(self):
        self.base, self.stop = running(load.build_predict_fn(load_model_fn, load_predict_fn, None))

    def tearDown(self):
        self.stop()

    def test_predict_answers_the_output_as_json(self):
        self.assertEqual(post(self.base, b'{"n": 21}'), (200, {"doubled": 42}))

    def test_readyz_answers_once_loaded(self):
        with urllib.request.urlopen(f"{self.base}/readyz", timeout=10) as response:
            self.assertEqual(response.status, 200)

    def test_a_failing_model_answers_500_with_its_traceback(self):
        status, body = post(self.base, b'{"m": 1}')
        self.assertEqual(status, 500)
        self.assertIn("KeyError", body["detail"])
        self.assertIn("Traceback", body["traceback"])

    def test_an_input_by_url_arrives_as_bytes(self):
        self.stop()
        self.base, self.stop = running(lambda request: {"type": type(request).__name__, "size": len(request)})
        status, body = post(self.base, b"\x00\x01raw", {server.INPUT_URL_HEADER: "s3://b/k"})
        self.assertEqual((status, body), (200, {"type": "bytes", "size": 5}))


if __name__ == "__main__":
    unittest.main()
