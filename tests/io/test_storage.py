import os

import pyarrow as pa
import pytest

from skinray import SkinrayError
from skinray.io import single_put_fs, storage
from skinray.io.storage import StorageConfig

from conftest import BUCKET


@pytest.fixture(params=["local", "s3"])
def root(request, tmp_path, s3_endpoint):
    if request.param == "local":
        return str(tmp_path)
    return f"s3://{BUCKET}/storage-test/{os.urandom(4).hex()}"


def test_bytes_json_parquet_roundtrip(root):
    storage.write_bytes(storage.join(root, "a", "b.bin"), b"xyz")
    assert storage.read_bytes(storage.join(root, "a", "b.bin")) == b"xyz"
    storage.write_json(storage.join(root, "r.json"), {"k": [1, 2]})
    assert storage.read_json(storage.join(root, "r.json")) == {"k": [1, 2]}
    table = pa.table({"x": [1, 2, 3]})
    storage.write_parquet(table, storage.join(root, "t.parquet"))
    assert storage.read_parquet(storage.join(root, "t.parquet")).equals(table)
    assert storage.exists(storage.join(root, "a", "b.bin"))
    assert storage.is_dir(storage.join(root, "a"))
    assert not storage.exists(storage.join(root, "nope"))


def test_list_files_skips_hidden_and_staging(root):
    for name in ("x/1.jpg", "x/2.PNG", "x/_staging/3.jpg", "x/.hidden.jpg", "x/readme.txt"):
        storage.write_bytes(storage.join(root, name), b"1")
    files = storage.list_files(storage.join(root, "x"), suffixes=(".jpg", ".png"))
    assert [f.rsplit("/", 1)[1] for f in files] == ["1.jpg", "2.PNG"]


def test_delete_leaves_no_directory_markers(root):
    for name in ("d/a/1.bin", "d/a/2.bin", "d/b.bin", "keep/c.bin"):
        storage.write_bytes(storage.join(root, name), b"x")
    storage.delete(storage.join(root, "d", "a", "1.bin"))
    storage.delete(storage.join(root, "d"))
    assert not storage.exists(storage.join(root, "d")) and storage.exists(storage.join(root, "keep", "c.bin"))
    if storage.is_s3(root):  # pyarrow's own deletes would have left "d/" and "d/a/" marker objects
        bucket, _, prefix = root[len("s3://"):].partition("/")
        keys = [o["Key"] for o in storage.boto3_client().list_objects_v2(Bucket=bucket, Prefix=prefix)["Contents"]]
        assert keys == [f"{prefix}/keep/c.bin"]


def test_read_bytes_refuses_oversized_objects_before_reading(root):
    storage.write_bytes(storage.join(root, "big.bin"), b"x" * 1000)
    assert storage.read_bytes(storage.join(root, "big.bin"), max_bytes=1000) == b"x" * 1000
    with pytest.raises(SkinrayError, match="more than the 999 bytes"):
        storage.read_bytes(storage.join(root, "big.bin"), max_bytes=999)


def test_upload_dir_into_a_new_destination(root, tmp_path):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.json").write_text("{}")
    (src / "sub" / "b.bin").write_bytes(b"b")
    dest = storage.join(root, "not", "there", "yet")
    storage.upload_dir(str(src), dest)
    assert storage.read_bytes(storage.join(dest, "sub", "b.bin")) == b"b" and storage.exists(storage.join(dest, "a.json"))


def test_local_write_is_atomic(tmp_path):
    target = tmp_path / "f.bin"
    storage.write_bytes(str(target), b"old")
    storage.write_bytes(str(target), b"new")
    assert target.read_bytes() == b"new"
    assert os.listdir(tmp_path) == ["f.bin"]  # no temp files left behind


def test_missing_and_unreachable_give_clear_errors(s3_endpoint):
    with pytest.raises(SkinrayError, match="not found"):
        storage.read_bytes("/definitely/not/here.csv")
    bad = StorageConfig(endpoint_url="http://127.0.0.1:9", region="us-east-1")
    with pytest.raises(SkinrayError, match="cannot reach s3://.*retry later") as refused:
        storage.exists("s3://some-bucket/x", bad)
    assert refused.value.exit_code == 75  # an endpoint that does not answer now: a scheduler retries


def test_endpoint_and_region_defaults(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:1234")
    monkeypatch.delenv("AWS_REGION", raising=False)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    cfg = StorageConfig()
    assert cfg.resolved_endpoint() == "http://127.0.0.1:1234"
    assert cfg.default_region() == "eu-west-1"
    monkeypatch.setenv("AWS_REGION", "ap-south-1")  # AWS_REGION before AWS_DEFAULT_REGION, as in the AWS SDKs
    assert cfg.default_region() == "ap-south-1"
    assert StorageConfig(endpoint_url="http://x:1", region="us-west-2").region_for("any") == "us-west-2"


def test_each_bucket_gets_its_own_region(s3_endpoint, monkeypatch):
    """A bucket outside the default region is reached with its own region (pyarrow refuses a mismatch on AWS)."""
    bucket = f"skinray-west-{os.urandom(3).hex()}"
    storage.boto3_client().create_bucket(Bucket=bucket,
                                         CreateBucketConfiguration={"LocationConstraint": "eu-west-2"})
    cfg = StorageConfig()
    assert cfg.region_for(bucket) == "eu-west-2" and cfg.region_for(BUCKET) == "us-east-1"
    fs, _ = storage.filesystem(f"s3://{bucket}/x", cfg)
    assert fs.region == "eu-west-2" and storage.filesystem(f"s3://{BUCKET}/x", cfg)[0].region == "us-east-1"
    storage.write_json(f"s3://{bucket}/r.json", {"ok": 1})
    assert storage.read_json(f"s3://{bucket}/r.json") == {"ok": 1}
    assert storage.delta_storage_options(f"s3://{bucket}/t", cfg)["AWS_REGION"] == "eu-west-2"
    # an explicit storage.region wins (S3-compatible stores that sign with one fixed region)
    assert StorageConfig(region="us-east-1").region_for(bucket) == "us-east-1"
    monkeypatch.setenv("AWS_REGION", "ap-south-1")  # the environment is the fallback, not an override
    assert StorageConfig().region_for(bucket) == "eu-west-2"


def test_uri_normalisation(tmp_path):
    assert storage.normalize(f"file://{tmp_path}/x/") == f"{tmp_path}/x"
    assert storage.normalize("s3://b/p/") == "s3://b/p"
    assert storage.join("s3://b/p", "q", "r.json") == "s3://b/p/q/r.json"


def test_the_filesystem_for_libraries_writes_single_puts_without_markers(s3_endpoint):
    """What Ray Train writes checkpoints through: a pickled copy works, files are whole objects, no folder objects."""
    import pickle

    import pyarrow.fs as pafs

    root = f"s3://{BUCKET}/libfs-{os.urandom(4).hex()}"
    fs, path = single_put_fs.filesystem_for_libraries(root)
    fs = pickle.loads(pickle.dumps(fs))  # it travels to Ray Train's controller and workers
    fs.create_dir(f"{path}/checkpoint_000001", recursive=True)
    with fs.open_output_stream(f"{path}/checkpoint_000001/state.json") as f:
        f.write(b'{"epoch": 1}')
    with fs.open_output_stream(f"{path}/checkpoint_000001/empty.bin"):
        pass
    assert storage.read_bytes(f"{root}/checkpoint_000001/state.json") == b'{"epoch": 1}'
    assert fs.get_file_info(f"{path}/checkpoint_000001/empty.bin").size == 0
    bucket, _, prefix = root[len("s3://"):].partition("/")
    keys = sorted(o["Key"] for o in storage.boto3_client().list_objects_v2(Bucket=bucket, Prefix=prefix)["Contents"])
    assert keys == [f"{prefix}/checkpoint_000001/empty.bin", f"{prefix}/checkpoint_000001/state.json"]
    fs.delete_dir(f"{path}/checkpoint_000001")
    assert fs.get_file_info(f"{path}/checkpoint_000001/state.json").type == pafs.FileType.NotFound
    with pytest.raises(OSError):
        fs.delete_dir_contents("/", accept_root_dir=True)  # never a whole bucket


@pytest.mark.parametrize("message, transient", [
    ("AWS Error SLOW_DOWN during GetObject operation: Please reduce your request rate.", True),
    ("AWS Error NETWORK_CONNECTION during GetObject operation: curlCode: 7, Couldn't connect to server", True),
    ("When reading information for key 'x': AWS Error UNKNOWN (HTTP status 503) during HeadObject operation: "
     "HTTP response code: 503", True),
    ("AWS Error ACCESS_DENIED during GetObject operation: Access Denied", False),
    ("Path does not exist 'bucket/x.jpg'", False),
])
def test_passing_storage_failures_are_told_from_final_ones(message, transient):
    assert storage.is_transient(OSError(message)) is transient
    wrapped = storage._wrap("s3://b/x", OSError(message))
    assert (wrapped.exit_code == 75) is transient and wrapped.kind == ("temporary" if transient else "usage")
