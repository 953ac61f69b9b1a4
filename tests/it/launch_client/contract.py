"""Drives ferry with the real Launch client, as the README and the seed snippet do.

Run by `tests/it/launch.rs` with the Python of a venv holding the client (named by
FERRY_LAUNCH_CLIENT_PYTHON). Reads FERRY_GATEWAY, LAUNCH_API_KEY and FERRY_RECEIVER from the
environment and prints one JSON object: what each step observed, for the test to check.
"""

import http.server
import json
import os
import sys
import tempfile
import threading
import uuid

import cloudpickle
import requests
from launch import EndpointRequest, LaunchClient, PostInferenceHooks
from pydantic import BaseModel

GATEWAY = os.environ["FERRY_GATEWAY"]
RECEIVER = os.environ["FERRY_RECEIVER"]
WAIT = 120


def seed(client):
    """The seed snippet, word for word but for the URLs."""
    endpoint = client.create_model_endpoint(
        endpoint_name="demo-endpoint-callback",
        model_bundle="test-bundle",
        cpus=1,
        min_workers=1,
        endpoint_type="async",
        update_if_exists=True,
        labels={"team": "MY_TEAM", "product": "MY_PRODUCT"},
        post_inference_hooks=[PostInferenceHooks.CALLBACK],
        default_callback_url=f"{RECEIVER}/default",
    )
    future_default = endpoint.predict(request=EndpointRequest(args={"x": 2, "y": "hello"}))
    future_custom = endpoint.predict(
        request=EndpointRequest(
            args={"x": 3, "y": "hello"}, callback_url=f"{RECEIVER}/custom"
        ),
    )
    default, custom = future_default.get(timeout=WAIT), future_custom.get(timeout=WAIT)
    return {
        "default": {"task_id": future_default.async_task_id, "result": default.result},
        "custom": {"task_id": future_custom.async_task_id, "result": custom.result},
    }


def remove_hooks(client):
    """Callbacks off, as the client can say it; then a task that must not call back."""
    client.edit_model_endpoint(model_endpoint="demo-endpoint-callback", post_inference_hooks=[])
    view = requests.get(
        f"{GATEWAY}/v1/model-endpoints",
        params={"name": "demo-endpoint-callback"},
        auth=(os.environ["LAUNCH_API_KEY"], ""),
        timeout=WAIT,
    ).json()["model_endpoints"][0]
    endpoint = client.get_model_endpoint("demo-endpoint-callback")
    future = endpoint.predict(request=EndpointRequest(args={"x": 4, "y": "hello"}))
    return {
        "post_inference_hooks": view["post_inference_hooks"],
        "default_callback_url": view["default_callback_url"],
        "task": {"task_id": future.async_task_id, "result": future.get(timeout=WAIT).result},
    }


def failed_stream(client):
    endpoint = client.create_model_endpoint(
        endpoint_name="streamer",
        model_bundle="streamer",
        cpus=1,
        min_workers=1,
        endpoint_type="streaming",
        labels={"team": "MY_TEAM", "product": "MY_PRODUCT"},
    )
    responses = list(endpoint.predict(request=EndpointRequest(args={"fail": True})))
    return [
        {"status": r.status, "result": r.result, "traceback": r.traceback} for r in responses
    ]


def input_by_url(client):
    """A task whose input the worker fetches from a URL (here a server on 127.0.0.1)."""

    class Input(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            data = json.dumps({"x": 5, "y": "hi"}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Input)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        endpoint = client.get_model_endpoint("demo-endpoint-callback")
        url = f"http://127.0.0.1:{server.server_address[1]}/input.json"
        future = endpoint.predict(request=EndpointRequest(url=url))
        response = future.get(timeout=WAIT)
        return {"status": response.status, "result": response.result}
    finally:
        server.shutdown()


def clone(client):
    """A copy of the seed's bundle under a new id."""
    original = client.get_latest_model_bundle_v2("test-bundle")
    cloned = client.clone_model_bundle_with_changes_v2(original_model_bundle_id=original.id)
    copy = client.get_model_bundle_v2(cloned.model_bundle_id)
    return {
        "original": original.id,
        "clone": cloned.model_bundle_id,
        "image": [original.flavor.repository, copy.flavor.repository],
    }


class Request(BaseModel):
    x: int


class Response(BaseModel):
    y: int


def self_hosted_client():
    """A self-hosted client whose uploads are files under a temporary directory, named by
    file:// locations ferry dev reads."""
    store = tempfile.mkdtemp(prefix="ferry-bundles-")
    client = LaunchClient(api_key=os.environ["LAUNCH_API_KEY"], endpoint=GATEWAY, self_hosted=True)

    def location():
        return f"file://{store}/{uuid.uuid4().hex}"

    def upload(data, url):
        with open(url[len("file://"):], "wb") as out:
            out.write(data if isinstance(data, bytes) else data.encode())

    client.register_bundle_location_fn(location)
    client.register_upload_bundle_fn(upload)
    return client


def predict_on_new_endpoint(client, name):
    client.create_model_endpoint(
        endpoint_name=name,
        model_bundle=name,
        cpus=1,
        min_workers=1,
        endpoint_type="async",
        labels={"team": "MY_TEAM", "product": "MY_PRODUCT"},
    )
    endpoint = client.get_model_endpoint(name)
    future = endpoint.predict(request=EndpointRequest(args={"x": 4}))
    response = future.get(timeout=WAIT * 3)
    return {"status": response.status, "result": response.result, "traceback": response.traceback}


def callable_bundle(client):
    """create_model_bundle_from_callable_v2, then an endpoint and a prediction."""

    def load_model_fn():
        return lambda x: x * 3

    def load_predict_fn(model):
        def predict(request):
            return {"y": model(request["x"])}

        return predict

    created = client.create_model_bundle_from_callable_v2(
        model_bundle_name="tripler",
        load_predict_fn=load_predict_fn,
        load_model_fn=load_model_fn,
        request_schema=Request,
        response_schema=Response,
        # The version that pickled the functions unpickles them.
        requirements=[f"cloudpickle=={cloudpickle.__version__}"],
        pytorch_image_tag="2.5.1-cuda12.4-cudnn9-runtime",
    )
    bundle = client.get_model_bundle_v2(created.model_bundle_id)
    return {
        "flavor": bundle.flavor.flavor,
        "framework": bundle.flavor.framework.framework_type,
        "prediction": predict_on_new_endpoint(client, "tripler"),
    }


SERVE = """
def load_model_fn():
    return 2


def load_predict_fn(model, app_config=None):
    def predict(request):
        return {"y": request["x"] * model + app_config["offset"]}

    return predict
"""


def zip_bundle(client):
    """create_model_bundle_from_dirs_v2 (paths relative to the working directory, as the client
    wants them), then an endpoint and a prediction."""
    root = tempfile.mkdtemp(prefix="ferry-zip-")
    os.makedirs(os.path.join(root, "doubling", "inner"))
    for name, text in [("__init__.py", ""), ("inner/__init__.py", ""), ("inner/serve.py", SERVE)]:
        with open(os.path.join(root, "doubling", name), "w", encoding="utf-8") as out:
            out.write(text)
    here = os.getcwd()
    os.chdir(root)
    try:
        created = client.create_model_bundle_from_dirs_v2(
            model_bundle_name="doubling",
            base_paths=["doubling"],
            load_predict_fn_module_path="doubling.inner.serve.load_predict_fn",
            load_model_fn_module_path="doubling.inner.serve.load_model_fn",
            request_schema=Request,
            response_schema=Response,
            custom_base_image_repository="python",
            custom_base_image_tag="3.11-slim",
            app_config={"offset": 1},
        )
    finally:
        os.chdir(here)
    bundle = client.get_latest_model_bundle_v2("doubling")
    return {
        "id": [created.model_bundle_id, bundle.id],
        "flavor": bundle.flavor.flavor,
        "image": [bundle.flavor.framework.image_repository, bundle.flavor.framework.image_tag],
        "prediction": predict_on_new_endpoint(client, "doubling"),
    }


def main():
    client = LaunchClient(api_key=os.environ["LAUNCH_API_KEY"], endpoint=GATEWAY)
    observed = {
        "first_run": seed(client),
        "second_run": seed(client),
        "hooks_removed": remove_hooks(client),
        "input_by_url": input_by_url(client),
        "clone": clone(client),
        "failed_stream": failed_stream(client),
        "callable": callable_bundle(self_hosted_client()),
        "zip": zip_bundle(self_hosted_client()),
    }
    json.dump(observed, sys.stdout, default=str)


if __name__ == "__main__":
    main()
