"""MLServer 1.7.1 custom runtime for bench/peers.py: one ONNX file on ONNX Runtime, set up as a
maas replica and bench/baseline_server.py set it up (1 intra-op thread, sequential, CPU).

``mlserver start FOLDER`` imports it as ``mlserver_model.OnnxModel`` (bench/peers/ is on
PYTHONPATH); FOLDER/model-settings.json names the ONNX file in ``parameters.uri``.
Runs only in the MLServer venv (bench/out/venvs/mlserver), not in the project's.
"""

from __future__ import annotations

import numpy as np
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.errors import InferenceError
from mlserver.types import InferenceRequest, InferenceResponse
from mlserver.utils import get_model_uri
from onnx_session import session  # bench/peers/onnx_session.py


class OnnxModel(MLModel):
    async def load(self) -> bool:
        # get_model_uri resolves parameters.uri (relative to model-settings.json if relative).
        self._session = session(await get_model_uri(self._settings))
        self._outputs = [o.name for o in self._session.get_outputs()]
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        try:
            # NumpyCodec unless the request names another content type: MLServer's own decoding.
            feeds = {i.name: self.decode(i, default_codec=NumpyCodec) for i in payload.inputs}
            # Run inline on the event loop, as the baseline does: parallel_workers is 0.
            results = self._session.run(self._outputs, feeds)
        except Exception as exc:  # the model loaded; what fails here is the request (-> 400)
            raise InferenceError(f"{type(exc).__name__}: {exc}") from exc
        return InferenceResponse(
            model_name=self.name, model_version=self.version, id=payload.id,
            outputs=[NumpyCodec.encode_output(name, np.asarray(result))
                     for name, result in zip(self._outputs, results)])
