"""SIGTERM stops every command, also before `serve` and `worker` install their graceful stop.

As a container's PID 1 a process gets no default action for SIGTERM (the kernel drops the
signal), so a command without a handler of its own can only be SIGKILLed after the
runtime's grace period. Outside a container the same gap shows as death by the signal,
without clean-up. Here the command blocks where a start-up can block for long: connecting
to a database server that accepts and never answers.
"""

from __future__ import annotations

import signal
import socket
import subprocess
from pathlib import Path

from tests.acceptance.command import SCRIPT


def test_sigterm_while_connecting_exits_at_once_with_143(tmp_path: Path) -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        server.settimeout(60)
        url = f"postgresql://app@127.0.0.1:{server.getsockname()[1]}/app"
        proc = subprocess.Popen(
            [str(SCRIPT), "--database-url", url, "--storage-url", str(tmp_path), "sync", "--all"],
            env={"PATH": "/usr/bin:/bin"},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        try:
            conn, _ = server.accept()  # the command is now waiting for the server's answer
            with conn:
                proc.send_signal(signal.SIGTERM)
                out, _ = proc.communicate(timeout=10)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
    # 128 + SIGTERM, as an exit code: the handler ran (a process the signal killed shows -15).
    assert proc.returncode == 143, (proc.returncode, out.decode(errors="replace"))
