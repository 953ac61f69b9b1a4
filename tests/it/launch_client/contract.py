"""Drives ferry with the real Launch client, as the README and the seed snippet do.

Run by `tests/it/launch.rs` with the Python of a venv holding the client (named by
FERRY_LAUNCH_CLIENT_PYTHON). Reads FERRY_GATEWAY, LAUNCH_API_KEY and FERRY_RECEIVER from the
environment and prints one JSON object: what each step observed, for the test to check.
"""

import http.server
import json
import os
import sys
import threading

import requests
from launch import EndpointRequest, LaunchClient, PostInferenceHooks

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


def main():
    client = LaunchClient(api_key=os.environ["LAUNCH_API_KEY"], endpoint=GATEWAY)
    observed = {
        "first_run": seed(client),
        "second_run": seed(client),
        "hooks_removed": remove_hooks(client),
        "input_by_url": input_by_url(client),
        "clone": clone(client),
        "failed_stream": failed_stream(client),
    }
    json.dump(observed, sys.stdout, default=str)


if __name__ == "__main__":
    main()
