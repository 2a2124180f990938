"""A coordinator and workers as local processes on 127.0.0.1, wired with ``--peer``:
what ``exo-spec demo`` runs its job on. They share a cluster key of their own, made in
the cluster's temporary directory (``key``, ``key_file``), so a local cluster neither
needs nor touches the user's. Each process logs to a file; a process that dies before
it is up fails the start with the tail of its log."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from .auth.key_file import ClusterKey, save_key
from .client import Client
from .v1 import inference_pb2

WORKER_LINE = re.compile(r"exo-spec worker (\S+) serving on 127\.0\.0\.1:(\d+) ")
COORDINATOR_LINE = re.compile(r"exo-spec coordinator serving on 127\.0\.0\.1:(\d+)")
START_TIMEOUT_S = 60.0


class ClusterError(RuntimeError):
    pass


class Background:
    """An ``exo-spec`` command running in the background, its stderr in ``log``."""

    def __init__(self, log: Path, *args: str):
        self.log = log
        self.proc = subprocess.Popen([sys.executable, "-m", "exo_spec.cli", *args],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=log.open("w"))

    def wait_for(self, pattern: re.Pattern, timeout: float = START_TIMEOUT_S) -> re.Match:
        """The first match of ``pattern`` in the log; ClusterError if the process
        exits or ``timeout`` passes first."""
        deadline = time.monotonic() + timeout
        while not (match := pattern.search(self.log.read_text())):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                tail = "\n".join(self.log.read_text().splitlines()[-5:])
                raise ClusterError(f"{self.log.stem}: no {pattern.pattern!r}:\n{tail}")
            time.sleep(0.05)
        return match

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class LocalCluster:
    """``with LocalCluster(2) as address:`` a coordinator at ``address`` with 2 ready
    workers, reached with ``Client(address, key=cluster.key)``; ``coordinator_args``
    are added to the coordinator's command line. The workers load models from the
    folders ``model_dirs`` (their ``--model-dir``)."""

    def __init__(self, workers: int, coordinator_args: tuple[str, ...] = (),
                 model_dirs: Sequence[Path] = ()):
        self.workers = workers
        self.coordinator_args = coordinator_args
        self.model_dirs = model_dirs
        self._tmp = tempfile.TemporaryDirectory(prefix="exo-spec-cluster-")
        self.logs = Path(self._tmp.name)
        self.key = ClusterKey.generate()
        self.key_file = save_key(self.key, self.logs / "cluster.key")
        self._procs: list[Background] = []

    def __enter__(self) -> str:
        try:
            return self._start()
        except BaseException:
            self.__exit__()
            raise

    def _start(self) -> str:
        deadline = time.monotonic() + START_TIMEOUT_S
        workers = [Background(self.logs / f"worker-{i}.log", "worker", "--host", "127.0.0.1",
                            "--port", "0", "--node-id", f"local-{i}", "--no-mdns",
                            "--key-file", str(self.key_file),
                            *(f"--model-dir={d}" for d in self.model_dirs))
                   for i in range(self.workers)]
        self._procs += workers
        peers = [f"--peer=127.0.0.1:{w.wait_for(WORKER_LINE, _left(deadline)).group(2)}"
                 for w in workers]
        # its own state: a throwaway cluster neither reads nor joins the user's history
        coordinator = Background(self.logs / "coordinator.log", "coordinator", "--host",
                                 "127.0.0.1", "--port", "0", "--no-mdns", *peers,
                                 "--state-dir", str(self.logs / "state"),
                                 "--key-file", str(self.key_file),
                                 *self.coordinator_args)
        self._procs.append(coordinator)
        address = f"127.0.0.1:{coordinator.wait_for(COORDINATOR_LINE, _left(deadline)).group(1)}"
        with Client(address, key=self.key) as client:
            while sum(n.state == inference_pb2.NODE_STATE_READY for n in client.nodes()) \
                    < self.workers:
                if time.monotonic() > deadline:
                    raise ClusterError(f"the coordinator did not see {self.workers} workers; "
                                       f"logs in {self.logs}")
                time.sleep(0.1)
        return address

    def __exit__(self, *exc) -> None:
        for p in reversed(self._procs):
            p.stop()
        self._procs = []
        self._tmp.cleanup()


def _left(deadline: float) -> float:
    return max(deadline - time.monotonic(), 0.0)
