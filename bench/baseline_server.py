"""The baseline maas is measured against: one FastAPI + uvicorn process running ONNX Runtime.

    python bench/baseline_server.py MODEL.onnx --port 8100

It answers the same Open Inference Protocol request with the same parsing (maas.oip) and the
same ONNX Runtime settings (1 intra-op thread) as a maas replica, without Ray: no proxy, no
registry, no batching. ``POST /v2/models/m/infer``.
"""

# No `from __future__ import annotations`: FastAPI must see the real `Request` annotation.

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def make_app(model_path: str):
    import numpy as np
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, Response
    from pydantic import ValidationError

    from maas.runtime import ort_session
    from maas.oip import InferenceRequest, InferenceResponse, InferError, decode_input, encode_output
    from maas.registry import onnx_signature

    model_bytes = Path(model_path).read_bytes()
    session = ort_session(model_bytes, threads=1)
    _, inputs, outputs = onnx_signature(model_bytes)
    specs = {s.name: s for s in inputs}
    names = [s.name for s in outputs]
    app = FastAPI()

    @app.post("/v2/models/m/infer")
    async def infer(request: Request) -> Response:
        try:
            body = InferenceRequest.model_validate_json(await request.body())
            feeds = {t.name: decode_input(t, specs[t.name], i, 1024)
                     for i, t in enumerate(body.inputs)}
        except (ValidationError, InferError, KeyError) as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        results = session.run(names, feeds)
        reply = InferenceResponse(model_name="m", model_version="1", id=body.id,
                                  outputs=[encode_output(n, np.asarray(r))
                                           for n, r in zip(names, results)])
        return Response(reply.model_dump_json(), media_type="application/json")

    return app


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("--port", type=int, default=8100)
    args = parser.parse_args()
    uvicorn.run(make_app(args.model), host="127.0.0.1", port=args.port, log_level="warning",
                access_log=False)


if __name__ == "__main__":
    main()
