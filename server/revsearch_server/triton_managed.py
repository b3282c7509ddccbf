"""A Triton server managed by revsearch: the CPU `tritonserver` binary from the nvidia-pytriton
wheel, started on a free port against the model repository and stopped with the server.

That wheel's Triton has only the Python backend; its stub is per Python version and needs our
site-packages (see model_repository/*/1/model.py). The binary dies with us (PR_SET_PDEATHSIG),
so a crashed revsearch leaves no orphaned Triton holding memory.
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
    def __init__(self, repository: Path, log_dir: Path, models):
        self.repository = repository.resolve()
        self.log_path = log_dir / "triton.log"
        self.models = list(models)
        self.process: subprocess.Popen | None = None
        self._backend_dir: str | None = None
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
        self._backend_dir = tempfile.mkdtemp(prefix="revsearch-triton-backends-")
        python_dir = Path(self._backend_dir) / "python"
        python_dir.mkdir()
        for src in (server_dir / "backends" / "python" / "libtriton_python.so",
                    server_dir / "backends" / "python" / "triton_python_backend_utils.py", stub):
            (python_dir / src.name).symlink_to(src)
        # A restart keeps the port, so the client (embedding/triton.py) needs no new address.
        port = self._port = self._port or _free_port()
        site_packages = os.pathsep.join(dict.fromkeys([sysconfig.get_paths()["purelib"],
                                                       sysconfig.get_paths()["platlib"]]))
        env = {**os.environ, "TRITON_STUB_PYTHONPATH": site_packages,
               "LD_LIBRARY_PATH": os.pathsep.join(filter(None, [str(libs), os.environ.get("LD_LIBRARY_PATH")]))}
        cmd = [str(binary), f"--model-repository={self.repository}", f"--backend-directory={self._backend_dir}",
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
        if self._backend_dir:
            shutil.rmtree(self._backend_dir, ignore_errors=True)
            self._backend_dir = None
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
        if self._backend_dir:
            shutil.rmtree(self._backend_dir, ignore_errors=True)
            self._backend_dir = None
