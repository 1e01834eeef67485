"""Atomic writes (torch_curriculum._io): whole-or-nothing, readable permissions, unique temps."""

from __future__ import annotations

import os
import stat
import threading

import numpy as np
import pytest

from torch_curriculum._io import atomic_path, atomic_write, atomic_write_text


@pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")
def test_new_files_get_the_umask_permissions_not_owner_only(tmp_path):
    old = os.umask(0o022)
    try:
        plain = tmp_path / "plain.txt"
        plain.write_text("x")
        a = atomic_write_text(tmp_path / "a.json", "{}")
        with atomic_path(tmp_path / "b.npy") as tmp:
            np.save(tmp, np.arange(3))
        os.umask(0o077)                                  # a stricter umask is honoured too
        c = atomic_write_text(tmp_path / "c.json", "{}")
    finally:
        os.umask(old)
    mode = stat.S_IMODE(plain.stat().st_mode)
    assert mode == 0o644
    assert stat.S_IMODE(a.stat().st_mode) == mode and stat.S_IMODE((tmp_path / "b.npy").stat().st_mode) == mode
    assert stat.S_IMODE(c.stat().st_mode) == 0o600


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "results.json"
    atomic_write_text(target, "old")
    with pytest.raises(RuntimeError, match="boom"), atomic_write(target) as f:
        f.write(b"half of the new")
        raise RuntimeError("boom")
    with pytest.raises(RuntimeError, match="boom"), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("boom")
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]


def test_atomic_path_replaces_the_target_by_name(tmp_path):
    target = tmp_path / "sub" / "m.npz"                   # the folder is created
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent and tmp.name.startswith(".m.npz.") and tmp.name.endswith(".tmp")
        with open(tmp, "wb") as f:
            np.savez(f, a=np.ones(2))
    with np.load(target) as z:
        assert z["a"].tolist() == [1.0, 1.0]
    assert [p.name for p in target.parent.iterdir()] == ["m.npz"]


def test_concurrent_writers_of_one_file_never_share_a_temp(tmp_path):
    # two --shard processes that finish together both write results.json: each write is whole
    target = tmp_path / "results.json"
    texts = [str(i) * 200_000 for i in range(8)]
    errors: list[BaseException] = []

    def write(text: str) -> None:
        try:
            for _ in range(5):
                atomic_write_text(target, text)
        except BaseException as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=write, args=(t,)) for t in texts]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert target.read_text() in texts and [p.name for p in tmp_path.iterdir()] == ["results.json"]
