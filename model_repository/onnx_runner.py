"""Triton Python-backend runner for an ONNX model (CPU Triton from the nvidia-pytriton wheel).

That Triton build carries only the Python backend, so this runs the model's model.onnx with ONNX
Runtime inside the backend's stub. scripts/build_models.py copies this one file to every built
model as <model>/<version>/model.py. On GPU hosts, each model's configs/gpu.pbtxt serves the same
model.onnx with Triton's native onnxruntime backend instead (tritonserver --model-config-name=gpu).

One input; every output the config declares (MTCNN's nets have two or three), each split per
request along the batch axis. Requests of different shapes (P-Net takes any image size) run one by one.

Parameters (config.pbtxt): intra_op_threads (0: the runtime's default, every core), allow_spinning
(ONNX Runtime), runtime: "onnxruntime" (the default) or "openvino" (f32; MTCNN's nets run 1.5-2.2x
faster in it on CPU; the revsearch server sets it for them from --face-net-runtime, and when
OpenVINO is not installed the model runs in ONNX Runtime with a warning in Triton's log).
"""

import os
import sys

# The stub runs an isolated interpreter that ignores PYTHONPATH; the revsearch server passes its
# own site-packages in TRITON_STUB_PYTHONPATH so numpy (<2, see docs/deployment.md) and onnxruntime resolve.
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
        path = os.path.join(args["model_repository"], args["model_version"], "model.onnx")
        threads = int(params.get("intra_op_threads", "0"))
        # OpenVINO when asked for and installed (_openvino_run says None otherwise), else ONNX Runtime.
        self.run = _openvino_run(path, threads, self.input_name, self.output_names) \
            if params.get("runtime") == "openvino" else None
        runtime = "openvino" if self.run is not None else "onnxruntime"
        if self.run is None:
            self.run = _ort_run(path, threads, params.get("allow_spinning", "1"), self.input_name, self.output_names)
        pb_utils.Logger.log_info(f"{args['model_name']} (instance {args['model_instance_name']}): {runtime}, "
                                 f"{threads or 'default'} threads")

    def execute(self, requests):
        arrays = [pb_utils.get_input_tensor_by_name(r, self.input_name).as_numpy() for r in requests]
        if len({a.shape[1:] for a in arrays}) > 1:
            return [self._respond([a])[0] for a in arrays]
        return self._respond(arrays)

    def _respond(self, arrays):
        """Runs the requests' arrays (same shape but the batch axis) as one batch."""
        batch = np.concatenate(arrays) if len(arrays) > 1 else arrays[0]
        outs = [o.astype(np.float32, copy=False) for o in self.run(batch)]
        responses, start = [], 0
        for array in arrays:
            n = array.shape[0]
            tensors = [pb_utils.Tensor(name, np.ascontiguousarray(out[start:start + n]))
                       for name, out in zip(self.output_names, outs)]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
            start += n
        return responses


def _ort_run(path, threads, spinning, input_name, output_names):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    # Spinning between operators is faster on CPU; "0" leaves more CPU to other processes.
    opts.add_session_config_entry("session.intra_op.allow_spinning", spinning)
    session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    return lambda batch: session.run(output_names, {input_name: batch})


def _openvino_run(path, threads, input_name, output_names):
    """OpenVINO's run of the model, or None (logged) when OpenVINO is not installed."""
    try:
        import openvino as ov
    except ImportError:
        pb_utils.Logger.log_warn(f"{path}: runtime openvino asked for but not installed; using onnxruntime")
        return None
    # f32 kept: the CPU plugin would otherwise pick bf16 on CPUs that have it. Its kernels are made
    # per input shape and cached; the cache is bounded (as faces/net_runners.py's, which says why).
    config = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY", "CPU_RUNTIME_CACHE_CAPACITY": 1000}
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    compiled = ov.Core().compile_model(path, "CPU", config)
    request = compiled.create_infer_request()  # execute() runs one batch at a time per instance
    outputs = [compiled.output(name) for name in output_names]

    def run(batch):
        result = request.infer({input_name: np.ascontiguousarray(batch, dtype=np.float32)}, share_inputs=True)
        return [result[o] for o in outputs]

    return run
