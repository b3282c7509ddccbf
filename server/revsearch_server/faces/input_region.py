"""A system shared-memory region through which the face detector's net inputs reach a Triton on
this machine (the managed one) instead of inside gRPC messages.

MTCNN sends about 4 MB of float32 input per 640x360 frame (the P-Net pyramid, the R- and O-Net
crops). Over gRPC each MB cost about 2.5 ms here (copies and protobuf on both sides); through a
registered region the client writes the batch once and Triton reads it from there. The five
frames of the 720p stage clip were detected in 157 ms this way against 190 ms over gRPC, with the
nets on Triton in OpenVINO (outputs still come back over gRPC: P-Net's are half its input's size).

One region per TritonNets, grown when a batch does not fit, registered with Triton under a name
that carries this process's id, and registered again when Triton has forgotten it (a managed
Triton that was restarted). A process killed before it could remove its region leaves it in
/dev/shm; `remove_stale` removes those of processes that no longer run.
"""

from __future__ import annotations

import itertools
import logging
import os
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

PREFIX = "revsearch_nets_"
SHM_DIR = Path("/dev/shm")
_numbers = itertools.count()


class InputRegion:
    """A registered region that holds one input batch at a time (the caller serialises its use)."""

    def __init__(self, client, initial_bytes: int = 16 << 20):
        """client: tritonclient.grpc.InferenceServerClient of a Triton on this machine."""
        self._client = client
        self._size = 0
        self._initial = initial_bytes
        self._handle = None
        self.name = f"{PREFIX}{os.getpid()}_{next(_numbers)}"

    def put(self, batch: np.ndarray) -> int:
        """Writes the batch (contiguous) into the region, which grows first when it is too small;
        returns its byte size."""
        import tritonclient.utils.shared_memory as shm

        if batch.nbytes > self._size:
            self._open(max(batch.nbytes, self._initial, 2 * self._size))
        shm.set_shared_memory_region(self._handle, [batch])
        return batch.nbytes

    def register(self) -> None:
        """(Again) tells Triton about the region: a restarted Triton has forgotten it."""
        try:
            self._client.unregister_system_shared_memory(self.name)
        except Exception:  # not registered: nothing to forget
            pass
        self._client.register_system_shared_memory(self.name, f"/{self.name}", self._size)

    def _open(self, size: int) -> None:
        import tritonclient.utils.shared_memory as shm

        self.close()
        self._handle = shm.create_shared_memory_region(self.name, f"/{self.name}", size)
        self._size = size
        self.register()

    def close(self) -> None:
        import tritonclient.utils.shared_memory as shm

        if self._handle is None:
            return
        try:
            self._client.unregister_system_shared_memory(self.name)
        except Exception as exc:  # Triton gone: the region is ours to remove all the same
            log.debug("could not unregister %s: %s", self.name, exc)
        shm.destroy_shared_memory_region(self._handle)
        self._handle, self._size = None, 0


def remove_stale(directory: Path = SHM_DIR) -> list[str]:
    """Removes the regions of revsearch processes that no longer run; returns their names."""
    removed = []
    for region in directory.glob(f"{PREFIX}*"):
        pid = region.name[len(PREFIX):].split("_")[0]
        if pid.isdigit() and not _running(int(pid)):
            region.unlink(missing_ok=True)
            removed.append(region.name)
    if removed:
        log.warning("removed %d shared-memory region(s) left by stopped servers: %s", len(removed), ", ".join(removed))
    return removed


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True
