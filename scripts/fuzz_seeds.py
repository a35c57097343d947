#!/usr/bin/env python3
"""Writes the seed inputs of the fuzz targets (see fuzz/README.md) into OUT_DIR/<target>/.

    fuzz_seeds.py OUT_DIR [TESTDATA_DIR]

Two kinds of seeds:

* synthetic ones made here: small ESP app images for a few chips (laid out as esptool
  elf2image writes them, like tests/support/esp_image_synth.rs) and firmware bundles of them
  (ZIPs with the five entries for model code "fuzz", the image embedding the SHA-256 of the
  bundle's ELF, so the bundle passes every check). Nothing binary is kept in the repository.
* when TESTDATA_DIR (the shared `testdata/esp` folder) exists, copies of its third-party ESP
  images and core dumps. They are read at run time only and written to OUT_DIR, which lies
  outside the repository; they must never be committed.

Standard library only.
"""

import hashlib
import io
import json
import pathlib
import shutil
import struct
import sys
import zipfile
import zlib

CODE = "fuzz"

# (name, chip id, a DROM load address, a DRAM load address, an IRAM load address)
CHIPS = [
    ("esp32", 0, 0x3F40_0020, 0x3FFB_0000, 0x4008_0000),
    ("esp32c3", 5, 0x3C00_0020, 0x3FC8_0000, 0x4038_0000),
    ("esp32c6", 13, 0x4200_0020, 0x4080_0000, 0x4080_8000),
]


def app_desc(version: bytes, elf_sha256: bytes, project=b"fuzz_node", idf=b"v5.2.2") -> bytes:
    """A 256-byte esp_app_desc_t."""
    out = bytearray(256)
    struct.pack_into("<II", out, 0, 0xABCD5432, 3)  # magic, secure_version
    out[16 : 16 + len(version)] = version
    out[48 : 48 + len(project)] = project
    out[80:88] = b"16:23:40"
    out[96:107] = b"Jul 25 2024"
    out[112 : 112 + len(idf)] = idf
    out[144:176] = elf_sha256
    return bytes(out)


def image(chip_id: int, segments, hash_appended=True) -> bytes:
    """An image: header, segments (load address, data), zero padding to 15 mod 16, the XOR
    checksum byte, and the SHA-256 of all that when hash_appended."""
    out = bytearray([0xE9, len(segments), 2, 0x10])
    out += struct.pack("<I", 0x4008_0AF0)
    out += bytes([0xEE, 0, 0, 0])
    out += struct.pack("<HBHH", chip_id, 0, 0, 399)
    out += bytes(4) + bytes([1 if hash_appended else 0])
    checksum = 0xEF
    for addr, data in segments:
        out += struct.pack("<II", addr, len(data)) + data
        for b in data:
            checksum ^= b
    while len(out) % 16 != 15:
        out.append(0)
    out.append(checksum)
    if hash_appended:
        out += hashlib.sha256(out).digest()
    return bytes(out)


def app_image(chip, version: bytes, elf: bytes, hash_appended=True) -> bytes:
    _, chip_id, drom, dram, iram = chip
    desc = app_desc(version, hashlib.sha256(elf).digest())
    tail = bytes((i * 31) & 0xFF for i in range(64))
    return image(
        chip_id,
        [(drom, desc + tail), (dram, bytes([0x50]) * 16), (iram, bytes([0xA5]) * 8)],
        hash_appended,
    )


def bundle(entries, compression=zipfile.ZIP_STORED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as z:
        for name, data in entries:
            info = zipfile.ZipInfo(name, date_time=(2024, 7, 25, 16, 23, 40))
            info.compress_type = compression
            z.writestr(info, data)
    return buf.getvalue()


def build(chip, version: str, hash_appended=True):
    elf = b"\x7fELF fake firmware ELF of " + version.encode()
    return [
        (f"{CODE}.bin", app_image(chip, version.encode(), elf, hash_appended)),
        (f"{CODE}.elf", elf),
        (f"{CODE}.map", f"Memory map of {version}\n".encode()),
        ("sdkconfig", f'CONFIG_APP_VERSION="{version}"\n'.encode()),
        (
            "version.json",
            json.dumps(
                {"git_commit": "0296947", "idf_version": "v5.2.2", "firmware_version": version}
            ).encode(),
        ),
    ]


def write(dir: pathlib.Path, name: str, data: bytes):
    dir.mkdir(parents=True, exist_ok=True)
    (dir / name).write_bytes(data)


# The version word's low 16 bits -> size of the dump's checksum (CRC32 or SHA-256).
CHECKSUM_SIZE = {
    0x0001: 4, 0x0002: 4, 0x0003: 4,  # binary V1, V2, V2.1
    0x0100: 4, 0x0101: 32, 0x0102: 4, 0x0103: 32, 0x0104: 32,  # ELF CRC32/SHA-256
}


def without_checksum(raw: bytes):
    """A raw dump cut to tot_len minus its checksum: what the checksummed targets expect (they
    append a correct checksum themselves). None when the header does not add up."""
    if len(raw) < 8:
        return None
    tot_len, version = struct.unpack_from("<II", raw, 0)
    size = CHECKSUM_SIZE.get(version & 0xFFFF)
    if size is None or not size < tot_len <= len(raw):
        return None
    return raw[: tot_len - size]


def tiny_bin_dump() -> bytes:
    """A minimal binary V2.1 dump (esp32, no tasks) with its CRC32, as in
    crates/esp-coredump/tests/robustness.rs."""
    d = struct.pack("<6I", 28, 0x0000_0003, 0, 0x154, 0, 300)
    return d + struct.pack("<I", zlib.crc32(d))


def tiny_elf_sha_dump() -> bytes:
    """A minimal ELF V2.2 dump (esp32c6, SHA-256) with an empty ELF core."""
    elf = bytearray(52)
    elf[:7] = b"\x7fELF\x01\x01\x01"
    elf[16] = 4  # ET_CORE
    elf[18] = 0xF3  # EM_RISCV
    elf[28] = 52  # e_phoff
    elf[42] = 32  # e_phentsize
    d = struct.pack("<3I", 12 + len(elf) + 32, 0x000D_0104, 1) + bytes(elf)
    return d + hashlib.sha256(d).digest()


def main():
    if len(sys.argv) not in (2, 3):
        sys.exit(__doc__)
    out = pathlib.Path(sys.argv[1])
    testdata = pathlib.Path(sys.argv[2]) if len(sys.argv) == 3 else None
    if out.exists():
        shutil.rmtree(out)

    # Firmware bundles: stored entries (the target fixes their CRCs), one deflated.
    seeds = out / "bundle"
    for chip in CHIPS:
        write(seeds, f"{chip[0]}.zip", bundle(build(chip, "1.0.0")))
    write(seeds, "esp32_no_hash.zip", bundle(build(CHIPS[0], "2.0.0-rc1", hash_appended=False)))
    write(seeds, "esp32_deflated.zip", bundle(build(CHIPS[0], "1.0.1"), zipfile.ZIP_DEFLATED))
    write(seeds, "extra_entry.zip", bundle(build(CHIPS[0], "1.0.2") + [("README", b"x")]))

    # ESP images.
    seeds = out / "parse_app_image"
    for chip in CHIPS:
        elf = chip[0].encode()
        write(seeds, f"{chip[0]}.bin", app_image(chip, b"1.0.0", elf))
        write(seeds, f"{chip[0]}_no_hash.bin", app_image(chip, b"1.0.0", elf, False))
    write(seeds, "app_desc.bin", app_desc(b"1.0.0", bytes(32)))

    # Core dumps: two tiny synthetic ones, whole for parse_dump and without their checksum for
    # the targets that append a correct one.
    for name, raw in (
        ("tiny_bin_v2_1.bin", tiny_bin_dump()),
        ("tiny_elf_sha256.bin", tiny_elf_sha_dump()),
    ):
        write(out / "parse_dump", name, raw)
        for target in ("parse_dump_checksummed", "analyse"):
            write(out / target, name, without_checksum(raw))

    if testdata is None or not testdata.is_dir():
        print(f"fuzz_seeds: no test data ({testdata}); synthetic seeds only", file=sys.stderr)
        return
    for path in sorted((testdata / "images").glob("*/*.bin")):
        write(seeds, f"{path.parent.name}_{path.name}", path.read_bytes())

    # Core dumps: every encoding for parse_dump; raw dumps without their checksum for the
    # targets that append a correct one.
    for case in sorted(p for p in (testdata / "coredump").iterdir() if p.is_dir()):
        for path in sorted(case.glob("coredump*")):
            if path.suffix == ".elf" and not path.name.endswith(".core.elf"):
                continue
            write(out / "parse_dump", f"{case.name}_{path.name}", path.read_bytes())
            if path.name.endswith(".core.elf"):
                # ELF cores carry no checksum: the analyse target takes them as they are.
                write(out / "analyse", f"{case.name}.core.elf", path.read_bytes())
            if path.suffix == ".bin":
                cut = without_checksum(path.read_bytes())
                if cut is not None:
                    for target in ("parse_dump_checksummed", "analyse"):
                        write(out / target, f"{case.name}.bin", cut)


if __name__ == "__main__":
    main()
