"""Fixtures that hand each contract test one backend at a time: the embedded implementation, and
the cluster one on a real redis-server (and, for what touches files, a shared directory and a real
S3 API server). Both servers start once per session; each test gets its own key prefix / bucket
prefix / directories, so tests never see each other's data."""
from __future__ import annotations

import itertools

import pytest

from tests.contracts import backends

_buckets = itertools.count()


@pytest.fixture(scope="session")
def contract_redis(tmp_path_factory):
    from tests.cluster.conftest import RedisServer

    r = RedisServer(tmp_path_factory.mktemp("contract-redis")).start()
    yield r
    r.stop()


@pytest.fixture(scope="session")
def contract_s3():
    """A real S3 API server on 127.0.0.1 (moto's server mode; boto3 talks HTTP to it), test credentials."""
    from moto.server import ThreadedMotoServer

    from tests.server.conftest import free_port

    with pytest.MonkeyPatch.context() as mp:
        for k, v in {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
                     "AWS_DEFAULT_REGION": "us-east-1"}.items():
            mp.setenv(k, v)
        port = free_port()
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
        server.start()
        yield f"http://127.0.0.1:{port}"
        server.stop()


def _storage(kind: str, request, tmp_path):
    if kind == "dir":
        return backends.dir_storage(tmp_path / "shared")
    import boto3

    endpoint = request.getfixturevalue("contract_s3")
    bucket = f"contract-{next(_buckets)}"
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=bucket)
    return backends.s3_storage(endpoint, bucket)


CLUSTER = pytest.mark.processes  # the cluster's backends need a redis-server


@pytest.fixture(params=["embedded", pytest.param("cluster", marks=CLUSTER)])
def queue_side(request, tmp_path) -> backends.QueueSide:
    """The job records and work queue of one backend."""
    if request.param == "embedded":
        return backends.embedded_queue(tmp_path)
    return backends.cluster_queue(request.getfixturevalue("contract_redis").url)


@pytest.fixture(params=["embedded", pytest.param("cluster-dir", marks=CLUSTER),
                        pytest.param("cluster-s3", marks=CLUSTER)])
def make_hub(request, tmp_path):
    """make_hub(max_buffered_blocks=8) -> HubSide of one backend (the cluster's on both storages)."""
    if request.param == "embedded":
        return lambda **kw: backends.embedded_hub(tmp_path, **kw)
    storage = _storage(request.param.split("-")[1], request, tmp_path)
    url = request.getfixturevalue("contract_redis").url
    return lambda **kw: backends.cluster_hub(tmp_path, url, storage, **kw)


@pytest.fixture(params=["embedded", "cluster-dir", "cluster-s3"])  # no redis: in-process
def files_side(request, tmp_path) -> backends.FilesSide:
    """The job files of one backend (the cluster's on a shared directory and on S3)."""
    if request.param == "embedded":
        return backends.embedded_files(tmp_path)
    return backends.cluster_files(tmp_path, _storage(request.param.split("-")[1], request, tmp_path))
