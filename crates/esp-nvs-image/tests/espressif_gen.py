#!/usr/bin/env python3
"""Writes NVS partition images with Espressif's own generator, for comparison.

Used by `tests/espressif_generator.rs`, which checks that `esp-nvs-image` is
byte-identical to `esp-idf-nvs-partition-gen` 0.2.0 (PyPI). It drives the
library the way the Python iotsupport service did
(`backend/app/utils/nvs_generator.py`): a version 2, unencrypted, read-only
image (only used pages written), one namespace, string entries, padded with
0xFF to the partition size.

Input on stdin, a JSON list of cases:
    [{"name": "golden", "namespace": "prov", "size": 12288,
      "entries": [["device_key", "abc12345"], ...]}, ...]
Output on stdout, a JSON list in the same order, one of:
    {"name": ..., "image_hex": "feffffff..."}
    {"name": ..., "error": "PageFullError: ..."}
An error is the generator refusing the input (the Rust side then expects to
refuse it too). Exit status 3 means the generator module is not installed.
"""
import contextlib
import io
import json
import sys

try:
    from esp_idf_nvs_partition_gen.nvs_partition_gen import (
        Page,
        nvs_close,
        nvs_open,
        write_entry,
    )
except ImportError as e:  # the Rust test turns this into a SKIP line
    print(f"esp-idf-nvs-partition-gen is not installed: {e}", file=sys.stderr)
    sys.exit(3)


def generate(namespace, size, entries):
    buf = io.BytesIO()
    nvs = nvs_open(buf, size, Page.VERSION2, read_only=True)
    write_entry(nvs, namespace, "namespace", "", "")
    for key, value in entries:
        write_entry(nvs, key, "data", "string", value)
    nvs_close(nvs)
    image = buf.getvalue()
    # The generator writes only the pages it used; the rest of the partition
    # is erased flash.
    return image + b"\xff" * (size - len(image))


def main():
    results = []
    for case in json.load(sys.stdin):
        out = {"name": case["name"]}
        try:
            # The generator prints ("\nError:") on stdout when it raises
            # InputError; keep stdout for the JSON answer.
            with contextlib.redirect_stdout(sys.stderr):
                image = generate(case["namespace"], case["size"], case["entries"])
            out["image_hex"] = image.hex()
        except Exception as e:  # noqa: BLE001 - every refusal is reported
            out["error"] = f"{type(e).__name__}: {e}"
        results.append(out)
    json.dump(results, sys.stdout)


if __name__ == "__main__":
    main()
