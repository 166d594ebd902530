"""KServe 0.21.0 custom predictor for bench/peers.py: one ONNX file on ONNX Runtime, set up as a
maas replica and bench/baseline_server.py set it up (1 intra-op thread, sequential, CPU).

    bench/out/venvs/kserve/bin/python bench/peers/kserve_model.py MODEL.onnx \\
        --model_name bench --http_port 8200            # POST /v2/models/bench/infer

One uvicorn worker on 127.0.0.1 (KServe itself binds 0.0.0.0), gRPC off unless
``--enable_grpc true``, warnings and errors only unless ``--log_config_file`` says otherwise.
Runs only in the KServe venv (bench/out/venvs/kserve), not in the project's.
"""

from __future__ import annotations

import argparse
import copy

import kserve
import kserve.logging
import kserve.model_server
import numpy as np
from kserve.errors import InvalidInput
from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse
from kserve.protocol.rest.server import RESTServer
from kserve.utils.utils import generate_uuid
from onnx_session import session  # bench/peers/onnx_session.py


# numpy -> v2 datatype, for the outputs of the benchmark's model (probabilities, label).
DATATYPES = {"float32": "FP32", "float64": "FP64", "int64": "INT64", "int32": "INT32"}


class OnnxModel(kserve.Model):
    def __init__(self, name: str, path: str) -> None:
        super().__init__(name)
        self.path = path

    def load(self) -> bool:
        self._session = session(self.path)
        self._outputs = [o.name for o in self._session.get_outputs()]
        self.ready = True  # ModelServer serves only models that are ready
        return self.ready

    async def predict(self, payload: InferRequest, headers: dict[str, str] | None = None,
                      response_headers: dict[str, str] | None = None) -> InferResponse:
        try:
            feeds = {i.name: i.as_numpy() for i in payload.inputs}
            # Inline on the event loop, as the baseline and the MLServer peer run it.
            results = self._session.run(self._outputs, feeds)
        except Exception as exc:  # the model loaded; what fails here is the request (-> 400)
            raise InvalidInput(f"{type(exc).__name__}: {exc}") from exc
        outputs = []
        for name, result in zip(self._outputs, results):
            array = np.asarray(result)  # each output's own type, as the baseline answers
            output = InferOutput(name=name, shape=list(array.shape),
                                 datatype=DATATYPES[array.dtype.name])
            output.set_data_from_numpy(array, binary_data=False)  # JSON, like the request
            outputs.append(output)
        # The v2 response needs an id; like KServe's own get_predict_response, make one up.
        return InferResponse(response_id=payload.id or generate_uuid(), model_name=self.name,
                             infer_outputs=outputs)


class _LoopbackRESTServer(RESTServer):
    """KServe's REST server with uvicorn on 127.0.0.1: RESTServer hard-codes 0.0.0.0, and the
    bench's other servers listen on the loopback only."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.config.host = "127.0.0.1"  # read when uvicorn binds, after this


def _quiet_logging() -> dict:
    """KServe's own logging config at WARNING, without uvicorn's access log (no handler on
    uvicorn.access: uvicorn then skips the per-request line altogether)."""
    config = copy.deepcopy(kserve.logging.KSERVE_LOG_CONFIG)
    for logger in config["loggers"].values():
        logger["level"] = "WARNING"
    config["loggers"]["uvicorn.access"] = {"handlers": [], "level": "WARNING", "propagate": False}
    return config


def main() -> None:
    # KServe's own flags (--http_port, --grpc_port, --model_name, ...) plus the ONNX file.
    parser = argparse.ArgumentParser(parents=[kserve.model_server.parser], description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="the ONNX file")
    # A bench peer: no gRPC server, no per-request latency log line, one process.
    parser.set_defaults(enable_grpc=False, enable_latency_logging=False, workers=1)
    args = parser.parse_args()
    kserve.logging.configure_logging(args.log_config_file or _quiet_logging())
    kserve.model_server.RESTServer = _LoopbackRESTServer  # ModelServer.start looks it up here
    model = OnnxModel(args.model_name, args.model)
    model.load()
    kserve.ModelServer(http_port=args.http_port, grpc_port=args.grpc_port, workers=1,
                       enable_grpc=args.enable_grpc,
                       enable_latency_logging=args.enable_latency_logging).start([model])


if __name__ == "__main__":
    main()
