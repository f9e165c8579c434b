"""QRIS: the EMVCo merchant-presented QR string of a dynamic QRIS code (pure, no I/O).

TLV fields (ID 2 digits, length 2 digits, value); ``63`` is the CRC-16/CCITT-FALSE (poly 0x1021,
init 0xFFFF) over the whole string including ``6304``, four upper-case hex digits.
"""

from __future__ import annotations


def crc16_ccitt_false(data: bytes) -> int:
    crc = 0xFFFF
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
            crc &= 0xFFFF
    return crc


def tlv(tag: str, value: str) -> str:
    if len(tag) != 2 or not tag.isdigit() or len(value) > 99:
        raise ValueError(f"bad EMV field {tag!r}")
    return f"{tag}{len(value):02d}{value}"


def parse_tlv(payload: str) -> dict[str, str]:
    """Top-level fields of an EMV string (``ValueError`` when malformed)."""
    fields: dict[str, str] = {}
    i = 0
    while i < len(payload):
        tag, length = payload[i:i + 2], payload[i + 2:i + 4]
        if not (tag.isdigit() and length.isdigit()):
            raise ValueError("malformed EMV field")
        end = i + 4 + int(length)
        if end > len(payload):
            raise ValueError("EMV field past the end")
        fields[tag] = payload[i + 4:end]
        i = end
    return fields


def with_crc(payload_without_crc: str) -> str:
    head = payload_without_crc + "6304"
    return head + f"{crc16_ccitt_false(head.encode()):04X}"


def crc_valid(qr: str) -> bool:
    return len(qr) > 8 and qr[-8:-4] == "6304" and with_crc(qr[:-8]) == qr


def dynamic_qris(*, nmid: str, merchant_name: str, city: str, amount: int, bill_number: str,
                 reference_label: str, mcc: str = "7399") -> str:
    """A dynamic QRIS string for ``amount`` rupiah."""
    merchant_account = tlv("00", "ID.CO.QRIS.WWW") + tlv("02", nmid) + tlv("03", "UMI")
    additional = tlv("01", bill_number[:25]) + tlv("05", reference_label[:25])
    body = (tlv("00", "01") + tlv("01", "12") + tlv("51", merchant_account) + tlv("52", mcc) + tlv("53", "360")
            + tlv("54", str(amount)) + tlv("58", "ID") + tlv("59", merchant_name[:25]) + tlv("60", city[:15])
            + tlv("62", additional))
    return with_crc(body)
