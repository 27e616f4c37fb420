"""Global shuffle and re-shard of a sharded dataset, as MapReduce over shards.

Phase 1 (*map*, one task per input shard) reads the shard and writes **one**
staged file holding its samples grouped by partition
``hash(seed, key) mod N``, with an index of each partition's byte range, as
Spark's sort-based shuffle does: the staging area holds M files for M
inputs, not M x N. Phase 2 (*reduce*, one task per output shard) reads
partition j's byte range from every staged file (a seek on a local file, a
range request on an object store), orders its samples by a seeded hash of
their keys (tarsort's shuffle order) and writes output shard j.

Where each part lives:

* :mod:`~tarproc.jobs.shuffle.partition`: how many output shards
  (:func:`shard_count`, :func:`count_samples`), the partition of a key
  (:func:`partition_function`) and the order inside one
  (:func:`order_key_function`);
* :mod:`~tarproc.jobs.shuffle.staged`: the staged file, its format and
  index, where it lives (:func:`staged_name`), one partition's range read
  back (:func:`iter_partition`);
* :mod:`~tarproc.jobs.shuffle.map`: the map task (:func:`map_shard`,
  :func:`write_staged`), spilling to disk beyond its memory budget;
* :mod:`~tarproc.jobs.shuffle.reduce`: the reduce task
  (:func:`reduce_partition`, :func:`reduce_to_stream`) and its check for a
  key found twice (:class:`DuplicateKeyError`);
* :mod:`~tarproc.jobs.shuffle.worker`: the program each task runs,
  ``python -m tarproc.jobs.shuffle`` (:func:`worker_main`), writing its
  output atomically (:func:`write_output`).

The phases as shard tasks on tarmap's engines (the job, the runs, the
records) are :mod:`tarproc.jobs.shufflejob`.

Determinism: the partition of a sample depends only on (seed, key, N) and
its position in an output shard only on (seed, key), or with
``shuffle=False`` on the order of the inputs and of the samples in them; so
the same inputs, N and seed give byte-identical outputs whatever runs the
tasks, in any order, any number of times.
"""
