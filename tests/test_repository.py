import pytest

from inpaint.core import repository


def test_versions_are_numbered_in_order(tmp_path):
    for expected in (1, 2, 3):
        with repository.staged_version(tmp_path) as staged:
            (staged.path / "saved_model.pb").write_bytes(b"x")
        assert staged.published == tmp_path / str(expected)
    (tmp_path / "10").mkdir()
    (tmp_path / "not-a-version").mkdir()
    with repository.staged_version(tmp_path) as staged:
        pass
    assert staged.published.name == "11"
    assert repository.list_versions(tmp_path) == [1, 2, 3, 10, 11]


def test_failed_version_leaves_nothing_behind(tmp_path):
    with pytest.raises(RuntimeError):
        with repository.staged_version(tmp_path) as staged:
            (staged.path / "half.pb").write_bytes(b"x")
            raise RuntimeError("export failed")
    assert list(tmp_path.iterdir()) == []


def test_version_lookup_errors(tmp_path):
    with pytest.raises(repository.RepositoryError, match="no model versions"):
        repository.version_dir(tmp_path)
    (tmp_path / "2").mkdir()
    assert repository.version_dir(tmp_path) == tmp_path / "2"
    with pytest.raises(repository.RepositoryError, match="version 7 does not exist"):
        repository.version_dir(tmp_path, 7)


def test_write_atomically_replaces_whole_files(tmp_path):
    target = tmp_path / "model.onnx"
    repository.write_atomically(target, b"first")
    repository.write_atomically(target, b"second")
    assert target.read_bytes() == b"second"
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]
