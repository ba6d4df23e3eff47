"""Helpers shared by the binary protocols: checksums and packed digits."""

from __future__ import annotations


def _reflected_table(poly: int) -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ poly if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_X25_TABLE = _reflected_table(0x8408)  # 0x1021 bit-reversed


def crc16_x25(data: bytes | bytearray | memoryview) -> int:
    """CRC-16/X-25, the "CRC-ITU" of the Concox documents.

    Polynomial 0x1021 reflected (0x8408), init 0xFFFF, output xor 0xFFFF;
    ``crc16_x25(b"123456789") == 0x906E``.
    """
    crc = 0xFFFF
    table = _X25_TABLE
    for byte in data:
        crc = (crc >> 8) ^ table[(crc ^ byte) & 0xFF]
    return crc ^ 0xFFFF


_IBM_TABLE = _reflected_table(0xA001)  # 0x8005 bit-reversed


def crc16_ibm(data: bytes | bytearray | memoryview) -> int:
    """CRC-16/IBM (ARC), the CRC of Teltonika's AVL packets.

    Polynomial 0x8005 reflected (0xA001), init 0, no output xor;
    ``crc16_ibm(b"123456789") == 0xBB3D``.
    """
    crc = 0
    table = _IBM_TABLE
    for byte in data:
        crc = (crc >> 8) ^ table[(crc ^ byte) & 0xFF]
    return crc


def bcd_digits(data: bytes | bytearray | memoryview) -> str:
    """Packed BCD as its digits, two per byte: ``08 64 71`` -> ``"086471"``."""
    return bytes(data).hex()
