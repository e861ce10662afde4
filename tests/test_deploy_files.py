"""The deployment files under deploy/ say what the code really does.

The compose file and the Kubernetes manifests cannot run here (no Docker engine, no cluster, no GPU):
they are checked structurally. They parse; every ``qwenguard serve`` command line uses only flags that
``qwenguard serve --help`` has, with a value where one is needed; ports, probes, Service selectors and
the autoscaler's metric names match the server (its routes and its Prometheus registry); grace periods
outlast the drain. The HAProxy config is checked by HAProxy itself (``haproxy -c``) and run for real by
tests/test_scaleout.py.
"""

from __future__ import annotations

import re
import shlex
import subprocess

import pytest
import scaleout_kit as kit
import yaml

DEPLOY = kit.ROOT / "deploy"
COMPOSE = DEPLOY / "compose" / "docker-compose.yml"
K8S = sorted((DEPLOY / "kubernetes").glob("*.yaml"))
SERVICE_MONITOR = DEPLOY / "kubernetes" / "monitoring" / "servicemonitor.yaml"
DOCKERFILE = DEPLOY / "Dockerfile"
HAPROXY_CFG = DEPLOY / "haproxy" / "haproxy.cfg"


# -- what the server really has -------------------------------------------------------------------
def _serve_command():
    from qwenguard.core.cli import app
    from typer.main import get_command

    return get_command(app).commands["serve"]  # what `qwenguard serve --help` lists


SERVE = _serve_command()
API_KEY_ENV = next(p.envvar for p in SERVE.params if "--api-key" in p.opts)


def _routes() -> set[str]:
    from qwenguard.core import Guard
    from qwenguard.core.server import create_app
    from scaleout_kit import KeywordJudge

    return {getattr(r, "path", "") for r in create_app(Guard(KeywordJudge(0.0))).routes}


def _metric_names() -> set[str]:
    from qwenguard.core.server.metrics import Metrics

    return {m.name for m in Metrics().registry.collect()}


def _serve_args(argv: list[str]) -> dict[str, object]:
    """``qwenguard serve ...`` parsed by the CLI itself (not run): every option, typed, defaults included.
    An option the CLI does not have, a missing value or a value of the wrong type fails here."""
    assert argv[:2] == ["qwenguard", "serve"], argv
    return dict(SERVE.make_context("serve", list(argv[2:])).params)


def _drain_bound(args: dict[str, object]) -> float:
    return float(args["drain_delay"]) + float(args["shutdown_timeout"])


def _seconds(value: str | int) -> float:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m)?", str(value))
    assert m, value
    number, unit = float(m.group(1)), m.group(2) or "s"
    return number / 1000 if unit == "ms" else number * 60 if unit == "m" else number


# -- Dockerfile -----------------------------------------------------------------------------------
def _dockerfile() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in re.sub(r"\\\n", " ", DOCKERFILE.read_text()).splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            word, _, rest = line.strip().partition(" ")
            out.setdefault(word.upper(), []).append(rest.strip())
    return out


def test_dockerfile_runs_a_real_serve_command_on_its_exposed_port():
    docker = _dockerfile()
    cmd = yaml.safe_load(docker["CMD"][-1])  # the exec form is a JSON array
    args = _serve_args(cmd)
    assert docker["EXPOSE"] == [str(args["port"])]
    assert args["host"] == "0.0.0.0"
    for copied in docker["COPY"]:
        source = copied.split()[0]
        assert (kit.ROOT / source).exists(), f"COPY {source}: no such path in the repository"
    assert docker["USER"] == ["qwenguard"] and "--uid 10001" in " ".join(docker["RUN"])
    assert docker.get("STOPSIGNAL") in (None, ["SIGTERM"])


#: Seconds `docker stop` (and a plain `docker run` stopped by the engine) waits after SIGTERM before SIGKILL.
DOCKER_STOP_TIMEOUT_S = 10


def test_dockerfile_command_drains_before_docker_stop_kills_it():
    """rt51d: the image's command drained within 0 + 20 s, but `docker stop` kills after 10 s: requests in flight
    were cut mid-drain. Its own command must fit Docker's default (compose and Kubernetes set their own)."""
    docker = _dockerfile()
    args = _serve_args(yaml.safe_load(docker["CMD"][-1]))
    assert _drain_bound(args) < DOCKER_STOP_TIMEOUT_S, args
    # The comment tells how to give it longer: a stop timeout that outlasts the server's default drain.
    text = DOCKERFILE.read_text()
    stop = re.search(r"--stop-timeout (\d+)", text)
    assert stop and int(stop.group(1)) > float(_serve_args(["qwenguard", "serve"])["shutdown_timeout"])
    assert "docker stop -t" in text


# -- docker compose -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def test_compose_replicas_run_real_flags_with_a_health_check_and_a_grace_period(compose):
    services = compose["services"]
    replicas = {name: s for name, s in services.items() if name.startswith("qwenguard-")}
    assert len(replicas) >= 2
    for name, service in replicas.items():
        build = service["build"]
        assert (COMPOSE.parent / build["context"] / build["dockerfile"]).resolve() == DOCKERFILE
        args = _serve_args(service["command"])
        assert args["host"] == "0.0.0.0"
        # Behind HAProxy every session comes from the balancer: the per-client cap is the replica's capacity.
        assert args["max_streams_per_client"] == args["max_streams"], name
        assert args["max_requests_per_client"] == args["max_concurrency"], name
        assert args["max_bodies_per_client"] == args["max_concurrency"], name
        assert API_KEY_ENV in service["environment"], f"{name}: no API key on a non-loopback host"
        assert f"localhost:{args['port']}/health" in " ".join(service["healthcheck"]["test"])
        assert _seconds(service["stop_grace_period"]) > _drain_bound(args), name
        assert any(v.endswith(":/models:ro") for v in service["volumes"])
        assert args["model"].startswith("/models/") and args["stream_model"].startswith("/models/")


def _per_client_limits() -> list[str]:
    from qwenguard.core.server import Limits

    return [f for f in Limits.__dataclass_fields__ if f.endswith("_per_client")]


def _haproxy_maxconn() -> int:
    text = HAPROXY_CFG.read_text()
    return int(re.search(r"^\s*default-server\b.*\bmaxconn (\d+)", text, re.M).group(1))  # type: ignore[union-attr]


def test_compose_behind_haproxy_raises_every_per_client_limit_to_the_replicas_capacity(compose):
    """rt51d F3: behind HAProxy every request is the balancer's; the compose file raised the request and stream
    caps but left --max-bodies-per-client at 16 (and 16 waiting), so 32 of 64 concurrent large bodies, which
    HAProxy streams through past its 16 KB buffer, were refused 429. Every per-client limit the server has must be
    set on the command line, to what one replica takes at once (HAProxy sends it at most `maxconn` requests)."""
    limits = _per_client_limits()
    assert {"max_streams_per_client", "max_requests_per_client", "max_bodies_per_client"} <= set(limits)
    for name, service in compose["services"].items():
        if not name.startswith("qwenguard-"):
            continue
        command = service["command"]
        args = _serve_args(command)
        for limit in limits:
            assert "--" + limit.replace("_", "-") in command, f"{name}: {limit} left at its per-client default"
            capacity = args["max_streams"] if "streams" in limit else args["max_concurrency"]
            assert args[limit] == capacity, (name, limit, args[limit], capacity)
        assert args["max_bodies_per_client"] >= _haproxy_maxconn() == args["max_concurrency"], name


def test_compose_balancer_uses_the_tested_haproxy_config_on_the_replicas_ports(compose):
    services = compose["services"]
    balancer = services["balancer"]
    image, _, tag = balancer["image"].partition(":")
    assert image == "haproxy" and tuple(int(x) for x in tag.split(".")[:2]) >= (2, 4)  # `.if` blocks need 2.4
    source, target, *_ = balancer["volumes"][0].split(":")
    assert (COMPOSE.parent / source).resolve() == HAPROXY_CFG and target == "/usr/local/etc/haproxy/haproxy.cfg"
    env = balancer["environment"]
    assert set(re.findall(r"\$\{(QG_BIND)\}", HAPROXY_CFG.read_text())) <= set(env)
    replicas = {k: v for k, v in env.items() if k.startswith("QG_REPLICA_")}
    assert len(replicas) == len([n for n in services if n.startswith("qwenguard-")])
    for address in replicas.values():
        host, port = address.split(":")
        assert host in services, f"{address}: no such service"
        assert str(_serve_args(services[host]["command"])["port"]) == port
    bind_port = env["QG_BIND"].rsplit(":", 1)[1]
    assert any(p.split(":")[-1] == bind_port for p in balancer["ports"])
    assert set(balancer["depends_on"]) == {n for n in services if n.startswith("qwenguard-")}


def test_compose_vllm_replicas_serve_gen_with_a_health_check(compose):
    gens = {name: s for name, s in compose["services"].items() if name.startswith("vllm-gen-")}
    assert len(gens) >= 2
    for service in gens.values():
        command = service["command"]
        port = command[command.index("--port") + 1]
        assert "Qwen3Guard-Gen" in command[command.index("--model") + 1]
        assert "--api-key" in command
        assert any(p.endswith(f":{port}") for p in service["ports"])
        assert f"localhost:{port}/health" in " ".join(service["healthcheck"]["test"])


# -- Kubernetes -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def manifests() -> list[dict]:
    docs = [d for path in K8S for d in yaml.safe_load_all(path.read_text()) if d]
    for doc in docs:
        assert {"apiVersion", "kind", "metadata"} <= set(doc), doc
    return docs


def _kind(docs, kind, name=None):
    found = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert found, f"no {kind} {name or ''}"
    return found


def _check_probe(probe: dict, container: dict, paths: set[str]) -> None:
    get = probe["httpGet"]
    assert get["path"] in paths, get
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert get["port"] in ports or get["port"] in ports.values(), get


def test_k8s_qwenguard_deployment_runs_real_flags_with_probes_the_server_has(manifests):
    routes = _routes()
    (deployment,) = _kind(manifests, "Deployment", "qwenguard")
    spec = deployment["spec"]
    template = spec["template"]
    assert spec["selector"]["matchLabels"].items() <= template["metadata"]["labels"].items()
    (container,) = template["spec"]["containers"]
    args = _serve_args(container["args"])
    assert args["host"] == "0.0.0.0"
    assert container["ports"][0]["containerPort"] == args["port"]
    assert any(e["name"] == API_KEY_ENV for e in container["env"])
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        _check_probe(container[probe], container, {"/health", "/ready"} & routes)
    # No credential-less scrape annotations (the server answers /metrics 401 without the key): the scrape is the
    # ServiceMonitor's (test_rt51d_serve_deploy.py scrapes a real server as each configured scrape does).
    annotations = template["metadata"].get("annotations") or {}
    assert annotations.get("prometheus.io/scrape") != "true" or not any(
        e["name"] == API_KEY_ENV for e in container["env"]
    )
    assert template["spec"]["terminationGracePeriodSeconds"] > _drain_bound(args)
    uid = template["spec"]["securityContext"]["runAsUser"]
    assert f"--uid {uid}" in " ".join(_dockerfile()["RUN"])  # the image's user


def test_k8s_service_and_disruption_budget_select_the_replicas(manifests):
    (deployment,) = _kind(manifests, "Deployment", "qwenguard")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    (service,) = _kind(manifests, "Service", "qwenguard")
    assert service["spec"]["selector"].items() <= labels.items()
    assert all(p["targetPort"] in {cp["name"] for cp in container["ports"]} for p in service["spec"]["ports"])
    (budget,) = _kind(manifests, "PodDisruptionBudget")
    assert budget["spec"]["selector"]["matchLabels"].items() <= labels.items()


def _allowed_disruptions(budget: dict, pods: int) -> int:
    """Evictions a PodDisruptionBudget allows with ``pods`` healthy pods (integers only: the manifest's form)."""
    spec = budget["spec"]
    if "maxUnavailable" in spec:
        return int(spec["maxUnavailable"])
    return pods - int(spec["minAvailable"])


def test_k8s_disruption_budget_lets_a_node_drain_at_the_autoscalers_minimum(manifests):
    """rt51d F5: minAvailable 2 with the autoscaler's minReplicas 2 allowed no eviction once scaled down, so
    `kubectl drain` (node upgrades, the cluster autoscaler) hung. And a fixed `replicas:` beside an autoscaler is
    reset at every `kubectl apply`."""
    (budget,) = _kind(manifests, "PodDisruptionBudget")
    (hpa,) = _kind(manifests, "HorizontalPodAutoscaler")
    (deployment,) = _kind(manifests, "Deployment", hpa["spec"]["scaleTargetRef"]["name"])
    for pods in range(hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"] + 1):
        allowed = _allowed_disruptions(budget, pods)
        assert 1 <= allowed < pods, (pods, budget["spec"])  # a drain proceeds, and never empties the Service
    assert "replicas" not in deployment["spec"], "the autoscaler owns the count"


def test_k8s_service_monitor_scrapes_the_service_port_with_the_pods_api_key(manifests):
    """rt51d F2: the scrape sends the key the pods read (same Secret, same key) through a port the Service has,
    on the path the server serves /metrics at; `kubectl apply -f deploy/kubernetes/` does not need its CRD."""
    (monitor,) = [d for d in yaml.safe_load_all(SERVICE_MONITOR.read_text()) if d]
    assert (monitor["apiVersion"], monitor["kind"]) == ("monitoring.coreos.com/v1", "ServiceMonitor")
    assert SERVICE_MONITOR.parent != K8S[0].parent  # its own folder: needs the Prometheus Operator's CRD
    (service,) = _kind(manifests, "Service", "qwenguard")
    (deployment,) = _kind(manifests, "Deployment", "qwenguard")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    (endpoint,) = monitor["spec"]["endpoints"]
    port = next(p for p in service["spec"]["ports"] if p["name"] == endpoint["port"])
    assert port["targetPort"] in {p["name"] for p in container["ports"]}
    assert endpoint["path"] in _routes()
    auth = endpoint["authorization"]
    assert auth.get("type", "Bearer") == "Bearer"
    key_ref = next(e for e in container["env"] if e["name"] == API_KEY_ENV)["valueFrom"]["secretKeyRef"]
    assert auth["credentials"] == {"name": key_ref["name"], "key": key_ref["key"]}


def test_k8s_autoscaler_scales_the_deployment_on_metrics_the_server_exports(manifests):
    (hpa,) = _kind(manifests, "HorizontalPodAutoscaler")
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", "qwenguard")
    names = [m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"]]
    assert names and set(names) <= _metric_names(), names
    assert hpa["spec"]["minReplicas"] >= 2


def test_k8s_vllm_gen_replicas_have_a_service_and_health_probes(manifests):
    (deployment,) = _kind(manifests, "Deployment", "qwenguard-gen")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    args = container["args"]
    assert "Qwen3Guard-Gen" in args[args.index("--model") + 1]
    assert str(container["ports"][0]["containerPort"]) == args[args.index("--port") + 1]
    _check_probe(container["readinessProbe"], container, {"/health"})
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    (service,) = _kind(manifests, "Service", "qwenguard-gen")
    assert service["spec"]["selector"].items() <= labels.items()


# -- HAProxy --------------------------------------------------------------------------------------
@pytest.mark.parametrize("replicas", [1, 3, 8])
def test_haproxy_accepts_the_config_for_any_number_of_replicas(replicas):
    haproxy = kit.require_haproxy()  # fails without HAProxy, unless QWENGUARD_NO_HAPROXY=1
    env = {
        "QG_BIND": "127.0.0.1:18080",
        **{f"QG_REPLICA_{i}": f"127.0.0.1:{18000 + i}" for i in range(1, replicas + 1)},
    }
    done = subprocess.run(
        [haproxy, "-c", "-f", str(HAPROXY_CFG)], env=env, capture_output=True, text=True, timeout=30, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Configuration file is valid" in done.stdout + done.stderr
    assert "[WARNING]" not in done.stdout + done.stderr


def test_haproxy_config_checks_health_and_buffers_requests_it_may_resend():
    lines = [ln.split("#")[0].strip() for ln in HAPROXY_CFG.read_text().splitlines()]
    text = "\n".join(ln for ln in lines if ln)
    assert "http-check send meth GET uri /health" in text and "/health" in _routes()
    retry_on = next(ln for ln in lines if ln.startswith("retry-on"))
    assert "conn-failure" in retry_on and "empty-response" in retry_on
    # Anything beyond conn-failure re-sends only a request HAProxy holds whole (HAProxy 2.6 manual, retry-on).
    assert "option http-buffer-request" in text
    assert "use_backend streams if stream_session" in text and "acl stream_session path /v1/stream" in text
    assert shlex.split(next(ln for ln in lines if ln.startswith("timeout tunnel")))[-1] == "10m"
