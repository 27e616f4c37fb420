"""tarmap --k8s-job: the printed Indexed Job, validated offline with the
kubernetes client's models (no API server here: this is the client's
validation, not the server's), and its container command run locally for
every JOB_COMPLETION_INDEX, two at a time, one index twice at once."""

from __future__ import annotations

import concurrent.futures
import json
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
    assert rules[1].on_pod_conditions[0].status == "True"  # required by Kubernetes 1.29-1.34
    pod = spec.template.spec
    assert pod.restart_policy == "Never"
    (container,) = pod.containers
    assert container.image == "registry.example/tarproc:1"
    assert container.args[0] == "tarmap"
    assert container.args[container.args.index("--index") + 1] == "env"
    assert container.args[container.args.index("--timeout") + 1] == "600"
    assert "--k8s-job" not in container.args and "--image" not in container.args
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
    command = container["args"]

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


# --- strict OpenAPI validation (kubernetes-validate ships the schemas: offline) ---

#: the oldest Kubernetes the manifests support (README, tarproc/jobs/k8s.py)
OLDEST = (1, 30)


def _versions() -> list[str]:
    pytest.importorskip("kubernetes_validate", reason="kubernetes-validate (test extra) is not installed")
    from kubernetes_validate.utils import all_versions

    found = sorted({tuple(map(int, v.split(".")[:2])) for v in all_versions()})
    return [f"{a}.{b}.0" for a, b in found if (a, b) >= OLDEST]


def _strictly_valid(documents: list[dict]) -> None:
    import kubernetes_validate

    versions = _versions()
    assert len(versions) >= 2 and versions[0] == "1.30.0", versions
    for version in versions:
        for doc in documents:
            kubernetes_validate.validate(doc, version, strict=True)  # raises ValidationError


S3 = ["s3://bucket/in-{00..03}.tar"]
#: every option that changes a manifest, and none
MANIFEST_OPTIONS = {
    "bare": [],
    "every": ["--parallelism", "2", "--backoff-limit-per-index", "0", "--cpu", "500m", "--memory", "4Gi",
              "--env", "AWS_REGION=eu-west-1", "--env", "HOME", "--env-from-secret", "s3-credentials",
              "--env-from-secret", "gcs", "--timeout", "600", "--retries", "0", "--backoff", "0.5",
              "--records", "s3://bucket/records", "--storage-option", "anon=false"],
}


def _documents(stdout: bytes) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(stdout) if doc is not None]


@pytest.mark.parametrize("options", MANIFEST_OPTIONS, ids=str)
def test_tarmap_manifest_is_strictly_valid_from_oldest_to_newest_kubernetes(options):
    result = run(["tarmap", *S3, "-o", "s3://bucket/out/{stem}.tar", "-c", PIPELINE, "--k8s-job", "ppm",
                  "--image", "registry.example/tarproc:1", *MANIFEST_OPTIONS[options]])
    assert result.returncode == 0, result.stderr
    docs = _documents(result.stdout)
    assert len(docs) == 1
    _strictly_valid(docs)


@pytest.mark.parametrize("options", MANIFEST_OPTIONS, ids=str)
def test_tarshuffle_jobs_are_strictly_valid_from_oldest_to_newest_kubernetes(options):
    extra = ["--no-shuffle", "--rekey", "{shard}/{key}", "--strict", "--seed", "7", "--buffer-size", "8M",
             "--staging", "s3://bucket/staging"] if options == "every" else []
    result = run(["tarshuffle", *S3, "--shards", "3", "-o", "s3://bucket/out/train-{shard}.tar", "--k8s-job", "shuf",
                  "--image", "registry.example/tarproc:1", *MANIFEST_OPTIONS[options], *extra])
    assert result.returncode == 0, result.stderr
    docs = _documents(result.stdout)
    assert [d["metadata"]["name"] for d in docs] == ["shuf-map", "shuf-reduce"]
    _strictly_valid(docs)


def test_strict_validation_catches_a_misspelled_field_and_the_old_disruption_rule():
    import kubernetes_validate

    result = run(["tarmap", *S3, "-o", "s3://bucket/out/{stem}.tar", "-c", "cat", "--k8s-job", "j", "--image", "i"])
    (doc,) = _documents(result.stdout)
    misspelled = yaml.safe_load(yaml.safe_dump(doc))
    misspelled["spec"]["backofLimitPerIndex"] = misspelled["spec"].pop("backoffLimitPerIndex")
    with pytest.raises(kubernetes_validate.ValidationError, match="backofLimitPerIndex"):
        kubernetes_validate.validate(misspelled, _versions()[-1], strict=True)
    # the rule as it was (no status): rejected by 1.30 (and 1.29-1.34, kubernetes/kubernetes#131512)
    old = yaml.safe_load(yaml.safe_dump(doc))
    del old["spec"]["podFailurePolicy"]["rules"][1]["onPodConditions"][0]["status"]
    with pytest.raises(kubernetes_validate.ValidationError, match="'status' is a required property"):
        kubernetes_validate.validate(old, "1.30.0", strict=True)


def _kubectl(*args: str, stdin: bytes) -> subprocess.CompletedProcess:
    import shutil

    if shutil.which("kubectl") is None:
        pytest.skip("kubectl is not installed (Debian kubernetes-client; .ci/debian-packages installs it as root)")
    # no cluster: an empty kubeconfig, so nothing is reached but 127.0.0.1:8080, which refuses
    return subprocess.run(["kubectl", *args], input=stdin, capture_output=True, timeout=60,
                          env={**tool_env(), "KUBECONFIG": "/dev/null"})


def test_kubectl_reads_back_every_manifest_offline():
    """kubectl parses the printed YAML into the same objects (``kubectl
    label --local``: no API server; ``create --dry-run=client`` needs one
    for discovery, see the next test)."""
    for argv in (["tarmap", *S3, "-o", "s3://bucket/out/{stem}.tar", "-c", "cat", "--k8s-job", "j", "--image", "i",
                  *MANIFEST_OPTIONS["every"]],
                 ["tarshuffle", *S3, "--shards", "2", "-o", "s3://b/o/{shard}.tar", "--k8s-job", "s", "--image", "i"]):
        printed = run(argv)
        assert printed.returncode == 0, printed.stderr
        # -o json: one object after another (its -o yaml prints them without '---' between)
        back = _kubectl("label", "--local", "-f", "-", "-o", "json", "tarproc-check=1", stdin=printed.stdout)
        assert back.returncode == 0, back.stderr
        text, items, at = back.stdout.decode(), [], 0
        decoder = json.JSONDecoder()
        while text[at:].strip():
            item, at = decoder.raw_decode(text, at + len(text[at:]) - len(text[at:].lstrip()))
            items.append(item)
        for item in items:
            del item["metadata"]["labels"]["tarproc-check"]
        by_name = sorted(items, key=lambda d: d["metadata"]["name"])  # a List's order is kubectl's
        assert by_name == sorted(_documents(printed.stdout), key=lambda d: d["metadata"]["name"])


def test_kubectl_create_dry_run_round_trip():
    printed = run(["tarmap", *S3, "-o", "s3://bucket/out/{stem}.tar", "-c", "cat", "--k8s-job", "j", "--image", "i"])
    back = _kubectl("create", "--dry-run=client", "-o", "yaml", "-f", "-", stdin=printed.stdout)
    if back.returncode != 0 and (b"connection refused" in back.stderr or b"unable to recognize" in back.stderr):
        pytest.skip("kubectl create --dry-run=client needs an API server (it maps kinds through discovery);"
                    " none can be had here")
    assert back.returncode == 0, back.stderr
    assert _documents(back.stdout) == _documents(printed.stdout)
