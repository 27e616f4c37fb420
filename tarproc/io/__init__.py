"""Bytes in and out: the tar stream, compression, storage (local paths and URLs), sources, sinks and shards."""
