"""Object stores and URLs through fsspec: the one home for opening a URL's
file system with ``storage_options``, asking it about an object, and writing
small objects (completion records) in one request.

Credentials and endpoints come from the standard environment of each store
(``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL`` for
S3 via botocore; ``GOOGLE_APPLICATION_CREDENTIALS`` for GCS), from fsspec's
``FSSPEC_<PROTOCOL>_<OPTION>`` variables, and from ``storage_options``
(fsspec's keyword arguments of a file system, e.g. ``endpoint_url``,
``anon``). Extra ``tarproc[cloud]`` installs fsspec and s3fs.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping

from tarproc.errors import SourceError

_URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")


def is_url(spec: str) -> bool:
    """True for ``scheme://...`` other than ``file://`` (those are local paths)."""
    return bool(_URL.match(spec)) and not spec.startswith("file://")


def url_kind(url: str) -> str:
    """What an (expanded) input or output address names, the one rule every
    module uses: ``"stdin"`` for ``-`` (stdout for an output), ``"pipe"`` for
    ``pipe:CMD`` (``|CMD`` too, the original tarproc's spelling), ``"url"``
    for ``scheme://...`` other than ``file://``, else ``"file"`` (a path, or
    ``file://PATH``)."""
    if url == "-":
        return "stdin"
    if url.startswith(("pipe:", "|")):
        return "pipe"
    if is_url(url):
        return "url"
    return "file"


def local_path(url: str) -> str | None:
    """The path a ``file`` address names (``file://`` removed); None for
    ``-``, ``pipe:CMD`` and ``scheme://`` URLs."""
    if url_kind(url) != "file":
        return None
    return url[7:] if url.startswith("file://") else url


def parse_storage_options(items: list[str] | tuple[str, ...]) -> dict:
    """``["KEY=VALUE", ...]`` as fsspec ``storage_options``, by fsspec's own
    convention for its ``FSSPEC_<PROTOCOL>_<OPTION>`` variables
    (:func:`fsspec.config.set_conf_env`): a VALUE that parses as JSON
    (``true``, ``3``, ``null``, ``{"region_name": "x"}``) is that value,
    anything else is the string as given. A dotted KEY nests:
    ``client_kwargs.region_name=x`` is ``{"client_kwargs": {"region_name":
    "x"}}``. A later item replaces an earlier one with the same KEY.

    :raises ValueError: an item without ``=`` or KEY, or a KEY nesting under
        one that holds a value
    """
    options: dict = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key or "" in key.split("."):
            raise ValueError(f"{item!r}: expected KEY=VALUE (KEY may be dotted: client_kwargs.region_name=x)")
        try:
            parsed = json.loads(value)
        except ValueError:
            parsed = value
        where = options
        *parents, last = key.split(".")
        for parent in parents:
            where = where.setdefault(parent, {})
            if not isinstance(where, dict):
                raise ValueError(f"{item!r}: {parent} is a value, not a group of options")
        where[last] = parsed
    return options


def merged(base: Mapping, over: Mapping) -> dict:
    """``base`` updated with ``over``, nested dicts merged key by key
    (``client_kwargs`` from the environment and one more key from the
    command line both apply)."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merged(out[key], value)
        else:
            out[key] = value
    return out


def url_storage_options(url: str, storage_options: Mapping | None = None) -> dict:
    """The one home for the ``storage_options`` a URL is opened with: the
    configuration fsspec read from the environment of THIS process
    (``FSSPEC_<PROTOCOL>_<OPTION>``, ``FSSPEC_<PROTOCOL>``; fsspec.config)
    for the URL's protocol, merged with ``storage_options`` (the given
    options win, nested ones key by key). Credentials and endpoints a store
    reads itself (``AWS_*`` for s3fs via botocore,
    ``GOOGLE_APPLICATION_CREDENTIALS``) are not copied: the store's library
    reads them where the file system is made (a Dask worker, a pod).

    :raises ImportError: fsspec, or the protocol's package, is missing
    """
    import fsspec
    import fsspec.config

    given = dict(storage_options or {})
    protocol = fsspec.core.split_protocol(url)[0] or "file"
    cls = fsspec.get_filesystem_class(protocol)
    protocols = cls.protocol if isinstance(cls.protocol, (tuple, list)) else (cls.protocol,)
    base: dict = {}
    for name in protocols:
        base = merged(base, fsspec.config.conf.get(name, {}))
    return merged(base, given) if base else given


def filesystem(url: str, storage_options: Mapping | None = None):
    """``(fs, path)`` for a URL (``fsspec.core.url_to_fs``), with
    :func:`url_storage_options`.

    :raises SourceError: fsspec or the protocol's package is missing, or the
        options are refused
    """
    try:
        import fsspec.core
    except ImportError:
        raise SourceError(f"{url}: URLs need fsspec (pip install 'tarproc[cloud]')") from None
    try:
        return fsspec.core.url_to_fs(url, **url_storage_options(url, storage_options))
    except ImportError as exc:
        raise SourceError(f"{url}: {exc} (pip install 'tarproc[cloud]')") from None
    except (ValueError, TypeError) as exc:
        raise SourceError(f"{url}: {exc}") from None


def _http_identity(url: str) -> dict | None:
    """:func:`identity` of an ``http(s)://`` URL from one HEAD request (RFC
    9110 9.3.2; any server, ``python -m http.server`` too, no fsspec):
    ``size`` from Content-Length, ``etag`` from ETag, else ``mtime`` from
    Last-Modified; None for 404 and 410.

    :raises SourceError: the server cannot be asked, or answers another error
    """
    import urllib.error
    import urllib.request

    from tarproc import __version__

    request = urllib.request.Request(url, method="HEAD", headers={"User-Agent": f"tarproc/{__version__}",
                                                                   "Accept-Encoding": "identity"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            headers = response.headers
    except urllib.error.HTTPError as exc:
        exc.close()
        if exc.code in (404, 410):
            return None
        raise SourceError(f"{url}: cannot stat: HTTP {exc.code} {exc.reason}") from None
    except urllib.error.URLError as exc:
        raise SourceError(f"{url}: cannot stat: {exc.reason}") from None
    except OSError as exc:
        raise SourceError(f"{url}: cannot stat: {exc}") from None
    out: dict = {}
    length = headers.get("Content-Length")
    if length is not None and length.isdigit():
        out["size"] = int(length)
    if headers.get("ETag"):
        out["etag"] = headers["ETag"].strip('"')
    elif headers.get("Last-Modified"):
        out["mtime"] = headers["Last-Modified"]
    return out


def identity(spec: str, storage_options: Mapping | None = None) -> dict | None:
    """What identifies the current content of an input, for completion
    records: ``{"size", "mtime"}`` of a local file, ``{"size", "etag"}`` (or
    ``"mtime"``) of an object where the store gives them (an ``http(s)://``
    URL: from a HEAD request), ``{}`` for a ``pipe:`` input; None when the
    input does not exist.

    :raises SourceError: the store could not be asked
    """
    if spec.startswith("pipe:"):
        return {}
    if spec.startswith(("http://", "https://")):
        return _http_identity(spec)
    if not is_url(spec):
        try:
            st = os.stat(local_path(spec))
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise SourceError(f"{spec}: cannot stat: {exc.strerror}") from None
        return {"size": st.st_size, "mtime": st.st_mtime}
    fs, path = filesystem(spec, storage_options)
    try:
        info = fs.info(path)
    except FileNotFoundError:
        return None
    except Exception as exc:  # noqa: BLE001 - each store raises its own errors (botocore's are not OSError)
        raise SourceError(f"{spec}: cannot stat: {exc}") from None
    out: dict = {}
    if info.get("size") is not None:
        out["size"] = info["size"]
    for key in ("ETag", "etag", "md5Hash", "generation"):
        if info.get(key):
            out["etag"] = str(info[key]).strip('"')
            break
    else:
        for key in ("LastModified", "mtime", "updated", "last_modified"):
            if info.get(key):
                out["mtime"] = str(info[key])
                break
    return out


def size(spec: str, storage_options: Mapping | None = None) -> int | None:
    """The size in bytes of a file or object, None when it does not exist.

    :raises SourceError: the store could not be asked
    """
    if not is_url(spec):
        try:
            return os.stat(local_path(spec)).st_size
        except FileNotFoundError:
            return None
    fs, path = filesystem(spec, storage_options)
    try:
        return fs.size(path)
    except FileNotFoundError:
        return None
    except Exception as exc:  # noqa: BLE001 - each store raises its own errors (botocore's are not OSError)
        raise SourceError(f"{spec}: cannot stat: {exc}") from None


def read_bytes(spec: str, storage_options: Mapping | None = None) -> bytes | None:
    """The bytes of a small file or object, None when it does not exist.

    :raises SourceError: it exists but cannot be read
    """
    if not is_url(spec):
        try:
            with open(local_path(spec), "rb") as handle:
                return handle.read()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise SourceError(f"{spec}: cannot read: {exc.strerror}") from None
    fs, path = filesystem(spec, storage_options)
    try:
        return fs.cat_file(path)
    except FileNotFoundError:
        return None
    except Exception as exc:  # noqa: BLE001 - each store raises its own errors (botocore's are not OSError)
        raise SourceError(f"{spec}: cannot read: {exc}") from None
