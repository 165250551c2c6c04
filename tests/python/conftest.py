"""Fixtures of the Python client suite: stubs generated from proto/, a real
single-node chatd on free loopback ports, and accounts on it.

Run it with scripts/test-python.sh (which creates the pinned venv), or in a
venv with requirements.txt installed: `pytest tests/python`.

Environment:
  CHATD_BIN   a chatd binary to run (default: `go build ./cmd/chatd` into
              the session's temp directory)
"""

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import grpc
import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
PROTO = ROOT / "proto"
GEN = HERE / "gen"  # git-ignored; rebuilt on every run


def generate_stubs(out: Path) -> None:
    """protoc (bundled in grpcio-tools) over every .proto under proto/:
    messages (_pb2), type stubs (.pyi) and services (_pb2_grpc)."""
    import grpc_tools
    from grpc_tools import protoc

    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    protos = sorted(str(p.relative_to(PROTO)) for p in PROTO.rglob("*.proto"))
    well_known = Path(grpc_tools.__file__).parent / "_proto"  # google/protobuf/*.proto
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO}",
        f"-I{well_known}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        *protos,
    ]
    if protoc.main(args) != 0:
        raise RuntimeError("grpc_tools.protoc failed: " + " ".join(args))


# Generate before the test modules import the stubs (conftest is imported
# first). chat/ and chat/v1/ are namespace packages under gen/.
generate_stubs(GEN)
sys.path.insert(0, str(GEN))


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def health_serving(channel: grpc.Channel) -> bool:
    """grpc.health.v1.Health/Check with an empty request, without the
    health stubs: SERVING is field 1 = 1, encoded as 08 01."""
    check = channel.unary_unary(
        "/grpc.health.v1.Health/Check",
        request_serializer=lambda _: b"",
        response_deserializer=lambda b: b,
    )
    try:
        return check(None, timeout=1) == b"\x08\x01"
    except grpc.RpcError:
        return False


class Server:
    def __init__(self, proc, grpc_addr, http_addr, log_path):
        self.proc = proc
        self.grpc_addr = grpc_addr
        self.http_addr = http_addr
        self.log_path = log_path

    def log(self) -> str:
        return Path(self.log_path).read_text(errors="replace")


@pytest.fixture(scope="session")
def tmp_root():
    d = tempfile.mkdtemp(prefix="chatd-pytest-")
    yield Path(d)
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="session")
def chatd_bin(tmp_root):
    if os.environ.get("CHATD_BIN"):
        return os.environ["CHATD_BIN"]
    out = tmp_root / "chatd"
    subprocess.run(["go", "build", "-o", str(out), "./cmd/chatd"], cwd=ROOT, check=True)
    return str(out)


def start_chatd(chatd_bin, tmp_root, attempt, name="chatd", extra=()):
    grpc_addr = f"127.0.0.1:{free_port()}"
    http_addr = f"127.0.0.1:{free_port()}"
    data = tmp_root / f"data-{name}-{attempt}"
    log_path = tmp_root / f"{name}-{attempt}.log"
    log = open(log_path, "wb")
    proc = subprocess.Popen(
        [chatd_bin, "--grpc-addr", grpc_addr, "--http-addr", http_addr, "--data-dir", str(data),
         "--drain-window", "2s",  # SIGTERM drains open streams for at most 2 s
         *extra],
        stdout=log, stderr=subprocess.STDOUT,
    )
    log.close()
    return Server(proc, grpc_addr, http_addr, log_path)


def run_chatd(chatd_bin, tmp_root, name="chatd", extra=()):
    """A single-node chatd, SERVING, until the generator is closed (then a
    graceful stop that must succeed). Retries on other ports if one was
    taken between choosing it and chatd binding it."""
    for attempt in range(3):
        srv = start_chatd(chatd_bin, tmp_root, attempt, name, extra)
        channel = grpc.insecure_channel(srv.grpc_addr)
        serving = False
        deadline = time.monotonic() + 30
        try:
            while not serving and time.monotonic() < deadline and srv.proc.poll() is None:
                serving = health_serving(channel)
                if not serving:
                    time.sleep(0.05)
        finally:
            channel.close()
        if serving:
            break
        if srv.proc.poll() is None:
            srv.proc.kill()
            srv.proc.wait()
            pytest.fail("chatd did not report SERVING within 30 s:\n" + srv.log())
        if attempt == 2:
            pytest.fail(f"chatd exited with {srv.proc.returncode}:\n" + srv.log())
    yield srv
    srv.proc.terminate()  # SIGTERM: graceful stop
    try:
        code = srv.proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        srv.proc.kill()
        srv.proc.wait()
        pytest.fail("chatd did not stop within 20 s of SIGTERM:\n" + srv.log())
    if code != 0:
        pytest.fail(f"chatd exited with {code} after SIGTERM:\n" + srv.log())


@pytest.fixture(scope="session")
def server(chatd_bin, tmp_root):
    """The single-node chatd of the gRPC client tests."""
    yield from run_chatd(chatd_bin, tmp_root)


@pytest.fixture(scope="session")
def channel(server):
    # Keepalive pings within what the server allows (one per 20 s at most),
    # so the C-core's HTTP/2 pings are exercised on long runs too.
    ch = grpc.insecure_channel(server.grpc_addr, options=[
        ("grpc.keepalive_time_ms", 30000),
        ("grpc.keepalive_timeout_ms", 10000),
    ])
    grpc.channel_ready_future(ch).result(timeout=10)
    yield ch
    ch.close()


@pytest.fixture(scope="session")
def run_id():
    """A suffix that keeps usernames unique within a server."""
    return uuid.uuid4().hex[:8]
