"""What a replica reads the registry with (maas.registry.reader): the same versions, aliases,
files and errors as MLflow's client gives on the same registry, and no MLflow in the process.
Real MLflow writes a temporary SQLite registry; the reader reads MLflow's tables."""

import json
import subprocess
import sys

import pytest

from maas import crypto
from maas.registry import (IntegrityError, ModelNotFound, Registry, RegistryError,
                           RegistryReader, VersionNotFound, registry_view)
from maas.registry.artifacts import local_path
from tests.unit.test_registry import KEY_ENV, _tiny_onnx

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def registry(tmp_path_factory) -> dict:
    """Model 'read': v1 deleted, v2 production, v3 (sealed, with a tokenizer) canary, v4."""
    root = tmp_path_factory.mktemp("reader")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    key = crypto.new_key()
    with pytest.MonkeyPatch.context() as env:
        env.setenv(KEY_ENV, key)
        plain, sealed = Registry(uri, key_env=KEY_ENV), Registry(uri, KEY_ENV, encrypt=True)
        experiment = plain.client.create_experiment("t", artifact_location=(root / "a").as_uri())
        run_id = plain.client.create_run(experiment).info.run_id
        for number, writer in enumerate((plain, plain, sealed, plain), start=1):
            writer.register("read", _tiny_onnx(root / f"m{number}.onnx", seed=number),
                            run_id=run_id, metrics={"held_out_accuracy": 0.9 + number / 100},
                            variant="fp32", data_fingerprint=f"d{number}", config_digest="c",
                            assets={"tokenizer.json": b"{}"} if writer is sealed else None,
                            lineage={"base": "x"} if number == 4 else None)
        plain.promote("read", 2)
        sealed.promote("read", 3, "canary")
        plain.client.delete_model_version("read", "1")
        plain.client.create_registered_model("empty")
    return {"uri": uri, "key": key, "mlflow": plain}


def _outcome(read, *args):
    """What a read gives: its value, or its error's type, status and message."""
    try:
        value = read(*args)
    except RegistryError as exc:
        return type(exc).__name__, exc.status, str(exc)
    return value.model_dump() if hasattr(value, "model_dump") else value


def test_every_read_a_replica_makes_matches_mlflows(registry, monkeypatch):
    monkeypatch.setenv(KEY_ENV, registry["key"])
    mlflow, reader = registry["mlflow"], RegistryReader(registry["uri"], KEY_ENV)
    assert mlflow.aliases("read") == reader.aliases("read") == {"production": 2, "canary": 3}
    assert mlflow.version_numbers("read") == reader.version_numbers("read") == [2, 3, 4]
    assert reader.aliases("empty") == {} and reader.version_numbers("empty") == []
    # What `maas models list` and `show` print.
    assert [m.model_dump() for m in reader.models()] == [m.model_dump() for m in mlflow.models()]
    for name in ("read", "empty", "nope"):
        assert _outcome(lambda n: [v.model_dump() for v in reader.versions(n)], name) == \
            _outcome(lambda n: [v.model_dump() for v in mlflow.versions(n)], name), name
    refs = [None, "production", "canary", 2, "3", 4, 1, "1", 99, 2**40, "staging"]
    for name in ("read", "empty", "nope"):
        for ref in refs:
            assert _outcome(reader.get, name, ref) == _outcome(mlflow.get, name, ref), (name, ref)
    assert isinstance(_raised(reader.get, "nope"), ModelNotFound)
    assert isinstance(_raised(reader.get, "read", 1), VersionNotFound)  # deleted
    assert reader.get("read", 4).lineage == {"base": "x"}
    for number in (2, 3, 4):
        info = reader.get("read", number)
        assert reader.load(info) == mlflow.load(info) == mlflow.load(mlflow.get("read", number))
    sealed = reader.get("read", "canary")
    assert sealed.encrypted and reader.load_asset(sealed, "tokenizer.json") == b"{}"
    with pytest.raises(RegistryError, match="has no asset 'vocab.txt'"):
        reader.load_asset(sealed, "vocab.txt")


def _raised(read, *args) -> Exception:
    with pytest.raises(RegistryError) as caught:
        read(*args)
    return caught.value


def test_a_changed_file_or_an_unreadable_registry_is_refused_by_the_reader(registry, tmp_path):
    reader = RegistryReader(registry["uri"])
    info = reader.get("read", 4)
    stored = local_path(f"{info.source}/model.onnx")
    original = stored.read_bytes()
    try:
        stored.write_bytes(original + b" ")
        with pytest.raises(IntegrityError, match="the stored artifact has sha256"):
            reader.load(info)
        stored.unlink()
        with pytest.raises(IntegrityError, match="cannot be read"):
            reader.load(info)
    finally:
        stored.write_bytes(original)
    empty = RegistryReader(f"sqlite:///{tmp_path / 'not-mlflow.db'}")
    assert _raised(empty.aliases, "read").status == 503
    assert "cannot be read" in str(_raised(empty.aliases, "read"))


def test_the_reader_lets_each_database_quote_its_reserved_words():
    """``key`` is reserved on MySQL and SQL Server: the tag query must quote it there."""
    from sqlalchemy.dialects import mssql, mysql

    from maas.registry.reader import select

    query = select("tags", ("key", "value"), "m", 1)
    assert "`key`" in str(query.compile(dialect=mysql.dialect()))
    assert "[key]" in str(query.compile(dialect=mssql.dialect()))


def test_a_replica_reads_a_database_registry_without_importing_mlflow(registry):
    """The point of the reader: a serving replica's process never loads MLflow."""
    code = (
        "import json, sys\n"
        "from maas.registry import registry_view\n"
        "from serve_apps.versions import load\n"
        f"loaded = load(registry_view({registry['uri']!r}, 'MAAS_MODEL_KEY'), 'read', 2, 1)\n"
        "print(json.dumps([loaded.info.version, sorted(m for m in sys.modules\n"
        "                  if m.split('.')[0] == 'mlflow')]))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, check=True)
    assert json.loads(done.stdout.splitlines()[-1]) == [2, []]
    assert isinstance(registry_view("http://127.0.0.1:5000", KEY_ENV), Registry)
    assert isinstance(registry_view("postgresql+psycopg://u@h/db", KEY_ENV), RegistryReader)
    assert local_path("dbfs:/models/m") is None and local_path("s3://b/m") is None
