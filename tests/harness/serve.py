"""Run `transship serve` as a real process on a free port, as a script would (`--ready-file`)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path


class ServeProcess:
    """`python -m transship serve ARCHIVE --listen 127.0.0.1:0 --ready-file F [ARGS…]`.

    Looks enough like a `RegistryProcess` for the skopeo helper: `host`, `ref()`, `cert_dir`,
    `credentials`, `url`.
    """

    def __init__(
        self,
        workdir: Path,
        archive: Path,
        *args: str,
        credentials: tuple[str, str] | None = None,
        cert_dir: Path | None = None,
        program: list[str] | None = None,
    ) -> None:
        self.workdir = workdir
        self.archive = archive
        self.args = list(args)
        self.credentials = credentials
        self.cert_dir = cert_dir
        #: what runs `transship` (default: this venv's; `env -i dist/transship` for the build)
        self.program = program or [sys.executable, "-m", "transship"]
        self.ready_file = workdir / "ready.json"
        self.log_path = workdir / "serve.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self.ready: dict[str, str] = {}

    def start(self, timeout: float = 60.0) -> ServeProcess:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.ready_file.unlink(missing_ok=True)
        cmd = [*self.program, "serve", str(self.archive)]
        cmd += ["--listen", "127.0.0.1:0", "--ready-file", str(self.ready_file), *self.args]
        env = {k: v for k, v in os.environ.items() if not k.startswith("TKG_")}
        self._log = self.log_path.open("wb")
        self._proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + timeout
        while not self.ready_file.exists():
            if self._proc.poll() is not None:
                raise RuntimeError(f"serve exited {self._proc.returncode}: {self.read_log()}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"serve not ready in {timeout}s: {self.read_log()}")
            time.sleep(0.05)
        self.ready = json.loads(self.ready_file.read_text())
        return self

    @property
    def host(self) -> str:
        return self.ready["address"]

    @property
    def url(self) -> str:
        return self.ready["url"]

    @property
    def tls(self) -> bool:
        return self.url.startswith("https:")

    @property
    def ca_pem_path(self) -> Path | None:
        return Path(self.ready["ca"]) if self.ready.get("ca") else None

    def ref(self, repo_and_tag: str) -> str:
        return f"{self.host}/{repo_and_tag}"

    def read_log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, sig: int = signal.SIGINT, timeout: float = 20.0) -> int:
        """Send Ctrl-C (SIGINT) and wait: returns the exit code."""
        if self._proc is None:
            return 0
        if self._proc.poll() is None:
            self._proc.send_signal(sig)
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._log.close()
        code = self._proc.returncode
        self._proc = None
        return code

    def __enter__(self) -> ServeProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
