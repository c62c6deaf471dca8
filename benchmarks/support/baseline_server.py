"""The plain server letmesh is compared with: one aiohttp process, orjson, one request = one forward pass.

``python -m benchmarks.support.baseline_server --artifact PATH --backend RUNTIME --variant NAME --port P
[--device cpu|cuda]`` (RUNTIME: torchscript, onnx, openvino or openvino-bf16) serves
``POST /v2/models/NAME/infer`` (KServe V2 JSON in and out, the model's single FP32 input and output)
and ``GET /v2/health/ready``. No batching, no queue, no deadline: the forward pass runs on the
event loop with one intra-op thread; OpenVINO with one per core the process may run on, as a
letmesh worker opens it; on a GPU, the loop's thread launches it and waits for its result. The
caller pins the process.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np  # noqa: E402
import orjson  # noqa: E402
import torch  # noqa: E402
from aiohttp import web  # noqa: E402

from benchmarks.support.goodput_models import OPENVINO, OUTPUT, open_runtime  # noqa: E402


def make_app(run, variant: str) -> web.Application:
    async def infer(request: web.Request) -> web.Response:
        try:
            body = orjson.loads(await request.read())
            (tensor,) = body["inputs"]
            x = np.asarray(tensor["data"], dtype=np.float32).reshape(tensor["shape"])
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            return web.Response(status=400, body=orjson.dumps({"error": f"bad request: {exc}"}),
                                content_type="application/json")
        y = run(x)
        reply = {"model_name": variant, "outputs": [{"name": OUTPUT, "datatype": "FP32", "shape": list(y.shape),
                                                     "data": y.ravel().tolist()}]}
        if "id" in body:
            reply["id"] = body["id"]
        return web.Response(body=orjson.dumps(reply), content_type="application/json")

    async def ready(_: web.Request) -> web.Response:
        return web.Response(text="ready")

    app = web.Application(client_max_size=64 << 20)
    app.router.add_post(f"/v2/models/{variant}/infer", infer)
    app.router.add_get("/v2/health/ready", ready)
    return app


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--artifact", type=Path, required=True)
    p.add_argument("--backend", choices=("torchscript", "onnx", *OPENVINO), default="torchscript")
    p.add_argument("--variant", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    run = open_runtime(a.backend, a.artifact, a.device)
    web.run_app(make_app(run, a.variant), host="127.0.0.1", port=a.port, print=None, access_log=None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
