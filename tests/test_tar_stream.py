"""The loader's tar reader gives the samples webdataset's ``tarfile_samples`` gives, for every tar
format, and turns damage into errors the skip counter can count."""

import io
import tarfile

import pytest
import webdataset as wds

from vlp.data.tar_stream import tar_members, tar_samples

FILES = [
    ("d/" + "x" * 120 + "/k1.jpg", b"abc"),  # longer than 100 bytes: ustar prefix, GNU 'L' or pax 'path'
    ("d/" + "x" * 120 + "/k1.txt", "h\u00e9llo ".encode() * 200),
    ("k2.JPG", b"\xff\xd8" + bytes(range(256)) * 3),  # upper-case field, not a multiple of 512 bytes
    ("k2.txt", b""),
    ("a.b.TXT", b"multi-dot field"),
    ("__meta__", b"skipped"),
    ("noext", b"skipped too"),
    ("k3.json", b'{"captions": ["one"]}'),
]


def _archive(fmt):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        for name, data in FILES:
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), 1_700_000_000.5
            tar.addfile(info, io.BytesIO(data))
        folder = tarfile.TarInfo("folder")
        folder.type = tarfile.DIRTYPE
        tar.addfile(folder)
        link = tarfile.TarInfo("k4.jpg")
        link.type, link.linkname = tarfile.SYMTYPE, "y" * (150 if fmt != tarfile.USTAR_FORMAT else 90)
        tar.addfile(link)
    return buf.getvalue()


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_same_samples_as_webdataset(tmp_path, fmt):
    path = tmp_path / "shard.tar"
    path.write_bytes(_archive(fmt))
    want = list(wds.tarfile_samples([{"url": str(path)}]))
    got = list(tar_samples(io.BytesIO(path.read_bytes()), str(path), handler=lambda e: False))
    assert got == want
    assert [s["__key__"] for s in got] == ["d/" + "x" * 120 + "/k1", "k2", "a", "k3"]
    assert got[0]["txt"] == FILES[1][1] and got[1]["jpg"] == FILES[2][1] and got[2]["b.txt"] == b"multi-dot field"


def test_members_include_large_and_base256_sizes():
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        info = tarfile.TarInfo("big.bin")
        info.size = 3000
        tar.addfile(info, io.BytesIO(bytes(3000)))
    raw = bytearray(buf.getvalue())
    raw[124:136] = b"\x80" + (3000).to_bytes(11, "big")  # base-256 size, as GNU tar writes sizes >= 8 GiB
    raw[148:156] = b"        "
    raw[148:156] = b"%06o\0 " % sum(raw[:512])
    assert [(n, len(d)) for n, d in tar_members(io.BytesIO(bytes(raw)))] == [("big.bin", 3000)]


def test_damage_is_an_error_and_duplicates_go_to_the_handler():
    raw = _archive(tarfile.PAX_FORMAT)
    with pytest.raises(tarfile.ReadError, match="unexpected end of data"):
        list(tar_samples(io.BytesIO(raw[: len(raw) // 2 + 100]), "cut.tar", handler=lambda e: True))
    corrupt = bytearray(raw)
    corrupt[0] ^= 0x55  # first header no longer matches its checksum
    with pytest.raises(tarfile.ReadError, match="checksum"):
        list(tar_members(io.BytesIO(bytes(corrupt))))
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in [("k.txt", b"first"), ("k.txt", b"again"), ("k.jpg", b"j")]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    errors = []
    (sample,) = tar_samples(io.BytesIO(buf.getvalue()), "dup.tar", handler=lambda e: errors.append(e) or True)
    assert sample["txt"] == b"first" and sample["jpg"] == b"j"
    assert len(errors) == 1 and "duplicate" in str(errors[0])
    with pytest.raises(ValueError, match="duplicate"):
        list(tar_samples(io.BytesIO(buf.getvalue()), "dup.tar", handler=lambda e: False))
