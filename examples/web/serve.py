"""A tiny static server for the browser example, on the loopback interface only.

    python3 examples/web/serve.py                      # every exported/*/model.raw.onnx, port 8000
    python3 examples/web/serve.py --model mine=path/to/model.raw.onnx --port 0   # 0: any free port

Serves this folder (index.html, app.js, node_modules/onnxruntime-web's wasm files), each model as
/models/<name>/model.raw.onnx (NAME= given, else its folder's name), listed in /models.json, and the example images in
examples/images as /images/<file>. Prints the page's URL on its first line.
Standard library only: no torch, no lenet_export.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

HERE = Path(__file__).resolve().parent
EXPORTED = HERE.parents[1] / "exported"
IMAGES = HERE.parent / "images"


class Handler(SimpleHTTPRequestHandler):
    # .mjs must be served as JavaScript and .wasm as application/wasm, whatever the OS's mime tables say
    extensions_map = {**SimpleHTTPRequestHandler.extensions_map, ".mjs": "text/javascript",
                      ".js": "text/javascript", ".wasm": "application/wasm", ".onnx": "application/octet-stream"}

    def __init__(self, *args, models: dict[str, Path], **kw):
        self.models = models
        super().__init__(*args, directory=str(HERE), **kw)

    def end_headers(self):
        self.send_header("Cache-Control", "no-store")  # a re-exported model is picked up on reload
        # Two or more wasm threads need SharedArrayBuffer, which browsers give only to cross-origin isolated
        # pages: uncomment these two headers and set ort.env.wasm.numThreads in app.js.
        # self.send_header("Cross-Origin-Opener-Policy", "same-origin")
        # self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
        super().end_headers()

    def do_GET(self):
        path = self.path.split("?", 1)[0]
        if path == "/models.json":
            body = json.dumps([{"name": n, "url": f"models/{n}/model.raw.onnx"} for n in self.models]).encode()
            return self._send(body, "application/json")
        parts = path.strip("/").split("/")
        if len(parts) == 3 and parts[0] == "models" and parts[2] == "model.raw.onnx" and parts[1] in self.models:
            return self._send(self.models[parts[1]].read_bytes(), "application/octet-stream")
        if len(parts) == 2 and parts[0] == "images" and (IMAGES / parts[1]).is_file() and parts[1].endswith(".png"):
            return self._send((IMAGES / parts[1]).read_bytes(), "image/png")
        return super().do_GET()

    def _send(self, body: bytes, ctype: str):
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt, *args):  # quiet: errors only
        if len(args) > 1 and str(args[1]).startswith(("4", "5")):
            super().log_message(fmt, *args)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", action="append", metavar="[NAME=]PATH",
                   help="a model.raw.onnx to offer, named NAME or after its folder (repeatable; "
                        "default: every exported/*/model.raw.onnx)")
    p.add_argument("--port", type=int, default=8000, help="port on 127.0.0.1 (default 8000; 0: any free port)")
    a = p.parse_args(argv)
    named: dict[str, Path] = {}
    for spec in a.model or sorted(map(str, EXPORTED.glob("*/model.raw.onnx"))):
        name, _, path = spec.partition("=") if "=" in spec else ("", "", spec)
        path = Path(path).resolve()
        if not path.is_file():
            p.error(f"no such model: {path}")
        name = name or path.parent.name
        if name in named or "/" in name:
            p.error(f"model name {name!r} is taken or has a slash: pass --model NAME=PATH")
        named[name] = path
    if not named:
        p.error("no model: pass --model path/to/model.raw.onnx")
    if not (HERE / "node_modules" / "onnxruntime-web").is_dir():
        p.error(f"onnxruntime-web is missing: cd {HERE} && npm ci --ignore-scripts")
    server = ThreadingHTTPServer(("127.0.0.1", a.port), functools.partial(Handler, models=named))
    print(f"http://127.0.0.1:{server.server_address[1]}/", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    sys.exit(main())
