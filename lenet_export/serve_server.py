"""KServe's ``ModelServer`` with the three things ``serve`` adds (see ``serve``): the listening host, a bound
request size, one log line per refused request. Imported after ``serve._import_kserve`` (kserve reads argv).

Each override is a subclass of KServe's own class that changes only that: the protocol, the data plane, the
binary-tensor extension, health, metadata, signals and graceful shutdown stay KServe's.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent import futures

import orjson
from fastapi.exceptions import RequestValidationError
from grpc import StatusCode, aio
from kserve import ModelServer
from kserve.errors import InvalidInput, ModelNotFound
from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc
from kserve.protocol.grpc.interceptors import (
    ExceptionToStatusInterceptor,
    LoggingInterceptor,
)
from kserve.protocol.grpc.server import GRPCServer
from kserve.protocol.grpc.servicer import InferenceServicer
from kserve.protocol.infer_type import InferInput, InferRequest, RequestedOutput
from kserve.protocol.rest.server import RESTServer
from starlette.responses import JSONResponse

log = logging.getLogger("lenet_export.serve")
JSON_LENGTH = "inference-header-content-length"  # the binary-tensor extension's header


class RequestGate:
    """ASGI middleware in front of KServe's routes.

    - A request body over ``limit`` bytes gets 413 before any of it is read; one without Content-Length
      (chunked) gets 411, so the limit holds without buffering.
    - A body without the binary extension's Inference-Header-Content-Length is JSON: tritonclient's HTTP client
      sends JSON requests without a Content-Type, which FastAPI would hand KServe as bytes, and KServe refuses
      bytes without that header."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["method"] in ("POST", "PUT"):
            headers = dict(scope["headers"])
            length = headers.get(b"content-length")
            if length is None or not length.isdigit():
                return await _refuse(scope, receive, send, 411, "a request body needs a Content-Length header")
            if int(length) > self.limit:
                return await _refuse(scope, receive, send, 413,
                                     f"request body of {int(length)} bytes; the limit is {self.limit}")
            if b"inference-header-content-length" not in headers and headers.get(b"content-type") is None:
                scope = dict(scope, headers=[*scope["headers"], (b"content-type", b"application/json")])
        await self.app(scope, receive, send)


async def _refuse(scope, receive, send, status: int, message: str) -> None:
    log.warning("refused (%d): %s", status, message)
    await JSONResponse({"error": message}, status_code=status)(scope, receive, send)


def _refusal(status: int):
    async def handler(_, exc):
        message = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()[:3]) if isinstance(
            exc, RequestValidationError) else str(exc)
        log.warning("refused (%d): %s", status, message)  # one line: the client erred, the server is fine
        return JSONResponse({"error": message}, status_code=status)
    return handler


class OneLineErrors(ExceptionToStatusInterceptor):
    """KServe's gRPC interceptor, logging a refused request in one line instead of a traceback."""

    async def handle_exception(self, ex, request_or_iterator, context, method_name):
        if isinstance(ex, InvalidInput):
            log.warning("refused (INVALID_ARGUMENT): %s", ex)
            await context.abort(StatusCode.INVALID_ARGUMENT, ex.reason)
        if isinstance(ex, ModelNotFound):
            log.warning("refused (NOT_FOUND): %s", ex)
            await context.abort(StatusCode.NOT_FOUND, ex.reason)
        await super().handle_exception(ex, request_or_iterator, context, method_name)


def _checked_decode(decode):
    """``DataPlane.decode`` with two changes. A body whose sizes do not add up raises ValueError inside KServe
    (a 500 there); it is the client's mistake: InvalidInput (400). And binary tensors stay bytes (``_from_bytes``)."""
    def checked(body, headers, protocol_version=None, model_name=None):
        try:
            if isinstance(body, bytes) and headers and JSON_LENGTH in headers:
                return _from_bytes(body, headers[JSON_LENGTH], model_name), {}
            return decode(body, headers, protocol_version=protocol_version, model_name=model_name)
        except (ValueError, KeyError, TypeError, IndexError) as e:
            raise InvalidInput(f"malformed request: {e}") from None
    return checked


def _from_bytes(body: bytes, json_length: str, model_name: str) -> InferRequest:
    """``InferRequest.from_bytes`` of KServe 0.21, except that a binary tensor stays bytes: KServe converts it
    to a Python list element by element (``set_data_from_numpy(binary_data=False)``), 42 ms of a 51 ms request
    of 64 Fashion-MNIST images here, and the model then reads it back with ``np.frombuffer``."""
    if not json_length.isdigit() or int(json_length) > len(body):
        raise InvalidInput(f"Inference-Header-Content-Length {json_length!r} does not fit a body of {len(body)} bytes")
    start = int(json_length)
    try:
        header = orjson.loads(body[:start])
    except orjson.JSONDecodeError as e:
        raise InvalidInput(f"the JSON header does not parse: {e}") from None
    inputs = []
    for spec in header["inputs"]:
        params = spec.get("parameters") or {}
        given = InferInput(name=spec["name"], shape=spec["shape"], datatype=spec["datatype"], parameters=params)
        if spec.get("data") is not None:
            given.data = spec["data"]
        elif "binary_data_size" in params:
            size = int(params["binary_data_size"])
            if size < 0 or start + size > len(body):
                raise InvalidInput(f"input {spec['name']}: binary_data_size {size} runs past the body")
            given._raw_data, start = body[start:start + size], start + size  # as KServe's from_bytes sets it
        else:
            raise InvalidInput(f"input {spec['name']}: no data and no binary_data_size")
        inputs.append(given)
    if start != len(body):
        raise InvalidInput(f"{len(body) - start} bytes after the last binary tensor")
    outputs = [RequestedOutput(name=o["name"], parameters=o.get("parameters")) for o in header.get("outputs") or []]
    return InferRequest(model_name=model_name, request_id=header.get("id"), parameters=header.get("parameters"),
                        infer_inputs=inputs, request_outputs=outputs or None)


def _rest(host: str, limit: int):
    class HostRESTServer(RESTServer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.config.host = host  # RESTServer hard-codes 0.0.0.0

        def _add_exception_handlers(self, app):
            super()._add_exception_handlers(app)
            # KServe logs a traceback for these (and FastAPI answers a malformed body with 422 {"detail": ...}):
            # the protocol's error body, one log line
            app.add_exception_handler(InvalidInput, _refusal(400))
            app.add_exception_handler(RequestValidationError, _refusal(400))
            app.add_exception_handler(ModelNotFound, _refusal(404))

        def _add_middlewares(self, app):
            super()._add_middlewares(app)
            app.add_middleware(RequestGate, limit=limit)
    return HostRESTServer


def _grpc(host: str, limit: int):
    class HostGRPCServer(GRPCServer):
        async def start(self, max_workers):
            # GRPCServer.start as in kserve 0.21, except the address ([::] there) and the message bound
            self._server = aio.server(
                futures.ThreadPoolExecutor(max_workers=max_workers),
                interceptors=(LoggingInterceptor(), OneLineErrors()),
                options=[("grpc.max_send_message_length", limit), ("grpc.max_receive_message_length", limit)])
            servicer = InferenceServicer(self._data_plane, self._model_repository_extension)
            grpc_predict_v2_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, self._server)
            address = f"[{host}]:{self._port}" if ":" in host else f"{host}:{self._port}"
            if self._server.add_insecure_port(address) == 0:
                raise OSError(f"cannot bind gRPC to {address}")
            await self._server.start()
            await self._server.wait_for_termination()
    return HostGRPCServer


def run(host: str, port: int, grpc_port: int, limit: int, models: list, on_ready=None) -> None:
    import kserve.model_server as ms

    # ModelServer.start builds its servers from these two names of its module and takes no class to use instead:
    # rebinding them (in this process, which only serves) is the one way in short of copying start()
    ms.RESTServer, ms.GRPCServer = _rest(host, limit), _grpc(host, limit)
    server = ModelServer(http_port=port, grpc_port=grpc_port, workers=1, enable_grpc=True,
                         enable_latency_logging=False, grace_period=10)
    server.dataplane.decode = _checked_decode(server.dataplane.decode)
    if on_ready is not None:
        async def announce():
            rest = server._rest_server._server
            while not rest.started:
                await asyncio.sleep(0.02)
            on_ready()
        server.servers.append(announce())
    server.start(models)
