"""deploy/k8s/: the Kubernetes manifests and the values for Weaviate's Helm chart.

Nothing is applied (there is no cluster here). The files are parsed and checked against
the server itself: the environment against its settings table (and parsed by it), the
probes against its routes, the ports against its default port, the autoscaler's metric
against the gauge it really exports, the pod's user against the image's, the grace period
against its drain time; and Weaviate's values against the Service and the pinned Weaviate.
"""

from __future__ import annotations

import re
import urllib.parse
from pathlib import PurePosixPath

import yaml
from prometheus_client.parser import text_string_to_metric_families

from ib_vectorizer.modalities import Modality
from ib_vectorizer.options import ModelOptions, from_sources, options_of
from ib_vectorizer.serving.engine import create_engine
from ib_vectorizer.serving.metrics import ServerMetrics
from ib_vectorizer.serving.server import DRAIN_TIMEOUT_S
from ib_vectorizer.serving.settings import ServerSettings
from pipelines.provision import WEAVIATE_VERSION

from .docker_files import READY, ROOT, SERVICE, final, run_commands, server_routes

K8S = ROOT / "deploy" / "k8s"
LIVE = "/.well-known/live"
QUEUE_GAUGE = "ib_queue_depth"


def load_all(name: str) -> list[dict]:
    return [doc for doc in yaml.safe_load_all((K8S / name).read_text()) if doc is not None]


MANIFESTS = load_all("ib-vectorizer.yaml")
(VALUES,) = load_all("weaviate-values.yaml")


def manifest(kind: str) -> dict:
    (found,) = [doc for doc in MANIFESTS if doc["kind"] == kind]
    return found


DEPLOYMENT = manifest("Deployment")
POD = DEPLOYMENT["spec"]["template"]
(CONTAINER,) = POD["spec"]["containers"]
SERVICE_SPEC = manifest("Service")["spec"]
HPA = manifest("HorizontalPodAutoscaler")


def container_env() -> dict[str, str]:
    names = [e["name"] for e in CONTAINER["env"]]
    assert len(names) == len(set(names)), "a variable is set twice"
    for e in CONTAINER["env"]:
        assert set(e) == {"name", "value"}, e
        assert isinstance(e["value"], str), f"{e['name']}: quote the value ({e['value']!r})"
    return {e["name"]: e["value"] for e in CONTAINER["env"]}


def settings_of_container() -> ServerSettings:
    return from_sources(ServerSettings, None, container_env())


def named_port(name: str) -> int:
    (port,) = [p["containerPort"] for p in CONTAINER["ports"] if p["name"] == name]
    return port


def cpu_cores(quantity: str) -> float:
    """A Kubernetes CPU quantity (``"8"``, ``"500m"``) in cores."""
    return int(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


def memory_bytes(quantity: str) -> int:
    """A Kubernetes memory quantity (``6Gi``, ``512Mi``, ``6G``) in bytes."""
    number, unit = re.fullmatch(r"(\d+)([KMGT]i?)?", quantity).groups()
    powers = {"K": 1, "M": 2, "G": 3, "T": 4}
    if unit is None:
        return int(number)
    base = 1024 if unit.endswith("i") else 1000
    return int(number) * base ** powers[unit[0]]


def image_user() -> tuple[int, int]:
    """(uid, gid) the Dockerfile runs as, checked against the user it creates."""
    (user,) = final("USER")
    uid, gid = (int(part) for part in user.args.split(":"))
    created = " ".join(run.args for run in run_commands())
    assert f"useradd --system --uid {uid} " in created
    assert f"groupadd --system --gid {gid} " in created
    return uid, gid


def chart_bind_env(values: dict) -> dict[str, str]:
    """What weaviate-helm's templates give Weaviate for multi2vec-bind.

    As in its ``enabled_modules`` helper and its StatefulSet: the module is in
    ENABLE_MODULES when ``enabled`` or ``inferenceUrl`` is set; BIND_INFERENCE_API is the
    chart's own inference Service when ``enabled``, else ``inferenceUrl``.
    """
    module = values.get("modules", {}).get("multi2vec-bind", {})
    env = {}
    if module.get("enabled") or module.get("inferenceUrl"):
        env["ENABLE_MODULES"] = "multi2vec-bind"
    if module.get("enabled"):
        env["BIND_INFERENCE_API"] = "http://bind-inference.NAMESPACE.svc.cluster.local.:8080"
    elif module.get("inferenceUrl"):
        env["BIND_INFERENCE_API"] = module["inferenceUrl"]
    return env


# --------------------------------------------------------------------------- the files


def test_manifests_parse_into_the_expected_objects():
    kinds = sorted(doc["kind"] for doc in MANIFESTS)
    assert kinds == ["Deployment", "HorizontalPodAutoscaler", "PersistentVolumeClaim", "Service"]
    for doc in MANIFESTS:
        assert doc["apiVersion"] and doc["metadata"]["name"], doc["kind"]
    assert HPA["apiVersion"] == "autoscaling/v2"
    assert DEPLOYMENT["metadata"]["name"] == SERVICE
    assert manifest("Service")["metadata"]["name"] == SERVICE
    labels = {"app.kubernetes.io/name": SERVICE}
    assert DEPLOYMENT["spec"]["selector"]["matchLabels"] == labels
    assert labels.items() <= POD["metadata"]["labels"].items()
    assert SERVICE_SPEC["selector"] == labels
    assert isinstance(VALUES, dict)
    for name in ("ib-vectorizer.yaml", "weaviate-values.yaml"):
        header = (K8S / name).read_text().split("\n\n", 1)[0]
        assert "kubectl apply -f deploy/k8s/ib-vectorizer.yaml" in header, name
        assert "helm install weaviate weaviate/weaviate -f deploy/k8s/weaviate-values.yaml" in (
            header
        ), name


# --------------------------------------------------------------------------- the Deployment


def test_deployment_env_names_are_server_settings():
    server = {opt.env for opt in options_of(ServerSettings)}
    model = {opt.env for opt in options_of(ModelOptions)}
    assert model < server  # the server takes every model option, and more
    names = set(container_env())
    assert {"IB_CHECKPOINT", "IB_MAX_BATCH", "IB_MAX_QUEUE", "IB_REQUEST_TIMEOUT_S"} <= names
    assert names <= server, names - server


def test_deployment_env_is_accepted_by_the_server():
    env = container_env()
    by_env = {opt.env: opt for opt in options_of(ServerSettings)}
    for name, value in env.items():
        by_env[name].parse(value)  # ValueError if the text is not of the option's type
    settings = settings_of_container()
    model = from_sources(ModelOptions, None, env)
    assert settings.checkpoint == model.checkpoint == "/models/imagebind_huge.pth"
    assert settings.device_list(cuda_available=True) == ["cpu"]  # the cpu image
    assert CONTAINER["image"].endswith(":cpu")
    assert settings.mode == "batched"  # the mode that exports the queue gauge
    assert settings.max_batch == int(env["IB_MAX_BATCH"])
    assert settings.request_timeout_s == float(env["IB_REQUEST_TIMEOUT_S"])


def test_weights_volume_is_the_claim_mounted_at_the_checkpoint_directory():
    checkpoint = PurePosixPath(settings_of_container().checkpoint)
    (mount,) = CONTAINER["volumeMounts"]
    assert mount["mountPath"] == str(checkpoint.parent) == "/models"
    assert not mount.get("readOnly")  # the first start downloads into it
    (volume,) = [v for v in POD["spec"]["volumes"] if v["name"] == mount["name"]]
    claim = manifest("PersistentVolumeClaim")
    assert volume["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    assert claim["metadata"]["name"] == "ib-vectorizer-weights"
    assert set(claim["spec"]["accessModes"]) & {"ReadWriteOnce", "ReadWriteMany"}
    assert memory_bytes(claim["spec"]["resources"]["requests"]["storage"]) > 4.5e9


def test_probes_ask_the_server_routes_on_the_named_port():
    routes = server_routes()
    probes = {kind: CONTAINER[kind] for kind in ("startupProbe", "readinessProbe", "livenessProbe")}
    assert probes["readinessProbe"]["httpGet"]["path"] == READY
    assert probes["startupProbe"]["httpGet"]["path"] == READY
    assert probes["livenessProbe"]["httpGet"]["path"] == LIVE
    for kind, probe in probes.items():
        assert ("GET", probe["httpGet"]["path"]) in routes, kind
        assert probe["httpGet"]["port"] == "http", kind
        assert probe["timeoutSeconds"] < probe["periodSeconds"], kind
    named_port("http")
    # The first start downloads ~4.5 GB, then loads and warms up: minutes.
    startup = probes["startupProbe"]
    assert startup["failureThreshold"] * startup["periodSeconds"] >= 20 * 60


def test_ports_agree_with_the_service_and_the_settings():
    (default_port,) = [opt.default for opt in options_of(ServerSettings) if opt.env == "IB_PORT"]
    port = named_port("http")
    assert port == default_port == settings_of_container().port == 8080
    (service_port,) = SERVICE_SPEC["ports"]
    assert SERVICE_SPEC["type"] == "ClusterIP"
    target = service_port["targetPort"]
    assert (named_port(target) if isinstance(target, str) else target) == port
    assert service_port["port"] == port
    annotations = POD["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(port)
    assert ("GET", annotations["prometheus.io/path"]) in server_routes()


def test_pod_runs_as_the_image_user():
    uid, gid = image_user()
    context = POD["spec"]["securityContext"]
    assert (context["runAsUser"], context["runAsGroup"]) == (uid, gid) == (10001, 10001)
    assert context["runAsNonRoot"] is True
    assert context["fsGroup"] == gid  # a new volume becomes writable by the user
    assert CONTAINER["securityContext"]["allowPrivilegeEscalation"] is False


def test_grace_period_outlasts_the_drain():
    grace = POD["spec"]["terminationGracePeriodSeconds"]
    command = CONTAINER["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    pause = float(command[1])
    assert grace == 75
    assert grace > pause + DRAIN_TIMEOUT_S
    # A request still running at the end of the drain has timed out already.
    assert settings_of_container().request_timeout_s <= DRAIN_TIMEOUT_S


def test_resources_fit_the_model_and_the_threads_fit_the_cpu_limit():
    resources = CONTAINER["resources"]
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(resources[kind]), kind
    assert memory_bytes(resources["requests"]["memory"]) >= 5 * 2**30  # fp32 weights
    assert memory_bytes(resources["limits"]["memory"]) >= memory_bytes(
        resources["requests"]["memory"]
    )
    assert cpu_cores(resources["limits"]["cpu"]) >= cpu_cores(resources["requests"]["cpu"])
    # Left unset, both default to the node's core count, not the container's limit.
    settings = settings_of_container()
    assert settings.torch_threads and settings.preprocess_workers
    threads = settings.torch_threads + settings.preprocess_workers
    assert threads <= cpu_cores(resources["limits"]["cpu"])


# --------------------------------------------------------------------------- the autoscaler


def exported_metrics(settings: ServerSettings) -> dict[str, object]:
    """The metric families a server with these settings renders on /metrics (nothing loaded)."""
    metrics = ServerMetrics()
    engine = create_engine(settings, metrics)
    try:
        text = metrics.render().decode()
    finally:
        engine.close()
    return {family.name: family for family in text_string_to_metric_families(text)}


def test_autoscaler_scales_the_deployment_on_the_exported_queue_gauge():
    spec = HPA["spec"]
    target = spec["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"]) == ("apps/v1", "Deployment")
    assert target["name"] == DEPLOYMENT["metadata"]["name"]
    assert 1 <= spec["minReplicas"] < spec["maxReplicas"]
    (metric,) = spec["metrics"]
    assert metric["type"] == "Pods"
    name = metric["pods"]["metric"]["name"]
    assert name == QUEUE_GAUGE
    assert metric["pods"]["target"]["type"] == "AverageValue"
    assert float(metric["pods"]["target"]["averageValue"]) > 0
    # The server configured as in the Deployment exports it: a gauge per modality,
    # which the adapter sums per pod.
    family = exported_metrics(settings_of_container())[name]
    assert family.type == "gauge"
    assert {tuple(s.labels) for s in family.samples} == {("modality",)}
    assert {s.labels["modality"] for s in family.samples} == {m.value for m in Modality}
    # The baseline mode has no queue, so no gauge to scale on.
    assert name not in exported_metrics(ServerSettings(mode="baseline"))


# --------------------------------------------------------------------------- Weaviate


def test_weaviate_values_point_multi2vec_bind_at_the_service():
    module = VALUES["modules"]["multi2vec-bind"]
    # enabled would make the chart deploy (and use) its own inference container.
    assert module["enabled"] is False
    assert (
        chart_bind_env({"modules": {"multi2vec-bind": {"enabled": True}}})["BIND_INFERENCE_API"]
        != module["inferenceUrl"]
    )
    env = chart_bind_env(VALUES)
    assert "multi2vec-bind" in env["ENABLE_MODULES"].split(",")
    url = urllib.parse.urlsplit(env["BIND_INFERENCE_API"])
    assert url.scheme == "http" and url.path in ("", "/")
    assert url.hostname.split(".")[0] == manifest("Service")["metadata"]["name"]
    (service_port,) = SERVICE_SPEC["ports"]
    assert url.port == service_port["port"]


def test_weaviate_values_run_three_replicas_of_the_pinned_version():
    assert VALUES["replicas"] >= 3
    assert str(VALUES["image"]["tag"]) == WEAVIATE_VERSION
    voters = VALUES["env"]["RAFT_BOOTSTRAP_EXPECT"]
    assert voters <= VALUES["replicas"] and voters % 2 == 1 and voters >= 3
    assert VALUES["service"]["type"] == "ClusterIP"
    assert VALUES["grpcService"]["enabled"] is True
