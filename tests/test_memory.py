"""memory.py: the mapped pages of a weights file are dropped (and read back intact when touched again), writable
mappings are left alone, and /proc/self/maps lines are read right (paths with spaces, other files)."""
import mmap
import time

import pytest

from mrad_core import memory


@pytest.fixture
def mapped(tmp_path):
    """A 16 MB file with a space in its name, mapped read-only and fully touched."""
    path = tmp_path / "weights file.bin"
    data = bytes(range(256)) * (16 * 4096)
    path.write_bytes(data)
    with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as m:
        assert m[::4096] == data[::4096]
        if memory.page_out(path) == 0:
            pytest.skip("this system cannot page out (Linux >= 5.4 with MADV_PAGEOUT)")
        m[::4096]  # resident again
        yield path, m, data


def test_page_out_drops_the_pages_and_keeps_the_contents(mapped):
    path, m, data = mapped
    assert memory.resident_kb(path) >= 15 * 1024
    assert memory.page_out(path) >= len(data)
    assert memory.resident_kb(path) < 1024
    assert m[:] == data  # read back from the file


def test_paging_out_works_while_the_block_runs(mapped):
    path, m, data = mapped
    with memory.paging_out(path, interval=0.01):
        assert m[::4096] == data[::4096]
        deadline = time.monotonic() + 5
        while memory.resident_kb(path) > 1024 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert memory.resident_kb(path) <= 1024
    assert memory.resident_kb(path) < 1024


def test_writable_mappings_are_left_alone(tmp_path):
    path = tmp_path / "scratch.bin"
    path.write_bytes(b"\0" * (1 << 20))
    with open(path, "r+b") as fh, mmap.mmap(fh.fileno(), 0) as m:
        m[:4] = b"edit"
        assert memory.mapped_ranges(path) and memory.page_out(path) == 0
        assert m[:4] == b"edit"


def test_maps_lines(tmp_path):
    maps = tmp_path / "maps"
    target = tmp_path / "a b.bin"
    maps.write_text(
        f"7f00-7f10 r--s 00000000 fe:00 1 {target}\n"
        f"7f10-7f20 rw-p 00000000 fe:00 1 {target}\n"
        f"7f20-7f30 r--s 00000000 fe:00 2 {target}.other\n"
        "7f30-7f40 rw-p 00000000 00:00 0\n")
    assert memory.mapped_ranges(target, maps) == [(0x7f00, 0x7f10, "r--s"), (0x7f10, 0x7f20, "rw-p")]
    assert memory.mapped_ranges(tmp_path / "none", maps) == []


def test_rss_reading():
    r = memory.rss_mb()
    assert 0 < r["rss_mb"] <= r["peak_rss_mb"]
