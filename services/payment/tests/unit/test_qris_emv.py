"""The EMV QRIS string: TLV fields and CRC-16/CCITT-FALSE (domain.md, "QRIS payments"); the
development acquirer `make run` configures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from payment_service.adapters.acquirers import AcquirerRegistry
from payment_service.adapters.acquirersim import ACQUIRER_FILE, ACQUIRER_KEY_FILE, add_dev_acquirer
from payment_service.adapters.banks import create_dev_bank
from payment_service.adapters.snap.qris import crc16_ccitt_false, crc_valid, dynamic_qris, parse_tlv, tlv


def test_crc_is_ccitt_false() -> None:
    assert crc16_ccitt_false(b"123456789") == 0x29B1  # the algorithm's check value
    assert crc16_ccitt_false(b"") == 0xFFFF


def test_a_dynamic_qris_string_carries_the_fields_and_its_crc() -> None:
    qr = dynamic_qris(nmid="ID1020000000001", merchant_name="E-METERAI", city="JAKARTA", amount=25000,
                      bill_number="EMabc", reference_label="123456789012")
    fields = parse_tlv(qr)
    assert (fields["00"], fields["01"], fields["53"], fields["54"], fields["58"]) == ("01", "12", "360", "25000", "ID")
    assert parse_tlv(fields["51"])["00"] == "ID.CO.QRIS.WWW"
    assert parse_tlv(fields["62"]) == {"01": "EMabc", "05": "123456789012"}
    assert qr[-8:-4] == "6304" and qr[-4:] == f"{crc16_ccitt_false(qr[:-4].encode()):04X}"
    assert crc_valid(qr)
    assert not crc_valid(qr[:-1] + ("0" if qr[-1] != "0" else "1"))


def test_tlv_refuses_what_it_cannot_encode() -> None:
    with pytest.raises(ValueError):
        tlv("1", "x")
    with pytest.raises(ValueError):
        tlv("01", "x" * 100)
    with pytest.raises(ValueError):
        parse_tlv("0105ab")


def test_the_development_partners_file_gets_a_development_acquirer_once(tmp_path: Path) -> None:
    partners = tmp_path / "banks.json"
    assert not add_dev_acquirer(partners)  # no file: nothing to add to
    assert create_dev_bank(partners)
    assert add_dev_acquirer(partners, port=8123)
    (entry,) = json.loads(partners.read_text())["acquirers"]
    assert entry["base_url"] == "http://127.0.0.1:8123/snap" and entry["acquirer_id"] == "dev-acquirer"
    assert AcquirerRegistry.load(partners).first() is not None
    assert json.loads((tmp_path / ACQUIRER_FILE).read_text()) == entry
    assert (tmp_path / ACQUIRER_KEY_FILE).exists()
    assert not add_dev_acquirer(partners)  # acquirers named already: left as they are


def test_a_partners_file_not_made_by_dev_bank_is_left_alone(tmp_path: Path) -> None:
    partners = tmp_path / "partners.json"
    partners.write_text('{"banks": []}')
    assert not add_dev_acquirer(partners)
    assert json.loads(partners.read_text()) == {"banks": []}
