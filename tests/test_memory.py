"""memory.py: this process's mappings of a file and their resident size, /proc/self/maps lines read right (paths with
spaces, other files), the RSS figures."""
import mmap

from mrad_core import memory


def test_resident_and_mapped_ranges_of_a_mapped_file(tmp_path):
    path = tmp_path / "weights file.bin"  # a space in the name: /proc/self/maps lines are split right
    data = bytes(range(256)) * (16 * 4096)
    path.write_bytes(data)
    assert memory.mapped_ranges(path) == [] and memory.resident_kb(path) == 0
    with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as m:
        assert m[::4096] == data[::4096]  # every page touched
        ranges = memory.mapped_ranges(path)
        assert ranges and all("w" not in perms for *_, perms in ranges)
        assert sum(end - start for start, end, _ in ranges) >= len(data)
        assert memory.resident_kb(path) >= 15 * 1024
    assert memory.mapped_ranges(path) == []


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
