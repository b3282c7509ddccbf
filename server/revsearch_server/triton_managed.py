"""A Triton server managed by revsearch: the CPU `tritonserver` binary from the nvidia-pytriton
wheel, started on a free port against the model repository and stopped with the server.

That wheel's Triton has only the Python backend; its stub is per Python version and needs our
site-packages (see model_repository/*/1/model.py). The binary dies with us (PR_SET_PDEATHSIG),
so a crashed revsearch leaves no orphaned Triton holding memory.

Models whose runtime the server sets (MTCNN's nets, in the runtime of --face-net-runtime: OpenVINO
or ONNX Runtime, model_repository/onnx_runner.py) are served from an overlay repository in a
temporary directory: their config.pbtxt with the runtime parameter rewritten, every other file a
link into the real repository.
"""

from __future__ import annotations

import ctypes
import importlib.util
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

from .errors import Unavailable

log = logging.getLogger(__name__)


def _wheel_dirs() -> tuple[Path, Path]:
    """(pytriton/tritonserver, nvidia_pytriton.libs) from the installed wheel."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise Unavailable("nvidia-pytriton is not installed, so there is no bundled tritonserver; "
                          "run `make venv` or give --triton-url")
    pkg = Path(list(spec.submodule_search_locations)[0])
    return pkg / "tritonserver", pkg.parent / "nvidia_pytriton.libs"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class ManagedTriton:
    def __init__(self, repository: Path, log_dir: Path, models, runtimes: dict[str, str] | None = None):
        """runtimes: model -> its runner's runtime ("onnxruntime" or "openvino"), replacing its config's."""
        self.repository = repository.resolve()
        self.log_path = log_dir / "triton.log"
        self.models = list(models)
        self.runtimes = dict(runtimes or {})
        self.process: subprocess.Popen | None = None
        self._work_dir: str | None = None  # the backends' links and the overlay repository
        self._port: int | None = None
        self.restarts = 0
        self._restarted_at = 0.0

    def start(self) -> str:
        """Starts tritonserver; returns its gRPC address. Readiness is awaited by the caller."""
        server_dir, libs = _wheel_dirs()
        binary = server_dir / "bin" / "tritonserver"
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        stub = server_dir / "python_backend_stubs" / version / "triton_python_backend_stub"
        if not binary.exists() or not stub.exists():
            raise Unavailable(f"the nvidia-pytriton wheel has no tritonserver or no Python {version} stub")
        # Triton wants backends/<name>/ with the stub beside the backend library; links suffice.
        self._work_dir = tempfile.mkdtemp(prefix="revsearch-triton-")
        backends = Path(self._work_dir) / "backends"
        python_dir = backends / "python"
        python_dir.mkdir(parents=True)
        for src in (server_dir / "backends" / "python" / "libtriton_python.so",
                    server_dir / "backends" / "python" / "triton_python_backend_utils.py", stub):
            (python_dir / src.name).symlink_to(src)
        # A restart keeps the port, so the client (embedding/triton.py) needs no new address.
        port = self._port = self._port or _free_port()
        site_packages = os.pathsep.join(dict.fromkeys([sysconfig.get_paths()["purelib"],
                                                       sysconfig.get_paths()["platlib"]]))
        env = {**os.environ, "TRITON_STUB_PYTHONPATH": site_packages,
               "LD_LIBRARY_PATH": os.pathsep.join(filter(None, [str(libs), os.environ.get("LD_LIBRARY_PATH")]))}
        repository = self._overlay(Path(self._work_dir) / "models") if self.runtimes else self.repository
        cmd = [str(binary), f"--model-repository={repository}", f"--backend-directory={backends}",
               f"--grpc-port={port}", "--grpc-address=127.0.0.1", "--allow-http=false", "--allow-metrics=false",
               "--model-control-mode=explicit", *[f"--load-model={m}" for m in self.models],
               "--disable-auto-complete-config", "--backend-config=python,shm-default-byte-size=16777216",
               # Our own shared-memory names, so the regions of a killed Triton can be removed
               # (it must be a flag of its own: a comma-joined one is ignored).
               f"--backend-config=python,shm-region-prefix-name={self._shm_prefix()}",
               "--log-verbose=0"]
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as logf:
            # Its own process group: the Python-backend stubs it starts go with it when it is killed
            # (a stub mid-request outlived a killed Triton for minutes, holding its model's memory).
            self.process = subprocess.Popen(cmd, env=env, stdout=logf, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent, process_group=0)
        log.info("started managed Triton (pid %d) on 127.0.0.1:%d; log: %s", self.process.pid, port, self.log_path)
        return f"127.0.0.1:{port}"

    def _overlay(self, root: Path) -> Path:
        """The repository with the `runtimes` models' configs rewritten (links for the rest)."""
        from google.protobuf import text_format
        from tritonclient.grpc import model_config_pb2

        root.mkdir()
        for entry in self.repository.iterdir():
            if entry.name not in self.runtimes or not (entry / "config.pbtxt").is_file():
                (root / entry.name).symlink_to(entry)
                continue
            config = text_format.Parse((entry / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
            config.parameters["runtime"].string_value = self.runtimes[entry.name]
            model = root / entry.name
            model.mkdir()
            for part in entry.iterdir():
                if part.name != "config.pbtxt":
                    (model / part.name).symlink_to(part)
            (model / "config.pbtxt").write_text(text_format.MessageToString(config))
        return root

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def restart_if_dead(self, min_interval_s: float = 10.0) -> bool:
        """Starts Triton again when its process has exited (crashed, killed), at most once per
        min_interval_s so a Triton that cannot start does not spin. True when restarted."""
        if self.process is None or self.alive() or time.monotonic() - self._restarted_at < min_interval_s:
            return False
        code = self.process.returncode
        self._restarted_at = time.monotonic()
        self._kill_leftovers()
        if self._work_dir:
            shutil.rmtree(self._work_dir, ignore_errors=True)
            self._work_dir = None
        self.restarts += 1
        log.error("managed Triton exited (code %s); starting it again (restart %d)", code, self.restarts)
        self.start()
        return True

    def _shm_prefix(self) -> str:
        return f"revsearch_triton_{os.getpid()}_{self.restarts}_"

    def _kill_leftovers(self) -> None:
        """Kills what a dead Triton left (its stubs, in its process group) and frees its shared memory."""
        if self.process is None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        for region in Path("/dev/shm").glob(f"{self._shm_prefix()}*"):
            region.unlink(missing_ok=True)

    def stop(self, timeout_s: float = 20.0) -> None:
        if self.process is not None and self.process.poll() is None:
            # SIGTERM lets Triton stop its stubs and free their shared memory; SIGKILL leaks it.
            self.process.terminate()
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                log.warning("managed Triton did not stop in %.0fs; killing it", timeout_s)
                self.process.kill()
                self.process.wait()
        self._kill_leftovers()
        if self._work_dir:
            shutil.rmtree(self._work_dir, ignore_errors=True)
            self._work_dir = None
