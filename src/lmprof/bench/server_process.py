"""A `lmprof serve` subprocess on 127.0.0.1 (port 0: the server picks a free one and says it in
its startup line), its peak RSS sampled on its pid, stopped with SIGTERM (it drains) and
killed if it will not stop."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import tempfile
import threading
import time

import psutil

from lmprof.errors import LmprofError

_URL = re.compile(r"lmprof serve: (http://127\.0\.0\.1:\d+)/v1 ")
RSS_INTERVAL_S = 0.05


class ServerStartError(LmprofError):
    """The server did not come up (a bad model, a crash while loading, a timeout)."""


class ServerProcess:
    def __init__(self, model: str, args: list[str], env: dict[str, str] | None = None) -> None:
        self.command = [sys.executable, "-m", "lmprof", "serve", model, *args]
        self.env = env
        self.url = ""
        self.startup_line = ""
        self.startup_s: float | None = None
        self._proc: subprocess.Popen | None = None
        self._stderr = tempfile.TemporaryFile()

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    def start(self, timeout_s: float) -> str:
        """Start and wait for the startup line; returns the base URL."""
        began = time.perf_counter()
        self._proc = subprocess.Popen(
            self.command, stdout=subprocess.PIPE, stderr=self._stderr, text=True, env=self.env,
            stdin=subprocess.DEVNULL,
        )  # fmt: skip
        lines: list[str] = []
        reader = threading.Thread(target=self._read_first_line, args=(lines,), daemon=True)
        reader.start()
        reader.join(timeout_s)
        if not lines or not _URL.search(lines[0]):
            self.stop()
            raise ServerStartError(f"lmprof serve did not start: {self._why(lines, timeout_s)}")
        self.startup_line = lines[0].strip()
        self.url = _URL.search(self.startup_line).group(1)
        self.startup_s = time.perf_counter() - began
        # Later lines (the drain) are not read: keep the pipe from filling.
        threading.Thread(target=self._drain_stdout, daemon=True).start()
        return self.url

    def _read_first_line(self, lines: list[str]) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        line = self._proc.stdout.readline()
        if line:
            lines.append(line)

    def _drain_stdout(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for _ in self._proc.stdout:
            pass

    def _why(self, lines: list[str], timeout_s: float) -> str:
        if self._proc is not None and self._proc.poll() is None and not lines:
            return f"no startup line within {timeout_s:g} s"
        self._stderr.seek(0)
        tail = [line for line in self._stderr.read().decode(errors="replace").splitlines() if line.strip()]
        return tail[-1].strip() if tail else (lines[0].strip() if lines else "it exited")

    def cpu_s(self) -> float | None:
        try:
            t = psutil.Process(self.pid).cpu_times()
        except psutil.Error:
            return None
        return t.user + t.system

    def stop(self, timeout_s: float = 60.0) -> None:
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)  # drain, then exit
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


class PeakRss:
    """The largest RSS of a pid while the `with` block runs, sampled every RSS_INTERVAL_S."""

    def __init__(self, pid: int, interval_s: float = RSS_INTERVAL_S) -> None:
        self.pid = pid
        self.interval_s = interval_s
        self.peak_bytes: int | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        try:
            rss = psutil.Process(self.pid).memory_info().rss
        except psutil.Error:
            return
        self.peak_bytes = rss if self.peak_bytes is None else max(self.peak_bytes, rss)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    def __enter__(self) -> PeakRss:
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self._sample()
