"""Deployment files: docker-compose.yml, the Dockerfile, Kubernetes manifests, the Slurm script.

Docker, Kubernetes and Slurm do not run here, so these tests read the files as their engines
would (YAML, shell words) and check their structure, and that every `hpsearch ...` command line
in them is one the real CLI parser accepts.
"""

from __future__ import annotations

import re
import shlex
import subprocess
from typing import Any

import pytest
import yaml

from hpsearch.search.cli import build_parser

from .conftest import ROOT

COMPOSE = ROOT / "docker-compose.yml"
K8S = ROOT / "deploy" / "k8s"
SBATCH = ROOT / "deploy" / "slurm" / "hpsearch-workers.sbatch"
# A URL with credentials in it: scheme://user:password@host
INLINE_CREDENTIALS = re.compile(r"://[^\s/:@]+:[^\s/@]+@")


def _expand(word: str) -> str:
    """Shell and compose variables replaced as a user's environment would: defaults, else '2'."""
    word = re.sub(r"\$\{[A-Za-z_]+:-([^}]*)\}", r"\1", word)  # ${VAR:-default}
    word = re.sub(r"\$\(\([^)]*\)\)", "2", word)  # $((arithmetic))
    return re.sub(r"\$\{?[A-Za-z_0-9]+\}?", "2", word)  # $VAR, ${VAR}, $1


def parse_hpsearch(words: list[str]) -> Any:
    """Parse one `hpsearch ...` command line with the real CLI parser (exits on a bad one)."""
    assert words[0] == "hpsearch", words
    try:
        return build_parser().parse_args([_expand(w) for w in words[1:]])
    except SystemExit:
        pytest.fail(f"`{shlex.join(words)}` is not a valid hpsearch command line")


def _compose() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return document


def test_compose_services_and_their_order() -> None:
    services = _compose()["services"]
    assert {"db", "create", "dashboard", "worker"} <= set(services)
    db = services["db"]
    assert db["image"].startswith("postgres:")
    assert "pg_isready" in " ".join(db["healthcheck"]["test"])
    volume = db["volumes"][0].split(":")
    assert volume[1] == "/var/lib/postgresql/data" and volume[0] in _compose()["volumes"]
    assert services["create"]["depends_on"] == {"db": {"condition": "service_healthy"}}
    assert services["create"]["restart"] == "no"  # one shot
    for name in ("dashboard", "worker", "proxy"):
        depends = services[name]["depends_on"]
        assert depends["db"] == {"condition": "service_healthy"}, name
        assert depends["create"] == {"condition": "service_completed_successfully"}, name


def test_compose_workers_reserve_gpus_and_scale() -> None:
    worker = _compose()["services"]["worker"]
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    # `--scale worker=N` needs containers without a fixed name or host port.
    assert "container_name" not in worker and "ports" not in worker
    assert worker["build"]["target"] == "gpu"


def test_compose_credentials_come_from_the_env_file() -> None:
    data = yaml.safe_dump(_compose())  # what compose reads: comments dropped
    assert not INLINE_CREDENTIALS.search(data)
    assert "PASSWORD" not in data and "HPSEARCH_STORAGE" not in data
    for name, service in _compose()["services"].items():
        assert "environment" not in service, name
        assert service["env_file"] == [".env"], name
    example = (ROOT / "deploy" / "env.example").read_text()
    assert "POSTGRES_PASSWORD=CHANGE_ME" in example and "@db:5432/" in example
    assert ".env" in (ROOT / ".gitignore").read_text().split()
    assert ".env" in (ROOT / ".dockerignore").read_text().split()


def test_compose_commands_are_real_hpsearch_commands() -> None:
    services = _compose()["services"]
    commands = {
        name: parse_hpsearch(s["command"])
        for name, s in services.items()
        if s["command"][0] == "hpsearch"
    }
    assert {name: args.command for name, args in commands.items()} == {
        "create": "create",
        "dashboard": "dashboard",
        "worker": "worker",
        "proxy": "proxy",
    }
    assert commands["dashboard"].host == "0.0.0.0" and commands["proxy"].host == "0.0.0.0"
    assert commands["create"].study_file.startswith("/app/studies/")
    assert commands["worker"].gpus == "all"  # the GPU the container reserved
    assert services["create"]["volumes"] == ["./studies:/app/studies:ro"]


def test_dockerfile_has_a_cuda_and_a_cpu_target() -> None:
    text = (ROOT / "Dockerfile").read_text()
    stages = dict(
        (m.group(2), m.group(1)) for m in re.finditer(r"^FROM (\S+) AS (\w+)", text, re.M)
    )
    assert set(stages) == {"cpu", "gpu"}
    assert "nvidia/cuda:" in re.search(r"ARG CUDA_IMAGE=(\S+)", text).group(1)  # type: ignore[union-attr]
    assert stages["gpu"] == "${CUDA_IMAGE}" and stages["cpu"].startswith("python:3.11")
    assert "download.pytorch.org/whl/cpu" in text  # the CPU image does not pull CUDA torch
    assert len(re.findall(r"pip install \.(?:\s|$)", text)) == 2


def _manifests() -> list[dict[str, Any]]:
    documents: list[dict[str, Any]] = []
    for path in sorted(K8S.glob("*.yaml")):
        documents.extend(d for d in yaml.safe_load_all(path.read_text()) if d)
    return documents


def _containers(document: dict[str, Any]) -> list[dict[str, Any]]:
    containers: list[dict[str, Any]] = document["spec"]["template"]["spec"]["containers"]
    return containers


def test_k8s_manifests() -> None:
    documents = _manifests()
    by_name = {(d["kind"], d["metadata"]["name"]): d for d in documents}
    create = by_name[("Job", "hpsearch-create")]
    workers = by_name[("Job", "hpsearch-workers")]
    deployment = by_name[("Deployment", "hpsearch-dashboard")]
    service = by_name[("Service", "hpsearch-dashboard")]

    assert workers["spec"]["completionMode"] == "Indexed"
    assert workers["spec"]["parallelism"] == workers["spec"]["completions"] >= 1
    (worker,) = _containers(workers)
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert parse_hpsearch(worker["command"]).gpus == "all"  # the pod's GPU

    (creator,) = _containers(create)
    args = parse_hpsearch(creator["command"])
    assert args.command == "create"
    mounts = {m["mountPath"] for m in creator["volumeMounts"]}
    assert any(args.study_file.startswith(m + "/") for m in mounts)

    (dashboard,) = _containers(deployment)
    assert parse_hpsearch(dashboard["command"]).command == "dashboard"
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert service["spec"]["ports"][0]["targetPort"] in {p["name"] for p in dashboard["ports"]} | {
        p["containerPort"] for p in dashboard["ports"]
    }


def test_k8s_credentials_come_from_a_secret() -> None:
    for document in _manifests():
        assert not INLINE_CREDENTIALS.search(yaml.safe_dump(document)), document["metadata"]
        if document["kind"] == "Service":
            continue
        for container in _containers(document):
            env = {e["name"]: e for e in container["env"]}
            source = env["HPSEARCH_STORAGE"]
            assert "value" not in source
            assert source["valueFrom"]["secretKeyRef"]["key"] == "storage"


def _shell_commands(text: str) -> list[list[str]]:
    """The script's command lines (continuations joined, comments dropped), as shell words."""
    joined = re.sub(r"\\\n\s*", " ", text)
    lines = [line.strip() for line in joined.splitlines()]
    return [shlex.split(line) for line in lines if line and not line.startswith("#")]


def test_slurm_script_starts_one_worker_command_per_node() -> None:
    text = SBATCH.read_text()
    subprocess.run(["bash", "-n", str(SBATCH)], check=True)  # the shell accepts it
    directives = dict(
        re.match(r"#SBATCH --([\w-]+)=?(\S*)", line).groups()  # type: ignore[union-attr]
        for line in text.splitlines()
        if line.startswith("#SBATCH")
    )
    assert directives["ntasks-per-node"] == "1"
    assert "gpus-per-node" in directives
    hpsearch_lines = [c for c in _shell_commands(text) if "hpsearch" in c]
    srun = [c for c in hpsearch_lines if c[0] == "srun"]
    assert len(srun) == 1 and "--ntasks-per-node=1" in srun[0]
    worker = parse_hpsearch(srun[0][srun[0].index("hpsearch") :])
    assert worker.command == "worker" and worker.gpus == "all"  # one process per GPU
    checks = [parse_hpsearch(c) for c in hpsearch_lines if c[0] == "hpsearch"]
    assert [(a.command, a.db_command) for a in checks] == [("db", "check")]
    assert not INLINE_CREDENTIALS.search(text)
