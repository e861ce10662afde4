"""rt51d: `qwenguard serve` as the deployment files run it, as real processes on 127.0.0.1.

- F4: the shared verdict cache tells a client whether another checked the same text (``"cached": true``);
  docs/security.md's remedy, a guard without a cache, had no `serve` option. ``--cache-size 0`` /
  ``--cache-bytes 0`` now turn it off.
- F2: the Kubernetes manifest asked Prometheus to scrape ``/metrics`` without credentials (annotations) while
  the pods require the API key: every scrape was 401 and the autoscaler had no metrics. Each scrape the
  manifests configure is made here, as Prometheus makes it, against a real server with a key.
- F3: behind HAProxy every request comes from the balancer; the compose file left ``--max-bodies-per-client``
  at 16, so large bodies (streamed through past HAProxy's 16 KB buffer) were refused 429.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import scaleout_kit as kit
import yaml

SERVE = [sys.executable, "-m", "qwenguard.core.cli", "serve"]
DEPLOY = kit.ROOT / "deploy"
KEY = "rt51d-0123456789abcdef"
SECRET = [{"role": "user", "content": "Client A's private question: is my colleague Jane Roe pregnant?"}]


@contextmanager
def serving(args: list[str], log: Path) -> Iterator[str]:
    """``qwenguard serve --model demo ARGS`` on a free port; its base URL (no ``/v1``)."""
    port = kit.free_port()
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [*SERVE, "--model", "demo", "--device", "cpu", "--port", str(port), *args],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        kit.wait_http(url + "/health", 120, proc)
        yield url
    finally:
        proc.terminate()
        proc.wait(30)


def _cached(url: str, headers: dict[str, str] | None = None) -> bool:
    r = httpx.post(url + "/v1/moderate", json={"conversations": [SECRET]}, headers=headers, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()["results"][0]["cached"]


# -- F4: the verdict cache can be switched off ----------------------------------------------------------
@pytest.mark.parametrize("flag", ["--cache-size", "--cache-bytes"])
def test_client_b_cannot_learn_client_a_checked_the_same_text_when_the_cache_is_off(tmp_path, flag):
    log = tmp_path / "server.log"
    with serving([flag, "0"], log) as url:
        assert _cached(url) is False  # client A
        assert _cached(url) is False  # client B probes A's exact text: nothing to learn
    assert "verdict cache off" in log.read_text()


def test_the_cache_is_on_by_default_which_is_what_the_flag_is_for(tmp_path):
    with serving(["--cache-size", "4096"], tmp_path / "server.log") as url:
        assert _cached(url) is False
        assert _cached(url) is True  # the membership oracle docs/security.md describes


def test_a_negative_cache_size_is_one_line_and_exit_2_before_the_model_loads():
    done = subprocess.run([*SERVE, "--cache-bytes", "-1", "--port", "1"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "error: --cache-size and --cache-bytes must be >= 0 (0 turns the verdict cache off)"
    ]


# -- F2: Prometheus scrapes as the manifests tell it to -----------------------------------------------
def _k8s(kind: str, name: str | None = None) -> dict:
    docs = [d for d in yaml.safe_load_all((DEPLOY / "kubernetes" / "qwenguard.yaml").read_text()) if d]
    return next(d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name))


def _configured_scrapes(secret_value: str) -> list[tuple[str, str, dict[str, str]]]:
    """Every scrape of the qwenguard pods the manifests ask Prometheus for: (source, path, headers sent)."""
    deployment = _k8s("Deployment", "qwenguard")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    key_ref = next(e for e in container["env"] if e["name"] == "QWENGUARD_API_KEY")["valueFrom"]["secretKeyRef"]
    scrapes = []
    annotations = deployment["spec"]["template"]["metadata"].get("annotations") or {}
    if annotations.get("prometheus.io/scrape") == "true":  # annotation-driven configs send no credentials
        scrapes.append(("annotations", annotations.get("prometheus.io/path", "/metrics"), {}))
    monitor_file = DEPLOY / "kubernetes" / "monitoring" / "servicemonitor.yaml"
    if monitor_file.exists():
        (monitor,) = [d for d in yaml.safe_load_all(monitor_file.read_text()) if d]
        for endpoint in monitor["spec"]["endpoints"]:
            headers = {}
            auth = endpoint.get("authorization")
            if auth is not None:
                # The operator reads the Secret it names: the pods' own one gives the server's key.
                assert (auth["credentials"]["name"], auth["credentials"]["key"]) == (key_ref["name"], key_ref["key"])
                headers["Authorization"] = f"{auth.get('type', 'Bearer')} {secret_value}"
            scrapes.append(("ServiceMonitor", endpoint.get("path", "/metrics"), headers))
    return scrapes


def test_every_scrape_the_kubernetes_manifests_configure_gets_the_autoscalers_metrics(tmp_path):
    wanted = [m["pods"]["metric"]["name"] for m in _k8s("HorizontalPodAutoscaler")["spec"]["metrics"]]
    scrapes = _configured_scrapes(KEY)
    assert scrapes, "nothing scrapes the pods: the autoscaler has no metrics"
    with serving(["--api-key", KEY], tmp_path / "server.log") as url:
        for source, path, headers in scrapes:
            r = httpx.get(url + path, headers=headers, timeout=10)
            assert r.status_code == 200, (source, r.status_code, r.text[:120])
            assert all(w in r.text for w in wanted), (source, wanted)


def test_the_documented_scrape_config_sends_the_key_and_keeps_the_qwenguard_pods():
    """docs/scaling.md's job for a Prometheus without the operator: a bearer credential file, the pods' label."""
    text = (kit.ROOT / "docs" / "scaling.md").read_text()
    block = text.split("```yaml fragment\nscrape_configs:", 1)[1].split("```", 1)[0]
    (job,) = yaml.safe_load("scrape_configs:" + block)["scrape_configs"]
    assert job["authorization"]["type"] == "Bearer" and job["authorization"]["credentials_file"]
    labels = _k8s("Deployment", "qwenguard")["spec"]["template"]["metadata"]["labels"]
    keep = {r["source_labels"][0]: r["regex"] for r in job["relabel_configs"] if r.get("action") == "keep"}
    assert keep["__meta_kubernetes_pod_label_app"] == labels["app"]
    (container,) = _k8s("Deployment", "qwenguard")["spec"]["template"]["spec"]["containers"]
    assert keep["__meta_kubernetes_pod_container_port_name"] in {p["name"] for p in container["ports"]}


# -- F3: large bodies through HAProxy, with the compose file's flags -----------------------------------
def _compose_limit_flags() -> list[str]:
    """The compose replicas' command, without what names the host, port and checkpoints."""
    command = yaml.safe_load((DEPLOY / "compose" / "docker-compose.yml").read_text())["x-qwenguard"]["command"]
    args = command[2:]
    out: list[str] = []
    skip = {"--host", "--port", "--model", "--stream-model"}
    i = 0
    while i < len(args):
        if args[i] in skip:
            i += 2
            continue
        out.append(args[i])
        i += 1
    return out


async def _send_documents(url: str, count: int, body: bytes) -> list[tuple[int, str]]:
    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=count + 8)) as client:

        async def one() -> tuple[int, str]:
            async def chunks():
                for i in range(0, len(body), 16384):  # as a body arrives over a network
                    yield body[i : i + 16384]
                    await asyncio.sleep(0.002)

            try:
                r = await client.post(
                    url + "/v1/moderate",
                    content=chunks(),
                    headers={"content-type": "application/json", "content-length": str(len(body))},
                )
            except httpx.HTTPError as exc:
                return 0, type(exc).__name__
            return r.status_code, (r.json().get("error", {}).get("type", "") if r.status_code != 200 else "")

        return await asyncio.gather(*(one() for _ in range(count)))


def test_64_large_documents_through_haproxy_are_none_refused_with_the_compose_flags(tmp_path):
    """64 concurrent ~600 KB checks (HAProxy's maxconn and the replicas' --max-concurrency) from the balancer's
    one address. The model name is not served, so each is answered 404 after its body is in: only the body turns
    are measured, not the demo's time on 2 cores."""
    kit.require_haproxy()
    import json

    document = [{"role": "user", "content": "Paris is the capital of France. " * 19000}]
    body = json.dumps({"model": "not-served", "conversations": [document]}).encode()
    with serving(_compose_limit_flags(), tmp_path / "server.log") as url:
        balancer = kit.Balancer(tmp_path, [url.split("//", 1)[1]])
        try:
            balancer.wait_ready()
            results = asyncio.run(_send_documents(balancer.url.removesuffix("/v1"), 64, body))
        finally:
            balancer.stop()
    assert Counter(results) == Counter({(404, "model_not_found"): 64}), Counter(results)
