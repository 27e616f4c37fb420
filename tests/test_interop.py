"""Shards from anywhere: keys repeated across inputs, tarsort's repair of
ungrouped shards, field case, meta members, a cut end-of-archive marker and
http(s) inputs, through real pipes, checked with webdataset and GNU tar."""

from __future__ import annotations

import contextlib
import http.server
import io
import shutil
import socket
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import pytest

from conftest import run, tar_members, tool_env
from tarproc import iter_samples
from tarproc.errors import SampleError, SourceError
from tarproc.samples import KeyLedger, MAX_SEEN_KEYS
from tarproc.io.sources import HTTPStream, iter_source_samples

GNU_TAR = shutil.which("tar")


def tar_file(path: Path, members: list[tuple[str, bytes]]) -> Path:
    """A tar file with ``members`` in this order, written by the stdlib tarfile."""
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def gnu_list(path: Path) -> list[str]:
    if GNU_TAR is None:
        pytest.skip("GNU tar is not installed")
    out = subprocess.run([GNU_TAR, "tf", str(path)], capture_output=True, check=True)
    return out.stdout.decode().split()


def wds_samples(path: Path, **kw) -> list[dict]:
    pytest.importorskip("webdataset")
    from webdataset import tariterators

    with open(path, "rb") as stream:
        files = ({**f, "__url__": str(path)} for f in tariterators.tar_file_iterator(stream))
        return [
            {k: v for k, v in s.items() if not k.startswith("__")} | {"__key__": s["__key__"]}
            for s in tariterators.group_by_keys(files, **kw)
        ]


def ours(path: Path, **kw) -> list[dict]:
    return [{k: v for k, v in s.items() if k != "__source__"} for s in iter_samples([str(path)], **kw)]


@pytest.fixture
def two_shards(tmp_path) -> tuple[Path, Path]:
    """Two shards made independently by lines2tar: both numbered from 000000000."""
    la, lb = tmp_path / "la.tar", tmp_path / "lb.tar"
    assert run(["lines2tar", "-k", "txt", "-o", str(la)], input=b"a\nb\n").returncode == 0
    assert run(["lines2tar", "-k", "txt", "-o", str(lb)], input=b"c\nd\n").returncode == 0
    return la, lb


# ------------------------------------------------------------ repeated keys


@pytest.mark.parametrize("tool", [["tarcats"], ["tarpcat", "-p", "2"]])
def test_merging_tools_stop_on_a_key_repeated_across_inputs(two_shards, tmp_path, tool):
    la, lb = two_shards
    out = tmp_path / "cat.tar"
    proc = run(tool + [str(la), str(lb), "-o", str(out)])
    err = proc.stderr.decode()
    assert proc.returncode == 3, err
    assert len(err.splitlines()) == 1, err
    assert f"key '000000000' of {lb} was already written from {la}" in err
    assert "--rekey '{shard}/{key}'" in err
    assert not out.exists()  # nothing complete-looking
    # the remedy works, and every reader agrees on the 4 samples
    assert run(tool + [str(la), str(lb), "--rekey", "{shard}/{key}", "-o", str(out)]).returncode == 0
    keys = ["la/000000000", "la/000000001", "lb/000000000", "lb/000000001"]
    assert [s["__key__"] for s in ours(out)] == keys
    assert [s["__key__"] for s in wds_samples(out)] == keys
    assert gnu_list(out) == [k + ".txt" for k in keys]


def test_merging_to_stdout_leaves_no_end_marker(two_shards):
    la, lb = two_shards
    proc = run(f"tarcats {la} {lb} -o - | tarshow --stats -", shell=True)
    assert proc.returncode == 3
    err = proc.stderr.decode()
    assert "tarcats: error: key '000000000'" in err
    assert "tarshow: error: -: stream is cut" in err  # our readers see the cut


def test_tarproc_stops_instead_of_dropping_samples(two_shards, tmp_path):
    la, lb = two_shards
    out = tmp_path / "out.tar"
    proc = run(["tarproc", "-c", "true", str(la), str(lb), "-o", str(out)])
    err = proc.stderr.decode()
    assert proc.returncode == 3, err
    assert f"key '000000000' of {lb} was already written from {la}" in err
    assert "tarcats --rekey '{shard}/{key}'" in err
    assert not out.exists()
    piped = run(f"tarcats --rekey '{{shard}}/{{key}}' {la} {lb} -o - | tarproc -c true -o - | tarshow --stats --json -",
                shell=True)
    assert piped.returncode == 0, piped.stderr
    assert b'"samples": 4' in piped.stdout


def test_tarsplit_several_inputs_warns_once_and_keeps_shards_grouped(two_shards, tmp_path):
    la, lb = two_shards
    lc = tmp_path / "lc.tar"
    assert run(["lines2tar", "-k", "txt", "-o", str(lc)], input=b"e\nf\n").returncode == 0
    proc = run(["tarsplit", str(la), str(lb), str(lc), "-n", "10", "-o", str(tmp_path / "sp")])
    err = proc.stderr.decode()
    assert proc.returncode == 0, err
    assert err.count("warning") == 1
    assert f"key '000000000' of {lb} was already written from {la}" in err
    shards = sorted(tmp_path.glob("sp-*.tar"))
    assert len(shards) == 3
    for shard in shards:
        assert [s["__key__"] for s in ours(shard)] == ["000000000", "000000001"]
        assert len(wds_samples(shard)) == 2
        assert gnu_list(shard) == ["000000000.txt", "000000001.txt"]


def test_key_ledger_is_exact_up_to_its_limit_then_adjacent_only():
    ledger = KeyLedger(limit=2)
    for key in ("a", "b", "c"):
        ledger.check({"__key__": key, "__source__": "x.tar"})
    with pytest.raises(SampleError, match="key 'a' of y.tar was already written from x.tar"):
        ledger.check({"__key__": "a", "__source__": "y.tar"})
    ledger.check({"__key__": "d", "__source__": "y.tar"})
    ledger.check({"__key__": "c", "__source__": "y.tar"})  # beyond the limit: not remembered
    with pytest.raises(SampleError, match="key 'c' comes back in y.tar"):
        ledger.check({"__key__": "c", "__source__": "y.tar"})  # adjacent: always caught
    assert MAX_SEEN_KEYS == 1_000_000


# ------------------------------------------------------------ tarsort repair


def test_tarsort_groups_an_ungrouped_shard_made_by_tar(tmp_path):
    if GNU_TAR is None:
        pytest.skip("GNU tar is not installed")
    src = tmp_path / "dir"
    src.mkdir()
    for i in range(3):
        (src / f"s{i}.txt").write_bytes(b"t%d" % i)
        (src / f"s{i}.cls").write_bytes(b"%d" % i)
    names = ["s0.txt", "s1.txt", "s2.txt", "s2.cls", "s0.cls", "s1.cls"]  # members of a sample apart
    ung = tmp_path / "ung.tar"
    subprocess.run([GNU_TAR, "cf", str(ung), "-C", str(src)] + names, check=True)
    shown = run(["tarshow", str(ung)])
    assert shown.returncode == 3
    advice = shown.stderr.decode()
    assert "not grouped by key (group it with tarsort: tarsort" in advice
    # the advice works, in a pipe too
    proc = run(f"tarsort {ung} -o - | tarshow --stats --json -", shell=True)
    assert proc.returncode == 0, proc.stderr
    assert b'"samples": 3' in proc.stdout
    out = tmp_path / "grouped.tar"
    assert run(["tarsort", str(ung), "-o", str(out)]).returncode == 0
    expected = [{"__key__": f"s{i}", "txt": b"t%d" % i, "cls": b"%d" % i} for i in range(3)]
    assert ours(out) == expected
    assert wds_samples(out) == expected
    assert gnu_list(out) == ["s0.txt", "s0.cls", "s1.txt", "s1.cls", "s2.txt", "s2.cls"]
    # sorting by a field and shuffling repair too
    by_cls = run(f"tarsort -s cls -S int -r {ung} -o - | tar2json -", shell=True)
    assert by_cls.returncode == 0, by_cls.stderr
    assert [line.split(b'"')[3] for line in by_cls.stdout.splitlines()] == [b"s2", b"s1", b"s0"]
    shuffled = run(f"tarsort --shuffle --seed 3 {ung} -o - | tarshow --stats --json -", shell=True)
    assert shuffled.returncode == 0 and b'"samples": 3' in shuffled.stdout


def test_tarsort_across_inputs_merges_fragments_and_names_collisions(two_shards, tmp_path):
    la, lb = two_shards
    # fields of one key spread over two inputs are merged
    a = tar_file(tmp_path / "a.tar", [("k1.txt", b"x"), ("k2.txt", b"y")])
    b = tar_file(tmp_path / "b.tar", [("k1.cls", b"1"), ("k2.cls", b"2")])
    out = tmp_path / "ab.tar"
    proc = run(["tarsort", str(a), str(b), "-o", str(out)])
    assert proc.returncode == 0, proc.stderr
    assert ours(out) == [{"__key__": "k1", "txt": b"x", "cls": b"1"}, {"__key__": "k2", "txt": b"y", "cls": b"2"}]
    # the same field twice: an error naming the key and both inputs, and the rekey remedy
    proc = run(["tarsort", str(la), str(lb), "-o", str(tmp_path / "bad.tar")])
    err = proc.stderr.decode()
    assert proc.returncode == 3
    assert f"key '000000000' has field 'txt' in both {la} and {lb}" in err
    assert "tarcats --rekey '{shard}/{key}'" in err
    assert not (tmp_path / "bad.tar").exists()


# ------------------------------------------------------------ field case


def test_field_case_kept_by_default_and_lowercased_like_webdataset(tmp_path):
    shard = tar_file(tmp_path / "case.tar", [("img1.JPG", b"J1"), ("img1.Cls", b"0"), ("img2.jpeg", b"J2"),
                                              ("img2.cls", b"1")])
    assert [sorted(s) for s in ours(shard)] == [["Cls", "JPG", "__key__"], ["__key__", "cls", "jpeg"]]
    lowered = ours(shard, lowercase=True)
    assert lowered == wds_samples(shard, lcase=True)
    assert lowered[0] == {"__key__": "img1", "jpg": b"J1", "cls": b"0"}
    # round trip byte-identical by default
    same = run(["tarcats", str(shard), "-o", "-"])
    assert tar_members(same.stdout) == tar_members(shard.read_bytes())
    # the example
    proc = run(["tarcats", "--lowercase-fields", "-f", "img=jpg,jpeg", str(shard), "-o", "-"])
    assert proc.returncode == 0, proc.stderr
    assert tar_members(proc.stdout) == [("img1.img", b"J1"), ("img2.img", b"J2")]
    assert run(["tarcats", "-f", "img=jpg,jpeg", str(shard), "-o", "-"]).returncode == 3
    for tool in (["tarshow"], ["tar2json"], ["tarsort", "-o", "-"], ["tarsplit", "-n", "5", "-o", str(tmp_path / "s")],
                 ["tarproc", "-c", "true", "-o", "/dev/null"], ["tarpcat", "-o", "-"]):
        proc = run(tool + ["--lowercase-fields", str(shard)])
        assert proc.returncode == 0, (tool, proc.stderr)


def test_fields_differing_only_in_case_are_an_error_under_lowercase(tmp_path):
    shard = tar_file(tmp_path / "two.tar", [("a.jpg", b"1"), ("a.JPG", b"2")])
    assert [sorted(s) for s in ours(shard)] == [["JPG", "__key__", "jpg"]]
    with pytest.raises(ValueError):  # webdataset refuses it too
        wds_samples(shard, lcase=True)
    proc = run(["tarcats", "--lowercase-fields", str(shard), "-o", "-"])
    assert proc.returncode == 3
    assert "fields 'jpg' and 'JPG' of sample 'a' differ only in case" in proc.stderr.decode()


# ------------------------------------------------------------ meta members


def test_meta_members_are_read_as_meta_entries(tmp_path):
    members = []
    for i in range(3):
        members += [(f"k{i}.__key__", b"k%d" % i), (f"k{i}.__source__", b"gs://b/orig.tar"), (f"k{i}.txt", b"t")]
    shard = tar_file(tmp_path / "meta.tar", members)
    samples = list(iter_source_samples(str(shard)))
    assert samples[0] == {"__key__": "k0", "__source__": "gs://b/orig.tar", "txt": b"t"}
    proc = run(f"tarcats {shard} -o - | tar tf -", shell=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.decode().split() == ["k0.txt", "k1.txt", "k2.txt"]  # not written again
    lines = proc.stderr.decode().splitlines()
    assert len(lines) == 1 and "read 6 meta members ('k0.__key__'" in lines[0], lines
    # tarproc writes meta entries as files today: __source__ holds the original's source
    got = run(["tarproc", "-c", "cat __source__; echo", "--count", "1", str(shard)])
    assert got.returncode == 0, got.stderr
    assert b"gs://b/orig.tar" in got.stdout + got.stderr


# ------------------------------------------------------------ cut end marker


def test_stream_cut_inside_end_marker_passes_last_sample_then_fails(tmp_path):
    shard = tar_file(tmp_path / "s.tar", [("a.txt", b"1"), ("b.txt", b"2")])
    data = shard.read_bytes()
    end = data.rstrip(b"\0")
    end += bytes(-len(end) % 512)  # end of b.txt's data padding
    cut = end + bytes(512 + 100)  # one whole zero block, part of the second
    proc = run("tar2json - ; echo rc=$? >&2", input=cut, shell=True)
    assert proc.stdout.count(b"__key__") == 2  # b is complete: passed on
    err = proc.stderr.decode()
    assert "cut inside the end-of-archive marker" in err and "rc=3" in err


# ------------------------------------------------------------ http(s)


@contextlib.contextmanager
def http_server(directory: Path):
    """``python -m http.server`` on 127.0.0.1 serving ``directory``."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(directory)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    try:
        for _ in range(100):
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
                break
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        proc.stderr.close()


def test_http_inputs_stream_from_plain_http_server(imagenet_shard, imagenet_shard_gz, tmp_path):
    served = tmp_path / "www"
    served.mkdir()
    shutil.copy(imagenet_shard, served / "shard-0.tar")
    shutil.copy(imagenet_shard_gz, served / "shard-1.tgz")
    with http_server(served) as base:
        stats = run(["tarshow", "--stats", "--json", f"{base}/shard-0.tar"])
        assert stats.returncode == 0, stats.stderr
        assert b'"samples": 40' in stats.stdout
        proc = run(f"tarcats --rekey '{{shard}}/{{key}}' '{base}/shard-0.tar' '{base}/shard-1.tgz' -o - | tar tf - | wc -l",
                   shell=True)
        assert proc.returncode == 0, proc.stderr
        assert int(proc.stdout) == 2 * len(tar_members(imagenet_shard.read_bytes()))
        missing = run(["tarshow", f"{base}/nope.tar"])
        assert missing.returncode == 1
        assert "nope.tar: cannot open: HTTP 404" in missing.stderr.decode()


class _Flaky(http.server.BaseHTTPRequestHandler):
    """Drops the first ``drops`` connections, then serves ``body``; records
    the request headers (a Range header would be a bug)."""

    body = b""
    drops = 0
    headers_seen: list = []

    def do_GET(self):
        type(self).headers_seen.append(dict(self.headers))
        if type(self).drops > 0:
            type(self).drops -= 1
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def flaky_server(body: bytes, drops: int):
    _Flaky.body, _Flaky.drops, _Flaky.headers_seen = body, drops, []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Flaky)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/x.tar"
    finally:
        server.shutdown()
        server.server_close()


def test_http_retries_connection_errors_before_any_byte(tmp_path):
    body = tar_file(tmp_path / "s.tar", [("a.txt", b"1")]).read_bytes()
    with flaky_server(body, drops=2) as url:
        samples = list(iter_source_samples(url))
        assert [s["__key__"] for s in samples] == ["a"]
        assert len(_Flaky.headers_seen) == 3
        assert not any("Range" in h for h in _Flaky.headers_seen)  # one plain GET each time
    with flaky_server(body, drops=10) as url:
        with pytest.raises(SourceError, match="after 2 attempts"):
            HTTPStream(url, retries=1, delay=0.01)


# ------------------------------------------------------------ the original's spellings (creators, tarsplit)


def test_lines2tar_without_k_makes_a_txt_field_and_tsv2tar_reads_csv(tmp_path):
    proc = run("printf 'a cat\\nb dog\\n' | lines2tar | tar2json -", shell=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.decode().splitlines() == ['{"__key__": "000000000", "txt": "a cat"}',
                                                 '{"__key__": "000000001", "txt": "b dog"}']
    plan = tmp_path / "plan.csv"
    plan.write_bytes(b'__key__,txt,cls\nk1,"a, b",1\nk2,"two\nlines",2\n')
    out = tmp_path / "p.tar"
    assert run(["tsv2tar", str(plan), "-o", str(out)]).returncode == 0
    assert ours(out) == [{"__key__": "k1", "txt": b"a, b", "cls": b"1"}, {"__key__": "k2", "txt": b"two\nlines", "cls": b"2"}]
    assert wds_samples(out) == ours(out)
    semi = run("printf '__key__;txt\\nk;x\\n' | tsv2tar --delim ';' - | tar2json -", shell=True)
    assert semi.stdout == b'{"__key__": "k", "txt": "x"}\n', semi.stderr
    assert run(["tsv2tar", "--delim", "ab", str(plan)]).returncode == 2


def test_tarsplit_original_spellings(imagenet_shard, tmp_path):
    # -o '|CMD' is pipe:CMD; --num-samples/--max-size; the original's -C placeholders
    proc = run(["tarsplit", str(imagenet_shard), "--num-samples", "15", "--max-size", "1e9",
                "-o", f"|cat > {tmp_path}/y-{{shard}}.tar"])
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in tmp_path.glob("y-*.tar")) == ["y-0.tar", "y-1.tar", "y-2.tar"]
    assert not list(tmp_path.glob("|*"))
    assert len(ours(tmp_path / "y-2.tar")) == 10
    log = tmp_path / "log"
    (tmp_path / "z").mkdir()
    proc = run(["tarsplit", str(imagenet_shard), "-n", "20", "-o", str(tmp_path / "z" / "part.tgz"),
                "-C", f"echo {{abspath}} {{dirname}} {{base}} {{ext}} {{basename}} >> {log}"],
               cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = sorted(log.read_text().splitlines())
    assert lines[0] == f"{tmp_path}/z/part-000000.tgz {tmp_path}/z part-000000 .tgz part-000000.tgz"
    assert (tmp_path / "z" / "part-000000.tgz").exists()  # kept, unlike the original's -C
    bad = run(["tarsplit", str(imagenet_shard), "-n", "20", "-o", str(tmp_path / "q"), "-C", "echo {name} ${HOME}"])
    assert bad.returncode == 2
    assert "unknown placeholder {name}" in bad.stderr.decode()
    assert not list(tmp_path.glob("q*"))


# ------------------------------------------------------------ the original tarproc as a peer

PEER = Path(__file__).resolve().parents[1].parent / "shared" / "peers" / "run-original"


def original(*args, **kw):
    if not PEER.exists():
        pytest.skip(f"the original tarproc is absent ({PEER})")
    proc = run([str(PEER), *map(str, args)], timeout=600, **kw)
    if proc.returncode != 0 and b"pip" in proc.stderr and b"rror" in proc.stderr:
        pytest.skip("the original tarproc's dependencies cannot be installed: " + proc.stderr.decode()[-200:])
    return proc


@pytest.fixture(scope="module")
def original_shards(tmp_path_factory) -> dict[str, Path]:
    """Shards written by the original's tools (tarcats writes KEY.__source__ members)."""
    tmp = tmp_path_factory.mktemp("orig")
    src = tmp / "src.tar"
    tar_file(src, [(f"k{i}.{f}", b"%s%d" % (f.encode(), i)) for i in range(5) for f in ("cls", "txt")])
    made = {}
    proc = original("tarcats", "-o", tmp / "cats.tar", src)
    assert proc.returncode == 0, proc.stderr
    made["tarcats"] = tmp / "cats.tar"
    proc = original("tarproc", "-c", "echo x > sample.new", "-o", tmp / "proc.tar", src, cwd=tmp)
    assert proc.returncode == 0, proc.stderr
    made["tarproc"] = tmp / "proc.tar"
    proc = original("lines2tar", input=b"a\nb\n")
    assert proc.returncode == 0, proc.stderr
    (tmp / "lines.tar").write_bytes(proc.stdout)
    made["lines2tar"] = tmp / "lines.tar"
    proc = original("tarsplit", "-n", "3", "-o", tmp / "split", src, cwd=tmp)
    assert proc.returncode == 0, proc.stderr
    made["tarsplit"] = tmp / "split-000000.tar"
    return made


READERS = [
    ["tarshow", "--stats"], ["tar2json"], ["tarsort", "-o", "/dev/null"], ["tarcats", "-o", "/dev/null"],
    ["tarpcat", "-p", "2", "-o", "/dev/null"], ["tarproc", "-c", "true", "-o", "/dev/null"],
]


@pytest.mark.parametrize("maker", ["tarcats", "tarproc", "lines2tar", "tarsplit"])
def test_every_tool_reads_the_originals_shards(original_shards, maker, tmp_path):
    shard = original_shards[maker]
    for reader in READERS + [["tarsplit", "-n", "2", "-o", str(tmp_path / "s")]]:
        proc = run(reader + [str(shard)])
        assert proc.returncode == 0, (maker, reader, proc.stderr)
        assert b"warning" not in proc.stderr, (maker, reader, proc.stderr)
    samples = ours(shard)
    assert samples and all(sorted(k for k in s if not k.startswith("__")) for s in samples)
    if maker == "tarcats":  # KEY.__source__ members: read as meta, not written back
        meta = run(["tarcats", str(shard), "-o", "-"])
        assert b"meta members" in meta.stderr
        assert not [n for n, _ in tar_members(meta.stdout) if "__" in n]


def test_the_original_reads_what_every_creator_writes(tmp_path, imagenet_shard):
    made = {}
    made["lines2tar"] = tmp_path / "l.tar"
    assert run(["lines2tar", "-o", made["lines2tar"]], input=b"a\nb\n").returncode == 0
    (tmp_path / "img").mkdir()
    (tmp_path / "p.tsv").write_text("__key__\ttxt\nk1\tx\n")
    made["tsv2tar"] = tmp_path / "t.tar"
    assert run(["tsv2tar", tmp_path / "p.tsv", "-o", made["tsv2tar"]]).returncode == 0
    (tmp_path / "img" / "a.txt").write_text("1")
    made["dir2tar"] = tmp_path / "d.tar"
    assert run(["dir2tar", tmp_path / "img", "-o", made["dir2tar"]]).returncode == 0
    made["tarcats"] = tmp_path / "c.tgz"
    assert run(["tarcats", imagenet_shard, "-o", made["tarcats"]]).returncode == 0
    assert run(["tarsplit", imagenet_shard, "-n", "100", "-o", tmp_path / "sp"]).returncode == 0
    made["tarsplit"] = tmp_path / "sp-000000.tar"
    made["tarsort"] = tmp_path / "so.tar"
    assert run(["tarsort", "--shuffle", imagenet_shard, "-o", made["tarsort"]]).returncode == 0
    made["tarproc"] = tmp_path / "pr.tar"
    assert run(["tarproc", "-c", "true", imagenet_shard, "-o", made["tarproc"]]).returncode == 0
    for maker, path in made.items():
        proc = original("tarcats", "-o", tmp_path / f"back-{maker}.tar", path)
        assert proc.returncode == 0, (maker, proc.stderr)
        back = [{k: v for k, v in s.items() if k not in ("__source__",)} for s in ours(tmp_path / f"back-{maker}.tar")]
        assert back == ours(path), maker


# ------------------------------------------------------------ the original's spellings (tarproc)


def test_tarproc_original_spellings(two_shards, tmp_path):
    la, _ = two_shards
    # --mode lines / pages / keys: text inputs, the command runs on each sample
    lines = run("printf 'a\\nb\\n' | tarproc --mode lines -c 'tr a-z A-Z < sample.txt > sample.up' -o - | tar2json -",
                shell=True)
    assert lines.returncode == 0, lines.stderr
    assert lines.stdout.decode().splitlines() == ['{"__key__": "000000000", "txt": "a", "up": "A"}',
                                                  '{"__key__": "000000001", "txt": "b", "up": "B"}']
    pages = run("printf 'p1\\nx\\n\\f\\np2\\n' | tarproc --mode pages -c true -o - | tar2json -", shell=True)
    assert pages.stdout.decode().splitlines() == ['{"__key__": "000000000", "txt": "p1\\nx\\n"}',
                                                  '{"__key__": "000000001", "txt": "p2\\n"}']
    keys = run("printf 'k1\\nk2\\n' | tarproc --mode keys -c 'cat __key__ > sample.txt' -o - | tar2json -", shell=True)
    assert keys.stdout.decode().splitlines() == ['{"__key__": "k1", "txt": "k1"}', '{"__key__": "k2", "txt": "k2"}']
    # -O FILE: the commands' output goes there; --interpreter, --error-handling, --keepdir, -S
    log = tmp_path / "log.txt"
    proc = run(["tarproc", "-c", "echo out-$(cat __key__)", "-O", str(log), "--interpreter", "sh",
                "--error-handling", "abort", str(la)])
    assert proc.returncode == 0, proc.stderr
    assert log.read_text().split() == ["out-000000000", "out-000000001"]
    assert b"out-" not in proc.stderr
    work = tmp_path / "w"
    work.mkdir()
    sub = run(["tarproc", "-S", "--keepdir", "-w", str(work), "-c",
               "mkdir d; echo k$(cat __key__) > d/__key__; cp sample.txt d/sample.txt", "-o", "-", str(la)])
    assert sub.returncode == 0, sub.stderr
    assert [n for n, _ in tar_members(sub.stdout)] == ["k000000000.txt", "k000000001.txt"]
    assert list(work.iterdir())  # kept
    # the original's -w is created; ours must exist: a usage error naming our spelling
    bad = run(["tarproc", "--working_dir", str(tmp_path / "new"), "-c", "true", str(la)])
    assert bad.returncode == 2
    assert "use -w/--workdir DIR" in bad.stderr.decode()
    assert run(["tarproc", "--mode", "words", "-c", "true", str(la)]).returncode == 2


# ------------------------------------------------------------ the README's table of the original's command lines

README = Path(__file__).resolve().parents[1] / "README.md"

#: README command -> (the command run, exit status, text expected on stderr, files expected afterwards);
#: CMD stands for a command, gsutil and curl are stand-ins that read local files (no network in tests)
ORIGINAL_LINES = {
    "gsutil cat gs://bucket/file.tar | tarsort | tarsplit -o output":
        ("gsutil cat gs://bucket/file.tar | tarsort | tarsplit -o output", 0, "", ["output-000000.tar"]),
    "tarproc -I png -c 'convert sample.jpg sample.png' inputs.tar -o outputs.tar":
        ("tarproc -I png -c 'convert sample.jpg sample.png' file.tar -o outputs.tar", 2, "no such option: -I", []),
    "cat url-list | lines2tar -k url | tarproc -c 'curl $(cat sample.url) > html'":
        ("cat url-list | lines2tar -k url | tarproc -c 'curl $(cat sample.url) > html; cat html'", 0, "page one", []),
    "lines2tar < captions.txt":
        ("lines2tar < captions.txt > captions.tar && tar tf captions.tar >&2", 0, "000000000.txt", ["captions.tar"]),
    "tarproc -S -c CMD":
        ("tarproc -S -c 'mkdir d; echo k$(cat __key__) > d/__key__; cp sample.txt d/sample.txt' file.tar -o sub.tar",
         0, "", ["sub.tar"]),
    "tarproc --interpreter sh -s script.sh": ("tarproc --interpreter sh -s script.sh file.tar", 0, "from script k4", []),
    "tarproc --keepdir -c CMD": ("tarproc --keepdir -w work -c true file.tar", 0, "", []),
    "tarproc -e ignore -c CMD": ("tarproc -e ignore -c false file.tar -o kept.tar && tarproc --error-handling skip"
                                 " -c true file.tar", 0, "kept as is", ["kept.tar"]),
    "tarproc --mode lines -c CMD": ("tarproc --mode lines -c 'cat sample.txt' captions.txt", 0, "a cat", []),
    "tarproc -O log.txt -c CMD": ("tarproc -O log.txt -c 'echo logged' file.tar", 0, "", ["log.txt"]),
    "tarproc -w DIR -c CMD": ("tarproc -w missing -c true file.tar", 2, "--workdir 'missing': no such directory", []),
    "tarproc --direct-output -c CMD": ("tarproc --direct-output -c true file.tar", 2, "-O FILE", []),
    "tarproc -q -c CMD": ("tarproc -q -c true file.tar && tarproc --silent -c true file.tar", 2, "-q/--quiet", []),
    "tarsplit -o '|cat > y-{shard}.tar'": ("tarsplit -o '|cat > y-{shard}.tar' file.tar", 0, "", ["y-0.tar"]),
    "tarsplit --num-samples 1000 --max-size 1e9 -o out":
        ("tarsplit --num-samples 1000 --max-size 1e9 -o out file.tar", 0, "", ["out-000000.tar"]),
    "tarsplit -n 1000 -o out -C 'echo {abspath} {dirname} {base} {ext}'":
        ("tarsplit -n 1000 -o out -C 'echo {abspath} {dirname} {base} {ext} >&2' file.tar", 0, "out-000000 .tar", []),
    "tarsplit -n 1000 -o out -C 'gsutil cp {shard} gs://b/'":
        ("tarsplit -n 1000 -o out -C 'gsutil cp {shard} gs://b/' --nodelete file.tar", 0, "", ["out-000000.tar"]),
    "tarsplit -z -o out": ("tarsplit -z -o out file.tar", 0, "", ["out-000000.tar.gz"]),
    "tarsplit": ("tarsplit file.tar", 2, "missing -o PATTERN", []),
    "tarcats -c 10 -s 5 a.tar b.tar": ("tarcats -c 10 -s 5 file.tar -o -", 2, "-c: use --count N", []),
    "tarcats -b 'shard-{000..009}.tar'": ("tarcats -b 'shards/s-{0..1}.tar'", 2, "drop it", []),
    "tarpcat -p 8 shards/*.tar": ("tarpcat -p 8 shards/*.tar -o - | tar tf - >&2 && tarpcat --workers 2 shards/*.tar",
                                  2, "use -p/--parallel N", []),
    "tarsort -s cls -S int": ("tarsort -s cls -S int --sortkey cls --sorttype int file.tar -o sorted.tar", 0, "",
                              ["sorted.tar"]),
    "tarsort --report 1000": ("tarsort --report 1000 file.tar", 2, "use -v", []),
    "tar2json -k 'cls txt'": ("tar2json -k 'cls txt' file.tar >&2 && tar2json -f json file.tar", 2, "--format jsonl", []),
    "tarshow -c 3 shard.tar": ("tarshow -c 3 file.tar", 2, "use --count N", []),
}


def readme_table_commands() -> list[str]:
    text = README.read_text()
    section = text.split("## Coming from the original tarproc", 1)[1].split("\n## ", 1)[0]
    commands = []
    for line in section.splitlines():
        if line.startswith("| `"):
            cell = line[2:].split(" | ", 1)[0]
            commands.append(cell.split("`")[1].replace("\\|", "|"))
    return commands


def test_original_command_lines(tmp_path):
    assert sorted(readme_table_commands()) == sorted(ORIGINAL_LINES)  # the README's table is the one tested
    tar_file(tmp_path / "file.tar", [(f"k{i}.{f}", b"%d" % (i * 7 % 5)) for i in range(5) for f in ("cls", "txt")])
    (tmp_path / "shards").mkdir()
    for n in range(2):
        tar_file(tmp_path / "shards" / f"s-{n}.tar", [(f"s{n}k{i}.txt", b"x") for i in range(3)])
    (tmp_path / "page1.html").write_text("page one")
    (tmp_path / "url-list").write_text(f"file://{tmp_path}/page1.html\n")
    (tmp_path / "captions.txt").write_text("a cat\nb dog\n")
    (tmp_path / "script.sh").write_text("echo from script $(cat __key__)\n")
    (tmp_path / "work").mkdir()
    stand_ins = tmp_path / "bin"
    stand_ins.mkdir()
    (stand_ins / "gsutil").write_text('#!/bin/sh\n[ "$1" = cat ] && exec cat "$(basename "$2")"\nexit 0\n')
    (stand_ins / "curl").write_text('#!/bin/sh\nexec cat "${1#file://}"\n')
    for tool in stand_ins.iterdir():
        tool.chmod(0o755)
    env = tool_env(str(stand_ins))
    for readme, (command, status, stderr, files) in ORIGINAL_LINES.items():
        proc = run(command, shell=True, cwd=tmp_path, env=env)
        err = proc.stderr.decode()
        assert proc.returncode == status, (readme, err)
        assert stderr in err, (readme, err)
        assert "Traceback" not in err, (readme, err)
        for name in files:
            assert (tmp_path / name).exists(), (readme, name, err)
    assert (tmp_path / "log.txt").read_text().count("logged") == 5
    assert len(ours(tmp_path / "output-000000.tar")) == 5
    assert [s["__key__"] for s in ours(tmp_path / "sub.tar")] == [f"kk{i}" for i in range(5)]
    assert [s["cls"] for s in ours(tmp_path / "sorted.tar")] == sorted(s["cls"] for s in ours(tmp_path / "file.tar"))
    assert not (tmp_path / "missing").exists()


# ------------------------------------------------------------ s3:// inputs (fsspec) against moto's S3 server


def test_reading_tools_stream_s3_inputs(s3_server, imagenet_shard, tmp_path):
    s3_server.reset()
    fs = s3_server.fs()
    fs.mkdir("shards")
    fs.put(str(imagenet_shard), "shards/a.tar")
    env = s3_server.env(tool_env())
    stats = run(["tarshow", "--stats", "--json", "s3://shards/a.tar"], env=env)
    assert stats.returncode == 0, stats.stderr
    assert b'"samples": 40' in stats.stdout
    cats = run(["tarcats", "s3://shards/a.tar", "-o", "-"], env=env)
    assert cats.returncode == 0, cats.stderr
    assert tar_members(cats.stdout) == tar_members(imagenet_shard.read_bytes())
    missing = run(["tarshow", "s3://shards/nope.tar"], env=env)
    assert missing.returncode == 1 and b"nope.tar" in missing.stderr
