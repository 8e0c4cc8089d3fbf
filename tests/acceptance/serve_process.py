"""A real `portfolio-sync serve` in a subprocess, on a free 127.0.0.1 port.

Every wait is bounded: start-up waits for `/healthz` (30 s), stop sends SIGTERM and
requires exit code 0 within 15 s, which is the graceful-shutdown contract of `serve`.
Output goes to a file so a failure message can show what the server said.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

import httpx

from tests.acceptance.command import SCRIPT

T = TypeVar("T")

#: Settings that keep a test server quiet and quick unless a test says otherwise.
QUIET = {
    "PORTFOLIO_SYNC_SCHEDULE": "0 0 1 1 *",  # no cron pass in the middle of a test
    "PORTFOLIO_SYNC_DEBOUNCE": "0.05",
}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServeProcess:
    """One running server; use `serve_process` rather than building it directly."""

    def __init__(self, proc: subprocess.Popen[bytes], port: int, log_path: Path) -> None:
        self.proc = proc
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = log_path
        self.client = httpx.Client(base_url=self.url, timeout=10.0)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def fail(self, message: str) -> AssertionError:
        return AssertionError(f"{message}\n--- server output ---\n{self.log()[-6000:]}")

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise self.fail(f"serve exited with {self.proc.returncode} during start-up")
            try:
                if self.client.get("/healthz", timeout=1.0).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise self.fail(f"/healthz did not answer within {timeout} s")

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM, then require a clean exit (code 0) within `timeout` seconds."""
        self.client.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
                raise self.fail(f"serve did not exit within {timeout} s of SIGTERM") from None
        if self.proc.returncode != 0:
            raise self.fail(f"serve exited with {self.proc.returncode} after SIGTERM")

    def kill(self) -> None:
        self.client.close()
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=5)

    # ---- helpers for tests ----------------------------------------------------------
    def metric(self, name: str, **labels: str) -> float:
        """Sum of the samples of `name` whose labels include `labels`."""
        text = self.client.get("/metrics").text
        total = 0.0
        for line in text.splitlines():
            if line.startswith("#") or not line.startswith(name):
                continue
            series, _, value = line.rpartition(" ")
            metric, _, rest = series.partition("{")
            if metric != name:
                continue
            found = dict(part.split("=", 1) for part in rest.rstrip("}").split(",") if "=" in part)
            if all(found.get(k) == f'"{v}"' for k, v in labels.items()):
                total += float(value)
        return total

    def portfolio(self, key: str) -> dict[str, Any] | None:
        answer = self.client.get(f"/portfolios/{key}")
        if answer.status_code == 404:
            return None
        assert answer.status_code == 200, answer.text
        data: dict[str, Any] = answer.json()
        return data


def wait_for(
    probe: Callable[[], T], *, timeout: float = 10.0, interval: float = 0.05, what: str = ""
) -> T:
    """Poll `probe` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last: T = probe()
    while not last:
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or probe}")
        time.sleep(interval)
        last = probe()
    return last


@contextlib.contextmanager
def serve_process(
    env: Mapping[str, str],
    cwd: Path,
    *args: str,
    startup_timeout: float = 30.0,
    script: Path = SCRIPT,
) -> Iterator[ServeProcess]:
    """Run `portfolio-sync serve --port N *args` with `env` (plus `QUIET` defaults, which
    `env` overrides) and stop it gracefully on exit, asserting exit code 0. If the body
    raised, the server is still stopped but its exit code is not checked. `script` is the
    console script to run (another install's, e.g. a wheel's in a clean venv)."""
    full_env = {**QUIET, **env}
    for attempt in range(3):  # the free port may be taken between probe and bind
        port = free_port()
        log_path = cwd / f"serve-{port}.log"
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                [str(script), "-v", "serve", "--port", str(port), *args],
                env=full_env,
                cwd=cwd,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        server = ServeProcess(proc, port, log_path)
        try:
            server.wait_ready(startup_timeout)
            break
        except AssertionError:
            server.kill()
            if attempt == 2 or "already in use" not in server.log().lower():
                raise
    try:
        yield server
    except BaseException:
        server.kill()
        raise
    server.stop()
