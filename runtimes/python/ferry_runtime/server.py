"""The model contract over HTTP: POST /predict runs the predict function on the task's input
and answers its output as JSON; GET /readyz answers 200. A task's args (a JSON body) are the
predict function's one input, as Launch passes a v2 bundle's request; an input given by URL
arrives as the fetched bytes (the forwarder marks it with the `ferry-input-url` header) and is
passed as bytes, as Launch does."""

import json
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

INPUT_URL_HEADER = "ferry-input-url"
PREDICT_ROUTE = "/predict"
READY_ROUTE = "/readyz"


def to_json(output: Any) -> Any:
    """The output as JSON values; pydantic models (v1 or v2) by their fields."""
    if hasattr(output, "model_dump"):
        return output.model_dump(mode="json")
    if hasattr(output, "dict") and hasattr(output, "__fields__"):
        return output.dict()
    return output


def answer(predict_fn: Callable, body: bytes, from_url: bool):
    """(status, JSON body) for one request."""
    if from_url:
        request = body
    else:
        try:
            request = json.loads(body or b"null")
        except json.JSONDecodeError as error:
            return 422, {"detail": f"the body is not JSON: {error}"}
    try:
        output = predict_fn(request)
        return 200, json.loads(json.dumps(to_json(output)))
    except Exception as error:  # the model's own failure: the task's FAILURE, with its traceback
        return 500, {"detail": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc()}


def handler(predict_fn: Callable):
    class Model(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def reply(self, status: int, body: Any):
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            if self.path == READY_ROUTE:
                self.reply(200, {"ready": True})
            else:
                self.reply(404, {"detail": "Not Found"})

        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            if self.path != PREDICT_ROUTE:
                self.reply(404, {"detail": "Not Found"})
                return
            self.reply(*answer(predict_fn, body, self.headers.get(INPUT_URL_HEADER) is not None))

        def log_message(self, *args):
            pass

    return Model


def serve(predict_fn: Callable, port: int, host: str = "127.0.0.1") -> ThreadingHTTPServer:
    """A server of `predict_fn` on host:port (not yet serving: call serve_forever)."""
    return ThreadingHTTPServer((host, port), handler(predict_fn))
