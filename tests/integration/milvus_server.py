"""Runs the embedded Milvus 2.3 standalone server (PyPI package `milvus`) in a child process.

Used by the integration tests that need a real Milvus server rather than Milvus Lite.
Usage: python milvus_server.py BASE_DIR PORT  -> prints "READY <port>", stops on SIGTERM.
"""

import signal
import socket
import sys
import threading


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    from milvus import default_server

    base_dir, port = sys.argv[1], int(sys.argv[2])
    default_server.set_base_dir(base_dir)
    default_server.listen_port = port
    # Its etcd port is otherwise searched upwards from 2379 by test-binding without SO_REUSEADDR:
    # a 2379 still in TIME_WAIT makes it pick 2380, which its own etcd peer listener needs.
    default_server.config.set("etcd_port", _free_port())
    default_server.start()
    print(f"READY {default_server.listen_port}", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    # Exit (so the test fails fast) if the Milvus process dies under us.
    while not stop.wait(1.0):
        if default_server.server_proc is None or default_server.server_proc.poll() is not None:
            print("DIED", flush=True)
            sys.exit(1)
    default_server.stop()


if __name__ == "__main__":
    main()
