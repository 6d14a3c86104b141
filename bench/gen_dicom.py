#!/usr/bin/env python3
"""Writes ultrasound-like DICOM Part-10 files for bench/run.sh (stdlib only).

Single-frame: US Image Storage, RGB 800x600 (1.44 MB of pixels each).
Multi-frame:  US Multi-frame Image Storage, RGB 640x480 x FRAMES (a cine loop).
Pixels are random bytes: incompressible, so no layer can cheat by compressing.

usage: gen_dicom.py OUT_DIR SINGLE_COUNT MULTI_COUNT FRAMES
"""
import os
import struct
import sys

US_SINGLE = "1.2.840.10008.5.1.4.1.1.6.1"
US_MULTI = "1.2.840.10008.5.1.4.1.1.3.1"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
ROOT = "1.2.826.0.1.3680043.9.7777"
LONG_VRS = (b"OB", b"OW", b"SQ", b"UN", b"UT", b"UC", b"UR")


def element(group, elem, vr, value):
    if isinstance(value, str):
        value = value.encode("ascii")
    if len(value) % 2:
        value += b"\0" if vr in (b"UI", b"OB") else b" "
    if vr in LONG_VRS:
        return struct.pack("<HH2sHI", group, elem, vr, 0, len(value)) + value
    return struct.pack("<HH2sH", group, elem, vr, len(value)) + value


def us(v):
    return struct.pack("<H", v)


def write(path, sop_class, n, rows, cols, frames):
    inst = "%s.%d.%d.%d" % (ROOT, os.getpid(), frames, n)
    meta = b"".join([
        element(0x0002, 0x0001, b"OB", b"\0\1"),
        element(0x0002, 0x0002, b"UI", sop_class),
        element(0x0002, 0x0003, b"UI", inst),
        element(0x0002, 0x0010, b"UI", EXPLICIT_LE),
        element(0x0002, 0x0012, b"UI", ROOT + ".1"),
    ])
    meta = element(0x0002, 0x0000, b"UL", struct.pack("<I", len(meta))) + meta
    ds = [
        element(0x0008, 0x0016, b"UI", sop_class),
        element(0x0008, 0x0018, b"UI", inst),
        element(0x0008, 0x0060, b"CS", "US"),
        element(0x0010, 0x0010, b"PN", "BENCH^ULTRASOUND"),
        element(0x0010, 0x0020, b"LO", "BENCH%04d" % n),
        element(0x0020, 0x000D, b"UI", inst + ".1"),
        element(0x0020, 0x000E, b"UI", inst + ".2"),
        element(0x0028, 0x0002, b"US", us(3)),
        element(0x0028, 0x0004, b"CS", "RGB"),
        element(0x0028, 0x0006, b"US", us(0)),
    ]
    if frames > 1:
        ds.append(element(0x0028, 0x0008, b"IS", str(frames)))
    ds += [
        element(0x0028, 0x0010, b"US", us(rows)),
        element(0x0028, 0x0011, b"US", us(cols)),
        element(0x0028, 0x0100, b"US", us(8)),
        element(0x0028, 0x0101, b"US", us(8)),
        element(0x0028, 0x0102, b"US", us(7)),
        element(0x0028, 0x0103, b"US", us(0)),
    ]
    pixels = os.urandom(rows * cols * 3 * frames)
    with open(path, "wb") as f:
        f.write(b"\0" * 128 + b"DICM" + meta + b"".join(ds))
        f.write(element(0x7FE0, 0x0010, b"OB", pixels))


def main():
    if len(sys.argv) != 5:
        sys.exit(__doc__)
    out, singles, multis, frames = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    for sub in ("single", "multi"):
        os.makedirs(os.path.join(out, sub), exist_ok=True)
    for i in range(singles):
        write(os.path.join(out, "single", "us%04d.dcm" % i), US_SINGLE, i, 600, 800, 1)
    for i in range(multis):
        write(os.path.join(out, "multi", "cine%02d.dcm" % i), US_MULTI, i, 480, 640, frames)


if __name__ == "__main__":
    main()
