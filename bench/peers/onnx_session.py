"""The ONNX Runtime session both peer servers run (bench/peers/*_model.py import it: bench/peers
is on their path), set up as a maas replica and bench/baseline_server.py set theirs up."""

import onnxruntime as ort


def session(path: str) -> ort.InferenceSession:
    options = ort.SessionOptions()
    # One thread each: the peers are compared at one process per core, as maas replicas run.
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
