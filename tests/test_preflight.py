"""The node smoke test's folder checks: a built-in trial writes its checkpoint into
``[resources] artifacts`` after every epoch and torchvision downloads into ``data_dir``; a node
that cannot write them refuses to start, in one line, instead of failing every trial.

Tests run as root in CI, where permission bits stop nobody: the refusals are provoked with paths
that nobody can write (a regular file where the folder should be, a folder under /proc), and the
container case (uid 1000 under a root-owned /app) with a real unprivileged process when root.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path
from typing import Any

import optuna
import pytest

from hpsearch.errors import HpsearchError
from hpsearch.search import StudySpec, parse_spec
from hpsearch.search.runtime._preflight import check_node

from .conftest import hpsearch_command

SPACE = {"lr": {"type": "float", "low": 1e-3, "high": 1e-1}}


def _spec(
    artifacts: Path | str,
    *,
    objective: str = "digits-mlp",
    training: dict[str, Any] | None = None,
) -> StudySpec:
    raw = {
        "study": {"name": "preflight", "objective": objective},
        "budget": {"n_trials": 1},
        "space": SPACE,
        "training": training or {},
        "resources": {"artifacts": str(artifacts)},
    }
    return parse_spec(raw, source="study.toml", base_dir=os.getcwd())


def _refusal(spec: StudySpec) -> str:
    with pytest.raises(HpsearchError) as caught:
        check_node(spec, [])
    message = str(caught.value)
    assert "\n" not in message, message
    assert message.startswith("This node cannot run study 'preflight': "), message
    return message


def _file_in_the_way(tmp_path: Path) -> Path:
    path = tmp_path / "not-a-folder"
    path.write_text("a regular file where the folder should be\n")
    return path


def test_a_missing_artifacts_folder_is_created_and_left_clean(tmp_path: Path) -> None:
    artifacts = tmp_path / "shared" / "hpsearch-artifacts"
    check_node(_spec(artifacts), [])
    assert artifacts.is_dir()
    assert list(artifacts.iterdir()) == []  # the write probe is removed


@pytest.mark.parametrize(
    "where",
    ["file", "below a file", "/proc"],
    ids=["file-in-the-way", "below-a-file", "proc"],
)
def test_an_artifacts_folder_nobody_can_write_is_refused(tmp_path: Path, where: str) -> None:
    if where == "file":
        artifacts = _file_in_the_way(tmp_path)
        why = "a file is in the way"
    elif where == "below a file":
        artifacts = _file_in_the_way(tmp_path) / "hpsearch-artifacts"
        why = "Not a directory"
    else:
        artifacts = Path("/proc/self/hpsearch-artifacts")  # even root cannot create it
        why = "No such file or directory"
    message = _refusal(_spec(artifacts))
    assert f"the artifacts folder {artifacts} " in message
    assert f"({why})" in message
    for fix in ("mount a writable volume there", "chown it to uid", "set [resources] artifacts"):
        assert fix in message, message


def test_a_read_only_artifacts_folder_is_refused(tmp_path: Path) -> None:
    """The image's case: uid 1000 in a root-owned working directory (mode 0o555 here)."""
    if os.geteuid() != 0:
        parent = tmp_path / "app"
        parent.mkdir()
        parent.chmod(0o555)
        try:
            message = _refusal(_spec(parent / "hpsearch-artifacts"))
        finally:
            parent.chmod(0o755)
        assert "(Permission denied)" in message and f"uid {os.geteuid()}" in message
        return
    # Root ignores permission bits: check as uid 1000 in a folder only root may write, as in
    # the container. The child imports what it needs as root (the interpreter may live in a
    # folder only root can read), then drops to uid 1000 and runs the check from that folder.
    app = Path(tempfile.mkdtemp(prefix="hpsearch-app-"))
    try:
        study = app / "study.toml"
        study.write_text(
            textwrap.dedent(
                """
                [study]
                name = "preflight"
                objective = "digits-mlp"
                [budget]
                n_trials = 1
                [space.lr]
                type = "float"
                low = 0.001
                high = 0.1
                """
            )
        )
        app.chmod(0o555)
        script = textwrap.dedent(
            """
            import os
            import sys
            from hpsearch.errors import HpsearchError
            from hpsearch.objectives import load_objective
            from hpsearch.search import load_spec_file
            from hpsearch.search.runtime._preflight import check_node
            spec = load_spec_file(sys.argv[1])
            load_objective(spec.objective)
            os.setgroups([])
            os.setgid(1000)
            os.setuid(1000)
            os.chdir(sys.argv[2])  # the default artifacts folder is relative to it
            try:
                check_node(spec, [])
            except HpsearchError as err:
                print(err)
                sys.exit(3)
            """
        )
        result = subprocess.run(
            [sys.executable, "-c", script, str(study), str(app)],
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        app.chmod(0o755)
        for child in app.iterdir():
            child.unlink()
        app.rmdir()
    assert result.returncode == 3, result.stderr
    (message,) = result.stdout.splitlines()
    assert message.startswith("This node cannot run study 'preflight': "), message
    assert f"the artifacts folder {app / 'hpsearch-artifacts'} " in message
    assert "not writable by uid 1000 (Permission denied)" in message
    assert "chown it to uid 1000" in message


def test_a_download_folder_nobody_can_write_is_refused(tmp_path: Path) -> None:
    data_dir = _file_in_the_way(tmp_path)
    spec = _spec(
        tmp_path / "artifacts",
        objective="mnist-mlp",
        training={"download": True, "data_dir": str(data_dir)},
    )
    message = _refusal(spec)  # before any download is tried
    assert f"the data folder {data_dir} ([training] data_dir, download = true)" in message
    assert "(a file is in the way)" in message
    for fix in ("mount a writable volume", "set [training] data_dir", "set download = false"):
        assert fix in message, message


def test_the_data_folder_is_not_checked_when_nothing_is_downloaded(tmp_path: Path) -> None:
    """download = false reads files that are there (checked as before); digits ships with
    scikit-learn, so download = true downloads nothing for it."""
    data_dir = _file_in_the_way(tmp_path)
    check_node(
        _spec(tmp_path / "a", training={"download": True, "data_dir": str(data_dir)}),
        [],
    )
    with pytest.raises(HpsearchError) as caught:
        check_node(_spec(tmp_path / "b", objective="mnist-mlp", training={"data_dir": "x"}), [])
    assert "MNIST not found under" in str(caught.value)  # the missing files, not the folder


def test_a_user_objective_s_artifacts_folder_is_neither_checked_nor_created(
    tmp_path: Path, write_study: Any
) -> None:
    """A user objective writes a checkpoint only if it chooses to."""
    from hpsearch.search import load_spec_file

    artifacts = _file_in_the_way(tmp_path) / "hpsearch-artifacts"
    study = write_study(f'[resources]\nartifacts = "{artifacts}"\n')
    check_node(load_spec_file(str(study)), [])
    assert not artifacts.exists()


def test_hpsearch_run_refuses_before_starting_workers(tmp_path: Path) -> None:
    """`hpsearch run`/`worker` run the smoke test before they spawn: one line, no trial run."""
    artifacts = _file_in_the_way(tmp_path)
    study = tmp_path / "study.toml"
    study.write_text(
        textwrap.dedent(
            f"""
            [study]
            name = "preflight"
            objective = "digits-mlp"
            [budget]
            n_trials = 2
            [resources]
            workers = 1
            artifacts = "{artifacts}"
            [space.lr]
            type = "float"
            low = 0.001
            high = 0.1
            """
        )
    )
    url = f"sqlite:///{tmp_path / 'hpsearch.db'}"
    result = subprocess.run(
        [*hpsearch_command(), "run", str(study), "--storage", url, "--gpus", "none"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("hpsearch: error:")]
    assert errors == [
        f"hpsearch: error: This node cannot run study 'preflight': the artifacts folder "
        f"{artifacts} (checkpoints, [resources] artifacts) is not writable by uid "
        f"{os.getuid()} (a file is in the way); mount a writable volume there, chown it to uid "
        f"{os.getuid()}, or set [resources] artifacts to a folder uid {os.getuid()} can write."
    ], result.stderr
    trials = optuna.load_study(study_name="preflight", storage=url).get_trials()
    assert all(t.state == optuna.trial.TrialState.WAITING for t in trials)
