"""The README's examples, run as written: every command block is read from
README.md and run in bash (one directory per block, its commands in order,
so a command may use what an earlier one made) on generated shards with the
names the examples use. A command that needs what a test cannot have (the
network, an object store, a cluster, an X display) is skipped for the reason
:data:`SKIP` gives; every other command must exit 0.

``kubectl`` is a stub that checks the manifest it is given parses as a
Kubernetes Job (so the Kubernetes example runs as written up to the
cluster), with ``AWS_REGION`` unset, as on a machine that never exported it.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import imagemagick_dir, tool_env
from makeshards import imagenet_samples

README = Path(__file__).parent.parent / "README.md"

#: (pattern, why a command matching it is not run here)
SKIP = [
    (r"^make\b", "sets up the project itself (make demo / make test)"),
    (r"\b(gs|s3)://", "needs an object store"),
    (r"https?://", "needs the network"),
    (r"tcp://", "needs a Dask cluster"),
    (r"\bgsutil\b|\baws\b", "needs a cloud CLI and credentials"),
    (r"\bkubetpl\b", "the old way: needs kubetpl and a cluster"),
    (r"\|\s*display\b", "needs an X display"),
    (r"\bpodman\b|\bbuildah\b|\bdocker\b", "needs a container engine: tests/test_image.py runs it"),
    (r"\bsbatch\b|\bsrun\b|--slurm-submit|--slurm-array .*\|\s*bash$", "needs a Slurm controller: tests/test_slurm.py runs it"),
    (r"^dask (scheduler|worker)\b", "starts a Dask cluster: tests/test_dask_share_nothing.py runs one"),
    (r"^tarmix 'laion-\{0000\.\.0999\}",
     "needs a dataset of 1,000,000 samples: the tarmix lines after it run the same on small shards"),
]

#: (pattern, why) of commands run although a SKIP pattern matches them
RUN_ANYWAY = [
    (r"^tarmap .*--k8s-job.*\| kubectl apply -f -$",
     "tarmap --k8s-job only writes the manifest (the inputs and outputs are the pods' business): kubectl is a stub"),
]
#: (pattern, why) of commands that use what a skipped command of their block makes
AFTER_SKIPPED = [(r"jobs\.yaml|\bjob-0[01]\b", "uses the manifest of the tarshuffle --k8s-job above (skipped)")]

#: (pattern, exit status, why) of commands whose documented exit status is not 0
EXIT = [(r"^tarcheck broken-\*\.tar --repair", 3,
         "the shards are broken (bad data: exit 3); the repaired copies are written all the same")]

#: commands slower than a unit test (hundreds of tasks): run with the slow tests
SLOW = [r"^tarshuffle 'in-\{0000\.\.0147\}\.tar' --shards 300", r"^tardedup 'train-\{0000\.\.0147\}\.tar'"]

KUBECTL = """#!/usr/bin/env python3
import sys, yaml
docs = [d for d in yaml.safe_load_all(sys.stdin) if d]
assert docs and all(d["kind"] == "Job" and d["spec"]["completionMode"] == "Indexed" for d in docs), docs
print(f"kubectl stub: {len(docs)} Indexed Job(s) {[d['metadata']['name'] for d in docs]}")
"""

CROP = """#!/bin/bash
# two crops of one sample: each subdirectory holds __key__ and sample.*
for i in 1 2; do
  mkdir crop$i && cp sample.jpg crop$i/sample.jpg && echo "$(cat __key__)_crop$i" > crop$i/__key__
done
"""

RESIZE = """#!/bin/bash
cp sample.jpg sample.small.jpg
"""


def blocks() -> list[tuple[int, list[tuple[int, str]]]]:
    """``[(line, [(line, command)...])]``: the README's shell blocks
    (indented 4 spaces after a blank line, or fenced ```sh), each command with
    its continuation lines (``\\`` or a trailing ``|``) joined."""
    lines = README.read_text().splitlines()
    out = []
    i = 0
    while i < len(lines):
        line = lines[i]
        fenced = line.strip() == "```sh"
        indented = line.startswith("    ") and (i == 0 or not lines[i - 1].strip()) and not line.lstrip().startswith("-")
        if not (fenced or indented):
            i += 1
            continue
        start = i + 1
        body = []
        if fenced:
            i += 1
            while lines[i].strip() != "```":
                body.append((i + 1, lines[i]))
                i += 1
        else:
            while i < len(lines) and (lines[i].startswith("    ") or not lines[i].strip()):
                if lines[i].strip():
                    body.append((i + 1, lines[i][4:]))
                i += 1
        commands: list[tuple[int, str]] = []
        pending = ""
        first = 0
        for number, text in body:
            if not pending:
                first = number
                if text.lstrip().startswith("#"):
                    continue
            pending += text + "\n"
            stripped = re.sub(r"\s+#[^'\"]*$", "", text).rstrip()
            if stripped.endswith(("\\", "|")) or stripped.startswith(("for ", "do", "while ")) and "done" not in stripped:
                continue
            if pending.lstrip().startswith("for ") and not re.search(r"\bdone\b", pending):
                continue
            commands.append((first, pending.rstrip("\n")))
            pending = ""
        if pending:
            commands.append((first, pending.rstrip("\n")))
        if commands:
            out.append((start, commands))
        i += 1
    return out


def skip_reason(command: str) -> str | None:
    flat = command.replace("\\\n", " ").replace("\n", " ")
    if any(re.search(pattern, flat) for pattern, _ in RUN_ANYWAY):
        return None
    for pattern, why in SKIP + AFTER_SKIPPED:
        if re.search(pattern, command, re.M):
            return why
    if re.search(r"\bconvert\b", command) and imagemagick_dir() is None:
        return "needs ImageMagick's convert"
    return None


def _shard(path: Path, samples: int, size=(32, 24)) -> None:
    """An ImageNet-like shard whose keys are unique to it (the stem of
    ``path`` before them): the examples merge shards into one output."""
    from tarproc.io.sinks import open_sink

    tag = path.name.split(".")[0]
    with open_sink(str(path)) as sink:
        for sample in imagenet_samples(samples, seed=len(tag), size=size, distinct=2):
            # the image's size in the JSON, as the README's --where example reads it
            width, height = _jpeg_size(sample["jpg"])
            meta = {**json.loads(sample["json"]), "width": width, "height": height}
            sink.write({**sample, "__key__": f"{tag}_{sample['__key__']}",
                        "json": json.dumps(meta, sort_keys=True).encode()})


def _jpeg_size(data: bytes) -> tuple[int, int]:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        return image.size


def _shards(directory: Path, pattern: str, count: int, samples: int = 2, suffix: str = ".tar") -> None:
    for i in range(count):
        _shard(directory / (pattern % i + suffix), samples)


def _broken(d: Path) -> None:
    """Two repairable shards for ``tarcheck broken-*.tar --repair``: one cut
    inside its fourth sample, one whose keys are not grouped."""
    import tarfile

    data = (d / "in-0.tar").read_bytes()
    with tarfile.open(d / "in-0.tar") as tar:
        offset = [m.offset for m in tar.getmembers()][10]  # a member of the fourth sample
    (d / "broken-0.tar").write_bytes(data[:offset + 700])
    with tarfile.open(d / "broken-1.tar", "w", format=tarfile.USTAR_FORMAT) as tar:
        for name in ("s1.cls", "s2.cls", "s1.txt", "s2.txt"):
            info = tarfile.TarInfo(name)
            info.size = len(name)
            tar.addfile(info, io.BytesIO(name.encode()))


def workdir(root: Path) -> Path:
    """Every file the examples name, small."""
    d = root / "work"
    d.mkdir()
    for name in ("shard", "in", "big", "a", "b", "imagenet-0000"):
        _shard(d / f"{name}.tar", 6 if name != "big" else 30, size=(48, 32))
    _shards(d, "train-%04d", 148, 1, ".tgz")
    for i in range(148):  # widths under and over 256: --where 'json["width"] >= 256' keeps some
        _shard(d / f"train-{i:04d}.tar", 1, size=(240 + 32 * (i % 2), 160))
    _shards(d, "in-%04d", 148, 1)
    _shards(d, "imagenet-%04d", 148, 1, ".tgz")
    _shards(d, "a-%02d", 10, 2)
    _shards(d, "b-%02d", 10, 2)
    _shards(d, "a-%d", 3, 20)  # tarmix: 35 of 50 from a, 20 of 60 from each
    _shards(d, "b-%d", 2, 20)
    _shards(d, "small-%d", 1, 5)  # runs out: --when-exhausted renormalize
    _shards(d, "in-%d", 6, 6)  # tardedup --by jpg: copies across shards
    (d / "shards.txt").write_text("".join(f"train-{i:04d}.tgz\n" for i in range(4)))
    (d / "resize.sh").write_text(RESIZE)
    (d / "crop.sh").write_text(CROP)
    from tarproc.io.sinks import open_sink

    with open_sink(str(d / "captions.tar")) as sink:
        for i in range(4):
            sink.write({"__key__": f"c{i}", "cls": b"%d" % i, "txt": b"caption %d" % i})
    for folder in ("imagenet", "train"):
        for label in ("n01", "n02"):
            (d / folder / label).mkdir(parents=True)
            for i in range(3):
                shutil.copy(d / "big.tar", d / folder / label / f"{i:03d}.JPEG")
                (d / folder / label / f"{i:03d}.cls").write_text(label)
    _broken(d)
    (d / "captions.txt").write_text("a cat\na dog\n")
    (d / "urls.txt").write_text("http://x/1.jpg a cat\nhttp://x/2.jpg a dog\n")
    (d / "images").mkdir()
    (d / "images" / "1.jpg").write_bytes(b"\xff\xd8jpeg")
    (d / "plan.tsv").write_text("__key__\t@jpg\tcls\nk1\t1.jpg\t3\n")
    (d / "plan.csv").write_text("__key__,txt\nk1,a cat\n")
    return d


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    return workdir(tmp_path_factory.mktemp("readme"))


BLOCKS = blocks()


def test_the_readme_has_examples_of_every_tool():
    from tarproc.cli import TOOLS

    text = "\n".join(command for _, commands in BLOCKS for _, command in commands)
    for tool in TOOLS:
        assert re.search(rf"(^|[|;]\s*|\bdo\s+){tool}\b", text, re.M), f"no example of {tool} in README.md"
    local = [c for _, cs in BLOCKS for _, c in cs if skip_reason(c) is None]
    assert len(local) >= 30, local


@pytest.mark.parametrize("start,commands", BLOCKS, ids=[f"line{start}" for start, _ in BLOCKS])
def test_readme_examples_run_as_written(start, commands, tmp_path, template):
    work = tmp_path / "work"
    shutil.copytree(template, work, symlinks=True)
    env = _environment(tmp_path)
    ran, skipped = [], []
    for line, command in commands:
        why = skip_reason(command)
        if why is None and any(re.search(p, command) for p in SLOW):
            why = "slow: run by test_readme_slow_examples_run_as_written (-m slow)"
        if why is not None:
            skipped.append((line, why))
            continue
        _run(line, command, work, env)
        ran.append(line)
    if not ran:
        pytest.skip("; ".join(f"line {line}: {why}" for line, why in skipped))


def _environment(tmp_path: Path) -> dict:
    """The tools first on PATH, then a stub kubectl and ImageMagick;
    AWS_REGION unset; TMPDIR in ``tmp_path``."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "kubectl").write_text(KUBECTL)
    (bin_dir / "kubectl").chmod(0o755)
    env = tool_env(str(bin_dir))
    convert = imagemagick_dir()
    if convert:
        env["PATH"] = convert + os.pathsep + env["PATH"]
    env.pop("AWS_REGION", None)
    env["TMPDIR"] = str(tmp_path)
    return env


def _run(line: int, command: str, work: Path, env: dict) -> None:
    out = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", command], cwd=work, env=env, capture_output=True,
                         timeout=300)
    expected = next((status for pattern, status, _ in EXIT if re.search(pattern, command)), 0)
    assert out.returncode == expected, (f"README.md line {line}: exit {out.returncode}, not {expected}\n{command}\n"
                                 f"{out.stderr.decode(errors='replace')[-2000:]}")


@pytest.mark.slow
def test_readme_slow_examples_run_as_written(tmp_path, template):
    work = tmp_path / "work"
    shutil.copytree(template, work, symlinks=True)
    env = _environment(tmp_path)
    slow = [(line, c) for _, cs in BLOCKS for line, c in cs if any(re.search(p, c) for p in SLOW)]
    assert slow, "the README no longer has the slow examples SLOW names"
    for line, command in slow:
        _run(line, command, work, env)


def test_readme_python_example_runs(tmp_path):
    text = README.read_text()
    code = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    work = tmp_path / "work"
    work.mkdir()
    _shards(work, "train-%04d", 10, 3)
    out = subprocess.run([str(Path(tool_env()["PATH"].split(os.pathsep)[0]) / "python"), "-c", code], cwd=work,
                         env=tool_env(), capture_output=True, timeout=120)
    assert out.returncode == 0, out.stderr.decode()
    assert (work / "train-small.tgz").exists()
