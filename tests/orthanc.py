"""A real PACS for the tests: Orthanc from Debian's packages, started and stopped by PID.

Each server gets its own temporary folder (configuration, storage, index), its own ports, DICOMweb
with HTTP authentication, and DICOM (DIMSE) with C-ECHO/FIND/GET/STORE for anyone. It runs only
inside the session's loopback-only network namespace (private_network.py): Orthanc 1.10 listens on
every interface it has, so it is never started where it would be reachable from elsewhere.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests

ORTHANC = "/usr/sbin/Orthanc"
DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"
USER, PASSWORD = "clare-test", "not-a-real-secret"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Orthanc:
    """One Orthanc process; `start`, `stop` and `restart` keep its storage."""

    folder: Path
    http_port: int = field(default_factory=free_port)
    dicom_port: int = field(default_factory=free_port)
    aet: str = "ORTHANC"
    process: subprocess.Popen | None = None
    lua: str | None = None  # a Lua script Orthanc runs (e.g. a ReceivedInstanceFilter that refuses stores)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb(self) -> str:
        return f"{self.url}/dicom-web"

    @property
    def dimse(self) -> str:
        return f"127.0.0.1:{self.dicom_port}"

    def config(self) -> dict:
        return {
            "Name": "clare-test", "StorageDirectory": str(self.folder / "storage"), "IndexDirectory": str(self.folder / "index"),
            "Plugins": [DICOMWEB_PLUGIN], "HttpPort": self.http_port, "RemoteAccessAllowed": False,
            "AuthenticationEnabled": True, "RegisteredUsers": {USER: PASSWORD},
            "DicomAet": self.aet, "DicomPort": self.dicom_port, "DicomCheckCalledAet": False,
            "DicomAlwaysAllowEcho": True, "DicomAlwaysAllowStore": True, "DicomAlwaysAllowFind": True,
            "DicomAlwaysAllowGet": True, "DicomAlwaysAllowMove": True, "OverwriteInstances": True,
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "Host": "127.0.0.1", "Ssl": False},
            "StableAge": 1, "HttpTimeout": 30, "DicomScpTimeout": 30,
        }

    def start(self) -> Orthanc:
        self.folder.mkdir(parents=True, exist_ok=True)
        path, config = self.folder / "orthanc.json", self.config()
        if self.lua is not None:
            script = self.folder / "filter.lua"
            script.write_text(self.lua)
            config["LuaScripts"] = [str(script)]
        path.write_text(json.dumps(config, indent=1))
        log = open(self.folder / "orthanc.log", "ab")
        env = {**os.environ, "TCP_NODELAY": "1"}  # DCMTK, under Orthanc's DICOM port, reads it
        self.process = subprocess.Popen([ORTHANC, str(path)], stdout=log, stderr=subprocess.STDOUT, env=env,
                                        start_new_session=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"Orthanc exited with {self.process.returncode}; see {self.folder / 'orthanc.log'}")
            try:
                if requests.get(f"{self.url}/system", auth=(USER, PASSWORD), timeout=2).ok:
                    return self
            except requests.ConnectionError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError("Orthanc did not answer within 60 s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def rest(self, path: str):
        answer = requests.get(f"{self.url}{path}", auth=(USER, PASSWORD), timeout=30)
        answer.raise_for_status()
        return answer.json()

    def upload(self, data: bytes) -> None:
        answer = requests.post(f"{self.url}/instances", data=data, auth=(USER, PASSWORD), timeout=60)
        answer.raise_for_status()

    def instances_of_study(self, study_uid: str) -> list[dict]:
        """The simplified tags of every instance Orthanc holds in this study."""
        ids = requests.post(f"{self.url}/tools/find", auth=(USER, PASSWORD), timeout=30,
                            json={"Level": "Instance", "Query": {"StudyInstanceUID": study_uid}}).json()
        return [self.rest(f"/instances/{i}/simplified-tags") for i in ids]
