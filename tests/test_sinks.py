"""tarproc.io.sinks: NAME.partial then rename, no end marker on error,
compression by suffix, stdout and pipe: outputs."""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import os
import sys
import tarfile

import pytest
import zstandard
from conftest import tar_members

from tarproc.errors import UsageError, OutputError
from tarproc.io.sinks import PARTIAL, TarSink, open_sink, write_tar
from tarproc.io.tario import BLOCK, iter_members

SAMPLES = [
    {"__key__": f"n0144_{i:03d}", "__source__": "in.tar", "jpg": bytes([i + 1]) * (300 + 97 * i), "cls": str(i % 3),
     "json": b'{"i": %d}' % i}
    for i in range(6)
]
EXPECTED = [(f"{s['__key__']}.{f}", s[f].encode() if isinstance(s[f], str) else s[f])
            for s in SAMPLES for f in ("jpg", "cls", "json")]


def write(target: str, samples=SAMPLES, **kwargs) -> TarSink:
    with open_sink(target, **kwargs) as sink:
        for sample in samples:
            sink.write(sample)
    return sink


def test_file_is_written_as_partial_then_renamed(tmp_path):
    path = tmp_path / "out.tar"
    with open_sink(str(path)) as sink:
        sink.write(SAMPLES[0])
        assert (tmp_path / f"out.tar{PARTIAL}").exists()
        assert not path.exists()
        for sample in SAMPLES[1:]:
            sink.write(sample)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.tar"]
    data = path.read_bytes()
    assert tar_members(data) == EXPECTED
    assert [(m.name, m.data) for m in iter_members(io.BytesIO(data))] == EXPECTED
    assert data.endswith(bytes(2 * BLOCK))
    assert sink.samples == len(SAMPLES) and sink.bytes_written == len(data)


def test_error_leaves_no_output_and_no_partial_file(tmp_path):
    path = tmp_path / "out.tar"
    with pytest.raises(RuntimeError):
        with open_sink(str(path)) as sink:
            for sample in SAMPLES[:3]:
                sink.write(sample)
            assert (tmp_path / "out.tar.partial").exists()
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_abort_of_a_compressed_file(tmp_path):
    path = tmp_path / "out.tar.gz"
    sink = open_sink(str(path))
    sink.write(SAMPLES[0])
    sink.abort()
    sink.close()  # no effect after abort
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "name,magic,decompress",
    [
        ("out.tar.gz", b"\x1f\x8b", gzip.decompress),
        ("out.tgz", b"\x1f\x8b", gzip.decompress),
        ("out.tar.bz2", b"BZh", bz2.decompress),
        ("out.tar.xz", b"\xfd7zXZ\x00", lzma.decompress),
        ("out.tar.zst", b"\x28\xb5\x2f\xfd", lambda d: zstandard.ZstdDecompressor().decompressobj().decompress(d)),
        ("out.tar", b"n0144", lambda d: d),
    ],
)
def test_compression_by_suffix_readable_by_tarfile(tmp_path, name, magic, decompress):
    path = tmp_path / name
    write(str(path))
    raw = path.read_bytes()
    assert raw.startswith(magic)
    assert tar_members(decompress(raw)) == EXPECTED
    if name.endswith(".zst"):
        return  # tarfile has no zstd before Python 3.14
    with tarfile.open(path) as tf:  # by content, as a user would
        assert [(m.name, tf.extractfile(m).read()) for m in tf] == EXPECTED


def test_explicit_compression_must_agree_with_the_name(tmp_path):
    """A name without a tar suffix takes any compression; a name that states
    one (out.tar: none, plain.tgz: gzip) must not be contradicted."""
    path = tmp_path / "out.data"
    write(str(path), compression="gzip")
    assert path.read_bytes()[:2] == b"\x1f\x8b"
    with pytest.raises(UsageError, match="named as an uncompressed tar, but gzip compression was asked for"):
        write(str(tmp_path / "out.tar"), compression="gzip")
    with pytest.raises(UsageError, match="named as gzip-compressed, but no compression was asked for: name it"):
        write(str(tmp_path / "plain.tgz"), compression="none")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.data"]


def test_gzip_output_is_deterministic(tmp_path):
    write(str(tmp_path / "a.tgz"))
    write(str(tmp_path / "b.tgz"))
    a = (tmp_path / "a.tgz").read_bytes()
    assert a == (tmp_path / "b.tgz").read_bytes()
    assert a[4:8] == b"\0\0\0\0" and not a[3] & 0x08  # no mtime, no file name


def test_mtime_and_mode(tmp_path):
    path = tmp_path / "out.tar"
    write(str(path), mtime=1_234_567_890, mode=0o644)
    with tarfile.open(path) as tf:
        assert {(m.mtime, m.mode, m.uid, m.gid) for m in tf} == {(1_234_567_890, 0o644, 0, 0)}


def test_stdout(monkeypatch):
    out = io.BytesIO()
    monkeypatch.setattr(sys, "stdout", io.TextIOWrapper(out))
    write("-")
    assert tar_members(out.getvalue()) == EXPECTED


def test_stdout_on_error_gets_no_end_marker(monkeypatch):
    out = io.BytesIO()
    monkeypatch.setattr(sys, "stdout", io.TextIOWrapper(out))
    with pytest.raises(RuntimeError):
        with open_sink("-") as sink:
            sink.write(SAMPLES[0])
            raise RuntimeError
    assert not out.getvalue().endswith(bytes(2 * BLOCK))
    assert tar_members(out.getvalue()) == EXPECTED[:3]


def test_write_tar_onto_an_open_stream_writes_the_sinks_bytes(tmp_path):
    """write_tar: a TarSink's bytes onto a stream its caller owns (the
    shuffle's reducer), the counts returned."""
    sink = write(str(tmp_path / "ref.tar"), mtime=7)
    out = io.BytesIO()
    assert write_tar(iter(SAMPLES), out, mtime=7) == (len(SAMPLES), sink.bytes_written)
    assert out.getvalue() == (tmp_path / "ref.tar").read_bytes()
    assert not out.closed


def test_write_tar_on_error_gets_no_end_marker():
    def failing():
        yield SAMPLES[0]
        raise RuntimeError("bad input")

    out = io.BytesIO()
    with pytest.raises(RuntimeError, match="bad input"):
        write_tar(failing(), out)
    assert not out.getvalue().endswith(bytes(2 * BLOCK))
    assert tar_members(out.getvalue()) == EXPECTED[:3]


def test_pipe_output(tmp_path):
    path = tmp_path / "piped.tar.gz"
    write(f"pipe:gzip -n > {path}")
    assert tar_members(gzip.decompress(path.read_bytes())) == EXPECTED


def test_failing_pipe_output():
    with pytest.raises(OutputError, match=r"pipe:cat >/dev/null; exit 3: command exited with status 3"):
        write("pipe:cat >/dev/null; exit 3")


def test_cannot_create(tmp_path):
    with pytest.raises(OutputError, match="no such directory"):
        open_sink(str(tmp_path / "missing" / "out.tar"))
    (tmp_path / "ro").mkdir()
    (tmp_path / "ro" / "out.tar.partial").mkdir()  # in the way
    with pytest.raises(OutputError, match="cannot create"):
        open_sink(str(tmp_path / "ro" / "out.tar"))


def test_meta_entries_are_not_written_and_text_is_utf8(tmp_path):
    path = tmp_path / "out.tar"
    write(str(path), [{"__key__": "k", "__source__": "s", "__url__": "u", "txt": "é", "bin": b"\0"}])
    assert tar_members(path.read_bytes()) == [("k.txt", "é".encode()), ("k.bin", b"\0")]


def test_abort_closes_a_fifo_output(tmp_path):
    """abort() closes an output it opened itself, as close() does: a reader
    of a FIFO sees end of file instead of waiting for the writer to exit."""
    import threading

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    got = []
    reader = threading.Thread(target=lambda: got.append(open(fifo, "rb").read()))
    reader.start()
    sink = TarSink(str(fifo))
    sink.write({"__key__": "a", "txt": b"x"})
    sink.abort()
    reader.join(timeout=10)
    assert not reader.is_alive(), "the FIFO was left open by abort()"
    assert got[0].startswith(b"a.txt")
    assert not got[0].endswith(bytes(1024))  # no end-of-archive marker
    assert [p.name for p in tmp_path.iterdir()] == ["fifo"]


def _mixed_samples():
    """Small samples (buffered path), large ones (one writev of their own
    buffers), a member of SMALL_MEMBER bytes and more (written on its own)."""
    from tarproc.io.tario import GATHER_MIN, SMALL_MEMBER

    rng = __import__("random").Random(5)
    sizes = [10, GATHER_MIN, 1, GATHER_MIN + 511, 3000, SMALL_MEMBER + 7, 0, 27_000]
    for i, n in enumerate(sizes):
        yield {"__key__": f"s{i:03d}", "__source__": "x", "jpg": rng.randbytes(n), "cls": b"%d" % i,
               "json": rng.randbytes(n // 2)}


@pytest.mark.parametrize("where", ["file", "device", "pipe"])
def test_gathered_writes_give_the_same_bytes_as_the_buffered_path(tmp_path, where):
    """A sink on a plain fd writes large samples with writev (TarWriter fd=):
    the stream is byte for byte what a writer without fd gives, small and
    large samples interleaved in order."""
    from tarproc.io.tario import TarWriter

    expected = io.BytesIO()
    reference = TarWriter(expected)
    for sample in _mixed_samples():
        reference.add_all((f"{sample['__key__']}.{f}", sample[f]) for f in ("jpg", "cls", "json"))
    reference.finish()
    out = tmp_path / "out.tar"
    target = {"file": str(out), "device": str(tmp_path / "fifo"), "pipe": f"pipe:cat > {out}"}[where]
    if where == "device":
        os.mkfifo(target)
        import threading

        got = bytearray()
        reader = threading.Thread(target=lambda: got.extend(open(target, "rb").read()))
        reader.start()
    sink = TarSink(target)
    assert sink.writer.fd is not None
    for sample in _mixed_samples():
        sink.write(sample)
    sink.close()
    if where == "device":
        reader.join()
        data = bytes(got)
    else:
        data = out.read_bytes()
    assert data == expected.getvalue()
    assert sink.bytes_written == len(data)


def test_compressed_and_in_memory_outputs_take_the_buffered_path(tmp_path, monkeypatch):
    assert TarSink(str(tmp_path / "a.tar.gz")).writer.fd is None
    monkeypatch.setattr(sys, "stdout", io.TextIOWrapper(io.BytesIO()))
    assert TarSink("-").writer.fd is None


def test_write_all_resumes_partial_writes(monkeypatch):
    """iov.write_all after writev wrote less than asked (a signal, a full
    device): the rest follows, nothing twice, in order."""
    from tarproc.io import iov

    real = os.writev
    calls = []

    def short_writev(fd, buffers):
        calls.append(len(buffers))
        first = memoryview(buffers[0]).cast("B")
        return real(fd, [first[: max(1, len(first) // 3)]])

    monkeypatch.setattr(iov.os, "writev", short_writev)
    buffers = [os.urandom(n) for n in (700, 1, 5000)] + [bytearray(os.urandom(900))] * 600
    r, w = os.pipe()
    import threading

    got = bytearray()

    def drain():
        while chunk := os.read(r, 65536):
            got.extend(chunk)

    reader = threading.Thread(target=drain)
    reader.start()
    try:
        iov.write_all(w, buffers[:3], sum(len(b) for b in buffers[:3]))  # one writev expected
        iov.write_all(w, buffers[3:])  # over IOV_BATCH buffers, no size given
    finally:
        os.close(w)
        reader.join()
        os.close(r)
    assert bytes(got) == b"".join(bytes(b) for b in buffers)
    assert len(calls) > len(buffers)  # every buffer took more than one call


def test_a_wrapped_writer_stream_sees_every_byte(tmp_path):
    """A caller that wraps sink.writer.stream (tarsplit hashes what it
    writes) gets every byte through the wrapper: the gathered writev is only
    for the stream the fd belongs to."""
    seen = bytearray()

    class Tee:
        def __init__(self, stream):
            self.stream = stream

        def write(self, data):
            seen.extend(data)
            return self.stream.write(data)

        def flush(self):
            self.stream.flush()

    out = tmp_path / "out.tar"
    sink = TarSink(str(out))
    sink.writer.stream = Tee(sink.writer.stream)
    for sample in _mixed_samples():
        sink.write(sample)
    sink.close()
    assert bytes(seen) == out.read_bytes()[: len(seen)] and len(seen) == len(out.read_bytes())


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_an_interrupt_whose_exception_was_lost_is_never_committed(tmp_path, monkeypatch):
    """A signal handler's exception raised while a finaliser runs is only
    printed by Python; the signal is recorded, and closing the output raises
    it again instead of renaming NAME.partial to NAME."""
    from tarproc import errors
    from tarproc.io.sinks import TarSink

    out = tmp_path / "out.tar"
    sink = TarSink(str(out))
    sink.write({"__key__": "a", "txt": b"x"})

    class Finalised:
        def __del__(self):
            errors.raise_interrupted(15)  # as a SIGTERM handler would, inside __del__

    Finalised()  # "Exception ignored in ..." and the run would go on
    with pytest.raises(errors.Interrupted):
        sink.close()
    sink.abort()
    assert not out.exists() and not (tmp_path / "out.tar.partial").exists()


#: run_samples' keyword for its own signal handlers (the handlers that record a signal)
SIGNALS = {"handle_signals": True}


def test_a_caught_interrupt_does_not_stop_a_later_output(tmp_path):
    """issue 16: a KeyboardInterrupt out of run_samples that the caller
    caught (a notebook's Ctrl-C) is that run's: an output opened afterwards
    in the same process commits."""
    import os
    import signal

    from tarproc.executor import run_samples
    from tarproc.executor.pymap import MapJob
    from tarproc.io.sinks import TarSink

    interrupted = tmp_path / "interrupted.tar"
    first = TarSink(str(interrupted))

    def ctrl_c(sample):
        os.kill(os.getpid(), signal.SIGINT)
        return sample

    with pytest.raises(KeyboardInterrupt):
        for _, result in run_samples(MapJob(ctrl_c), [{"__key__": "a", "txt": b"x"}], **SIGNALS):
            first.write(result.outputs[0])
    with pytest.raises(KeyboardInterrupt):
        first.close()  # opened before the signal: never committed
    first.abort()
    out = tmp_path / "later.tar"
    sink = TarSink(str(out))
    sink.write({"__key__": "b", "txt": b"y"})
    sink.close()
    assert [name for name, _ in tar_members(out.read_bytes())] == ["b.txt"]
    assert not interrupted.exists()


# ------------------------------------ a device or FIFO is written, never replaced


def test_atomic_output_writes_a_fifo_directly_and_leaves_it_a_fifo(tmp_path):
    """A rename over /dev/null (as root) would replace the device with a
    regular file: a path that exists and is not a regular file is written
    directly (a FIFO stands in for the device)."""
    import stat

    from conftest import FifoReader
    from tarproc.io.sinks import AtomicOutput, text_output

    fifo = FifoReader(tmp_path / "null")
    with AtomicOutput(str(fifo.path)) as out:
        out.write(b"binary\n")
    with text_output(str(fifo.path)) as handle:
        handle.write("text\n")
    assert fifo.finish() == b"binary\ntext\n"
    assert stat.S_ISFIFO(os.lstat(fifo.path).st_mode)
    assert sorted(os.listdir(tmp_path)) == ["null"]  # no attempt file beside it


def test_text_output_appears_only_complete(tmp_path):
    from tarproc.io.sinks import text_output

    path = tmp_path / "report.jsonl"
    with pytest.raises(RuntimeError):
        with text_output(str(path)) as handle:
            handle.write("half\n")
            raise RuntimeError("stop")
    assert os.listdir(tmp_path) == []
    with text_output(str(path)) as handle:
        handle.write("whole\n")
    assert path.read_text() == "whole\n" and os.listdir(tmp_path) == ["report.jsonl"]
