"""Files the tool writes honour the umask, as the PNGs beside them do: teammates and web servers can read results."""

import os
import stat

import pytest

from dpo_diff.space import SearchSpace, atomic_write_text, save_spaces


@pytest.fixture
def umask():
    """Set the process umask for one test, then restore it."""
    old = os.umask(0o022)
    try:
        yield os.umask
    finally:
        os.umask(old)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("mask, expected", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_atomic_writes_honour_the_umask(tmp_path, umask, mask, expected):
    umask(mask)
    atomic_write_text(tmp_path / "result.json", "{}\n")
    save_spaces([SearchSpace("a cat")], tmp_path / "space.json")
    assert mode(tmp_path / "result.json") == expected and mode(tmp_path / "space.json") == expected
    atomic_write_text(tmp_path / "result.json", "{\"again\": 1}\n")  # replacing keeps the same rule
    assert mode(tmp_path / "result.json") == expected
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.json", "space.json"]  # no temporary file left


def test_a_failed_write_leaves_no_temporary_file(tmp_path, umask):
    with pytest.raises(TypeError):
        atomic_write_text(tmp_path / "x.json", None)  # type: ignore[arg-type]
    assert list(tmp_path.iterdir()) == []
