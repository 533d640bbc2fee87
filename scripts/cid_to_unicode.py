#!/usr/bin/env python3
"""Regenerate src/extract/pdf/cid/*.u16: CID -> Unicode tables of the four
Adobe CJK character collections, for CID fonts that carry no ToUnicode map.

The data is Adobe's CMap resources (BSD-3-Clause), as pdfminer.six (MIT)
ships them: for each collection, a JSON map from CID to character for
horizontal and vertical writing. Horizontal wins where both exist (vertical
forms would not match a typed query); CIDs only in the vertical map are kept.

Output: one little-endian u16 per CID, 0 where the CID has no character
(every mapped character of the four collections is in the BMP; the script
checks it).

Run: python3 scripts/cid_to_unicode.py   (needs pip and the package index)
"""

import gzip
import hashlib
import json
import pathlib
import subprocess
import sys
import tempfile
import zipfile

WHEEL = "pdfminer_six-20260107-py3-none-any.whl"
VERSION = "20260107"
SHA256 = "366585ba97e80dffa8f00cebe303d2f381884d8637af4ce422f1df3ef38111a9"
COLLECTIONS = ["Japan1", "GB1", "CNS1", "Korea1"]
OUT = pathlib.Path(__file__).resolve().parent.parent / "src/extract/pdf/cid"


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
             "--only-binary=:all:", "--dest", tmp, f"pdfminer.six=={VERSION}"],
            check=True,
        )
        wheel = pathlib.Path(tmp) / WHEEL
        digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
        if digest != SHA256:
            sys.exit(f"{WHEEL}: sha256 {digest}, expected {SHA256}")
        with zipfile.ZipFile(wheel) as z:
            for name in COLLECTIONS:
                raw = z.read(f"pdfminer/cmap/to-unicode-Adobe-{name}.json.gz")
                maps = json.loads(gzip.decompress(raw))
                table = {int(k): v for k, v in maps["CID2UNICHR_V"].items()}
                table.update({int(k): v for k, v in maps["CID2UNICHR_H"].items()})
                size = max(table) + 1
                out = bytearray(2 * size)
                for cid, text in table.items():
                    if len(text) != 1 or ord(text) > 0xFFFF or ord(text) == 0:
                        sys.exit(f"Adobe-{name} CID {cid}: {text!r} is not one BMP character")
                    out[2 * cid:2 * cid + 2] = ord(text).to_bytes(2, "little")
                path = OUT / f"Adobe-{name}.u16"
                path.write_bytes(bytes(out))
                print(f"{path}: {len(table)} characters, CIDs 0..{size - 1}")


if __name__ == "__main__":
    main()
