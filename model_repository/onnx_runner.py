"""Triton Python-backend runner for an ONNX model (CPU Triton from the nvidia-pytriton wheel).

That Triton build carries only the Python backend, so this runs the model's model.onnx with ONNX
Runtime inside the backend's stub. scripts/build_models.py copies this one file to every built
model as <model>/<version>/model.py. On GPU hosts, each model's configs/gpu.pbtxt serves the same
model.onnx with Triton's native onnxruntime backend instead (tritonserver --model-config-name=gpu).

One input; every output the config declares (MTCNN's nets have two or three), each split per
request along the batch axis. Requests of different shapes (P-Net takes any image size) run one by one.
"""

import os
import sys

# The stub runs an isolated interpreter that ignores PYTHONPATH; the revsearch server passes its
# own site-packages in TRITON_STUB_PYTHONPATH so numpy (<2, see README) and onnxruntime resolve.
for _path in reversed([p for p in os.environ.get("TRITON_STUB_PYTHONPATH", "").split(os.pathsep) if p]):
    if _path not in sys.path:
        sys.path.insert(0, _path)

import json  # noqa: E402

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
import triton_python_backend_utils as pb_utils  # noqa: E402


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.input_name = config["input"][0]["name"]
        self.output_names = [o["name"] for o in config["output"]]
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = int(params.get("intra_op_threads", "0"))
        opts.inter_op_num_threads = 1
        # Spinning between operators is faster on CPU; "0" leaves more CPU to other processes.
        opts.add_session_config_entry("session.intra_op.allow_spinning", params.get("allow_spinning", "1"))
        path = os.path.join(args["model_repository"], args["model_version"], "model.onnx")
        self.session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])

    def execute(self, requests):
        arrays = [pb_utils.get_input_tensor_by_name(r, self.input_name).as_numpy() for r in requests]
        if len({a.shape[1:] for a in arrays}) > 1:
            return [self._respond([a])[0] for a in arrays]
        return self._respond(arrays)

    def _respond(self, arrays):
        """Runs the requests' arrays (same shape but the batch axis) as one batch."""
        batch = np.concatenate(arrays) if len(arrays) > 1 else arrays[0]
        outs = [o.astype(np.float32, copy=False)
                for o in self.session.run(self.output_names, {self.input_name: batch})]
        responses, start = [], 0
        for array in arrays:
            n = array.shape[0]
            tensors = [pb_utils.Tensor(name, np.ascontiguousarray(out[start:start + n]))
                       for name, out in zip(self.output_names, outs)]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
            start += n
        return responses
