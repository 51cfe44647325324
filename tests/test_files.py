"""Saving never destroys what sits at the target path, and new files get
the permissions every other tool would give them."""

import os
import stat

import pytest

from piggyback_avalanche.files import NotARegularFileError, write_atomically


def _write(path, text="new"):
    write_atomically(path, lambda file: file.write(text))


def test_a_symbolic_link_is_written_through_and_stays_a_link(tmp_path):
    real = tmp_path / "real.txt"
    real.write_text("old")
    link = tmp_path / "link.txt"
    link.symlink_to(real)
    _write(link)
    assert link.is_symlink() and os.readlink(link) == str(real)
    assert real.read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["link.txt", "real.txt"]


def test_a_dangling_link_creates_the_file_it_names(tmp_path):
    link = tmp_path / "link.txt"
    link.symlink_to(tmp_path / "sub" / "made.txt")
    _write(link)
    assert (tmp_path / "sub" / "made.txt").read_text() == "new" and link.is_symlink()


@pytest.mark.parametrize("kind", ["folder", "named pipe", "character device"])
def test_targets_that_are_not_regular_files_are_refused_and_left_alone(tmp_path, kind):
    path = tmp_path / "target"
    if kind == "folder":
        path.mkdir()
        (path / "inside").write_text("kept")
    elif kind == "named pipe":
        os.mkfifo(path)
    else:
        if os.geteuid() != 0:
            pytest.skip("creating a device node needs root")
        os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(1, 3))  # a /dev/null twin
    before = os.lstat(path)
    with pytest.raises(NotARegularFileError, match=f"Cannot save to {path}: it is a {kind}.*regular file"):
        _write(path)
    after = os.lstat(path)
    assert (after.st_mode, after.st_ino, after.st_rdev) == (before.st_mode, before.st_ino, before.st_rdev)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["target"]  # no temporary file left


def test_a_link_to_a_device_is_refused(tmp_path):
    link = tmp_path / "null"
    link.symlink_to("/dev/null")
    with pytest.raises(NotARegularFileError, match="it is a character device \\(/dev/null, through a symbolic link\\)"):
        _write(link)
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)


def test_new_files_follow_the_umask_and_replaced_files_keep_their_mode(tmp_path):
    previous = os.umask(0o027)
    try:
        _write(tmp_path / "new.txt")
        assert stat.S_IMODE(os.stat(tmp_path / "new.txt").st_mode) == 0o640
    finally:
        os.umask(previous)
    kept = tmp_path / "kept.txt"
    kept.write_text("old")
    os.chmod(kept, 0o604)
    _write(kept)
    assert stat.S_IMODE(os.stat(kept).st_mode) == 0o604 and kept.read_text() == "new"
