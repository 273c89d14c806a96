"""A real Label Studio server for the round-trip test: started on 127.0.0.1 with its own data folder
(SQLite database), driven through its HTTP API, stopped afterwards. Bounded in time everywhere."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import requests

EMAIL, PASSWORD = "annotator@example.com", "s4al-test-password"


def executable() -> str | None:
    """The label-studio command: $S4AL_LABEL_STUDIO (what .ci/run installs), else on PATH."""
    found = os.environ.get("S4AL_LABEL_STUDIO") or shutil.which("label-studio")
    return found if found and Path(found).is_file() else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, exe: str, data_dir: Path, document_root: Path, timeout_s: float = 420):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "LABEL_STUDIO_BASE_DATA_DIR": str(data_dir), "DJANGO_DB": "sqlite",
               "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "true",
               "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(document_root),
               "LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK": "true", "SENTRY_DSN": "", "FRONTEND_SENTRY_DSN": "",
               "COLLECT_ANALYTICS": "false"}
        self.log = open(data_dir / "server.log", "w")
        self.proc = subprocess.Popen(
            [exe, "start", "--no-browser", "--host", "127.0.0.1", "--port", str(self.port), "--data-dir",
             str(data_dir), "--username", EMAIL, "--password", PASSWORD],
            stdout=self.log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        self.session = requests.Session()
        deadline = time.time() + timeout_s
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"label-studio exited with {self.proc.returncode}; see {data_dir / 'server.log'}")
            try:
                if self.session.get(self.url + "/health", timeout=5).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if time.time() > deadline:
                self.stop()
                raise RuntimeError(f"label-studio did not answer within {timeout_s:.0f} s")
            time.sleep(2)
        self._login()

    def _login(self) -> None:
        self.session.get(self.url + "/user/login/", timeout=30)
        r = self.session.post(self.url + "/user/login/", timeout=30, allow_redirects=False,
                              data={"email": EMAIL, "password": PASSWORD,
                                    "csrfmiddlewaretoken": self.session.cookies.get("csrftoken")},
                              headers={"Referer": self.url + "/user/login/"})
        if r.status_code != 302:
            raise RuntimeError(f"label-studio login failed: {r.status_code}")

    def api(self, method: str, path: str, **kwargs):
        headers = {"X-CSRFToken": self.session.cookies.get("csrftoken", ""), "Referer": self.url}
        r = self.session.request(method, self.url + path, headers=headers, timeout=120, **kwargs)
        if r.status_code >= 400:
            raise RuntimeError(f"{method} {path}: {r.status_code} {r.text[:500]}")
        return r.json() if r.content else None

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)  # the server and the workers it started
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=30)
        self.log.close()
