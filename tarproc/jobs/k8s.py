"""A Kubernetes Indexed Job that runs one shard task per index.

Follows the Kubernetes Job API ``batch/v1``, Kubernetes >= 1.30
(``backoffLimitPerIndex``, ``podFailurePolicy`` action ``FailIndex``; the
test suite validates every manifest in strict mode against the OpenAPI
schemas of 1.30 to the newest ``kubernetes-validate`` ships):
``completionMode: Indexed`` with ``completions`` = the number of tasks, so
that each pod gets ``JOB_COMPLETION_INDEX`` and runs ``tarmap ... --index
env``; ``backoffLimitPerIndex`` retries a failed index on its own; a
``podFailurePolicy`` fails an index at once when its container exits 3 (bad
input data: retrying cannot help) and does not count pods disrupted by the
cluster (preemption, node drain) against the index. Pods restart never
(``restartPolicy: Never``, which both fields require). A pod condition
rule names the condition's ``status`` (``"True"``): Kubernetes 1.29 to
1.34 require it (kubernetes/kubernetes#131512).

Nothing about a cluster is needed to build the manifest.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence

from tarproc.errors import ExitStatus, UsageError

#: the container's name when the command's program gives none (see :func:`job_manifest`)
CONTAINER = "tarmap"
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def job_manifest(
    name: str,
    image: str,
    command: Sequence[str],
    completions: int,
    *,
    parallelism: int | None = None,
    backoff_limit_per_index: int = 2,
    cpu: str | None = None,
    memory: str | None = None,
    env: Sequence[str] = (),
    env_from_secrets: Sequence[str] = (),
    environ: Mapping[str, str] | None = None,
) -> dict:
    """The Job manifest as a dict (``batch/v1`` ``Job``).

    :param name: the Job's name (a DNS-1123 label, at most 63 characters)
    :param command: the argv run once per index, as the container's
        ``args`` (not ``command``, which would replace the image's entrypoint:
        the project's image runs tini as PID 1 to reap what sample commands
        leave; an image without an entrypoint runs ``args`` itself);
        its program's name (``tarmap``, ``tarshuffle``) names the container
        and the ``app.kubernetes.io/name`` label
    :param completions: number of tasks (indexes ``0 .. completions-1``)
    :param parallelism: pods at once (default: all)
    :param cpu, memory: the container's resource requests and limits
        (Kubernetes quantities: ``2``, ``500m``; ``4Gi``)
    :param env: ``NAME`` (its value taken from ``environ``) or ``NAME=VALUE``
        variables for the container (object-store endpoints, regions)
    :param env_from_secrets: Secrets whose keys become environment
        variables (``envFrom.secretRef``: credentials such as
        ``AWS_ACCESS_KEY_ID``)
    :raises UsageError: a bad name, count or variable
    """
    if not _NAME.match(name) or len(name) > 63:
        raise UsageError(f"Job name {name!r}: a Job name is lowercase letters, digits and '-' (at most 63)",
                         topic="job_name")
    if completions < 1:
        raise UsageError(f"a Job of {completions} tasks: there is nothing to run")
    environ = os.environ if environ is None else environ
    variables = []
    for item in env:
        key, sep, value = item.partition("=")
        if not sep:
            if key not in environ:
                raise UsageError(f"variable {key} for the pods: not set in this environment (or give NAME=VALUE)",
                                 topic="job_env")
            value = environ[key]
        variables.append({"name": key, "value": value})
    program = os.path.basename(command[0]) if command else ""
    program = program if _NAME.match(program) else CONTAINER
    container: dict = {"name": program, "image": image, "args": list(command)}
    if variables:
        container["env"] = variables
    if env_from_secrets:
        container["envFrom"] = [{"secretRef": {"name": secret}} for secret in env_from_secrets]
    resources = {k: v for k, v in (("cpu", cpu), ("memory", memory)) if v}
    if resources:
        container["resources"] = {"requests": dict(resources), "limits": dict(resources)}
    spec: dict = {
        "completionMode": "Indexed",
        "completions": completions,
        "parallelism": min(parallelism or completions, completions),
        "backoffLimitPerIndex": backoff_limit_per_index,
        "podFailurePolicy": {
            "rules": [
                {"action": "FailIndex",
                 "onExitCodes": {"containerName": program, "operator": "In", "values": [int(ExitStatus.DATA)]}},
                {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
            ]
        },
        "template": {
            "metadata": {"labels": {"app.kubernetes.io/name": program, "tarmap/job": name}},
            "spec": {"restartPolicy": "Never", "containers": [container]},
        },
    }
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "labels": {"app.kubernetes.io/name": program}},
        "spec": spec,
    }


def to_yaml(manifest: Mapping) -> str:
    """The manifest as YAML (PyYAML, installed with the kubernetes client
    or dask); JSON, which is valid YAML 1.2, when PyYAML is absent."""
    try:
        import yaml
    except ImportError:
        return json.dumps(manifest, indent=2) + "\n"
    return yaml.safe_dump(dict(manifest), sort_keys=False, default_flow_style=False, width=1 << 20)
