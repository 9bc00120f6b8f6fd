"""The deployment files under cluster/ and docker/ parse, and say what the cluster relies on.

Static checks, no Docker, Kubernetes or AWS: pyyaml and pytest only, a few seconds. Each test
names one property that a plausible edit would break: an image without a pinned tag, a port published
beyond loopback, a literal password, a head node that accepts GPU trials, a RayJob whose cluster has
drifted from the RayCluster, a Secret the README never tells you to create, a worker that may write the
driver's state or shares an identity with the head, a Ray port open to pods outside the cluster.

The IAM policies in cluster/iam/ are evaluated here with AWS's rules (wildcards, explicit Deny first)
against the S3 requests Ray makes, so a policy too narrow for Ray fails as surely as one too broad.
"""

from __future__ import annotations

import copy
import functools
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


@functools.cache
def _parsed_yaml(text: str) -> tuple[Any, ...]:
    return tuple(yaml.safe_load_all(text))


def load_docs(path: Path) -> list[Any]:
    """The file's documents, parsed once per content (tests get their own copies to change)."""
    return [copy.deepcopy(doc) for doc in _parsed_yaml(path.read_text()) if doc is not None]


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


# ---------------------------------------------------------------- helpers: who may write and connect to what

IAM = CLUSTER / "iam"
SECURITY_GROUPS = CLUSTER / "security-groups"
TOKEN_PATH = "/var/run/secrets/kubernetes.io/serviceaccount"
RAY_LABEL = {"app.kubernetes.io/name": "tuner-ray"}
# Ray's listening ports, by `ray start` flag: only the head has the first group; every node has the rest.
HEAD_ONLY_PORT_FLAGS = ("port", "dashboard-port", "ray-client-server-port")
NODE_PORT_FLAGS = ("object-manager-port", "node-manager-port", "dashboard-agent-grpc-port", "runtime-env-agent-port",
                   "metrics-export-port", "dashboard-agent-listen-port", "min-worker-port", "max-worker-port")
# Pinned but opened to no other pod or machine: Ray Client (nobody here uses it) and Prometheus metrics.
CLOSED_PORT_FLAGS = ("ray-client-server-port", "metrics-export-port")

# The S3 requests Ray 2.60.0 (pyarrow 25.0.1) makes, recorded against a local S3 server and written as
# (IAM action, object key; "" for the bucket). A worker: `StorageContext.persist_current_checkpoint` when a
# trial reports a checkpoint (it first checks Ray's marker, then writes an empty folder marker for every
# parent), then `Checkpoint.as_directory()` when another worker resumes the trial. The driver: the marker,
# its experiment state, Tune's per-trial records, deleting a checkpoint beyond num_to_keep, and tuner's own
# state under _driver/. Re-record them when Ray or pyarrow changes (see RECORDED_WITH_RAY).
RECORDED_WITH_RAY = "2.60.0"
SWEEP, TRIAL = "ray-results/widths-001", "ray-results/widths-001/t003-abcd1234"
WORKER_REQUESTS = [
    ("s3:GetObject", f"{SWEEP}/.validate_storage_marker"),
    ("s3:ListBucket", ""),
    ("s3:PutObject", "ray-results/"),
    ("s3:PutObject", f"{SWEEP}/"),
    ("s3:PutObject", f"{TRIAL}/"),
    ("s3:PutObject", f"{TRIAL}/checkpoint_000002/"),
    ("s3:PutObject", f"{TRIAL}/checkpoint_000002/sub/"),
    ("s3:PutObject", f"{TRIAL}/checkpoint_000002/checkpoint.pt"),
    ("s3:AbortMultipartUpload", f"{TRIAL}/checkpoint_000002/checkpoint.pt"),
    ("s3:GetObject", f"{TRIAL}/checkpoint_000002"),
    ("s3:GetObject", f"{TRIAL}/checkpoint_000002/checkpoint.pt"),
    ("s3:GetObject", f"{TRIAL}/checkpoint_000002/.metadata.json"),
]
DRIVER_REQUESTS = [
    ("s3:ListBucket", ""),
    ("s3:PutObject", f"{SWEEP}/.validate_storage_marker"),
    ("s3:PutObject", f"{SWEEP}/tuner.pkl"),
    ("s3:PutObject", f"{SWEEP}/experiment_state-2026-01-01_00-00-00.json"),
    ("s3:PutObject", f"{TRIAL}/result.json"),
    ("s3:GetObject", f"{SWEEP}/tuner.pkl"),
    ("s3:GetObject", f"{TRIAL}/result.json"),
    ("s3:GetObject", f"{TRIAL}/checkpoint_000002/checkpoint.pt"),
    ("s3:DeleteObject", f"{TRIAL}/checkpoint_000000/checkpoint.pt"),
    ("s3:DeleteObject", f"{TRIAL}/checkpoint_000000/"),
    ("s3:PutObject", "ray-results/_driver/widths-001/budget.json"),
    ("s3:GetObject", "ray-results/_driver/widths-001/budget.json"),
]
# What a worker must never do: overwrite what the driver unpickles or trusts, or read the driver's state.
WORKER_FORBIDDEN = [
    ("s3:PutObject", f"{SWEEP}/tuner.pkl"),
    ("s3:PutObject", f"{SWEEP}/experiment_state-2026-01-01_00-00-00.json"),
    ("s3:PutObject", f"{SWEEP}/searcher-state-2026-01-01_00-00-00.pkl"),
    ("s3:PutObject", f"{SWEEP}/checkpoint_000001.pkl"),
    ("s3:PutObject", f"{TRIAL}/result.json"),
    ("s3:PutObject", f"{TRIAL}/error.pkl"),
    ("s3:PutObject", f"{TRIAL}/params.pkl"),
    ("s3:PutObject", "ray-results/_driver/widths-001/budget.json"),
    ("s3:PutObject", "ray-results/_driver/widths-001/t003-abcd1234/checkpoint_000001/x"),
    ("s3:PutObject", "mlflow-artifacts/1/abc/artifacts/model.pt"),
    ("s3:DeleteObject", f"{TRIAL}/checkpoint_000002/checkpoint.pt"),
    ("s3:DeleteObject", f"{SWEEP}/tuner.pkl"),
    ("s3:GetObject", "ray-results/_driver/widths-001/budget.json"),
    ("s3:GetObject", f"{SWEEP}/tuner.pkl"),
    ("s3:PutBucketPolicy", ""),
    ("iam:PassRole", "*"),
    ("ec2:RunInstances", "*"),
    ("ec2:TerminateInstances", "*"),
]


def json_paths() -> list[Path]:
    return [p for p in deploy_files() if p.suffix == ".json"]


def iam_policy(name: str) -> dict:
    return json.loads((IAM / f"{name}.json").read_text())


def policy_bucket(policy: dict) -> str:
    """The bucket a storage policy is about: the Resource of its s3:ListBucket statement (placeholder or real)."""
    for statement in policy["Statement"]:
        if statement["Effect"] == "Allow" and statement.get("Action") == "s3:ListBucket":
            return statement["Resource"].removeprefix("arn:aws:s3:::")
    raise AssertionError("the policy has no s3:ListBucket statement to name its bucket")


def iam_pattern_matches(pattern: str, value: str, ignore_case: bool = False) -> bool:
    """IAM's wildcards: `*` is any run of characters, slashes included; `?` is one character."""
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, value, re.IGNORECASE if ignore_case else 0) is not None


def _listed(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else value


def _statement_applies(statement: dict, action: str, resource: str, context: dict[str, str]) -> bool:
    if "Action" in statement:
        if not any(iam_pattern_matches(p, action, ignore_case=True) for p in _listed(statement["Action"])):
            return False
    elif any(iam_pattern_matches(p, action, ignore_case=True) for p in _listed(statement["NotAction"])):
        return False
    if "Resource" in statement:
        if not any(iam_pattern_matches(p, resource) for p in _listed(statement["Resource"])):
            return False
    elif any(iam_pattern_matches(p, resource) for p in _listed(statement["NotResource"])):
        return False
    for operator, tests in statement.get("Condition", {}).items():
        if_exists = operator.endswith("IfExists")
        operator = operator.removesuffix("IfExists")
        assert operator in ("StringLike", "StringEquals"), f"this test does not evaluate {operator} conditions"
        for key, expected in tests.items():
            if key not in context:
                if not if_exists:
                    return False
                continue
            match = iam_pattern_matches if operator == "StringLike" else lambda p, v: p == v
            if not any(match(p, context[key]) for p in _listed(expected)):
                return False
    return True


def iam_decision(policies: list[dict], action: str, resource: str, context: dict[str, str] | None = None) -> str:
    """AWS's evaluation of identity policies: an explicit Deny wins, then any Allow, else an implicit deny."""
    applying = [s for p in policies for s in p["Statement"] if _statement_applies(s, action, resource, context or {})]
    if any(s["Effect"] == "Deny" for s in applying):
        return "explicitDeny"
    return "allowed" if applying else "implicitDeny"


def s3_arn(bucket: str, key: str) -> str:
    return f"arn:aws:s3:::{bucket}" + (f"/{key}" if key else "")


def s3_decision(policies: list[dict], bucket: str, action: str, key: str) -> str:
    resource = "*" if not action.startswith("s3:") else s3_arn(bucket, key)
    return iam_decision(policies, action, resource)


def ray_start_flags(command: str) -> dict[str, str]:
    return dict(re.findall(r"--([a-z-]+)=(\S+)", command))


def port_set(flags: dict[str, str], names: tuple[str, ...]) -> set[int]:
    """The TCP ports that the given `ray start` flags make Ray listen on (the worker range expanded)."""
    ports = {int(flags[n]) for n in names if n in flags and n not in ("min-worker-port", "max-worker-port")}
    if "min-worker-port" in names:
        ports |= set(range(int(flags["min-worker-port"]), int(flags["max-worker-port"]) + 1))
    return ports


def policy_rule_ports(rule: dict) -> set[int]:
    ports: set[int] = set()
    for port in rule.get("ports", []):
        assert port.get("protocol", "TCP") == "TCP" and isinstance(port["port"], int), port
        ports |= set(range(port["port"], port.get("endPort", port["port"]) + 1))
    return ports


def security_group_ports(permission: dict) -> set[int]:
    assert permission["IpProtocol"] == "tcp", permission
    return set(range(permission["FromPort"], permission["ToPort"] + 1))


def ray_cluster_specs() -> list[tuple[str, dict]]:
    return [
        ("RayCluster/tuner", k8s_object("RayCluster", "tuner")["spec"]),
        ("RayJob/tuner-widths", k8s_object("RayJob", "tuner-widths")["spec"]["rayClusterSpec"]),
    ]


def pod_spec_mounts_api_token(pod_spec: dict, service_accounts: dict[str, dict]) -> bool:
    """Whether Kubernetes would automount the service-account token into this pod's containers."""
    if "automountServiceAccountToken" in pod_spec:
        return pod_spec["automountServiceAccountToken"] is not False
    account = service_accounts.get(pod_spec.get("serviceAccountName", "default"), {})
    return account.get("automountServiceAccountToken") is not False


# ---------------------------------------------------------------- every file


@pytest.mark.parametrize("path", yaml_paths(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_yaml_file_parses_into_documents(path: Path) -> None:
    docs = load_docs(path)
    assert docs, f"{path} holds no YAML document"
    assert all(isinstance(doc, dict) for doc in docs), f"{path}: every document should be a mapping"


@pytest.mark.parametrize("path", json_paths(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_json_file_parses(path: Path) -> None:
    assert json.loads(path.read_text()), f"{path} is empty"


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


# ---------------------------------------------------------------- who may write what: storage (cluster/iam/)


def test_the_recorded_s3_requests_are_those_of_the_ray_in_the_image() -> None:
    assert dockerfile_ray_version() == RECORDED_WITH_RAY, (
        "Ray changed: re-record WORKER_REQUESTS / DRIVER_REQUESTS for it (a worker saving and restoring a"
        " checkpoint against an S3 server) and check iam/storage-worker.json still allows exactly those"
    )


def test_a_worker_can_save_and_restore_checkpoints() -> None:
    worker = iam_policy("storage-worker")
    bucket = policy_bucket(worker)
    denied = [(a, k) for a, k in WORKER_REQUESTS if s3_decision([worker], bucket, a, k) != "allowed"]
    assert not denied, f"iam/storage-worker.json refuses what Ray's workers do to checkpoint: {denied}"


def test_a_worker_cannot_touch_the_drivers_state() -> None:
    worker = iam_policy("storage-worker")
    bucket = policy_bucket(worker)
    allowed = [(a, k) for a, k in WORKER_FORBIDDEN if s3_decision([worker], bucket, a, k) == "allowed"]
    assert not allowed, f"iam/storage-worker.json lets a worker do: {allowed}"


def test_a_worker_stays_out_of_the_drivers_state_whatever_else_is_attached() -> None:
    """Explicit denies: attaching a broad policy to the worker role later must not open the driver's state."""
    worker = iam_policy("storage-worker")
    bucket = policy_bucket(worker)
    everything = {"Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}
    for action, key in WORKER_FORBIDDEN:
        if action.startswith("s3:") and (action != "s3:GetObject" or "/_driver/" in f"/{key}"):
            decision = s3_decision([worker, everything], bucket, action, key)
            assert decision == "explicitDeny", f"with s3:* attached, a worker's {action} {key} is {decision}"


def test_the_driver_can_do_everything_a_sweep_needs() -> None:
    head = iam_policy("storage-head")
    bucket = policy_bucket(head)
    assert bucket == policy_bucket(iam_policy("storage-worker")) == policy_bucket(iam_policy("mlflow-artifacts"))
    denied = [(a, k) for a, k in DRIVER_REQUESTS if s3_decision([head], bucket, a, k) != "allowed"]
    assert not denied, f"iam/storage-head.json refuses what the driver does: {denied}"
    assert s3_decision([head], bucket, "s3:PutObject", "mlflow-artifacts/1/x") == "implicitDeny"


def test_workers_hold_no_ec2_iam_or_sts_rights() -> None:
    worker = iam_policy("storage-worker")
    for statement in worker["Statement"]:
        if statement["Effect"] == "Allow":
            assert "NotAction" not in statement, "an Allow with NotAction grants everything it does not name"
            for action in _listed(statement["Action"]):
                assert action.lower().startswith("s3:") and action != "s3:*", f"the worker policy allows {action}"
    # Path A: EC2 and iam:PassRole go to the head's role alone, and PassRole names the worker role only.
    text = re.sub(r"\\\n\s*", " ", README.read_text())
    grants = re.findall(r"aws iam (?:attach|put)-role-policy --role-name (\S+) (.*)", text)
    ec2_or_pass = [role for role, rest in grants if "EC2" in rest or "launcher-head" in rest]
    assert ec2_or_pass and set(ec2_or_pass) == {"tuner-ray-head"}, f"EC2/PassRole granted to {ec2_or_pass}"
    (pass_role,) = iam_policy("launcher-head")["Statement"]
    assert pass_role["Action"] == "iam:PassRole" and pass_role["Resource"].endswith(":role/tuner-ray-worker")
    worker_profile = load_one(LAUNCHER)["available_node_types"]["gpu_worker"]["node_config"]["IamInstanceProfile"]
    assert worker_profile["Arn"].endswith(":instance-profile/tuner-ray-worker")


def test_the_mlflow_server_touches_its_artifacts_only() -> None:
    mlflow = iam_policy("mlflow-artifacts")
    bucket = policy_bucket(mlflow)
    assert s3_decision([mlflow], bucket, "s3:PutObject", "mlflow-artifacts/1/abc/artifacts/model.pt") == "allowed"
    for action, key in DRIVER_REQUESTS:
        if key:
            assert s3_decision([mlflow], bucket, action, key) != "allowed", f"MLflow may {action} {key}"


def test_head_and_workers_have_separate_cloud_identities() -> None:
    launcher = load_one(LAUNCHER)["available_node_types"]
    profiles = {name: t["node_config"]["IamInstanceProfile"]["Arn"] for name, t in launcher.items()}
    assert len(set(profiles.values())) == len(profiles), f"node types share an instance profile: {profiles}"
    roles = {
        o["metadata"]["name"]: o["metadata"].get("annotations", {}).get("eks.amazonaws.com/role-arn")
        for o in k8s_objects()
        if o["kind"] == "ServiceAccount"
    }
    assert roles["tuner-ray-head"] and roles["tuner-ray-worker"] and roles["mlflow"]
    assert len({roles["tuner-ray-head"], roles["tuner-ray-worker"], roles["mlflow"]}) == 3, roles
    assert roles["tuner-ray-submitter"] is None, "the RayJob submitter needs no cloud identity"


def test_storage_uris_and_readme_use_the_prefix_the_policies_guard() -> None:
    bucket = policy_bucket(iam_policy("storage-worker"))
    storage = cli_options(shlex.split(k8s_object("RayJob", "tuner-widths")["spec"]["entrypoint"]))["--storage"]
    assert storage == f"s3://{bucket}/ray-results", f"the RayJob's --storage {storage} is not what iam/ guards"
    text = README.read_text()
    assert text.count('--storage "s3://$BUCKET/ray-results"') == 2, "both paths submit with the guarded prefix"
    section = text.partition("## Who may write what")[2].partition("\n## ")[0]
    assert section, "cluster/README.md has no section 'Who may write what'"
    for words in ("`_driver/<sweep>/`", "`<sweep>/<trial>/checkpoint_NNNNNN/`", "iam/storage-worker.json",
                  "tuner-ray-worker", "tuner-ray-head", "tuner-ray-submitter", "simulate-principal-policy"):
        assert words in section, f"'Who may write what' does not mention {words}"
    # The README's _driver/ prefix is the one the worker's explicit deny names.
    deny = [s for s in iam_policy("storage-worker")["Statement"] if s["Effect"] == "Deny" and "Resource" in s]
    assert any(r.endswith("/ray-results/_driver/*") for s in deny for r in _listed(s["Resource"]))


def test_trials_upload_checkpoints_and_nothing_else() -> None:
    """Ray's artifact sync would have workers write their trial folder's own files, which they may not."""
    for path in sorted((ROOT / "tuner").glob("*.py")):
        assert not re.search(r"sync_artifacts\s*=\s*True", path.read_text()), f"{path.name} turns on sync_artifacts"


# ---------------------------------------------------------------- who may connect to what


def test_kuberay_head_workers_and_submitter_run_as_separate_service_accounts() -> None:
    accounts = {o["metadata"]["name"]: o for o in k8s_objects() if o["kind"] == "ServiceAccount"}
    for where, spec in ray_cluster_specs():
        templates = pod_templates(spec)
        head = templates.pop("head")["spec"]["serviceAccountName"]
        workers = {t["spec"]["serviceAccountName"] for t in templates.values()}
        assert head == "tuner-ray-head" and workers == {"tuner-ray-worker"}, f"{where}: {head}, {workers}"
        assert {head, *workers} <= set(accounts), f"{where}: a service account is not in cluster/"
    submitter = k8s_object("RayJob", "tuner-widths")["spec"]["submitterPodTemplate"]["spec"]
    assert submitter["serviceAccountName"] == "tuner-ray-submitter" in accounts
    assert submitter["securityContext"]["runAsNonRoot"] is True
    for container in submitter["containers"]:
        assert container["securityContext"]["allowPrivilegeEscalation"] is False


def test_no_pod_mounts_an_api_token_and_the_autoscaler_gets_its_own() -> None:
    accounts = {o["metadata"]["name"]: o for o in k8s_objects() if o["kind"] == "ServiceAccount"}
    for name, account in accounts.items():
        assert account.get("automountServiceAccountToken") is False, f"ServiceAccount/{name} automounts its token"
    pods = {f"{o['kind']}/{o['metadata']['name']}": o["spec"]["template"]["spec"]
            for o in k8s_objects() if o["kind"] in ("Deployment", "StatefulSet")}
    pods["RayJob/tuner-widths submitter"] = k8s_object("RayJob", "tuner-widths")["spec"]["submitterPodTemplate"]["spec"]
    for where, spec in ray_cluster_specs():
        pods.update({f"{where} {group}": t["spec"] for group, t in pod_templates(spec).items()})
    for where, pod in pods.items():
        assert pod.get("automountServiceAccountToken") is False, f"{where}: set automountServiceAccountToken: false"
        assert not pod_spec_mounts_api_token(pod, accounts), where
    for where, spec in ray_cluster_specs():
        # KubeRay's autoscaler sidecar calls the Kubernetes API: a projected token, in that container only.
        head_pod = spec["headGroupSpec"]["template"]["spec"]
        token_volumes = {v["name"] for v in head_pod["volumes"]
                         if any("serviceAccountToken" in src for src in v.get("projected", {}).get("sources", []))}
        mounts = [m for m in spec["autoscalerOptions"].get("volumeMounts", []) if m["mountPath"] == TOKEN_PATH]
        assert len(mounts) == 1 and mounts[0]["name"] in token_volumes and mounts[0]["readOnly"] is True, where
        for group, template in pod_templates(spec).items():
            for container in containers(template):
                mounted = {m["name"] for m in container.get("volumeMounts", [])}
                assert not mounted & token_volumes, f"{where} {group} {container['name']} mounts the API token"


def test_ray_ports_are_pinned_the_same_on_every_node() -> None:
    config = load_one(LAUNCHER)
    aws_head = ray_start_flags(" ".join(config["head_start_ray_commands"]))
    aws_worker = ray_start_flags(" ".join(config["worker_start_ray_commands"]))
    for where, spec in ray_cluster_specs():
        head = spec["headGroupSpec"]["rayStartParams"]
        for group in spec["workerGroupSpecs"]:
            worker = group["rayStartParams"]
            for flag in NODE_PORT_FLAGS:
                assert flag in worker and worker[flag] == head.get(flag), f"{where} {group['groupName']}: {flag}"
                assert aws_worker.get(flag) == aws_head.get(flag) == worker[flag], f"ray-aws-gpu.yaml: --{flag}"
        for flag in HEAD_ONLY_PORT_FLAGS:
            assert head.get(flag) and aws_head.get(flag) == head[flag], f"{where} head: {flag} is not pinned"
        everything = {int(head[f]) for f in HEAD_ONLY_PORT_FLAGS + NODE_PORT_FLAGS}
        assert len(everything) == len(HEAD_ONLY_PORT_FLAGS + NODE_PORT_FLAGS), f"{where}: two flags share a port"


def test_ray_pods_admit_only_the_clusters_pods_on_the_pinned_ports() -> None:
    policies = {o["metadata"]["name"]: o["spec"] for o in k8s_objects() if o["kind"] == "NetworkPolicy"}
    for where, spec in ray_cluster_specs():
        head_flags = spec["headGroupSpec"]["rayStartParams"]
        node_ports = port_set(head_flags, NODE_PORT_FLAGS) - port_set(head_flags, CLOSED_PORT_FLAGS)
        head_ports = node_ports | port_set(head_flags, ("port", "dashboard-port"))
        closed = port_set(head_flags, CLOSED_PORT_FLAGS)
        for group, template in pod_templates(spec).items():
            labels = template["metadata"]["labels"]
            node_type = "head" if group == "head" else "worker"  # KubeRay's ray.io/node-type label
            selecting = [n for n, p in policies.items()
                         if p["podSelector"]["matchLabels"] == {**RAY_LABEL, "ray.io/node-type": node_type}]
            assert RAY_LABEL.items() <= labels.items() and len(selecting) == 1, f"{where} {group}: {selecting}"
            policy = policies[selecting[0]]
            assert policy["policyTypes"] == ["Ingress"]
            from_cluster = set()
            for rule in policy["ingress"]:
                assert rule.get("from") and rule.get("ports"), f"{selecting[0]}: a rule open to everyone or every port"
                ports = policy_rule_ports(rule)
                assert not ports & closed, f"{selecting[0]} opens {sorted(ports & closed)}"
                for peer in rule["from"]:
                    assert "ipBlock" not in peer, f"{selecting[0]}: ipBlock admits addresses outside the cluster"
                    selector = peer.get("podSelector", {}).get("matchLabels")
                    assert selector, f"{selecting[0]}: a peer without a pod label selector"
                    if selector == RAY_LABEL and "namespaceSelector" not in peer:
                        from_cluster |= ports
                    else:  # the RayJob submitter and the KubeRay operator: the job API only
                        assert ports == {int(head_flags["dashboard-port"])} and node_type == "head", (selecting, peer)
            expected = head_ports if node_type == "head" else node_ports
            assert from_cluster == expected, f"{where} {group}: {sorted(from_cluster ^ expected)} differ"
    # The job API's other clients are pods this project makes, or the operator in its own namespace.
    submitter_labels = k8s_object("RayJob", "tuner-widths")["spec"]["submitterPodTemplate"]["metadata"]["labels"]
    head_peers = [peer for rule in policies["tuner-ray-head"]["ingress"] for peer in rule["from"]]
    others = [p for p in head_peers if p["podSelector"]["matchLabels"] != RAY_LABEL]
    assert any(p["podSelector"]["matchLabels"].items() <= submitter_labels.items() for p in others)
    for peer in others:
        namespace = peer.get("namespaceSelector", {}).get("matchLabels", {})
        assert namespace in ({}, {"kubernetes.io/metadata.name": "kuberay-system"}), peer


def test_mlflow_is_reachable_from_the_ray_head_only() -> None:
    policy = k8s_object("NetworkPolicy", "mlflow")["spec"]
    peers = [peer for rule in policy["ingress"] for peer in rule["from"]]
    assert peers and all(p["podSelector"]["matchLabels"] == {**RAY_LABEL, "ray.io/node-type": "head"} for p in peers)
    assert all("namespaceSelector" not in p and "ipBlock" not in p for p in peers)
    for where, spec in ray_cluster_specs():
        for group, template in pod_templates(spec).items():
            names = set(env_of(template["spec"]["containers"][0]))
            if group == "head":
                assert {"MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_PASSWORD"} <= names, f"{where}: the driver's login"
            else:
                assert not {n for n in names if n.startswith("MLFLOW_")}, f"{where} {group}: workers get no MLflow"


def test_security_groups_admit_ssh_from_you_and_ray_ports_from_the_cluster_only() -> None:
    config = load_one(LAUNCHER)
    types = config["available_node_types"]
    (head_sg,) = types[config["head_node_type"]]["node_config"]["SecurityGroupIds"]
    (worker_sg,) = types["gpu_worker"]["node_config"]["SecurityGroupIds"]
    assert head_sg != worker_sg
    head_flags = ray_start_flags(" ".join(config["head_start_ray_commands"]))
    node_ports = port_set(head_flags, NODE_PORT_FLAGS) - port_set(head_flags, CLOSED_PORT_FLAGS)
    expected = {
        "head": {22: {"you"}, **{p: {worker_sg} for p in node_ports | port_set(head_flags, ("port",))}},
        "worker": {22: {head_sg}, **{p: {head_sg, worker_sg} for p in node_ports}},
    }
    for name, wanted in expected.items():
        opened: dict[int, set[str]] = {}
        for permission in json.loads((SECURITY_GROUPS / f"{name}.json").read_text()):
            assert not permission.get("Ipv6Ranges") and not permission.get("PrefixListIds"), permission
            sources = {pair["GroupId"] for pair in permission.get("UserIdGroupPairs", [])}
            for cidr in (r["CidrIp"] for r in permission.get("IpRanges", [])):
                assert (cidr == "REPLACE_WITH_ADMIN_CIDR" or cidr.endswith("/32")) and permission["FromPort"] == 22, (
                    f"security-groups/{name}.json admits {cidr} on {permission['FromPort']}: only your address, SSH"
                )
                sources.add("you")
            for port in security_group_ports(permission):
                opened.setdefault(port, set()).update(sources)
        wrong = sorted(p for p in opened.keys() | wanted.keys() if opened.get(p) != wanted.get(p))
        assert not wrong, (f"security-groups/{name}.json: ports {wrong[0]}..{wrong[-1]} ({len(wrong)}) admit"
                           f" {opened.get(wrong[0])}, expected {wanted.get(wrong[0])}")


def test_launcher_keeps_mlflow_on_the_heads_loopback() -> None:
    config = load_one(LAUNCHER)
    assert "GatewayPorts" not in LAUNCHER.read_text(), "no sshd setting that lets a tunnel bind beyond loopback"
    text = re.sub(r"\\\n\s*", " ", README.read_text())
    path_a = text.partition("## Path A")[2].partition("## Path B")[0]
    tunnels = re.findall(r"ssh [^\n]*?-R (\S+)", path_a)
    assert tunnels and all(t.startswith("127.0.0.1:") for t in tunnels), f"Path A tunnels MLflow to {tunnels}"
    uris = re.findall(r"--mlflow-uri (\S+)", path_a)
    assert uris and all(urlsplit(u.strip("'\"")).hostname == "127.0.0.1" for u in uris), uris
    assert all(str(p).startswith("127.0.0.1:") for svc in load_one(COMPOSE)["services"].values()
               for p in svc.get("ports", []))
    for rule in json.loads((SECURITY_GROUPS / "head.json").read_text()):
        assert not security_group_ports(rule) & {5000, 8265}, "MLflow and the dashboard are reached by SSH tunnel"
    assert "--dashboard-host=127.0.0.1" in " ".join(config["head_start_ray_commands"])


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
    for path in yaml_paths() + json_paths():
        if path.is_relative_to(CLUSTER):
            for token in set(re.findall(PLACEHOLDER, path.read_text())):
                assert token in table, f"{path.relative_to(ROOT)}: {token} is not in cluster/README.md's table"
                assert path in table[token], f"cluster/README.md does not list {path.relative_to(ROOT)} for {token}"


def test_the_readme_commands_fill_every_placeholder_in_every_file_it_is_in() -> None:
    filled = readme_sed_substitutions()
    for token, files in readme_placeholder_table().items():
        missing = sorted(str(path.relative_to(ROOT)) for path in files - filled.get(token, set()))
        assert not missing, f"no `sed -i` in cluster/README.md replaces {token} in {missing}"


def test_no_deployed_process_sends_usage_telemetry() -> None:
    """Ray's head reports usage and MLflow 3 phones home unless told not to; the tuner image (every Ray
    node) and both MLflow server deployments turn them off (tuner/__init__.py does it for tuner's own
    processes; test_tracking checks that)."""
    image_env = {}
    for instruction, rest in dockerfile_instructions():
        if instruction == "ENV":
            image_env.update(re.findall(r"(\w+)=(\S+)", rest))
    assert image_env.get("RAY_USAGE_STATS_ENABLED") == "0", "docker/Dockerfile: ENV RAY_USAGE_STATS_ENABLED=0"
    assert image_env.get("MLFLOW_DISABLE_TELEMETRY") == "true", "docker/Dockerfile: ENV MLFLOW_DISABLE_TELEMETRY=true"
    server = env_of(k8s_object("Deployment", "mlflow")["spec"]["template"]["spec"]["containers"][0])
    assert server.get("MLFLOW_DISABLE_TELEMETRY", {}).get("value") == "true", "cluster/mlflow/mlflow.yaml"
    compose = load_one(COMPOSE)["services"]["mlflow"]["environment"]
    assert str(compose.get("MLFLOW_DISABLE_TELEMETRY")).lower() == "true", "docker/docker-compose.yml"
