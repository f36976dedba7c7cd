"""Tests of the deployment files every ``secureserve new`` project gets (templates/common/).

The Dockerfile, .dockerignore, k8s/ manifests and the CI workflow are rendered for a
project whose name has an underscore (Kubernetes names may not) and checked offline:
the manifests against the Kubernetes schemas with kubernetes_validate, their security
properties on the parsed YAML, the Dockerfile against its build context.
"""

import json
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from secureserve.scaffold import TEMPLATES, create_project

NAME = "fraud_score"
DNS_NAME = "fraud-score"
#: The oldest and the newest Kubernetes minor versions the manifests are checked against.
K8S_VERSIONS = ("1.33", "1.37")
SERVER_LABELS = {"app.kubernetes.io/name": NAME, "app.kubernetes.io/component": "server"}
REDIS_LABELS = {"app.kubernetes.io/name": NAME, "app.kubernetes.io/component": "redis"}
DEPLOY_FILES = {
    "Dockerfile",
    ".dockerignore",
    ".github/workflows/ci.yml",
    "k8s/deployment.yaml",
    "k8s/hpa.yaml",
    "k8s/networkpolicy.yaml",
    "k8s/pdb.yaml",
    "k8s/redis.yaml",
    "k8s/service.yaml",
}
TOKENS = ("__project_name__", "__ProjectName__", "__project-name__")
#: Files the server needs at run time; the Dockerfile must copy exactly these.
RUNTIME_FILES = {
    "app.py",
    "secureserve.toml",
    "secureserve.lock",
    "secureserve.lock.sig",
    "signing-key.pub.pem",
    "models",
}
DNS_LABEL = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")  # RFC 1035, as Services require
LABEL_VALUE = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?")
PINNED_ACTION = re.compile(r"[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+@[0-9a-f]{40}")
#: What `secureserve run` waits for at most on SIGTERM with the default timeouts.
DRAIN_S = 21
#: A host folder mounted by the Dockerfile's `docker run` example: -v "$PWD/SOURCE:TARGET".
DOCKER_RUN_MOUNT = re.compile(r'-v "\$PWD/([^:"]+):([^:"]+)(?::ro)?"')


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One project named fraud_score, from the default template."""
    return create_project(NAME, parent=tmp_path_factory.mktemp("deploy")).path


@pytest.fixture(scope="module")
def k8s(project: Path) -> list[dict[str, Any]]:
    """Every YAML document under k8s/, parsed."""
    return _load_k8s(project)


@pytest.fixture(scope="module")
def workflow(project: Path) -> dict[Any, Any]:
    """The parsed CI workflow."""
    return yaml.safe_load((project / ".github/workflows/ci.yml").read_text("utf-8"))


@pytest.fixture(scope="module")
def dockerfile(project: Path) -> list[tuple[str, str]]:
    """The Dockerfile's instructions as (INSTRUCTION, arguments)."""
    return _dockerfile_instructions((project / "Dockerfile").read_text("utf-8"))


# --- rendering ---------------------------------------------------------------------


def test_deploy_files_are_rendered_without_tokens(project):
    """Every deployment file exists with every token replaced, names DNS-safe."""
    files = {p.relative_to(project).as_posix() for p in project.rglob("*") if p.is_file()}
    assert files >= DEPLOY_FILES
    for name in DEPLOY_FILES:
        text = (project / name).read_text("utf-8")
        leftovers = [token for token in TOKENS if token in text]
        assert not leftovers, f"{name}: {leftovers}"
    deployment = (project / "k8s/deployment.yaml").read_text("utf-8")
    assert f"name: {DNS_NAME}\n" in deployment
    assert f"app.kubernetes.io/name: {NAME}\n" in deployment


# --- Kubernetes ----------------------------------------------------------------------


def test_k8s_objects_are_the_expected_ones(k8s):
    """The manifests hold the server, Redis, their Services, policies, HPA and PDB."""
    assert sorted((doc["kind"], doc["metadata"]["name"]) for doc in k8s) == [
        ("Deployment", DNS_NAME),
        ("Deployment", f"{DNS_NAME}-redis"),
        ("HorizontalPodAutoscaler", DNS_NAME),
        ("NetworkPolicy", DNS_NAME),
        ("NetworkPolicy", f"{DNS_NAME}-redis"),
        ("PodDisruptionBudget", DNS_NAME),
        ("Service", DNS_NAME),
        ("Service", f"{DNS_NAME}-redis"),
    ]


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_k8s_documents_validate_strictly(k8s, version):
    """Every document matches the Kubernetes schema; an unknown field would fail."""
    for doc in k8s:
        validated = kubernetes_validate.validate(doc, version, strict=True)
        assert validated == version, doc["kind"]


def test_k8s_validation_catches_unknown_fields(k8s):
    """The strict check above can fail: a misspelt field in the Deployment is refused."""
    deployment = _find(k8s, "Deployment", DNS_NAME)
    broken = {**deployment, "spec": {**deployment["spec"], "replica": 2}}
    with pytest.raises(kubernetes_validate.ValidationError, match="replica"):
        kubernetes_validate.validate(broken, K8S_VERSIONS[-1], strict=True)


def test_k8s_names_are_dns_labels(k8s):
    """Object, Secret, container, volume and label names suit Kubernetes for fraud_score."""
    names = [doc["metadata"]["name"] for doc in k8s]
    for pod in _pod_specs(k8s).values():
        names += [c["name"] for c in _containers(pod)]
        names += [v["name"] for v in pod["volumes"]]
        names += _secret_names(pod)
    assert f"{DNS_NAME}-redis" in names
    assert f"{DNS_NAME}-tls" in names
    for name in names:
        assert DNS_LABEL.fullmatch(name), name
        assert len(name) <= 63, name
    for doc in k8s:
        for value in doc["metadata"]["labels"].values():
            assert LABEL_VALUE.fullmatch(value), value


@pytest.mark.parametrize(
    ("deployment", "container"),
    [(DNS_NAME, "server"), (DNS_NAME, "private-keys"), (f"{DNS_NAME}-redis", "redis")],
)
def test_k8s_containers_are_hardened(k8s, deployment, container):
    """Non-root, seccomp, read-only root, no capabilities or privilege gain, limits set."""
    pod = _pod_specs(k8s)[deployment]
    assert pod["automountServiceAccountToken"] is False
    pod_context = pod["securityContext"]
    assert pod_context["runAsNonRoot"] is True
    assert pod_context["runAsUser"] != 0
    assert pod_context["runAsGroup"] != 0
    assert pod_context["seccompProfile"] == {"type": "RuntimeDefault"}
    spec = _container(pod, container)
    context = spec["securityContext"]
    assert context["allowPrivilegeEscalation"] is False
    assert context["privileged"] is False
    assert context["readOnlyRootFilesystem"] is True
    assert context["capabilities"] == {"drop": ["ALL"]}
    assert "runAsUser" not in context  # the pod's non-root user applies
    for kind in ("requests", "limits"):
        assert set(spec["resources"][kind]) == {"cpu", "memory", "ephemeral-storage"}, kind


def test_k8s_server_runs_as_the_image_user(k8s, dockerfile):
    """The pod's user and fsGroup are the Dockerfile's numeric USER 10001:10001."""
    context = _pod_specs(k8s)[DNS_NAME]["securityContext"]
    user = _final_stage(dockerfile)["USER"][-1]
    assert user == "10001:10001"
    assert (context["runAsUser"], context["runAsGroup"], context["fsGroup"]) == (
        10001,
        10001,
        10001,
    )


def test_k8s_probes_are_https_on_the_server_port(k8s):
    """Startup and liveness probe /healthz, readiness /readyz, over HTTPS on 8443."""
    server = _container(_pod_specs(k8s)[DNS_NAME], "server")
    expected = {
        "startupProbe": "/healthz",
        "livenessProbe": "/healthz",
        "readinessProbe": "/readyz",
    }
    for probe, path in expected.items():
        get = server[probe]["httpGet"]
        assert get["path"] == path, probe
        assert get["scheme"] == "HTTPS", probe
        assert _port_number(server, get["port"]) == 8443, probe
    assert "command" not in server  # the image's ENTRYPOINT: secureserve run
    assert "args" not in server


def test_k8s_rollout_and_shutdown_give_time_to_drain(k8s):
    """One extra replica at a time, none down; preStop and grace period outlast draining."""
    deployment = _find(k8s, "Deployment", DNS_NAME)
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1},
    }
    pod = deployment["spec"]["template"]["spec"]
    server = _container(pod, "server")
    sleep = server["lifecycle"]["preStop"]["exec"]["command"]
    assert sleep[0] == "sleep"
    readiness = server["readinessProbe"]
    assert int(sleep[1]) > readiness["periodSeconds"] * readiness["failureThreshold"]
    assert pod["terminationGracePeriodSeconds"] >= int(sleep[1]) + DRAIN_S


def test_k8s_readiness_tolerates_a_slow_answer(k8s):
    """One late /readyz answer does not take a replica out: three misses in a row do.

    With one miss allowed, a load spike slowing every replica past the probe's timeout
    would empty the Service at once.
    """
    readiness = _container(_pod_specs(k8s)[DNS_NAME], "server")["readinessProbe"]
    assert readiness["failureThreshold"] >= 3
    assert readiness["timeoutSeconds"] < readiness["periodSeconds"]


def test_k8s_holds_no_secret_values(k8s, project):
    """No Secret or ConfigMap objects; secret settings come from Secrets, not literals."""
    assert not [doc for doc in k8s if doc["kind"] in {"Secret", "ConfigMap"}]
    for path in (project / "k8s").glob("*.yaml"):
        text = path.read_text("utf-8")
        assert not re.search(r"^\s*(data|stringData):", text, re.MULTILINE), path.name
    server = _container(_pod_specs(k8s)[DNS_NAME], "server")
    env = {var["name"]: var for var in server["env"]}
    assert env["SECURESERVE_LIMITS__STORAGE"]["valueFrom"] == {
        "secretKeyRef": {"name": f"{DNS_NAME}-redis", "key": "url"}
    }
    redis = _container(_pod_specs(k8s)[f"{DNS_NAME}-redis"], "redis")
    assert redis["env"] == [
        {
            "name": "REDIS_PASSWORD",
            "valueFrom": {"secretKeyRef": {"name": f"{DNS_NAME}-redis", "key": "password"}},
        }
    ]
    for container in (server, redis):
        for var in container["env"]:
            value = var.get("value", "")
            assert "://" not in value, var["name"]
            assert not re.search("PASSWORD|TOKEN|SECRET", var["name"]) or "valueFrom" in var


@pytest.mark.parametrize(
    ("setting", "secret", "key"),
    [
        ("SECURESERVE_TLS__CERT", f"{DNS_NAME}-tls", "tls.crt"),
        ("SECURESERVE_TLS__KEY", f"{DNS_NAME}-tls", "tls.key"),
        ("SECURESERVE_AUTH__KEYS_FILE", f"{DNS_NAME}-api-keys", "api_keys.toml"),
    ],
)
def test_k8s_secret_files_are_mounted_read_only(k8s, setting, secret, key):
    """Each secret file setting names a key of a Secret volume mounted read-only."""
    pod = _pod_specs(k8s)[DNS_NAME]
    server = _container(pod, "server")
    path = _env(server, setting)
    mount = _mount_of(server, path)
    assert mount["readOnly"] is True
    assert path == f"{mount['mountPath']}/{key}"
    volume = _volume(pod, mount["name"])
    assert volume["secret"]["secretName"] == secret


def test_k8s_digest_key_is_copied_owner_only(k8s):
    """An init container copies the digest key into memory with mode 0400 for uid 10001."""
    pod = _pod_specs(k8s)[DNS_NAME]
    init = _container(pod, "private-keys")
    script = init["command"][-1]
    assert init["command"][:2] == ["sh", "-c"]
    assert script.startswith("umask 077 && cp ")
    assert "chmod 400 /keys/audit-digest.key" in script
    assert init["image"] == _container(pod, "server")["image"]
    source = _mount_of(init, "/secrets/audit-digest/audit-digest.key")
    assert _volume(pod, source["name"])["secret"]["secretName"] == f"{DNS_NAME}-audit-digest"
    target = _mount_of(init, "/keys/audit-digest.key")
    assert _volume(pod, target["name"])["emptyDir"]["medium"] == "Memory"
    server = _container(pod, "server")
    path = _env(server, "SECURESERVE_AUDIT__DIGEST_KEY_FILE")
    assert path == "/run/keys/audit-digest.key"
    mount = _mount_of(server, path)
    assert (mount["name"], mount["readOnly"]) == (target["name"], True)


def test_k8s_audit_log_is_per_pod_on_a_writable_volume(k8s):
    """Each pod writes its own audit file (named after the pod) to an emptyDir; /tmp too."""
    pod = _pod_specs(k8s)[DNS_NAME]
    server = _container(pod, "server")
    names = [var["name"] for var in server["env"]]
    assert names.index("POD_NAME") < names.index("SECURESERVE_AUDIT__PATH")
    assert server["env"][names.index("POD_NAME")]["valueFrom"] == {
        "fieldRef": {"fieldPath": "metadata.name"}
    }
    path = _env(server, "SECURESERVE_AUDIT__PATH")
    assert path == "/var/lib/secureserve/audit/$(POD_NAME).jsonl"
    for writable in (path, "/tmp/x"):  # noqa: S108 - a path inside the pod
        mount = _mount_of(server, writable)
        assert not mount.get("readOnly", False), writable
        assert "sizeLimit" in _volume(pod, mount["name"])["emptyDir"], writable


def test_k8s_app_network_policy_allows_https_in_redis_and_dns_out(k8s):
    """The server pods accept 8443 only and reach Redis on 6379 and DNS, nothing else."""
    policy = _find(k8s, "NetworkPolicy", DNS_NAME)["spec"]
    assert policy["podSelector"] == {"matchLabels": SERVER_LABELS}
    assert policy["policyTypes"] == ["Ingress", "Egress"]
    assert policy["ingress"] == [{"ports": [{"port": 8443, "protocol": "TCP"}]}]
    redis, dns = policy["egress"]
    assert redis == {
        "to": [{"podSelector": {"matchLabels": REDIS_LABELS}}],
        "ports": [{"port": 6379, "protocol": "TCP"}],
    }
    assert dns["ports"] == [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}]
    assert dns["to"][0]["podSelector"] == {"matchLabels": {"k8s-app": "kube-dns"}}


def test_k8s_redis_network_policy_admits_only_the_server(k8s):
    """Redis accepts the server pods on 6379 and opens no connection."""
    policy = _find(k8s, "NetworkPolicy", f"{DNS_NAME}-redis")["spec"]
    assert policy["podSelector"] == {"matchLabels": REDIS_LABELS}
    assert policy["policyTypes"] == ["Ingress", "Egress"]
    assert policy["ingress"] == [
        {
            "from": [{"podSelector": {"matchLabels": SERVER_LABELS}}],
            "ports": [{"port": 6379, "protocol": "TCP"}],
        }
    ]
    assert policy["egress"] == []


@pytest.mark.parametrize(
    ("service", "labels", "container", "port"),
    [(DNS_NAME, SERVER_LABELS, "server", 8443), (f"{DNS_NAME}-redis", REDIS_LABELS, "redis", 6379)],
)
def test_k8s_services_select_their_pods(k8s, service, labels, container, port):
    """Each Service selects exactly its Deployment's pods and reaches the right port."""
    spec = _find(k8s, "Service", service)["spec"]
    deployment = _find(k8s, "Deployment", service)["spec"]
    assert spec["type"] == "ClusterIP"
    assert spec["selector"] == labels
    assert deployment["selector"]["matchLabels"] == labels
    assert deployment["template"]["metadata"]["labels"] == labels
    (service_port,) = spec["ports"]
    target = _container(deployment["template"]["spec"], container)
    assert _port_number(target, service_port["targetPort"]) == port


def test_k8s_autoscaler_and_budget_target_the_server(k8s):
    """The HPA scales the server Deployment on CPU, 2 to 10; the PDB keeps one up."""
    hpa = _find(k8s, "HorizontalPodAutoscaler", DNS_NAME)
    assert hpa["apiVersion"] == "autoscaling/v2"
    spec = hpa["spec"]
    assert spec["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": DNS_NAME,
    }
    assert (spec["minReplicas"], spec["maxReplicas"]) == (2, 10)
    (metric,) = spec["metrics"]
    assert metric["resource"]["name"] == "cpu"
    assert metric["resource"]["target"]["type"] == "Utilization"
    pdb = _find(k8s, "PodDisruptionBudget", DNS_NAME)["spec"]
    assert pdb == {"minAvailable": 1, "selector": {"matchLabels": SERVER_LABELS}}


def test_k8s_redis_requires_a_password_and_keeps_nothing(k8s):
    """Redis takes its password from the Secret and writes no snapshot or append file."""
    redis = _container(_pod_specs(k8s)[f"{DNS_NAME}-redis"], "redis")
    args = redis["args"]
    assert args[args.index("--requirepass") + 1] == "$(REDIS_PASSWORD)"
    assert args[args.index("--save") + 1] == ""
    assert args[args.index("--appendonly") + 1] == "no"


def test_k8s_redis_never_evicts_counters(k8s):
    """When its memory is full Redis refuses writes (limits fail closed) and evicts nothing.

    An eviction policy would drop rate-limit counters and let clients past their limits.
    The memory cap stays below the container's limit, so Redis refuses before it is killed.
    """
    redis = _container(_pod_specs(k8s)[f"{DNS_NAME}-redis"], "redis")
    args = redis["args"]
    assert args[args.index("--maxmemory-policy") + 1] == "noeviction"
    cap = re.fullmatch(r"(\d+)mb", args[args.index("--maxmemory") + 1])  # Redis: mb = MiB
    limit = re.fullmatch(r"(\d+)Mi", redis["resources"]["limits"]["memory"])
    assert cap
    assert limit
    assert int(cap[1]) < int(limit[1])
    assert redis["command"] == ["redis-server"]
    assert _pod_specs(k8s)[f"{DNS_NAME}-redis"]["securityContext"]["runAsUser"] == 999


def test_k8s_create_secret_commands_match_the_references(project, k8s):
    """The kubectl commands at the top of deployment.yaml create every Secret referenced."""
    text = (project / "k8s/deployment.yaml").read_text("utf-8")
    created = set(re.findall(r"kubectl create secret (?:tls|generic) ([a-z0-9-]+)", text))
    referenced = {name for pod in _pod_specs(k8s).values() for name in _secret_names(pod)}
    assert referenced == {
        f"{DNS_NAME}-tls",
        f"{DNS_NAME}-api-keys",
        f"{DNS_NAME}-audit-digest",
        f"{DNS_NAME}-redis",
    }
    assert created == referenced
    assert f"redis://:%s@{DNS_NAME}-redis:6379/0" in text


# --- CI workflow ---------------------------------------------------------------------


def test_workflow_token_is_read_only(workflow):
    """The workflow's token may read the repository only; no job asks for more."""
    assert workflow["permissions"] == {"contents": "read"}
    # PyYAML reads the key `on` as the boolean True (YAML 1.1).
    assert set(workflow[True]) == {"push", "pull_request"}
    for name, job in workflow["jobs"].items():
        assert "permissions" not in job, name


def test_workflow_actions_are_pinned_by_commit(workflow):
    """Every action is a full commit SHA; checkout keeps no credentials; jobs time out."""
    steps = [step for job in workflow["jobs"].values() for step in job["steps"]]
    uses = [step["uses"] for step in steps if "uses" in step]
    assert len(uses) == 8
    for action in uses:
        assert PINNED_ACTION.fullmatch(action), action
    assert {action.partition("@")[0] for action in uses} == {
        "actions/checkout",
        "actions/setup-python",
    }
    for step in steps:
        if step.get("uses", "").startswith("actions/checkout@"):
            assert step["with"]["persist-credentials"] is False
    for name, job in workflow["jobs"].items():
        assert 0 < job["timeout-minutes"] <= 30, name


def test_workflow_runs_tests_doctor_check_and_audit(workflow, project):
    """The jobs run pytest, secureserve doctor, secureserve check and a pinned pip-audit.

    The check job reads the committed data/check.jsonl and uploads nothing (no step
    but checkout and setup-python uses an action), as the README tells a user to run it.
    """
    runs = {
        name: [step["run"] for step in job["steps"] if "run" in step]
        for name, job in workflow["jobs"].items()
    }
    assert set(runs) == {"test", "doctor", "check", "audit"}
    assert runs["test"] == ["python -m pip install -e '.[test]'", "pytest"]
    assert runs["doctor"][-1] == "secureserve doctor ."
    command = "secureserve check --data data/check.jsonl --sensitive cohort"
    assert runs["check"] == ["python -m pip install '.' 'secureserve[check]'", command]
    assert (project / "data/check.jsonl").is_file()
    assert command in (project / "README.md").read_text("utf-8")
    assert re.fullmatch(r"python -m pip install pip-audit==\d+\.\d+\.\d+", runs["audit"][-2])
    assert runs["audit"][-1] == "pip-audit"


# --- Dockerfile ----------------------------------------------------------------------


def test_dockerfile_final_stage_is_non_root_and_runs_the_server(dockerfile):
    """Two stages; the last runs `secureserve run` as a numeric non-root user on 8443."""
    assert [args for op, args in dockerfile if op == "FROM"] == [
        "${PYTHON_IMAGE} AS builder",
        "${PYTHON_IMAGE}",
    ]
    final = _final_stage(dockerfile)
    (user,) = final["USER"]
    uid, _, gid = user.partition(":")
    assert uid.isdigit()
    assert gid.isdigit()
    assert int(uid) != 0
    assert int(gid) != 0
    assert final["EXPOSE"] == ["8443"]
    assert [json.loads(args) for args in final["ENTRYPOINT"]] == [["secureserve", "run"]]
    assert "CMD" not in final  # no default --dev or other arguments
    (healthcheck,) = final["HEALTHCHECK"]
    assert "https://127.0.0.1:8443/healthz" in healthcheck
    env = " ".join(final["ENV"])
    for setting in (
        "PYTHONDONTWRITEBYTECODE=1",
        "PYTHONUNBUFFERED=1",
        "PATH=/opt/venv/bin:$PATH",
        "SECURESERVE_SERVER__HOST=0.0.0.0",
    ):
        assert setting in env.split(), setting


def test_dockerfile_copies_only_runtime_files(dockerfile):
    """The final stage copies the venv and the runtime files, root-owned, and no secret."""
    final = _final_stage(dockerfile)
    copies = [_copy_sources(args) for args in final["COPY"]]
    assert copies[0] == ({"--from": "builder"}, ["/opt/venv"], "/opt/venv")
    context = [source for flags, sources, _ in copies[1:] for source in sources]
    assert not [flags for flags, _, _ in copies[1:] if flags]  # no --chown: root owns them
    assert {source.rstrip("/") for source in context} == RUNTIME_FILES
    for flags, sources, _ in _all_copies(dockerfile):
        for source in sources:
            assert not source.startswith(("secrets", ".secureserve", "audit")), source
            assert not source.endswith((".key", "signing-key.pem", "api_keys.toml")), source
            assert "--from" in flags or "*" not in source, source


@pytest.mark.parametrize("template", TEMPLATES)
def test_dockerfile_copies_exist_and_are_not_ignored(template, tmp_path):
    """Every file the Dockerfile copies from the context exists and is in the context."""
    project = create_project(NAME, parent=tmp_path, template=template).path
    instructions = _dockerfile_instructions((project / "Dockerfile").read_text("utf-8"))
    patterns = _dockerignore_patterns((project / ".dockerignore").read_text("utf-8"))
    copied = []
    for flags, sources, _ in _all_copies(instructions):
        if "--from" in flags:
            continue
        for source in sources:
            path = project / source
            assert path.exists(), source
            files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
            assert files, source
            copied += [p.relative_to(project).as_posix() for p in files]
    assert "models/labels.json" in copied
    assert "models/profile.json" in copied
    for file in copied:
        assert not _dockerignore_excludes(patterns, file), file


def test_dockerignore_keeps_every_secret_out(project):
    """Private keys, key records, dev certificates, audit logs, .git and data/ stay out."""
    patterns = _dockerignore_patterns((project / ".dockerignore").read_text("utf-8"))
    secrets = [p.relative_to(project).as_posix() for p in (project / "secrets").rglob("*")]
    assert "secrets/signing-key.pem" in secrets
    excluded = [
        *secrets,
        "secrets/api_keys.toml",
        ".secureserve/ca.pem",
        ".secureserve/ca-key.pem",
        "audit/audit.jsonl",
        "certs/server-key.pem",
        "tls.key",
        "run/api-keys/api_keys.toml",
        ".git/config",
        ".venv/bin/python",
        "tests/test_app.py",
        "app/__pycache__/app.cpython-311.pyc",
        "data/check.jsonl",
        "data/train.jsonl",
        "check-report/report.json",
    ]
    for path in excluded:
        assert _dockerignore_excludes(patterns, path), path
    for path in (
        "signing-key.pub.pem",
        "app.py",
        "models/model.onnx",
        "models/profile.json",
        "pyproject.toml",
    ):
        assert not _dockerignore_excludes(patterns, path), path


def test_dockerfile_run_example_mounts_only_ignored_folders(project, tmp_path):
    """The `docker run` example mounts secrets from secrets/ and the audit log from audit/.

    Both are git-ignored, and secrets/ is also out of the build context, so following the
    example can neither commit a key nor bake one into an image.
    """
    text = (project / "Dockerfile").read_text("utf-8")
    mounts = dict(DOCKER_RUN_MOUNT.findall(text))
    assert sorted(mounts.values()) == [
        "/run/keys",
        "/run/secrets/api-keys",
        "/run/secrets/tls",
        "/var/lib/secureserve/audit",
    ]
    secret_mounts = [source for source, target in mounts.items() if target.startswith("/run/")]
    assert len(secret_mounts) == 3
    for source in secret_mounts:
        assert source.startswith("secrets/"), source
    assert mounts.get("audit/docker") == "/var/lib/secureserve/audit"
    inside = [f"{source}/file" for source in mounts]
    assert _git_ignored(project, inside, tmp_path) == set(inside)
    patterns = _dockerignore_patterns((project / ".dockerignore").read_text("utf-8"))
    for path in inside:
        assert _dockerignore_excludes(patterns, path), path


def test_gitignore_keeps_every_secret_out_of_git(project, tmp_path):
    """Git ignores secrets, private keys anywhere, run/, audit logs and check reports only."""
    secrets = [
        "secrets/signing-key.pem",
        "secrets/audit-digest.key",
        "secrets/tls/tls.key",
        "secrets/api_keys.toml",
        ".secureserve/ca-key.pem",
        "audit/audit.jsonl",
        "certs/server.key",
        "tls.key",
        "run/tls/tls.key",
        "run/api-keys/api_keys.toml",
        "app/__pycache__/app.cpython-311.pyc",
    ]
    kept = [
        "app.py",
        "secureserve.toml",
        "secureserve.lock",
        "secureserve.lock.sig",
        "signing-key.pub.pem",
        "models/model.onnx",
        "models/labels.json",
        "models/profile.json",
        "data/check.jsonl",  # the CI job `check` reads it from the checkout
        "data/train.jsonl",
        "Dockerfile",
        "k8s/deployment.yaml",
    ]
    reports = ["check-report/report.json"]  # written by every `secureserve check`
    ignored = _git_ignored(project, secrets + reports + kept, tmp_path)
    assert ignored == set(secrets + reports)


# --- helpers -------------------------------------------------------------------------


def _git_ignored(project: Path, paths: list[str], tmp_path: Path) -> set[str]:
    """Which ``paths`` git ignores in a repository holding the project's .gitignore alone.

    No global, system or user ignore file takes part: only the project's own rules.
    """
    git = shutil.which("git")
    if git is None:  # pragma: no cover - git is installed wherever the tests run
        pytest.skip("git is not installed")
    repo = tmp_path / "repo"
    repo.mkdir()
    shutil.copyfile(project / ".gitignore", repo / ".gitignore")
    env = {
        **os.environ,
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_CONFIG_NOSYSTEM": "1",
        "HOME": str(tmp_path),
        "XDG_CONFIG_HOME": str(tmp_path),
    }
    subprocess.run([git, "init", "-q"], cwd=repo, env=env, check=True, timeout=30)
    result = subprocess.run(
        [git, "-c", "core.excludesFile=", "check-ignore", "--no-index", "--stdin"],
        cwd=repo,
        env=env,
        input="\n".join(paths) + "\n",
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode in {0, 1}, result.stderr  # 1: nothing is ignored
    return set(result.stdout.splitlines())


def _load_k8s(project: Path) -> list[dict[str, Any]]:
    docs = []
    for path in sorted((project / "k8s").glob("*.yaml")):
        docs += [doc for doc in yaml.safe_load_all(path.read_text("utf-8")) if doc]
    return docs


def _find(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    (doc,) = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    return doc


def _pod_specs(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The pod template of each Deployment, by the Deployment's name."""
    return {
        doc["metadata"]["name"]: doc["spec"]["template"]["spec"]
        for doc in docs
        if doc["kind"] == "Deployment"
    }


def _containers(pod: dict[str, Any]) -> list[dict[str, Any]]:
    return [*pod.get("initContainers", []), *pod["containers"]]


def _container(pod: dict[str, Any], name: str) -> dict[str, Any]:
    (container,) = [c for c in _containers(pod) if c["name"] == name]
    return container


def _volume(pod: dict[str, Any], name: str) -> dict[str, Any]:
    (volume,) = [v for v in pod["volumes"] if v["name"] == name]
    return volume


def _env(container: dict[str, Any], name: str) -> str:
    (var,) = [v for v in container["env"] if v["name"] == name]
    return str(var["value"])


def _mount_of(container: dict[str, Any], path: str) -> dict[str, Any]:
    """The volume mount that holds ``path`` in ``container``."""
    (mount,) = [
        m for m in container["volumeMounts"] if path.startswith(m["mountPath"].rstrip("/") + "/")
    ]
    return mount


def _port_number(container: dict[str, Any], port: int | str) -> int:
    """A port given by number or by the name of one of the container's ports."""
    if isinstance(port, int):
        return port
    (number,) = [p["containerPort"] for p in container["ports"] if p["name"] == port]
    return int(number)


def _secret_names(pod: dict[str, Any]) -> list[str]:
    """Every Secret a pod refers to, through a volume or an environment variable."""
    names = [v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v]
    for container in _containers(pod):
        for var in container.get("env", []):
            ref = var.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                names.append(ref["name"])
    return names


def _dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs: continuations joined, comment lines dropped."""
    instructions = []
    current = ""
    for line in text.splitlines():
        if line.lstrip().startswith("#"):
            continue
        if line.endswith("\\"):
            current += line[:-1]
            continue
        current += line
        if current.strip():
            op, _, args = current.strip().partition(" ")
            instructions.append((op.upper(), args.strip()))
        current = ""
    return instructions


def _final_stage(instructions: list[tuple[str, str]]) -> dict[str, list[str]]:
    """The arguments of each instruction after the last FROM, by instruction."""
    last = max(i for i, (op, _) in enumerate(instructions) if op == "FROM")
    stage: dict[str, list[str]] = {}
    for op, args in instructions[last + 1 :]:
        stage.setdefault(op, []).append(args)
    return stage


def _copy_sources(args: str) -> tuple[dict[str, str], list[str], str]:
    """A COPY's --flags, sources and destination."""
    words = json.loads(args) if args.startswith("[") else shlex.split(args)
    flags = dict(w[2:].partition("=")[::2] for w in words if w.startswith("--"))
    flags = {f"--{key}": value for key, value in flags.items()}
    paths = [w for w in words if not w.startswith("--")]
    return flags, paths[:-1], paths[-1]


def _all_copies(instructions: list[tuple[str, str]]) -> list[tuple[dict[str, str], list[str], str]]:
    return [_copy_sources(args) for op, args in instructions if op in {"COPY", "ADD"}]


def _dockerignore_patterns(text: str) -> list[tuple[bool, re.Pattern[str]]]:
    """(is an exception, pattern) for each line, as Docker reads .dockerignore."""
    patterns = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        line = line.removeprefix("!").strip().strip("/")
        regex = ""
        i = 0
        while i < len(line):
            if line.startswith("**/", i):
                regex, i = regex + "(?:.*/)?", i + 3
            elif line.startswith("**", i):
                regex, i = regex + ".*", i + 2
            elif line[i] == "*":
                regex, i = regex + "[^/]*", i + 1
            elif line[i] == "?":
                regex, i = regex + "[^/]", i + 1
            else:
                regex, i = regex + re.escape(line[i]), i + 1
        patterns.append((negated, re.compile(regex)))
    return patterns


def _dockerignore_excludes(patterns: list[tuple[bool, re.Pattern[str]]], path: str) -> bool:
    """Whether Docker leaves ``path`` out: the last pattern matching it or a parent decides."""
    parts = path.split("/")
    candidates = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    excluded = False
    for negated, pattern in patterns:
        if any(pattern.fullmatch(candidate) for candidate in candidates):
            excluded = not negated
    return excluded
