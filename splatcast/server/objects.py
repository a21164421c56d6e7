"""A small blocking wrapper over one S3 bucket (boto3): put-if-absent, ranged get, list, delete.

Every call is blocking: the server runs them in threads. An endpoint that cannot be reached (or
answers 5xx/throttling) raises ``Unavailable`` (503 with Retry-After); any other S3 failure is a
``StorageError``. The bucket is created on first use when it is missing. Credentials come from
the standard ``AWS_*`` variables (boto3's chain).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, ConnectionError, HTTPClientError

from splatcast.server.errors import StorageError, Unavailable

_UNAVAILABLE_CODES = {"SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout", "503", "500"}


class Bucket:
    """One S3 bucket at ``endpoint`` (thread-safe: boto3 clients are)."""

    def __init__(self, endpoint: str, bucket: str, region: str, timeout_s: float, retry_after_s: float) -> None:
        self.name = bucket
        self.retry_after_s = retry_after_s
        self._client = boto3.session.Session().client(
            "s3", endpoint_url=endpoint, region_name=region,
            config=Config(connect_timeout=timeout_s, read_timeout=timeout_s, retries={"max_attempts": 1},
                          s3={"addressing_style": "path"}))
        self._ready = False
        self._lock = threading.Lock()

    @contextmanager
    def _faults(self, what: str) -> Iterator[None]:
        try:
            yield
        except ClientError as e:
            code = str(e.response.get("Error", {}).get("Code", ""))
            status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            if code in _UNAVAILABLE_CODES or status >= 500:
                raise Unavailable(f"object storage unavailable while {what}: {code}", self.retry_after_s) from e
            raise StorageError(f"object storage refused {what}: {code or status}") from e
        except (ConnectionError, HTTPClientError) as e:
            raise Unavailable(f"object storage unreachable while {what}", self.retry_after_s) from e
        except BotoCoreError as e:
            raise StorageError(f"object storage failed while {what}: {e}") from e

    def ensure(self) -> None:
        """Create the bucket if it is missing (once per process)."""
        if self._ready:
            return
        with self._lock, self._faults(f"checking bucket {self.name}"):
            try:
                self._client.head_bucket(Bucket=self.name)
            except ClientError as e:
                if e.response.get("ResponseMetadata", {}).get("HTTPStatusCode") != 404:
                    raise
                try:
                    self._client.create_bucket(Bucket=self.name)
                except ClientError as e2:  # another replica created it meanwhile
                    if e2.response.get("Error", {}).get("Code") not in ("BucketAlreadyOwnedByYou",
                                                                        "BucketAlreadyExists"):
                        raise
            self._ready = True

    def put_new(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> bool:
        """Write an immutable object with ``If-None-Match: *``; False if the key already exists."""
        self.ensure()
        with self._faults(f"writing {key}"):
            try:
                self._client.put_object(Bucket=self.name, Key=key, Body=data, IfNoneMatch="*",
                                        ContentType=content_type)
            except ClientError as e:
                if e.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 412:
                    return False
                raise
        return True

    def put(self, key: str, data: bytes, content_type: str = "application/json") -> None:
        """Write (or replace) a mutable object such as a manifest."""
        self.ensure()
        with self._faults(f"writing {key}"):
            self._client.put_object(Bucket=self.name, Key=key, Body=data, ContentType=content_type)

    def get(self, key: str, start: int | None = None, length: int | None = None) -> bytes | None:
        """The object's bytes (``length`` bytes from ``start`` when given); None if there is no such key."""
        self.ensure()
        extra = {} if start is None or length is None else {"Range": f"bytes={start}-{start + length - 1}"}
        with self._faults(f"reading {key}"):
            try:
                return self._client.get_object(Bucket=self.name, Key=key, **extra)["Body"].read()
            except ClientError as e:
                if e.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                    return None
                raise

    def prefixes(self, prefix: str = "") -> list[str]:
        """The 'directories' directly under ``prefix`` (without the trailing slash)."""
        self.ensure()
        out: list[str] = []
        with self._faults("listing sequences"):
            for page in self._client.get_paginator("list_objects_v2").paginate(
                    Bucket=self.name, Prefix=prefix, Delimiter="/"):
                out += [p["Prefix"][len(prefix):-1] for p in page.get("CommonPrefixes", [])]
        return out

    def delete_prefix(self, prefix: str) -> None:
        """Delete every object under ``prefix``."""
        self.ensure()
        with self._faults(f"deleting {prefix}"):
            for page in self._client.get_paginator("list_objects_v2").paginate(Bucket=self.name, Prefix=prefix):
                keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
                if keys:
                    self._client.delete_objects(Bucket=self.name, Delete={"Objects": keys, "Quiet": True})

    def delete(self, keys: list[str]) -> None:
        """Delete these keys (missing ones are fine)."""
        if keys:
            with self._faults("deleting objects"):
                self._client.delete_objects(Bucket=self.name,
                                            Delete={"Objects": [{"Key": k} for k in keys], "Quiet": True})
