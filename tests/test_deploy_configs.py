"""The deployment files under cluster/ and docker/ parse, and say what the cluster relies on.

Static checks, no Docker, Kubernetes or AWS: pyyaml and pytest only, well under a second. Each test
names one property that a plausible edit would break: an image without a pinned tag, a port published
beyond loopback, a literal password, a head node that accepts GPU trials, a RayJob whose cluster has
drifted from the RayCluster, a Secret the README never tells you to create.
"""

from __future__ import annotations

import json
import math
import re
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster"
DOCKER = ROOT / "docker"
README = CLUSTER / "README.md"
DOCKERFILE = DOCKER / "Dockerfile"
LAUNCHER = CLUSTER / "ray-aws-gpu.yaml"
COMPOSE = DOCKER / "docker-compose.yml"
NAMESPACE = "tuner"
MLFLOW_URI = "http://mlflow.tuner.svc:5000"

# Names that hold a credential. A key or variable matching this must never carry a literal value.
SENSITIVE = re.compile(r"pass(word|wd)?|secret|token|api[_-]?key|access[_-]?key|credential", re.IGNORECASE)
# What a user must fill in: REPLACE_WITH_* values and the image name (cluster/README.md, "Placeholders").
PLACEHOLDER = r"REPLACE_WITH_[A-Z_]+|[\w.-]+/your-org/[\w.:-]+"


# ---------------------------------------------------------------- helpers


def deploy_files() -> list[Path]:
    return sorted(p for d in (CLUSTER, DOCKER) for p in d.rglob("*") if p.is_file())


def yaml_paths() -> list[Path]:
    return [p for p in deploy_files() if p.suffix in (".yaml", ".yml")]


def load_docs(path: Path) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def load_one(path: Path) -> dict:
    (doc,) = load_docs(path)
    return doc


def k8s_objects() -> list[dict]:
    return [
        doc
        for path in yaml_paths()
        if path.is_relative_to(CLUSTER) and path != LAUNCHER
        for doc in load_docs(path)
        if isinstance(doc, dict) and "kind" in doc
    ]


def k8s_object(kind: str, name: str) -> dict:
    found = [o for o in k8s_objects() if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"expected exactly one {kind}/{name} under cluster/, found {len(found)}"
    return found[0]


def walk(node: Any) -> Iterator[tuple[str | None, Any, Any]]:
    """Every (key, value, parent) in a parsed YAML tree; list items come with key None."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield key, value, node
            yield from walk(value)
    elif isinstance(node, list):
        for item in node:
            yield None, item, node
            yield from walk(item)


def image_refs(node: Any) -> list[str]:
    return [value for key, value, _ in walk(node) if key in ("image", "head_image", "worker_image")]


def image_tag(ref: str) -> str:
    last = ref.partition("@")[0].rsplit("/", 1)[-1]
    return last.partition(":")[2]


def pod_templates(cluster_spec: dict) -> dict[str, dict]:
    """Pod templates of a RayCluster spec (also the rayClusterSpec of a RayJob), by group."""
    groups = {"head": cluster_spec["headGroupSpec"]["template"]}
    for group in cluster_spec["workerGroupSpecs"]:
        groups[group["groupName"]] = group["template"]
    return groups


def containers(pod_template: dict) -> list[dict]:
    spec = pod_template["spec"]
    return spec.get("initContainers", []) + spec["containers"]


def env_of(container: dict) -> dict[str, dict]:
    return {item["name"]: item for item in container.get("env", [])}


def secret_ref(env_item: dict) -> tuple[str, str] | None:
    ref = env_item.get("valueFrom", {}).get("secretKeyRef")
    return (ref["name"], ref["key"]) if ref else None


def gpu_worker_groups(cluster_spec: dict) -> list[dict]:
    return [
        g
        for g in cluster_spec["workerGroupSpecs"]
        if any(
            "nvidia.com/gpu" in c.get("resources", {}).get("limits", {}) for c in g["template"]["spec"]["containers"]
        )
    ]


def dockerfile_instructions() -> list[tuple[str, str]]:
    logical = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in logical.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            instruction, _, rest = line.partition(" ")
            out.append((instruction.upper(), rest.strip()))
    return out


def dockerfile_arg(name: str) -> str:
    for instruction, rest in dockerfile_instructions():
        match = re.fullmatch(rf"{name}=(\S+)", rest) if instruction == "ARG" else None
        if match:
            return match.group(1)
    raise AssertionError(f"docker/Dockerfile declares no `ARG {name}=<version>` default")


def dockerfile_ray_version() -> str:
    return dockerfile_arg("RAY_VERSION")


def dockerfile_base_image() -> str:
    args = {}
    for instruction, rest in dockerfile_instructions():
        if instruction == "ARG" and "=" in rest:
            name, _, default = rest.partition("=")
            args[name] = default
        if instruction == "FROM":
            return re.sub(r"\$\{?(\w+)\}?", lambda m: args[m.group(1)], rest.split()[0])
    raise AssertionError("docker/Dockerfile has no FROM")


def cli_options(argv: list[str]) -> dict[str, str | None]:
    options: dict[str, str | None] = {}
    for i, arg in enumerate(argv):
        if arg.startswith("--"):
            nxt = argv[i + 1] if i + 1 < len(argv) else None
            options[arg] = None if nxt is None or nxt.startswith("--") else nxt
    return options


def is_reference_or_placeholder(value: str) -> bool:
    """True for values that are not themselves a secret: $VAR, ${VAR}, $(cmd), <...>, placeholders."""
    v = value.strip().strip("'\"")
    if not v or v.startswith("$") or (v.startswith("<") and v.endswith(">")):
        return True
    if v.lower() in ("true", "false", "null", "none"):
        return True
    if not re.search(r"[A-Za-z0-9]", v):  # pattern syntax such as `.*` in a sed command
        return True
    return any(word in v.lower() for word in ("replace", "change-me", "changeme", "example", "placeholder"))


def readme_secret_commands() -> dict[str, set[str]]:
    """Secrets that cluster/README.md creates: {name: {keys}}, from `kubectl create secret generic`."""
    text = re.sub(r"\\\n\s*", " ", README.read_text())
    created: dict[str, set[str]] = {}
    for match in re.finditer(r"kubectl -n (\S+) create secret generic (\S+)([^\n]*)", text):
        namespace, name, rest = match.groups()
        assert namespace == NAMESPACE, f"README creates secret {name} in namespace {namespace}"
        created.setdefault(name, set()).update(re.findall(r"--from-literal=([^=\s]+)=", rest))
    return created


def readme_placeholder_table() -> dict[str, set[Path]]:
    """The README's placeholder table: {placeholder: the files under cluster/ its "Where" cell names}."""
    section = README.read_text().partition("### Placeholders in the config files")[2].partition("\n#")[0]
    table: dict[str, set[Path]] = {}
    for token, where in re.findall(r"^\| `([^`]+)` \| ([^|]+) \|", section, re.MULTILINE):
        table[token] = {path for pattern in re.findall(r"`([^`]+)`", where) for path in CLUSTER.glob(pattern)}
    return table


def readme_sed_substitutions() -> dict[str, set[Path]]:
    """What the README's `sed -i "s|OLD|NEW|g; ..." FILES` commands replace: {OLD: the files they edit}."""
    text = re.sub(r"\\\n\s*", " ", README.read_text())
    filled: dict[str, set[Path]] = {}
    for script, files in re.findall(r'sed -i "([^"]+)" ([^\n]+)', text):
        paths = {path for pattern in shlex.split(files) for path in ROOT.glob(pattern)}
        for old in re.findall(r"(?:^|;)\s*s\|([^|]+)\|", script):
            filled.setdefault(old, set()).update(paths)
    return filled


def k8s_sensitive_env_items() -> Iterator[tuple[str, dict]]:
    for obj in k8s_objects():
        for key, value, _ in walk(obj):
            if key == "env" and isinstance(value, list):
                for item in value:
                    if SENSITIVE.search(item["name"]):
                        yield f"{obj['kind']}/{obj['metadata']['name']}", item


def search_space_resources() -> list[tuple[str, float, float]]:
    """(file, cpus, gpus) per trial for every search space that asks for a GPU."""
    out = []
    for path in sorted((ROOT / "search_spaces").glob("*.yaml")):
        resources = (yaml.safe_load(path.read_text()) or {}).get("resources") or {}
        gpus = float(resources.get("gpus", 0) or 0)
        if gpus > 0:
            out.append((path.name, float(resources.get("cpus", 1)), gpus))
    return out


# ---------------------------------------------------------------- every file


@pytest.mark.parametrize("path", yaml_paths(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_yaml_file_parses_into_documents(path: Path) -> None:
    docs = load_docs(path)
    assert docs, f"{path} holds no YAML document"
    assert all(isinstance(doc, dict) for doc in docs), f"{path}: every document should be a mapping"


def test_every_image_is_pinned_to_a_version_tag() -> None:
    refs = {
        (str(path.relative_to(ROOT)), ref)
        for path in yaml_paths()
        for doc in load_docs(path)
        for ref in image_refs(doc)
    }
    refs.add(("docker/Dockerfile", dockerfile_base_image()))
    assert len(refs) > 5
    for where, ref in refs:
        tag = image_tag(ref)
        assert tag, f"{where}: image {ref} has no tag"
        assert not tag.startswith(("latest", "nightly")), f"{where}: image {ref} uses a floating tag"
        assert re.search(r"\d+\.\d+", tag), f"{where}: image {ref} tag names no version"


def test_the_tuner_image_is_the_same_reference_everywhere() -> None:
    by_file = {
        path.name: {
            ref for doc in load_docs(path) for ref in image_refs(doc) if ref.rsplit(":", 1)[0].endswith("/tuner")
        }
        for path in (LAUNCHER, CLUSTER / "kuberay" / "raycluster.yaml", CLUSTER / "kuberay" / "rayjob.yaml")
    }
    assert all(by_file.values()), f"a cluster config does not run the tuner image: {by_file}"
    everywhere = set().union(*by_file.values())
    assert len(everywhere) == 1, f"different tuner images in use: {sorted(everywhere)}"


def test_ray_version_is_the_same_in_image_clusters_and_readme() -> None:
    version = dockerfile_ray_version()
    assert re.fullmatch(r"\d+\.\d+\.\d+", version)
    assert k8s_object("RayCluster", "tuner")["spec"]["rayVersion"] == version
    assert k8s_object("RayJob", "tuner-widths")["spec"]["rayClusterSpec"]["rayVersion"] == version
    assert f'"ray[default]=={version}"' in README.read_text()


def test_mlflow_and_postgres_images_match_between_compose_and_kubernetes() -> None:
    compose = {name: svc["image"] for name, svc in load_one(COMPOSE)["services"].items()}
    k8s = set(image_refs(k8s_objects()))
    assert compose["mlflow"] in k8s
    assert compose["postgres"] in k8s
    assert compose["postgres"].startswith("postgres:16.")


# ---------------------------------------------------------------- no secrets in the repository


def test_no_literal_secret_in_any_deploy_file() -> None:
    key_value = re.compile(
        r"([\w.-]*(?:pass(?:word|wd)?|secret|token|api[_-]?key|access[_-]?key|credential)[\w.-]*)"
        r"[ \t]*[=:][ \t]*(\"[^\"\n]*\"|'[^'\n]*'|[^\s\"'/]+)",
        re.IGNORECASE,
    )
    not_a_secret_key = ("ref", "name", "path", "file", "mode", "nopasswd")  # NOPASSWD: sudoers syntax
    findings = []
    for path in deploy_files():
        text = path.read_text()
        for lineno, line in enumerate(text.splitlines(), 1):
            for match in key_value.finditer(line):
                key, value = match.groups()
                if line[: match.start()].endswith("${"):
                    # Compose interpolation: ${VAR:?message} is required; ${VAR:-default} has a default.
                    if value.startswith("?"):
                        continue
                    value = value.lstrip("-")
                if not key.lower().endswith(not_a_secret_key) and not is_reference_or_placeholder(value):
                    findings.append(f"{path.relative_to(ROOT)}:{lineno}: {key} = {value}")
            for userinfo in re.findall(r"[a-z0-9+.-]+://([^\s/@'\"]+)@", line):
                if ":" in userinfo and "$" not in userinfo:
                    findings.append(f"{path.relative_to(ROOT)}:{lineno}: password inside a URI")
        if re.search(r"AKIA[0-9A-Z]{16}|-----BEGIN [A-Z ]*PRIVATE KEY-----", text):
            findings.append(f"{path.relative_to(ROOT)}: AWS access key or private key")
    assert not findings, "literal secrets:\n" + "\n".join(findings)


def test_no_kubernetes_secret_object_is_committed() -> None:
    secrets = [o["metadata"]["name"] for o in k8s_objects() if o["kind"] == "Secret"]
    assert not secrets, f"Secret objects belong in the cluster, not in cluster/: {secrets}"


def test_sensitive_env_vars_in_kubernetes_come_from_secret_key_refs() -> None:
    items = list(k8s_sensitive_env_items())
    names = {item["name"] for _, item in items}
    assert {"POSTGRES_PASSWORD", "MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_TRACKING_PASSWORD"} <= names
    for where, item in items:
        assert "value" not in item, f"{where}: {item['name']} has a literal value"
        assert secret_ref(item), f"{where}: {item['name']} must use valueFrom.secretKeyRef"


def test_every_secret_the_manifests_read_is_created_by_the_readme() -> None:
    created = readme_secret_commands()
    referenced = set()
    for obj in k8s_objects():
        for key, value, _ in walk(obj):
            if key == "secretKeyRef" and not value.get("optional", False):
                referenced.add((value["name"], value["key"]))
    assert referenced, "no secretKeyRef found in cluster/"
    missing = sorted((name, key) for name, key in referenced if key not in created.get(name, set()))
    assert not missing, f"cluster/README.md never creates these secret keys: {missing}"


def test_compose_database_password_is_required_from_the_environment() -> None:
    services = load_one(COMPOSE)["services"]
    password = services["postgres"]["environment"]["POSTGRES_PASSWORD"]
    assert re.fullmatch(r"\$\{POSTGRES_PASSWORD:\?[^}]+\}", password), "no default: compose must refuse to start"
    uri = services["mlflow"]["environment"]["MLFLOW_BACKEND_STORE_URI"]
    userinfo = uri.split("://", 1)[1].rsplit("@", 1)[0]
    assert userinfo.split(":", 1)[1].startswith("${POSTGRES_PASSWORD"), uri
    example = (DOCKER / ".env.example").read_text()
    assert re.search(r"^POSTGRES_PASSWORD=replace-", example, re.MULTILINE)
    assert ".env" in (DOCKER / ".gitignore").read_text().split()


# ---------------------------------------------------------------- docker/


def test_dockerfile_builds_on_the_pinned_official_ray_image() -> None:
    base = dockerfile_base_image()
    repository, _, tag = base.partition(":")
    assert repository == "rayproject/ray"
    assert tag.startswith(dockerfile_ray_version() + "-py311-cu"), base


def test_dockerfile_pins_ray_torch_and_mlflow() -> None:
    runs = " ".join(rest for instruction, rest in dockerfile_instructions() if instruction == "RUN")
    assert "pip install --no-cache-dir /app" in runs
    for pin in ('"ray[tune]==${RAY_VERSION}"', '"torch==${TORCH_VERSION}"', '"mlflow==${MLFLOW_VERSION}"'):
        assert pin in runs, f"the image does not pin {pin}"
    for name in ("TORCH_VERSION", "TORCHVISION_VERSION", "MLFLOW_VERSION"):
        assert re.fullmatch(r"\d+\.\d+\.\d+", dockerfile_arg(name)), name


def test_mlflow_client_in_the_image_matches_the_server_image() -> None:
    servers = {ref for ref in image_refs(k8s_objects()) if ref.startswith("ghcr.io/mlflow/mlflow:")}
    servers.add(load_one(COMPOSE)["services"]["mlflow"]["image"])
    assert {re.match(r"v?(\d+\.\d+\.\d+)", image_tag(ref)).group(1) for ref in servers} == {
        dockerfile_arg("MLFLOW_VERSION")
    }


def test_dockerfile_runs_as_uid_1000_without_sudo() -> None:
    users = [rest for instruction, rest in dockerfile_instructions() if instruction == "USER"]
    assert users, "no USER: the image would run as root"
    uid = users[-1].split(":")[0]
    assert uid == "1000", f"final USER is {users[-1]}, expected uid 1000 (numeric, so runAsNonRoot can verify it)"
    assert "/etc/sudoers" in DOCKERFILE.read_text()


def test_dockerfile_has_no_entrypoint_and_prints_help_by_default() -> None:
    instructions = dict(dockerfile_instructions())
    assert "ENTRYPOINT" not in instructions, "the cluster launcher runs `docker run IMAGE bash`"
    assert json.loads(instructions["CMD"]) == ["python", "-m", "tuner.run", "--help"]
    assert instructions["WORKDIR"] == "/app"


def test_dockerfile_sets_no_secret_variables() -> None:
    for instruction, rest in dockerfile_instructions():
        if instruction in ("ENV", "ARG"):
            for name in re.findall(r"(\w+)=", rest) or [rest.split()[0]]:
                assert not SENSITIVE.search(name), f"{instruction} {name}: secrets must not be baked into the image"


def test_build_context_excludes_venv_data_and_git() -> None:
    ignored = set((DOCKER / "Dockerfile.dockerignore").read_text().split())
    assert {".venv", ".git", "data"} <= ignored


def test_compose_publishes_ports_on_loopback_only() -> None:
    services = load_one(COMPOSE)["services"]
    published = [(name, port) for name, svc in services.items() for port in svc.get("ports", [])]
    assert published, "compose publishes no port at all"
    for name, port in published:
        host_ip = port.get("host_ip") if isinstance(port, dict) else str(port).split(":")[0]
        assert host_ip == "127.0.0.1", f"{name} publishes {port} beyond loopback"
    assert "ports" not in services["postgres"], "the database needs no published port"


def test_compose_mlflow_uses_postgres_and_serves_artifacts_from_a_volume() -> None:
    compose = load_one(COMPOSE)
    mlflow = compose["services"]["mlflow"]
    assert mlflow["environment"]["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql")
    command = mlflow["command"]
    assert command[:2] == ["mlflow", "server"]
    assert "--serve-artifacts" in command
    destination = cli_options(command)["--artifacts-destination"]
    mounts = {m.split(":")[1]: m.split(":")[0] for m in mlflow["volumes"]}
    assert mounts.get(destination) in compose["volumes"], "artifacts must live on a named volume"
    assert not str(mlflow.get("user", "")).startswith("0"), "the MLflow server must not run as root"


def test_compose_services_have_healthchecks_and_start_in_order() -> None:
    services = load_one(COMPOSE)["services"]
    for name in ("postgres", "mlflow"):
        assert services[name]["healthcheck"]["test"], f"{name} has no healthcheck"
    assert services["mlflow"]["depends_on"]["postgres"]["condition"] == "service_healthy"


# ---------------------------------------------------------------- cluster/ray-aws-gpu.yaml


def test_launcher_head_has_no_gpus_and_workers_have_gpus() -> None:
    config = load_one(LAUNCHER)
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"]["GPU"] == 0
    assert not head["node_config"]["InstanceType"].startswith(("g", "p")), "the head should be a CPU instance"
    head_start = " ".join(config["head_start_ray_commands"])
    assert "--head" in head_start and "--num-gpus=0" in head_start

    workers = {name: t for name, t in types.items() if name != config["head_node_type"]}
    gpu_workers = {name: t for name, t in workers.items() if t["resources"].get("GPU", 0) >= 1}
    assert gpu_workers, "no worker type with GPUs"
    worker_start = " ".join(config["worker_start_ray_commands"])
    for name, worker in gpu_workers.items():
        assert worker["node_config"]["InstanceType"].startswith(("g", "p")), f"{name} is not a GPU instance"
        assert worker["min_workers"] == 0, f"{name}: idle GPUs should scale to zero"
        assert 1 <= worker["max_workers"] <= config["max_workers"]
        assert f"--num-gpus={worker['resources']['GPU']}" in worker_start


def test_launcher_enables_token_auth_and_keeps_the_dashboard_on_loopback() -> None:
    config = load_one(LAUNCHER)
    assert "-e RAY_AUTH_MODE=token" in config["docker"]["run_options"]
    assert any(remote.endswith(".ray/auth_token") for remote in config["file_mounts"])
    assert "--dashboard-host=127.0.0.1" in " ".join(config["head_start_ray_commands"])


def test_launcher_nodes_get_aws_access_from_instance_profiles() -> None:
    config = load_one(LAUNCHER)
    for name, node_type in config["available_node_types"].items():
        arn = node_type["node_config"]["IamInstanceProfile"]["Arn"]
        assert ":instance-profile/" in arn, f"{name}: {arn}"
        assert node_type["node_config"]["ImageId"], f"{name}: Ray's default AMI has a driver too old for CUDA 13"


def test_gpu_workers_have_the_cpus_to_fill_their_gpus() -> None:
    """A worker must fit 1/gpus trials per GPU by CPU too, or part of every GPU sits idle."""
    config = load_one(LAUNCHER)
    launcher_workers = [
        (f"ray-aws-gpu.yaml:{name}", t["resources"]["CPU"], t["resources"]["GPU"])
        for name, t in config["available_node_types"].items()
        if t["resources"].get("GPU", 0) >= 1
    ]
    kuberay_workers = [
        (
            f"raycluster.yaml:{g['groupName']}",
            float(c["resources"]["limits"]["cpu"]),
            c["resources"]["limits"]["nvidia.com/gpu"],
        )
        for g in gpu_worker_groups(k8s_object("RayCluster", "tuner")["spec"])
        for c in g["template"]["spec"]["containers"]
    ]
    spaces = search_space_resources()
    assert spaces, "no search space asks for a GPU"
    assert launcher_workers and kuberay_workers, "no GPU worker type in ray-aws-gpu.yaml or raycluster.yaml"
    for worker, node_cpus, node_gpus in launcher_workers + kuberay_workers:
        for space, cpus, gpus in spaces:
            trials = math.floor(node_gpus / gpus + 1e-9)
            assert node_cpus >= trials * cpus, f"{worker}: {trials} trials of {space} need {trials * cpus} CPUs"


# ---------------------------------------------------------------- cluster/kuberay/


def test_rayjob_runs_tuner_against_the_in_cluster_mlflow() -> None:
    job = k8s_object("RayJob", "tuner-widths")["spec"]
    argv = shlex.split(job["entrypoint"])
    assert argv[:3] == ["python", "-m", "tuner.run"]
    options = cli_options(argv)
    space = options["--space"]
    assert space.endswith("search_spaces/widths.yaml")
    assert (ROOT / Path(space).relative_to("/app")).is_file(), f"{space} is not in the image (/app is the repo)"
    assert options["--storage"].startswith("s3://")
    assert options["--mlflow-uri"] == MLFLOW_URI
    head = job["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    env = env_of(head)
    assert secret_ref(env["MLFLOW_TRACKING_USERNAME"]) == ("mlflow-tracking", "username")
    assert secret_ref(env["MLFLOW_TRACKING_PASSWORD"]) == ("mlflow-tracking", "password")
    assert job["shutdownAfterJobFinishes"] is True, "a finished sweep must give its GPUs back"


def test_rayjob_cluster_is_an_exact_copy_of_the_raycluster() -> None:
    assert k8s_object("RayJob", "tuner-widths")["spec"]["rayClusterSpec"] == k8s_object("RayCluster", "tuner")["spec"]


def test_raycluster_gpu_group_requests_gpus_and_autoscales_from_zero() -> None:
    spec = k8s_object("RayCluster", "tuner")["spec"]
    assert spec["enableInTreeAutoscaling"] is True
    groups = gpu_worker_groups(spec)
    assert groups, "no worker group asks for nvidia.com/gpu"
    for group in groups:
        assert group["minReplicas"] == 0 and group["replicas"] == 0 and group["maxReplicas"] >= 1
        for container in group["template"]["spec"]["containers"]:
            resources = container["resources"]
            assert int(resources["limits"]["nvidia.com/gpu"]) >= 1
            assert resources["requests"]["nvidia.com/gpu"] == resources["limits"]["nvidia.com/gpu"]
        tolerated = {t["key"] for t in group["template"]["spec"].get("tolerations", [])}
        assert "nvidia.com/gpu" in tolerated


def test_raycluster_head_takes_no_gpu_and_is_not_exposed() -> None:
    head = k8s_object("RayCluster", "tuner")["spec"]["headGroupSpec"]
    assert head["rayStartParams"]["num-gpus"] == "0"
    assert head["serviceType"] == "ClusterIP"
    for container in containers(head["template"]):
        assert "nvidia.com/gpu" not in container.get("resources", {}).get("limits", {})


def test_raycluster_uses_token_auth() -> None:
    assert k8s_object("RayCluster", "tuner")["spec"]["authOptions"]["mode"] == "token"


def test_ray_pods_run_as_the_image_user_without_privilege_escalation() -> None:
    uid = int([rest for instruction, rest in dockerfile_instructions() if instruction == "USER"][-1].split(":")[0])
    for kind, name, spec in (
        ("RayCluster", "tuner", k8s_object("RayCluster", "tuner")["spec"]),
        ("RayJob", "tuner-widths", k8s_object("RayJob", "tuner-widths")["spec"]["rayClusterSpec"]),
    ):
        for group, template in pod_templates(spec).items():
            pod = template["spec"]["securityContext"]
            assert pod["runAsNonRoot"] is True, f"{kind}/{name} {group}"
            assert pod["runAsUser"] == uid, f"{kind}/{name} {group}: runAsUser differs from the image's USER"
            assert template["spec"]["serviceAccountName"] == "tuner-ray"
            for container in containers(template):
                security = container["securityContext"]
                assert security["allowPrivilegeEscalation"] is False, f"{kind}/{name} {group} {container['name']}"
                assert not security.get("privileged", False)


def test_every_pod_in_cluster_runs_as_non_root() -> None:
    templates = {}
    for obj in k8s_objects():
        if obj["kind"] in ("Deployment", "StatefulSet"):
            templates[f"{obj['kind']}/{obj['metadata']['name']}"] = obj["spec"]["template"]
    assert {"Deployment/mlflow", "StatefulSet/mlflow-postgres"} <= set(templates)
    for where, template in templates.items():
        assert template["spec"]["securityContext"]["runAsNonRoot"] is True, where
        for container in containers(template):
            assert container["securityContext"]["allowPrivilegeEscalation"] is False, where


# ---------------------------------------------------------------- cluster/mlflow/


def test_mlflow_server_runs_basic_auth_on_postgres_with_s3_artifacts() -> None:
    container = k8s_object("Deployment", "mlflow")["spec"]["template"]["spec"]["containers"][0]
    script = " ".join(container.get("command", []) + container.get("args", []))
    for flag in ("mlflow server", "--app-name basic-auth", "--serve-artifacts", "--artifacts-destination"):
        assert flag in script, f"mlflow server is not started with {flag}"
    assert '--backend-store-uri "$MLFLOW_BACKEND_STORE_URI"' in script
    assert "sqlite" not in script, "the auth user store must live in PostgreSQL, not in the pod"
    env = env_of(container)
    assert env["MLFLOW_BACKEND_STORE_URI"]["value"].startswith("postgresql")
    assert env["MLFLOW_ARTIFACTS_DESTINATION"]["value"].startswith("s3://")
    assert secret_ref(env["MLFLOW_AUTH_ADMIN_PASSWORD"]) == ("mlflow-server", "admin-password")
    assert secret_ref(env["MLFLOW_FLASK_SERVER_SECRET_KEY"]) == ("mlflow-server", "flask-secret-key")


def test_mlflow_backend_uri_points_at_the_postgres_service() -> None:
    container = k8s_object("Deployment", "mlflow")["spec"]["template"]["spec"]["containers"][0]
    uri = urlsplit(env_of(container)["MLFLOW_BACKEND_STORE_URI"]["value"])
    service = k8s_object("Service", "mlflow-postgres")
    assert uri.hostname in (service["metadata"]["name"], f"{service['metadata']['name']}.{NAMESPACE}.svc")
    assert uri.port in [p["port"] for p in service["spec"]["ports"]]
    assert (
        uri.path
        == "/"
        + env_of(k8s_object("StatefulSet", "mlflow-postgres")["spec"]["template"]["spec"]["containers"][0])[
            "POSTGRES_DB"
        ]["value"]
    )


def test_the_mlflow_uri_used_by_ray_is_served_and_accepted_by_mlflow() -> None:
    uri = urlsplit(MLFLOW_URI)
    name, namespace = uri.hostname.split(".")[:2]
    service = k8s_object("Service", name)
    assert service["metadata"]["namespace"] == namespace == NAMESPACE
    assert uri.port in [p["port"] for p in service["spec"]["ports"]]
    head_env = env_of(k8s_object("RayCluster", "tuner")["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0])
    assert head_env["MLFLOW_TRACKING_URI"]["value"] == MLFLOW_URI
    mlflow = k8s_object("Deployment", "mlflow")["spec"]["template"]["spec"]["containers"][0]
    allowed = env_of(mlflow)["MLFLOW_ALLOWED_HOSTS"]["value"].split(",")
    assert uri.netloc in allowed, "MLflow would reject the Host header of in-cluster clients"
    assert "127.0.0.1:*" in allowed, "MLflow would reject requests through kubectl port-forward"


def test_nothing_in_the_cluster_is_exposed_outside_it() -> None:
    objects = k8s_objects()
    services = [o for o in objects if o["kind"] == "Service"]
    assert {o["metadata"]["name"] for o in services} >= {"mlflow", "mlflow-postgres"}
    for service in services:
        assert service["spec"].get("type", "ClusterIP") == "ClusterIP", service["metadata"]["name"]
    assert not [o for o in objects if o["kind"] in ("Ingress", "Gateway", "HTTPRoute")]
    for obj in objects:
        assert obj["metadata"].get("namespace", NAMESPACE) == NAMESPACE, obj["metadata"]["name"]


# ---------------------------------------------------------------- cluster/README.md


def test_readme_walks_through_both_paths_and_local_multinode() -> None:
    text = README.read_text()
    for step in (
        "docker build -f docker/Dockerfile",
        "ray up -y cluster/ray-aws-gpu.yaml",
        "ray dashboard cluster/ray-aws-gpu.yaml",
        "ray down -y cluster/ray-aws-gpu.yaml",
        "kubectl apply -f cluster/mlflow/",
        "cluster/kuberay/raycluster.yaml",
        "cluster/kuberay/rayjob.yaml",
        "ray job submit --address http://127.0.0.1:8265 --working-dir .",
        "ray job logs -f",
        "port-forward svc/mlflow 5000:5000",
        "port-forward svc/tuner-head-svc 8265:8265",
        "python -m tuner.promote --sweep",
        "export RAY_AUTH_MODE=token",
        "ray get-auth-token --generate",
        "ray start --head",
        "ray start --address=127.0.0.1:",
        "--address 127.0.0.1:",
    ):
        assert step in text, f"cluster/README.md lacks the step `{step}`"


def test_the_readme_lists_every_placeholder_with_its_files() -> None:
    table = readme_placeholder_table()
    assert table, "cluster/README.md has no placeholder table"
    named = set(re.findall(r"REPLACE_WITH_[A-Z_]+", README.read_text()))
    assert named <= set(table), f"placeholders the README names but leaves out of its table: {named - set(table)}"
    for token, files in table.items():
        assert files, f"cluster/README.md names no file for {token}"
    # None are left once you have filled them in your checkout; the table must still match the commands below.
    for path in yaml_paths():
        if path.is_relative_to(CLUSTER):
            for token in set(re.findall(PLACEHOLDER, path.read_text())):
                assert token in table, f"{path.relative_to(ROOT)}: {token} is not in cluster/README.md's table"
                assert path in table[token], f"cluster/README.md does not list {path.relative_to(ROOT)} for {token}"


def test_the_readme_commands_fill_every_placeholder_in_every_file_it_is_in() -> None:
    filled = readme_sed_substitutions()
    for token, files in readme_placeholder_table().items():
        missing = sorted(str(path.relative_to(ROOT)) for path in files - filled.get(token, set()))
        assert not missing, f"no `sed -i` in cluster/README.md replaces {token} in {missing}"
