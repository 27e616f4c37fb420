"""The per-sample executor in-process: collection rules, bounded lookahead, ordering."""

from __future__ import annotations

import os

import pytest

from tarproc.executor import CommandSpec, key_problem, run_sample, run_samples


def make_samples(n: int, size: int = 10):
    for i in range(n):
        yield {"__key__": f"k{i:04d}", "__source__": "gen", "txt": f"sample {i}".encode(), "bin": bytes([i % 256]) * size}


def spec_for(tmp_path, cmd: str, **kw) -> CommandSpec:
    root = tmp_path / "root"
    root.mkdir(parents=True, exist_ok=True)
    return CommandSpec(["bash", "-c", cmd], str(root), **kw)


def test_fields_keys_and_source_are_written(tmp_path):
    spec = spec_for(tmp_path, "cat __key__ __source__; ls")
    result = run_sample(spec, next(make_samples(1)), 0)
    assert not result.failed
    assert result.log == b"k0000gen__key__\n__source__\nsample.bin\nsample.txt\n"
    assert result.outputs == [{"__key__": "k0000", "__source__": "gen", "bin": bytes(10), "txt": b"sample 0"}]
    assert os.listdir(spec.root) == []


def test_outputs_in_sorted_field_order_and_new_fields(tmp_path):
    spec = spec_for(tmp_path, "echo z > sample.zz; echo a > sample.aa; rm sample.bin")
    (out,) = run_sample(spec, next(make_samples(1)), 0).outputs
    assert list(out) == ["__key__", "__source__", "aa", "txt", "zz"]


def test_only_base_dot_files_are_collected(tmp_path):
    spec = spec_for(tmp_path, "echo x > other.txt; echo y > sample.; echo z > sample")
    (out,) = run_sample(spec, next(make_samples(1)), 0).outputs
    assert sorted(k for k in out if not k.startswith("__")) == ["bin", "txt"]


def test_unreadable_leftovers_are_still_removed(tmp_path):
    spec = spec_for(tmp_path, "mkdir -p d/e; touch d/e/f; chmod 000 d/e d")
    result = run_sample(spec, next(make_samples(1)), 0)
    assert not result.failed
    assert os.listdir(spec.root) == []


def test_keep_keeps_directory(tmp_path):
    spec = spec_for(tmp_path, "true", keep=True)
    result = run_sample(spec, next(make_samples(1)), 7)
    assert result.directory and os.path.isfile(os.path.join(result.directory, "sample.txt"))


@pytest.mark.parametrize(
    "key, ok",
    [("abc", True), ("dir/abc", True), ("", False), ("a.b", False), ("/abs", False), ("../x", False), ("d/", False)],
)
def test_key_problem(key, ok):
    assert (key_problem(key) is None) == ok


@pytest.mark.parametrize("parallel", [1, 2])
def test_reader_stays_within_window_of_writer(tmp_path, parallel):
    spec = spec_for(tmp_path, "true")
    pulled = 0
    ahead = []

    def source():
        nonlocal pulled
        for sample in make_samples(30):
            pulled += 1
            yield sample

    keys = []
    for _inp, result in run_samples(spec, source(), parallel=parallel):
        keys.append(result.outputs[0]["__key__"])
        ahead.append(pulled - len(keys))
    assert keys == [f"k{i:04d}" for i in range(30)]
    assert max(ahead) <= 2 * parallel  # never more than the window ahead of the writer


def test_unordered_yields_every_sample_once(tmp_path):
    spec = spec_for(tmp_path, "sleep 0.0$(( RANDOM % 3 ))")
    results = list(run_samples(spec, make_samples(12), parallel=2, ordered=False))
    assert sorted(r.key for _, r in results) == [f"k{i:04d}" for i in range(12)]
    assert all(inp["__key__"] == r.key for inp, r in results)


def test_failure_carries_status_and_log(tmp_path):
    spec = spec_for(tmp_path, "echo some output; exit 7")
    result = run_sample(spec, next(make_samples(1)), 0)
    assert result.failed and result.status == 7 and result.reason == "exit status 7"
    assert result.log == b"some output\n"


def test_missing_key_file_fails(tmp_path):
    spec = spec_for(tmp_path, "rm __key__")
    result = run_sample(spec, next(make_samples(1)), 0)
    assert result.failed and "__key__ is missing" in result.reason


@pytest.mark.parametrize("persistent", [False, True])
def test_dead_worker_stops_the_run_instead_of_hanging(tmp_path, persistent):
    # a worker killed by the OOM killer loses its sample: waiting for it
    # would hang forever ($PPID is the worker, also in a persistent shell's subshell)
    from tarproc import TarprocError

    for ordered in (True, False):
        # a fresh root each time: the killed worker could not remove its sample directory
        spec = spec_for(tmp_path / str(ordered), '[ "$(cat __key__)" != k0003 ] || kill -9 $PPID', persistent=persistent)
        with pytest.raises(TarprocError, match=r"worker process \d+ was killed by signal 9"):
            list(run_samples(spec, make_samples(8), parallel=2, ordered=ordered))


def test_reserved_field_names_are_not_collected(tmp_path):
    # "__key__" as a field would be taken for a meta entry and silently never written
    spec = spec_for(tmp_path, "echo x > sample.__key__; echo y > sample.__z")
    result = run_sample(spec, next(make_samples(1)), 0)
    assert result.outputs[0]["__key__"] == "k0000"
    assert sorted(result.outputs[0]) == ["__key__", "__source__", "bin", "txt"]
    assert sorted(result.warnings) == [
        "sample 'k0000': not collecting 'sample.__key__': field names starting with '__' are reserved",
        "sample 'k0000': not collecting 'sample.__z': field names starting with '__' are reserved",
    ]


def test_wire_round_trip_keeps_bytes_and_meta():
    from tarproc.executor import wire
    from tarproc.executor.results import Result

    samples = [(i, s) for i, s in enumerate(make_samples(3, size=70000))]
    samples[1][1]["__extra__"] = {"not": "bytes"}
    buffers, _ = wire.pack_items(samples)
    r, w = os.pipe()
    import threading

    threading.Thread(target=wire.send, args=(w, buffers)).start()
    skeleton, lengths, raw = wire.receive(r)
    got = wire.unpack_items(skeleton, lengths, raw, copy=True)
    assert got == samples
    # results: a field equal to the input's is sent as a reference, others as bytes
    inputs = dict(samples)
    result = Result(1, "k0001", outputs=[dict(inputs[1], txt=b"changed")], log=b"log")
    packed = wire.pack_results([result], inputs)
    assert sum(len(memoryview(b).cast("B")) for b in packed[2:]) == len(b"log") + len(b"changed")
    threading.Thread(target=wire.send, args=(w, packed)).start()
    (back,) = wire.unpack_results(*wire.receive(r), inputs)
    assert back.outputs == result.outputs and back.log == b"log" and back.outputs[0]["bin"] is inputs[1]["bin"]
    os.close(w)
    assert wire.receive(r) is None
    os.close(r)


def test_arena_ring_places_frees_in_order_and_refuses_what_does_not_fit():
    from tarproc.executor import wire

    arena = wire.Arena(100)
    assert arena.put([b"a" * 40], 40) == 0
    assert arena.put([b"b" * 30, memoryview(b"c" * 20)], 50) == 40
    assert arena.put([b"d" * 20], 20) is None  # 90..110 passes the end and 0..20 is taken
    assert bytes(arena.view[40:90]) == b"b" * 30 + b"c" * 20
    arena.release()  # the first task is answered: 0..40 is free
    assert arena.put([b"e" * 30], 30) == 0  # wraps around
    assert arena.put([b"f" * 15], 15) is None  # only 30..40 is free between the two
    assert arena.put([b"g" * 10], 10) == 30
    assert arena.put([b"h"], 1) is None  # full
    arena.release()
    arena.release()
    arena.release()
    assert arena.put([b"i" * 100], 100) == 0  # empty again: the whole ring
    assert arena.put([b"j"], 1) is None
    arena.release()
    assert arena.put([b"k" * 101], 101) is None  # larger than the ring: the pipe takes it
    arena.close()


def test_tasks_through_the_arena_and_the_pipe_keep_their_bytes(tmp_path, monkeypatch):
    """Samples of mixed sizes, some larger than the arena (they go through
    the pipe): every output is its input, in order, after many wrap-arounds."""
    import random

    from tarproc.executor import wire

    monkeypatch.setattr(wire, "ARENA_SIZE", 1 << 20)
    placed = []
    put = wire.Arena.put
    monkeypatch.setattr(wire.Arena, "put", lambda self, b, n: placed.append(put(self, b, n)) or placed[-1])
    rng = random.Random(7)
    sizes = [rng.choice([0, 1, 5000, 200_000, 700_000, 1_500_000]) for _ in range(40)]
    samples = [{"__key__": f"k{i:04d}", "__source__": "gen", "bin": rng.randbytes(n)} for i, n in enumerate(sizes)]
    spec = spec_for(tmp_path, "cp sample.bin sample.out")
    got = list(run_samples(spec, iter(samples), parallel=2))
    assert [inp["__key__"] for inp, _ in got] == [s["__key__"] for s in samples]
    for (inp, result), sample in zip(got, samples):
        assert not result.failed, result.reason
        assert result.outputs[0]["out"] == sample["bin"] and inp["bin"] == sample["bin"]
    assert os.listdir(spec.root) == []
    assert None in placed and 0 in placed and len(set(placed)) > 3  # through the pipe, and the ring wrapped


def test_error_policy_retries_then_decides():
    from tarproc.errors import CommandError
    from tarproc.executor import ErrorPolicy
    from tarproc.executor.results import Result, settle

    policy = ErrorPolicy("ignore", retries=2, halt_after=3)
    attempts = []

    def run_once(attempt):
        attempts.append(attempt)
        return Result(0, "k", failed=True, reason="exit status 1", log=b"boom\n")

    result = settle(run_once, policy)
    assert attempts == [1, 2, 3] and result.action == "keep" and result.attempts == 3
    policy.observe(result)
    policy.observe(result)
    with pytest.raises(CommandError, match=r"the first 3 samples all failed: cmd: exit status 1: boom") as info:
        policy.observe(result, "cmd")
    assert info.value.topic == "halt_after"


def test_worker_dead_before_it_is_sent_a_sample_is_an_error_not_a_closed_pipe():
    # the parent's write to a dead worker fails with EPIPE: that must name the
    # worker, not pass for a closed stdout (which the tools treat as a quiet exit)
    import time

    from tarproc import TarprocError

    class DiesAtStart:
        chunk = 1

        def start(self):
            os._exit(3)

        def run(self, item):  # pragma: no cover - never reached
            return []

        def stop(self):
            pass

    def slow_source():
        time.sleep(0.5)  # the workers are gone by now
        yield from make_samples(4, size=3 << 20)

    with pytest.raises(TarprocError, match=r"worker process \d+ exited with status 3"):
        list(run_samples(DiesAtStart(), slow_source(), parallel=2))



def test_wire_writer_resumes_partial_writes_on_a_full_pipe():
    """The parent's non-blocking Writer: a pipe full after part of a buffer
    (64 KiB pipe, 5000-byte reads) leaves the rest queued; every byte arrives
    once, in order."""


    buffers = [os.urandom(n) for n in (10, 200_000, 1, 70_000, 3)] + [bytearray(os.urandom(300_000))]
    expected = b"".join(bytes(b) for b in buffers)
    assert _through_a_small_pipe(lambda writer: writer.put(buffers)) == expected


def _through_a_small_pipe(put, partly: bool = False) -> bytes:
    """What a non-blocking wire.Writer delivers through a default-size pipe
    read 5000 bytes at a time (``put(writer)`` queues the message; with
    ``partly``, the pipe must have taken only part of it at first)."""
    import select

    from tarproc.executor import wire

    r, w = os.pipe()
    os.set_blocking(w, False)
    got = bytearray()
    try:
        writer = wire.Writer(w)
        put(writer)
        if partly:
            assert writer.pending  # a 64 KiB pipe took part of it
        while writer.pending:
            select.select([r], [], [])
            got.extend(os.read(r, 5000))
            writer.flush()
        os.close(w)
        while chunk := os.read(r, 65536):
            got.extend(chunk)
    finally:
        os.close(r)
    return bytes(got)


def test_wire_put_message_takes_the_size_from_the_header_and_resumes_partial_writes():
    """put_message (the scheduler's call): a message larger than the pipe
    arrives whole and in order, and decodes to the sample sent."""

    from tarproc.executor import wire

    sample = {"__key__": "k", "__source__": "s", "jpg": os.urandom(300_000), "cls": b"7"}
    buffers, in_arena = wire.pack_items([(4, sample)])
    assert not in_arena
    expected = b"".join(bytes(b) for b in buffers)
    got = _through_a_small_pipe(lambda writer: writer.put_message(buffers), partly=True)
    assert got == expected
    skeleton_size, raw_size = wire.HEADER.unpack_from(got)
    head = wire.HEADER.size
    skeleton, lengths = wire.pickle.loads(got[head : head + skeleton_size])
    raw = memoryview(bytes(got[head + skeleton_size :]))
    assert wire.unpack_items(skeleton, lengths, raw, copy=True) == [(4, sample)]


def test_wire_results_of_unchanged_and_changed_outputs_round_trip_in_their_own_order():
    """pack_results/unpack_results: an output whose every value is the
    input's (sent as its names only), one in another field order, one with
    a new field and a changed one, and an empty one all come back equal,
    fields in the output's order, values as bytes."""
    from tarproc.executor import wire
    from tarproc.executor.results import Result

    inp = {"__key__": "k", "__source__": "s", "jpg": os.urandom(5000), "cls": b"3"}
    same = dict(inp)
    reordered = {"__key__": "k", "__source__": "s", "cls": bytes(inp["cls"]), "jpg": bytes(inp["jpg"])}
    changed = {"__key__": "k2", "__source__": "s", "jpg": inp["jpg"], "cls": b"4", "txt": b"new"}
    outputs = [same, reordered, changed, {}]
    buffers = wire.pack_results([Result(7, "k", outputs, 0, log=b"out\n")], {7: inp})
    data = b"".join(bytes(b) for b in buffers)
    skeleton_size, _ = wire.HEADER.unpack_from(data)
    head = wire.HEADER.size
    skeleton, lengths = wire.pickle.loads(data[head : head + skeleton_size])
    assert skeleton[0][1][0] == ("__key__", "__source__", "jpg", "cls")  # names only
    (result,) = wire.unpack_results(skeleton, lengths, memoryview(data[head + skeleton_size :]), {7: inp})
    assert result.outputs == outputs and result.log == b"out\n" and result.index == 7
    assert [list(out) for out in result.outputs] == [list(out) for out in outputs]
    assert all(type(v) is bytes for out in result.outputs for k, v in out.items() if not k.startswith("__"))


def test_wire_a_none_value_is_not_taken_for_bytes_of_the_raw_part():
    """A value None (a --map output, a library caller's sample) crosses the
    wire as None, and the bytes after it stay with their own fields."""
    from tarproc.executor import wire
    from tarproc.executor.results import Result

    sample = {"__key__": "k", "__source__": "s", "a": None, "b": b"xyz", "c": None, "d": b"", "e": 0}
    buffers, _ = wire.pack_items([(3, sample)])
    data = b"".join(bytes(b) for b in buffers)
    skeleton_size, _ = wire.HEADER.unpack_from(data)
    head = wire.HEADER.size
    skeleton, lengths = wire.pickle.loads(data[head : head + skeleton_size])
    raw = memoryview(data[head + skeleton_size :])
    assert wire.unpack_items(skeleton, lengths, raw, copy=True) == [(3, sample)]
    inp = {"__key__": "k", "__source__": "s", "b": b"xyz"}
    result = Result(3, "k", [sample], 0)
    data = b"".join(bytes(b) for b in wire.pack_results([result], {3: inp}))
    skeleton_size, _ = wire.HEADER.unpack_from(data)
    skeleton, lengths = wire.pickle.loads(data[head : head + skeleton_size])
    (back,) = wire.unpack_results(skeleton, lengths, memoryview(data[head + skeleton_size :]), {3: inp})
    assert back.outputs == [sample] and list(back.outputs[0]) == list(sample)


def test_shell_found_once_keeps_its_name_and_a_missing_one_fails_each_sample(tmp_path):
    # the shell's path is looked up once per executor (no PATH search per
    # sample), yet the command still sees the name it was given as $0
    spec = spec_for(tmp_path, 'echo "$0" > sample.zero')
    (out,) = run_sample(spec, next(make_samples(1)), 0).outputs
    assert out["zero"] == b"bash\n"
    missing = CommandSpec(["no-such-shell-here", "-c", "true"], spec.root)
    result = run_sample(missing, next(make_samples(1)), 1)
    assert result.failed and result.reason == "cannot run 'no-such-shell-here': No such file or directory"
    assert os.listdir(spec.root) == []


def test_signals_wait_while_workers_are_forked():
    """A SIGTERM (or Ctrl-C) while workers are forked acts once the block
    ends, not inside Python's at-fork hooks, where its exception would be
    lost and the run would finish as if never interrupted."""
    import signal
    import time

    from tarproc import guard

    hits = []
    old = signal.signal(signal.SIGTERM, lambda signum, frame: hits.append(signum))
    try:
        with guard.held_while_forking():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)
            assert hits == []
        time.sleep(0.01)
        assert hits == [signal.SIGTERM]
        assert signal.SIGTERM not in signal.pthread_sigmask(signal.SIG_BLOCK, [])
    finally:
        signal.signal(signal.SIGTERM, old)


@pytest.mark.parametrize("parallel", [1, 2])
def test_run_samples_works_in_a_worker_thread(tmp_path, parallel):
    # issue 16: the library installs no signal handler unless asked, so a thread (a thread pool, a Dask
    # worker, a web service) can run it; Python allows signal.signal() only in the main thread
    import concurrent.futures
    import signal
    import threading

    def job(name: str):
        spec = spec_for(tmp_path / name, "tr a-z A-Z < sample.txt > sample.up; rm sample.bin")
        got = [(inp["__key__"], result.outputs) for inp, result in run_samples(spec, make_samples(6), parallel)]
        assert os.listdir(spec.root) == []
        return got

    expected = [(f"k{i:04d}", [{"__key__": f"k{i:04d}", "__source__": "gen", "txt": f"sample {i}".encode(),
                                "up": f"SAMPLE {i}".encode()}]) for i in range(6)]
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    got = {}
    thread = threading.Thread(target=lambda: got.setdefault("thread", job("thread")))
    thread.start()
    thread.join(60)
    assert got.get("thread") == expected
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        assert pool.submit(job, "pool").result(timeout=60) == expected
    assert {s: signal.getsignal(s) for s in before} == before


def test_process_gives_library_users_the_tools_safety(tmp_path):
    # issue 16: the run loop is the library's: a key that comes back from another input stops the run
    # and no output is committed; a run that ends well commits, with the failed inputs saved apart
    from conftest import tar_members

    from tarproc.errors import DuplicateKeyError
    from tarproc.executor import CommandJob, ErrorPolicy
    from tarproc.executor.runloop import process
    from tarproc.io.sinks import TarSink

    out, failed = tmp_path / "out.tar", tmp_path / "failed.tar"
    spec = spec_for(tmp_path, "echo x > sample.out")
    repeated = [{"__key__": "a", "__source__": "s1", "txt": b"1"}, {"__key__": "a", "__source__": "s2", "txt": b"2"}]
    with pytest.raises(DuplicateKeyError, match="'a'"):
        process(CommandJob(spec, ErrorPolicy()), repeated, TarSink(str(out)), failed=TarSink(str(failed)))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["root"]
    spec = spec_for(tmp_path, 'test "$(cat __key__)" != b')
    reports = []
    summary = process(CommandJob(spec, ErrorPolicy()), [{"__key__": k, "txt": b"x"} for k in "abcd"],
                      TarSink(str(out)), failed=TarSink(str(failed)), parallel=2, report=reports.append)
    assert (summary.read, summary.written, summary.failed, summary.empty) == (4, 3, 1, 0)
    assert [r.key for r in reports] == ["b"]
    assert [name for name, _ in tar_members(out.read_bytes())] == ["a.txt", "c.txt", "d.txt"]
    assert [name for name, _ in tar_members(failed.read_bytes())] == ["b.txt"]
