"""tarmap --k8s-job: the printed Indexed Job, validated offline with the
kubernetes client's models (no API server here: this is the client's
validation, not the server's), and its container command run locally for
every JOB_COMPLETION_INDEX, two at a time, one index twice at once."""

from __future__ import annotations

import concurrent.futures
import subprocess
from pathlib import Path

import pytest

from conftest import run, tool_env
from makeshards import write_shard

kubernetes = pytest.importorskip("kubernetes", reason="the kubernetes client (test extra) is not installed")
yaml = pytest.importorskip("yaml", reason="PyYAML (installed with kubernetes) is missing")

PIPELINE = "sleep 0.2; tarproc -c 'rm sample.json' -o -"


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("k8s-in")
    return [Path(write_shard(str(root / f"in-{i:02d}.tar"), 3, seed=i)) for i in range(4)]


def manifest(shards, out: Path, *extra) -> dict:
    args = ["tarmap", str(shards[0].parent / "in-{00..03}.tar"), "-o", f"{out}/{{stem}}.tar", "-c", PIPELINE,
            "--k8s-job", "ppm-0", "--image", "registry.example/tarproc:1", "--parallelism", "2",
            "--backoff-limit-per-index", "4", "--cpu", "2", "--memory", "4Gi", "--env", "AWS_ENDPOINT_URL",
            "--env", "AWS_REGION=eu-west-1", "--env-from-secret", "s3-credentials", "--timeout", "600", *extra]
    env = tool_env()
    env["AWS_ENDPOINT_URL"] = "http://minio.example:9000"
    result = run(args, env=env)
    assert result.returncode == 0, result.stderr
    # local inputs and outputs: every pod must mount them (here, the tests' tmp dirs stand for a shared volume)
    warning = "is a local path: every pod must mount it (a shared volume), or use an object-store URL"
    assert result.stderr.decode().splitlines() == [
        f"tarmap: warning: input {str(shards[0].parent / 'in-{00..03}.tar')!r} {warning}",
        f"tarmap: warning: output {f'{out}/{{stem}}.tar'!r} {warning}"]
    return yaml.safe_load(result.stdout)


def test_object_store_paths_give_no_pod_warning():
    result = run(["tarmap", "s3://bucket/in-{00..03}.tar", "-o", "s3://bucket/out/{stem}.tar", "-c", "cat",
                  "--records", "s3://bucket/records", "--k8s-job", "j", "--image", "i"])
    assert result.returncode == 0 and result.stderr == b"", result.stderr
    assert yaml.safe_load(result.stdout)["spec"]["completions"] == 4


def test_manifest_is_a_valid_indexed_job(shards, tmp_path):
    data = manifest(shards, tmp_path / "out")
    from kubernetes.client import ApiClient, V1Job

    job = ApiClient()._ApiClient__deserialize(data, "V1Job")  # the client's own model validation
    assert isinstance(job, V1Job)
    assert job.api_version == "batch/v1" and job.kind == "Job" and job.metadata.name == "ppm-0"
    spec = job.spec
    assert spec.completion_mode == "Indexed" and spec.completions == 4 and spec.parallelism == 2
    assert spec.backoff_limit_per_index == 4
    rules = spec.pod_failure_policy.rules
    assert rules[0].action == "FailIndex"
    assert rules[0].on_exit_codes.operator == "In" and rules[0].on_exit_codes.values == [3]
    assert rules[0].on_exit_codes.container_name == "tarmap"
    assert rules[1].action == "Ignore" and rules[1].on_pod_conditions[0].type == "DisruptionTarget"
    pod = spec.template.spec
    assert pod.restart_policy == "Never"
    (container,) = pod.containers
    assert container.image == "registry.example/tarproc:1"
    assert container.command[0] == "tarmap"
    assert container.command[container.command.index("--index") + 1] == "env"
    assert container.command[container.command.index("--timeout") + 1] == "600"
    assert "--k8s-job" not in container.command and "--image" not in container.command
    assert [(e.name, e.value) for e in container.env] == [("AWS_ENDPOINT_URL", "http://minio.example:9000"),
                                                          ("AWS_REGION", "eu-west-1")]
    assert container.env_from[0].secret_ref.name == "s3-credentials"
    assert container.resources.limits == {"cpu": "2", "memory": "4Gi"} == container.resources.requests


def test_bad_job_options_are_usage_errors(shards, tmp_path):
    base = ["tarmap", str(shards[0]), "-o", f"{tmp_path}/{{stem}}.tar", "-c", "cat"]
    for extra, message in [(["--k8s-job", "Bad_Name", "--image", "x"],
                            "Job name 'Bad_Name': a Job name is lowercase letters, digits and '-' (at most 63);"
                            " given with --k8s-job"),
                           (["--k8s-job", "ok"], "needs --image"),
                           (["--k8s-job", "ok", "--image", "x", "--env", "TARMAP_NO_SUCH_VAR"],
                            "variable TARMAP_NO_SUCH_VAR for the pods: not set in this environment (or give NAME=VALUE);"
                            " given with --env")]:
        result = run(base + extra)
        assert result.returncode == 2 and message in result.stderr.decode(), result.stderr


def test_container_command_for_every_index_makes_every_output_once(shards, tmp_path):
    out = tmp_path / "out"
    data = manifest(shards, out)
    container = data["spec"]["template"]["spec"]["containers"][0]
    command = container["command"]

    def pod(index: int) -> subprocess.CompletedProcess:
        env = tool_env()
        env["JOB_COMPLETION_INDEX"] = str(index)
        return subprocess.run(command, env=env, capture_output=True, timeout=120)

    # one index twice at the same time (a pod and its replacement), then every index, two at a time
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        twice = list(pool.map(pod, [3, 3]))
        rest = list(pool.map(pod, range(data["spec"]["completions"])))
    for result in twice + rest:
        assert result.returncode == 0, result.stderr
    expected = {}
    for path in shards:
        with open(path, "rb") as handle:
            expected[path.stem] = subprocess.run(["bash", "-c", PIPELINE], stdin=handle, capture_output=True,
                                                 env=tool_env(), check=True).stdout
    assert {p.stem: p.read_bytes() for p in out.glob("*.tar")} == expected
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [f"{s}.tar" for s in expected] + [f"{s}.tar.tarmap.json" for s in expected])
