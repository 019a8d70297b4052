"""The storage layer against the local filesystem and a real S3-compatible server (moto, HTTP on 127.0.0.1)."""

import pyarrow as pa
import pytest

from mosaic_ray.config import StorageConfig, validate_config
from mosaic_ray.stages.ingest import run_ingest
from mosaic_ray.storage import Storage, StorageError


@pytest.mark.parametrize("kind", ["local", "s3"])
def test_round_trip_and_atomic_listing(kind, tmp_path, request):
    if kind == "s3":
        endpoint = request.getfixturevalue("s3_server")
        st = Storage("s3://mosaic-test/roundtrip", StorageConfig(endpoint_url=endpoint, region="us-east-1"))
    else:
        st = Storage(str(tmp_path / "root"))
    st.write_json("a/b.json", {"x": 1})
    st.write_table("t/part-0.parquet", pa.table({"clip_id": ["a", "b"], "v": [1.0, 2.0]}))
    st.write_table("t/part-1.parquet", pa.table({"clip_id": ["c"], "v": [3.0]}))
    assert st.read_json("a/b.json") == {"x": 1}
    assert st.list("t", ".parquet") == ["t/part-0.parquet", "t/part-1.parquet"]
    assert st.read_table("t").num_rows == 3
    st.mark_done("stage", {"n": 3})
    assert st.is_done("stage") and st.done_payload("stage") == {"n": 3}
    with pytest.raises(StorageError, match="does not exist"):
        st.read_table("missing")
    assert "secret" not in repr(st)


def test_bad_scheme():
    with pytest.raises(StorageError, match="unsupported URI scheme"):
        Storage("gs://bucket/x")


def test_ingest_writes_shards_to_s3(ray_local, small_data_dir, s3_server):
    cfg = validate_config({"name": "s3ingest", "data_dir": str(small_data_dir), "output_dir": "s3://mosaic-test/runs",
                           "storage": {"endpoint_url": s3_server, "region": "us-east-1"},
                           "selection": {"budgets": [10]}})
    st = Storage(cfg.run_uri, cfg.storage)
    s = run_ingest(cfg, st)
    assert s["candidates"] == s["clips"] + s["quarantined"]
    n = sum(st.read_table(f"ingest/clips/{sp}", columns=["clip_id"]).num_rows for sp in ("train", "pool", "calibration", "test"))
    assert n == s["clips"]
    assert st.uri("ingest").startswith("s3://mosaic-test/runs/s3ingest")


@pytest.mark.parametrize("kind", ["local", "s3"])
def test_pickled_storage_reads_and_writes(kind, tmp_path, request):
    import pickle

    if kind == "s3":
        endpoint = request.getfixturevalue("s3_server")
        st = Storage("s3://mosaic-test/pickled", StorageConfig(endpoint_url=endpoint, region="us-east-1"))
    else:
        st = Storage(str(tmp_path / "root"))
    st.write_json("before.json", {"x": 1})
    blob = pickle.dumps(st)
    assert b"S3FileSystem" not in blob and b"LocalFileSystem" not in blob  # the filesystem is not pickled
    again = pickle.loads(blob)
    assert again == st and again.is_local == (kind == "local") and again.root == st.root
    assert again.read_json("before.json") == {"x": 1}
    again.write_table("t/part-0.parquet", pa.table({"clip_id": ["a"], "v": [1.0]}))
    assert st.read_table("t").num_rows == 1
    # local_copy: the file itself when local, a cached download for s3
    path = again.local_copy("before.json")
    assert open(path).read() == st.read_bytes("before.json").decode()
    assert (path == st.path("before.json")) == (kind == "local")


def test_storage_goes_to_a_ray_task_as_it_is(ray_local, s3_server):
    st = Storage("s3://mosaic-test/remote", StorageConfig(endpoint_url=s3_server, region="us-east-1"))

    @ray_local.remote(num_cpus=0.5)
    def write(s: Storage) -> str:
        s.write_json("from_task.json", {"ok": True})
        return s.root_uri

    assert ray_local.get(write.remote(st)) == st.root_uri
    assert st.read_json("from_task.json") == {"ok": True}
