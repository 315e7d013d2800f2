import pytest

from mmdiffusion.file_utils import atomic_directory, atomic_path


def test_atomic_path_renames_on_success_and_keeps_the_suffix(tmp_path):
    target = tmp_path / "sub" / "out.mp4"
    with atomic_path(target) as temporary:
        assert temporary.parent == target.parent and temporary.suffix == ".mp4" and not temporary.exists()
        temporary.write_text("new")
    assert target.read_text() == "new"
    assert [p.name for p in target.parent.iterdir()] == ["out.mp4"]


def test_atomic_path_refuses_to_overwrite_without_force(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(FileExistsError, match="already exists; pass force=True"):
        with atomic_path(target):
            pytest.fail("the block must not run")
    with atomic_path(target, force=True) as temporary:
        temporary.write_text("new")
    assert target.read_text() == "new"


def test_atomic_path_failure_leaves_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(target, force=True) as temporary:
            temporary.write_text("half")
            raise KeyboardInterrupt
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_atomic_path_rejects_a_folder(tmp_path):
    with pytest.raises(IsADirectoryError, match="is a folder"):
        with atomic_path(tmp_path, force=True):
            pass


def test_atomic_directory_builds_then_replaces_only_with_force(tmp_path):
    target = tmp_path / "model"
    with atomic_directory(target) as temporary:
        (temporary / "a.json").write_text("1")
    assert [p.name for p in target.iterdir()] == ["a.json"]

    with pytest.raises(FileExistsError, match="already exists"):
        with atomic_directory(target):
            pytest.fail("the block must not run")
    with pytest.raises(RuntimeError):
        with atomic_directory(target, force=True) as temporary:
            (temporary / "b.json").write_text("2")
            raise RuntimeError("conversion failed")
    assert [p.name for p in target.iterdir()] == ["a.json"]

    with atomic_directory(target, force=True) as temporary:
        (temporary / "b.json").write_text("2")
    assert [p.name for p in target.iterdir()] == ["b.json"]
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_atomic_directory_will_not_replace_a_file(tmp_path):
    target = tmp_path / "model"
    target.write_text("a file")
    with pytest.raises(FileExistsError, match="not a folder"):
        with atomic_directory(target, force=True):
            pass
