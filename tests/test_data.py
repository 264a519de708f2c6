"""Byte corpora, the fixed split and the batches (fast: a fake stdlib tree, no real stdlib)."""

from __future__ import annotations

import json

import pytest
import torch

from xforget.data import DataError, TrainBatches, load_corpus, split_corpus, val_windows
import xforget.data.corpora.shakespeare as shakespeare_module
from xforget.data.corpora.shakespeare import load_shakespeare
from xforget.data.corpora.stdlib import build_stdlib_corpus, load_stdlib_corpus, stdlib_documents_dir, stdlib_files
from xforget.data.prepare_inputs import open_source
from xforget.train.config import DataConfig

FAKE_TREE = {
    "zeta.py": b"z = 1\n",
    "abc.py": b"a = 1",  # no trailing newline: one is added
    "pkg/__init__.py": b"",
    "pkg/mod.py": b"def f():\n    return 2\n",
    "pkg/tests/test_mod.py": b"EXCLUDED tests\n",
    "test/test_x.py": b"EXCLUDED test\n",
    "unittest/test/t.py": b"EXCLUDED nested test\n",
    "idlelib/idle_test/t.py": b"EXCLUDED idle_test\n",
    "idlelib/run.py": b"idle = True\n",
    "site-packages/numpy/core.py": b"EXCLUDED site\n",
    "dist-packages/x.py": b"EXCLUDED dist\n",
    "notes.txt": b"EXCLUDED not python\n",
}


@pytest.fixture
def fake_stdlib(tmp_path):
    root = tmp_path / "lib"
    for rel, data in FAKE_TREE.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root


def test_stdlib_corpus_excludes_site_packages_and_tests(fake_stdlib):
    assert stdlib_files(fake_stdlib) == ["abc.py", "idlelib/run.py", "pkg/__init__.py", "pkg/mod.py", "zeta.py"]
    data, _ = build_stdlib_corpus(fake_stdlib)
    assert b"EXCLUDED" not in data
    assert data == b"a = 1\n" + b"idle = True\n" + b"def f():\n    return 2\n" + b"z = 1\n"


def test_stdlib_corpus_is_deterministic_and_cached_with_metadata(fake_stdlib, tmp_path):
    first, _ = build_stdlib_corpus(fake_stdlib)
    assert build_stdlib_corpus(fake_stdlib)[0] == first
    cache = tmp_path / "cache"
    cache.mkdir()
    corpus = load_stdlib_corpus(cache, root=fake_stdlib)
    assert corpus.data == first
    (meta_file,) = cache.glob("stdlib-py*.json")
    meta = json.loads(meta_file.read_text())
    assert meta["bytes"] == len(first) and meta["files"] == 5 and meta["python_version"].count(".") == 2
    assert meta["sha256"] == corpus.meta["sha256"]
    (blob,) = cache.glob("stdlib-py*.bin")
    blob.write_bytes(b"corrupted")  # a cache that does not check out is rebuilt
    assert load_stdlib_corpus(cache, root=fake_stdlib).data == first
    assert blob.read_bytes() == first


def test_stdlib_as_one_document_per_file_is_the_blob_cut_at_file_boundaries(fake_stdlib, tmp_path):
    # prepare.input=stdlib_files: the documents data.pack_documents=true cuts at, the same bytes as the blob
    cache = tmp_path / "cache"
    cache.mkdir()
    blob = load_stdlib_corpus(cache, root=fake_stdlib)
    path, sha = stdlib_documents_dir(cache, root=fake_stdlib)
    source = open_source(str(path))
    assert source.single_file() is None and source.count_documents() == 5  # the empty __init__.py too
    assert b"".join(f.read_bytes() for f in source.files) == blob.data and sha == blob.meta["sha256"]
    assert [f.relative_to(path).as_posix() for f in source.files] == stdlib_files(fake_stdlib)
    (path / "abc.py").write_bytes(b"stale")
    (path / ".sha256").write_text("0" * 64)  # a directory that does not check out is built again
    assert stdlib_documents_dir(cache, root=fake_stdlib)[0] == path
    assert (path / "abc.py").read_bytes() == b"a = 1\n"


def test_compare_prepare_input_stdlib_files_names_its_own_data(fake_stdlib, tmp_path, monkeypatch):
    from xforget.compare.prepared import prepared_dir, resolve_input
    from xforget.data.prepare import PrepareConfig

    monkeypatch.setenv("XFORGET_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr("xforget.data.corpora.stdlib.stdlib_root", lambda: fake_stdlib)
    monkeypatch.setattr("xforget.compare.prepared.stdlib_root", lambda: fake_stdlib)
    (blob, blob_sha), (files, files_sha) = resolve_input("stdlib"), resolve_input("stdlib_files")
    assert open_source(files).count_documents() == 5 and open_source(blob).count_documents() == 1
    assert files_sha != blob_sha  # other documents, other prepared data (and other runs)
    dirs = {prepared_dir(PrepareConfig(input=spec, tokenizer="bpe"), tmp_path, sha).name
            for spec, sha in (("stdlib", blob_sha), ("stdlib_files", files_sha))}
    assert len(dirs) == 2 and any(d.startswith("stdlib_files-bpe4096-") for d in dirs)


def test_split_is_the_last_fraction_of_the_bytes():
    data = bytes(range(256)) * 40  # 10240 bytes
    split = split_corpus(data, 0.05, seq_len=16)
    n_val = int(len(data) * 0.05)
    assert split.val.numel() == n_val and split.train.numel() == len(data) - n_val
    assert bytes(split.val.tolist()) == data[-n_val:]
    assert bytes(split.train.tolist()) == data[:-n_val]
    with pytest.raises(DataError, match="too small"):
        split_corpus(data[:100], 0.05, seq_len=16)


def test_train_batches_are_a_pure_function_of_seed_and_step():
    train = torch.frombuffer(bytearray(bytes(range(256)) * 100), dtype=torch.uint8)
    a = TrainBatches(train, seq_len=16, batch_size=4, grad_accum=2, seed=3)
    b = TrainBatches(train, seq_len=16, batch_size=4, grad_accum=2, seed=3)
    assert a(7).shape == (2, 4, 17) and a(7).dtype == torch.long
    assert torch.equal(a(7), b(7)) and torch.equal(a(7), a(7))
    assert not torch.equal(a(7), a(8))
    assert not torch.equal(a(7), TrainBatches(train, 16, 4, 2, seed=4)(7))
    # windows are contiguous slices of the training bytes
    _start_of(train, a(0)[1, 3])
    # gradient accumulation 4 x 8 sees the same windows as one batch of 32
    big = TrainBatches(train, 16, 32, 1, seed=0)(5)
    acc = TrainBatches(train, 16, 8, 4, seed=0)(5)
    assert torch.equal(big.reshape(-1, 17), acc.reshape(-1, 17))


def _start_of(train, window):
    for s in range(train.numel() - window.numel() + 1):
        if torch.equal(train[s:s + window.numel()].long(), window):
            return s
    raise AssertionError("window is not a slice of the data")


def test_val_windows_are_fixed_and_evenly_spaced():
    val = torch.arange(1000, dtype=torch.long) % 256
    w = val_windows(val.to(torch.uint8), seq_len=10, count=5)
    assert w.shape == (5, 11)
    starts = [0, 247, 494, 742, 989]  # linspace(0, 1000 - 11, 5), rounded
    for row, s in zip(w, starts):
        assert torch.equal(row, val[s:s + 11])
    assert torch.equal(w, val_windows(val.to(torch.uint8), 10, 5))


def test_missing_or_empty_data_file_is_one_clear_error(tmp_path):
    missing = tmp_path / "nope.txt"
    with pytest.raises(DataError) as info:
        load_corpus(DataConfig(name="text", path=str(missing)))
    assert str(missing) in str(info.value) and "not found" in str(info.value)
    (tmp_path / "empty.txt").write_bytes(b"")
    with pytest.raises(DataError, match="empty"):
        load_corpus(DataConfig(name="text", path=str(tmp_path / "empty.txt")))
    with pytest.raises(DataError, match="directory"):
        load_corpus(DataConfig(name="text", path=str(tmp_path)))


def test_text_corpus_reads_bytes(tmp_path):
    path = tmp_path / "t.txt"
    path.write_bytes("héllo\n".encode())
    corpus = load_corpus(DataConfig(name="text", path=str(path)))
    assert corpus.data == "héllo\n".encode() and corpus.meta["bytes"] == 7


@pytest.fixture
def shakespeare_path(tmp_path, monkeypatch):
    """A stand-in for the real file (tests read nothing outside the repository): its sha256 becomes the reference."""
    import hashlib

    path = tmp_path / "stand-in.txt"
    path.write_bytes(b"First Citizen:\nBefore we proceed any further, hear me speak.\n" * 50)
    monkeypatch.setattr(shakespeare_module, "SHA256", hashlib.sha256(path.read_bytes()).hexdigest())
    return path


def test_shakespeare_local_copy_and_offline_download_error(tmp_path, shakespeare_path):
    SHA256 = shakespeare_module.SHA256
    corpus = load_shakespeare(shakespeare_path, cache=tmp_path)
    assert corpus.meta["sha256"] == SHA256 and corpus.meta["matches_reference"]
    other = tmp_path / "other.txt"
    other.write_bytes(b"not the reference")
    assert not load_shakespeare(other, cache=tmp_path).meta["matches_reference"]
    with pytest.raises(DataError) as info:  # nothing listens on port 9: a fast, offline-like failure
        load_shakespeare(None, cache=tmp_path, url="http://127.0.0.1:9/input.txt", timeout=5)
    assert "data.path=FILE" in str(info.value) and "127.0.0.1:9" in str(info.value)


def test_shakespeare_uses_a_verified_cached_download(tmp_path, shakespeare_path):
    SHA256 = shakespeare_module.SHA256
    (tmp_path / "tinyshakespeare.txt").write_bytes(shakespeare_path.read_bytes())
    corpus = load_shakespeare(None, cache=tmp_path, url="http://127.0.0.1:9/never-called")
    assert corpus.meta["sha256"] == SHA256
    (tmp_path / "tinyshakespeare.txt").write_bytes(b"tampered")  # bad checksum -> download again (fails here)
    with pytest.raises(DataError):
        load_shakespeare(None, cache=tmp_path, url="http://127.0.0.1:9/input.txt", timeout=5)


@pytest.mark.parametrize("task", ["mqar", "needle"])
def test_synthetic_tasks_are_data_sets(task):
    from xforget.data.synthetic import load_synthetic
    from xforget.train.config import ConfigError, compose_config, to_train_config

    corpus = load_corpus(DataConfig(name=task, num_bytes=4096, example_len=64))
    assert corpus.name == task and corpus.data == load_synthetic(task, 0, 4096, 64).data
    assert corpus.meta["example_len"] == 64 and len(corpus.data) == 4096
    cfg = to_train_config(compose_config([f"data={task}"]))
    assert cfg.data.name == task and cfg.data.num_bytes is None
    with pytest.raises(ConfigError, match="data.example_len"):
        to_train_config(compose_config([f"data={task}", "data.example_len=3"]))
    with pytest.raises(ConfigError, match="applies only to the synthetic data sets"):
        to_train_config(compose_config(["data=stdlib", "data.num_bytes=100"]))
