"""The CPU image, built from a wheelhouse with no package index and run as the manifests
run it: read-only, an unprivileged user, no capabilities, the ConfigMap's environment, the
Deployment's volumes. Its answers equal the source tree's; SIGTERM under load answers
every admitted request and exits 0 within the grace period."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import HANG_S, free_port, process_server, prompts_taken_in, wait_admitted, wait_until
from tests.e2e.test_deploy import by_kind, render
from tests.e2e.test_docs import score_samples
from tests.support import image as image_build

pytestmark = [pytest.mark.slow, pytest.mark.image]

# What the build may take on a 2-core machine while the rest of the suite runs beside it.
BUILD_TIMEOUT_S = 3600
# The service's answers from the image and from the source tree: the same code and weights.
TOLERANCE = 1e-6
# Where the test leaves what it measured (image size, cold start to ready).
REPORT = Path(tempfile.gettempdir()) / "judge-image-report.json"


@pytest.fixture(scope="module")
def image(request: pytest.FixtureRequest) -> str:
    reason = image_build.unavailable()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    build = request.config.stash.get(image_build.BUILD, None) or image_build.start_in_background()
    try:
        code = build.wait(timeout=BUILD_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        build.kill()
        pytest.fail(f"the image build ran past {BUILD_TIMEOUT_S} s:\n{log_tail()}")
    if code != 0:
        pytest.fail(f"the image build failed:\n{log_tail()}")
    return image_build.IMAGE


def log_tail(lines: int = 40) -> str:
    return "\n".join(image_build.LOG.read_text(errors="replace").splitlines()[-lines:])


def memory_mib(quantity: str) -> int:
    units = {"Gi": 1024, "Mi": 1}
    return int(quantity[:-2]) * units[quantity[-2:]]


def container_settings(docs: list[dict], port: int) -> tuple[dict[str, str], dict[str, Any], dict[str, Any]]:
    """The rendered ConfigMap's environment plus the container's own: (env, pod spec, container)."""
    pod = by_kind(docs, "Deployment")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = dict(by_kind(docs, "ConfigMap")["data"])
    for var in container.get("env", []):
        source = var.get("valueFrom", {})
        if "value" in var:
            env[var["name"]] = var["value"]
        elif source.get("resourceFieldRef", {}).get("resource") == "limits.memory":
            env[var["name"]] = str(memory_mib(container["resources"]["limits"]["memory"]))
        else:
            pytest.fail(f"the test does not know how to provide {var['name']}")
    env["JUDGE_PORT"] = str(port)
    return env, pod, container


def run_options(pod: dict, container: dict, secrets_dir: Path) -> list[str]:
    """``docker run`` options that do what the Deployment's security context and volumes do."""
    security, context = pod["securityContext"], container["securityContext"]
    assert context["readOnlyRootFilesystem"] and context["capabilities"]["drop"] == ["ALL"]
    options = ["--read-only", "--user", f"{security['runAsUser']}:{security['runAsGroup']}", "--cap-drop", "ALL"]
    options += ["--security-opt", "no-new-privileges", "--network", "host"]
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    for mount in container["volumeMounts"]:
        volume = volumes[mount["name"]]
        if "emptyDir" in volume:
            options += ["--tmpfs", f"{mount['mountPath']}:rw,mode=1777"]
        elif "secret" in volume:
            (item,) = volume["secret"]["items"]
            (secrets_dir / item["path"]).write_text(API_KEY + "\n")
            secrets_dir.chmod(0o755)
            (secrets_dir / item["path"]).chmod(0o644)
            options += ["-v", f"{secrets_dir}:{mount['mountPath']}:ro"]
        else:
            pytest.fail(f"the test does not know how to mount volume {mount['name']}")
    return options


API_KEY = "image-test-" + secrets.token_hex(8)


def state(name: str) -> dict[str, Any]:
    out = subprocess.run(["docker", "inspect", "--format", "{{json .State}}", name], capture_output=True, text=True)
    return json.loads(out.stdout) if out.returncode == 0 else {}


def logs(name: str) -> str:
    out = subprocess.run(["docker", "logs", "--tail", "40", name], capture_output=True, text=True)
    return out.stdout + out.stderr


def healthy(name: str) -> bool:
    current = state(name)
    if current.get("Status") != "running":
        pytest.fail(f"the container stopped ({current.get('ExitCode')}) before it was healthy:\n{logs(name)}")
    return current.get("Health", {}).get("Status") == "healthy"


@pytest.fixture(scope="module")
def container(image: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The image running as the cpu overlay's pod runs: its url, environment and cold start."""
    docs = render("cpu")
    port = free_port()
    env, pod, spec = container_settings(docs, port)
    secrets_dir = tmp_path_factory.mktemp("secrets")
    env_file = tmp_path_factory.mktemp("env") / "env"
    env_file.write_text("".join(f"{key}={value}\n" for key, value in env.items()))
    name = f"judge-image-test-{port}"
    options = run_options(pod, spec, secrets_dir)
    started = time.monotonic()
    subprocess.run(["docker", "run", "-d", "--name", name, *options, "--env-file", str(env_file), image], check=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: ready(url, name), "the container did not become ready", timeout=HANG_S)
        cold_start_s = time.monotonic() - started
        # The image's own HEALTHCHECK (its first check runs one interval after the start).
        wait_until(lambda: healthy(name), "the image's HEALTHCHECK did not report healthy", timeout=HANG_S)
        yield {"name": name, "url": url, "env": env, "cold_start_s": cold_start_s}
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True)


def ready(url: str, name: str) -> bool:
    healthy(name)  # fails the test at once if the container stopped
    try:
        return httpx.get(f"{url}/ready", timeout=5).status_code == 200
    except httpx.TransportError:
        return False


def assert_close(served: Any, expected: Any, where: str = "answer") -> None:
    if isinstance(expected, dict):
        assert served.keys() == expected.keys(), where
        for key in expected:
            assert_close(served[key], expected[key], f"{where}.{key}")
    elif isinstance(expected, list):
        assert len(served) == len(expected), where
        for i, (a, b) in enumerate(zip(served, expected, strict=True)):
            assert_close(a, b, f"{where}[{i}]")
    elif isinstance(expected, float):
        assert abs(served - expected) <= TOLERANCE, f"{where}: {served} vs {expected}"
    else:
        assert served == expected, where


def readme_body() -> dict:
    (body,) = [body for page, body, _ in score_samples() if page == "README.md"]
    return body


def test_the_image_answers_as_the_source_tree(container: dict[str, Any], tmp_path: Path) -> None:
    body = readme_body()
    headers = {"authorization": f"Bearer {API_KEY}"}
    served = httpx.post(f"{container['url']}/v1/score", json=body, headers=headers, timeout=HANG_S)
    assert served.status_code == 200, served.text
    assert httpx.post(f"{container['url']}/v1/score", json=body, timeout=HANG_S).status_code == 401
    # The source tree's server with the ConfigMap's settings, less what names paths in the pod.
    local = {
        key.removeprefix("JUDGE_").lower(): value
        for key, value in container["env"].items()
        if key.startswith("JUDGE_") and key not in ("JUDGE_PORT", "JUDGE_HOST", "JUDGE_API_KEYS_FILE")
    }
    with process_server(tmp_path / "source.log", **local) as (_, url):
        expected = httpx.post(f"{url}/v1/score", json=body, timeout=HANG_S)
    assert expected.status_code == 200, expected.text
    assert_close(served.json(), expected.json())


def test_sigterm_under_load_answers_admitted_requests_and_exits_0(container: dict[str, Any]) -> None:
    name, url = container["name"], container["url"]
    grace = float(container["env"]["JUDGE_SHUTDOWN_GRACE_S"])
    body = readme_body()
    headers = {"authorization": f"Bearer {API_KEY}"}
    requests = 8
    with ThreadPoolExecutor(requests) as pool:
        since = prompts_taken_in(url)
        answers = [
            pool.submit(httpx.post, f"{url}/v1/score", json=body, headers=headers, timeout=HANG_S)
            for _ in range(requests)
        ]
        wait_admitted(url, requests * len(body["items"]), since)
        signalled = time.monotonic()
        subprocess.run(["docker", "kill", "--signal", "TERM", name], check=True, capture_output=True)
        exit_code = subprocess.run(["docker", "wait", name], capture_output=True, text=True, timeout=HANG_S)
        took = time.monotonic() - signalled
        statuses = [answer.result().status_code for answer in answers]
    assert statuses == [200] * requests
    assert int(exit_code.stdout.strip()) == 0, logs(name)
    assert took <= grace, f"exit took {took:.1f} s, past the {grace:.0f} s grace"
    size = json.loads(
        subprocess.run(["docker", "image", "inspect", image_build.IMAGE], capture_output=True, text=True).stdout
    )[0]["Size"]
    report = {"image_bytes": size, "cold_start_to_ready_s": round(container["cold_start_s"], 1), "exit_s": took}
    REPORT.write_text(json.dumps(report, indent=2))
    print(f"image: {size / 1e9:.2f} GB, cold start to ready {report['cold_start_to_ready_s']} s")
