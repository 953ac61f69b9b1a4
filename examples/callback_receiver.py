"""A callback receiver for trying ferry out: prints every callback it gets.

    python3 examples/callback_receiver.py [PORT]    # default 8000, on 127.0.0.1
"""
import json
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer


class Receiver(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        print(f"POST {self.path} webhook-id={self.headers.get('webhook-id')} {json.loads(body)}", flush=True)
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


port = int(sys.argv[1]) if len(sys.argv) > 1 else 8000
print(f"receiving callbacks on http://127.0.0.1:{port}", flush=True)
HTTPServer(("127.0.0.1", port), Receiver).serve_forever()
