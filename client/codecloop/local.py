"""A private ``codecloop serve`` for one program: started on a free loopback port, stopped on exit.

``codecloop.Client()`` and the CLI's ``evaluate`` / ``optimize`` / ``diagnose`` / ``info`` without a
target use one, the way ``dask.distributed.Client()`` starts a LocalCluster; the tests
(tests/conftest.py) and the benchmarks (benchmarks/engine_bench.py) start their servers with it too. The server runs as a
child process (``python -m codecloop_server``; the SDK never imports the server), in its own
process group so that Ctrl-C in a terminal reaches the client, which then stops it cleanly; the
server also stops by itself when the client process dies without stopping it (``serve
--exit-with-parent``: no orphans, even after a SIGKILL).
"""

from __future__ import annotations

import atexit
import collections
import importlib.util
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from codecloop_wire.errors import CodecLoopUnavailableError, CodecLoopValueError

_LISTENING = re.compile(r"codecloop listening on ([\d.]+):(\d+)")


def folder_dataset(text: str) -> tuple[str, str] | None:
    """``(name, folder)`` when ``text`` names an existing folder, else None (``text`` is a dataset
    name). The dataset is named after the folder, made a valid dataset name (1 to 64 of
    ``A-Z a-z 0-9 . _ -``, starting with a letter or digit): every other character, ``=`` included,
    becomes ``_`` (``my=clips`` -> ``my_clips``); a name with no letter or digit left is ``folder``."""
    path = Path(text).expanduser()
    if not path.is_dir():
        return None
    name = re.sub(r"[^A-Za-z0-9._-]", "_", path.resolve().name).lstrip("._-")[:64] or "folder"
    return name, str(path.resolve())


class LocalServer:
    """One ``codecloop serve`` child process on 127.0.0.1 and a free port.

    ``datasets`` maps a dataset name to a folder (``serve --dataset NAME=FOLDER``), besides the
    built-in ``embedded`` and ``real``; ``args`` are more ``serve`` flags. ``start()`` blocks until the
    server reports SERVING (datasets loaded, workers warm; the first start on a machine builds the
    built-in corpora, about 15 s) and returns its target, ``host:port``. ``log_lines``: how many of
    the server's last log lines to keep (None: all of them, as the tests read them).
    """

    def __init__(
        self, datasets: Mapping[str, str] | None = None, args: Sequence[str] = (), start_timeout: float = 600.0, log_lines: int | None = 200
    ) -> None:
        self.datasets = dict(datasets or {})
        self.args = list(args)
        self.start_timeout = start_timeout
        self.target: str | None = None
        self._proc: subprocess.Popen[str] | None = None
        self._lines: collections.deque[str] = collections.deque(maxlen=log_lines)  # the server's last log lines

    def start(self) -> str:
        if self._proc is not None:
            raise CodecLoopValueError("LocalServer: already started")
        if importlib.util.find_spec("codecloop_server") is None or importlib.util.find_spec("av") is None:
            raise CodecLoopUnavailableError(
                "a private local server needs the codec server: pip install 'codecloop[server]', or give a target"
            )
        cmd = [sys.executable, "-m", "codecloop_server", "--host", "127.0.0.1", "--port", "0", "--exit-with-parent", "--parent-pid", str(os.getpid())]
        for name, folder in self.datasets.items():
            cmd += ["--dataset", f"{name}={folder}"]
        self._proc = subprocess.Popen(
            [*cmd, *self.args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            start_new_session=True,  # Ctrl-C goes to the client, which stops the server itself
        )
        atexit.register(self.stop)
        deadline = time.monotonic() + self.start_timeout
        assert self._proc.stdout is not None
        # readline blocks: a timer kills a server that neither listens nor exits in time
        timer = threading.Timer(self.start_timeout, self._proc.kill)
        timer.daemon = True  # never holds up interpreter exit (e.g. after Ctrl-C during start-up)
        timer.start()
        try:
            for line in self._proc.stdout:
                self._lines.append(line)
                m = _LISTENING.search(line)
                if m:
                    self.target = f"{m.group(1)}:{m.group(2)}"
                    break
        finally:
            timer.cancel()
        if self.target is None:
            code = self._proc.wait()
            self._proc = None
            why = "did not start in time" if time.monotonic() >= deadline else f"exited with code {code}"
            # the server's own CLI states a refused setting in one line ("codecloop serve: ..."): that line alone
            refused = [line.strip() for line in self._lines if line.startswith("codecloop serve: ")]
            if refused:
                raise CodecLoopUnavailableError(f"local codecloop server {why}: {refused[-1]}")
            raise CodecLoopUnavailableError(f"local codecloop server {why}; its last lines:\n" + "".join(self._lines))
        # keep reading its log: a full pipe would block the server on its next line
        threading.Thread(target=lambda: self._lines.extend(self._proc.stdout), daemon=True).start()  # type: ignore[union-attr, arg-type]
        return self.target

    def stop(self, grace: float = 30.0) -> None:
        """SIGTERM (the server's graceful stop: in-flight calls finish, workers and shared memory
        are released), then SIGKILL to its whole process group after ``grace`` seconds."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        atexit.unregister(self.stop)
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()

    @property
    def log(self) -> str:
        """The server's last log lines."""
        return "".join(self._lines)

    @property
    def lines(self) -> list[str]:
        """The server's last log lines, one string each (a copy: the server goes on logging)."""
        return list(self._lines)

    @property
    def process(self) -> subprocess.Popen[str] | None:
        """The server process (in its own process group) while started, else None."""
        return self._proc

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
