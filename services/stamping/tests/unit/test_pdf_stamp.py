"""Stamping and verification: a visible PAdES stamp that pyHanko validates, and that edits break."""

from __future__ import annotations

import io
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pikepdf
import pytest
import qrcode
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from emeterai_testkit.documents import sample_pdf
from pyhanko.keys import load_certs_from_pemder_data
from pyhanko.keys.internal import translate_pyca_cryptography_cert_to_asn1, translate_pyca_cryptography_key_to_asn1
from pyhanko.pdf_utils.incremental_writer import IncrementalPdfFileWriter
from pyhanko.pdf_utils.reader import PdfFileReader
from pyhanko.sign import signers
from pyhanko.sign.diff_analysis import ModificationLevel
from pyhanko.sign.fields import MDPPerm
from pyhanko.sign.timestamps.dummy_client import DummyTimeStamper
from pyhanko.sign.validation import SignatureCoverageLevel, validate_pdf_signature
from pyhanko_certvalidator import ValidationContext
from stamping_service.adapters.pdf import (
    KeySigner,
    Limits,
    PdfRejected,
    RejectCode,
    StampCheck,
    dev_signing_chain,
    field_name,
    inspect_pdf,
    load_signer,
    stamp_pdf,
    verify_pdf,
)
from stamping_service.adapters.pdf.appearance import QR_MASK, qr_content

SN, OTHER_SN = "2C5NV74I6D0HJ1EZ000DU9", "7QK2M9X4R8T1V6B3N5C0Z2"
TOKEN = "eyJhbGciOiJFZERTQSIsImtpZCI6ImsxIn0." + "eyJzbiI6IjJDNU5WNzRJNkQwSEoxRVowMDBEVTkifQ" * 4 + ".c2ln"


@pytest.fixture(scope="module")
def dev_chain(tmp_path_factory: pytest.TempPathFactory) -> tuple[KeySigner, bytes]:
    return dev_signing_chain(tmp_path_factory.mktemp("dev-ca"))


@pytest.fixture(scope="module")
def applicant_chain(tmp_path_factory: pytest.TempPathFactory) -> tuple[KeySigner, bytes]:
    """Someone else's signing chain: the applicant who signs the letter before stamping."""
    return dev_signing_chain(tmp_path_factory.mktemp("applicant-ca"))


def _stamp(data: bytes, signer: KeySigner, **overrides: Any) -> bytes:
    arguments: dict[str, Any] = {"password": None, "page": 1, "x": 400, "y": 50, "size": 100, "sn": SN,
                                 "token": TOKEN, "reason": "Lamaran CASN", "signer": signer}
    return stamp_pdf(data, **{**arguments, **overrides})


def _widget(data: bytes, sn: str, password: str = "") -> tuple[int, list[float], bytes, list[float] | None]:
    """The stamp's page index, /Rect, appearance drawing and appearance /Matrix."""
    with pikepdf.open(io.BytesIO(data), password=password) as pdf:
        for index, page in enumerate(pdf.pages):
            for annot in page.get("/Annots", []):
                if str(annot.get("/T", "")) == field_name(sn):
                    appearance = annot.AP.N
                    matrix = [float(v) for v in appearance.Matrix] if "/Matrix" in appearance else None
                    return index, [float(v) for v in annot.Rect], appearance.read_bytes(), matrix
    raise AssertionError("no stamp widget")


def _pyhanko_status(data: bytes, index: int, roots: list[bytes]) -> Any:
    reader = PdfFileReader(io.BytesIO(data), strict=False)
    context = ValidationContext(trust_roots=[c for pem in roots for c in load_certs_from_pemder_data(pem)])
    return validate_pdf_signature(reader.embedded_signatures[index], signer_validation_context=context)


def _ok(check: StampCheck, sn: str | None) -> bool:
    recent = check.signed_at is not None and abs(check.signed_at - datetime.now(UTC)) < timedelta(minutes=5)
    return check.sn == sn and recent and check.intact and check.trusted and check.valid


def test_a_stamped_multi_page_pdf_passes_our_and_pyhankos_validation(dev_chain: tuple[KeySigner, bytes]) -> None:
    signer, root = dev_chain
    original = sample_pdf(3)
    stamped = _stamp(original, signer, page=2, x=400, y=50)
    assert stamped.startswith(original)  # an incremental update: the original bytes are untouched
    [check] = verify_pdf(stamped, [root])
    assert check.field == field_name(SN) and _ok(check, SN)

    status = _pyhanko_status(stamped, 0, [root])
    assert status.bottom_line and status.intact and status.valid and status.trusted
    assert status.coverage is SignatureCoverageLevel.ENTIRE_FILE and status.md_algorithm == "sha256"
    signature = PdfFileReader(io.BytesIO(stamped)).embedded_signatures[0].sig_object
    assert (signature["/Reason"], signature["/SubFilter"]) == (f"[{SN}] Lamaran CASN", "/ETSI.CAdES.detached")

    page_index, rect, drawing, matrix = _widget(stamped, SN)
    assert (page_index, rect, matrix) == (1, [400, 50, 500, 150], None)
    for text in (b"METERAI", b"ELEKTRONIK", b"10000", b"SEPULUH RIBU RUPIAH", SN.encode()):
        assert b"(%s) Tj" % text in drawing
    assert qr_content(TOKEN) in drawing
    assert inspect_pdf(stamped, password=None, page=1, x=0, y=0, size=100, limits=Limits()).signed


def test_the_qr_code_draws_the_tokens_modules() -> None:
    code = qrcode.QRCode(error_correction=qrcode.constants.ERROR_CORRECT_M, border=0, mask_pattern=QR_MASK)
    code.add_data(TOKEN.encode())
    matrix = code.get_matrix()
    n = len(matrix)
    dark = {(x, n - 1 - y) for y, row in enumerate(matrix) for x, on in enumerate(row) if on}
    drawn = set()
    for x, y, width in re.findall(rb"(\d+) (\d+) (\d+) 1 re", qr_content(TOKEN)):
        drawn |= {(int(x) + i, int(y)) for i in range(int(width))}
    assert drawn == dark


@pytest.mark.parametrize("where", ["original page content", "signature value"])
def test_a_changed_byte_breaks_the_stamp(dev_chain: tuple[KeySigner, bytes], where: str) -> None:
    signer, root = dev_chain
    stamped = bytearray(_stamp(sample_pdf(2), signer))
    if where == "original page content":
        position = stamped.index(b"stream\n") + 12
        stamped[position] ^= 0x01
    else:
        start = stamped.index(b"/Contents <") + len(b"/Contents <")
        signature_hex = stamped[start:stamped.index(b">", start)].rstrip(b"0")  # reserved space is zero-padded
        position = start + len(signature_hex) - 10  # inside the signature value, which ends the container
        stamped[position] = ord("0") if stamped[position] != ord("0") else ord("1")
    [check] = verify_pdf(bytes(stamped), [root])
    assert (check.sn, check.intact, check.valid) == (SN, False, False)
    assert not _pyhanko_status(bytes(stamped), 0, [root]).bottom_line


def test_stamping_a_signed_pdf_keeps_the_first_signature_intact(
    dev_chain: tuple[KeySigner, bytes], applicant_chain: tuple[KeySigner, bytes],
) -> None:
    signer, root = dev_chain
    applicant, applicant_root = applicant_chain
    signed = signers.sign_pdf(
        IncrementalPdfFileWriter(io.BytesIO(sample_pdf(2))),
        signers.PdfSignatureMetadata(field_name="Pelamar", reason="Saya menyetujui"),
        signer=applicant,
    ).getvalue()
    assert inspect_pdf(signed, password=None, page=2, x=400, y=50, size=100, limits=Limits()).signed

    stamped = _stamp(signed, signer, page=2)
    assert stamped.startswith(signed)
    first, stamp = verify_pdf(stamped, [root, applicant_root])
    assert first.field == "Pelamar" and _ok(first, None)
    assert _ok(stamp, SN)
    status = _pyhanko_status(stamped, 0, [applicant_root])
    assert status.bottom_line and status.coverage is SignatureCoverageLevel.ENTIRE_REVISION
    assert status.modification_level is ModificationLevel.FORM_FILLING
    assert not verify_pdf(stamped, [root])[0].trusted  # the applicant's root is not ours


def test_a_document_certified_against_all_changes_is_refused(applicant_chain: tuple[KeySigner, bytes]) -> None:
    applicant, _ = applicant_chain
    certified = signers.sign_pdf(
        IncrementalPdfFileWriter(io.BytesIO(sample_pdf(1))),
        signers.PdfSignatureMetadata(field_name="Notaris", certify=True, docmdp_permissions=MDPPerm.NO_CHANGES),
        signer=applicant,
    ).getvalue()
    with pytest.raises(PdfRejected) as refused:
        inspect_pdf(certified, password=None, page=1, x=0, y=0, size=100, limits=Limits())
    assert refused.value.code is RejectCode.CERTIFIED_NO_CHANGES


def test_on_a_rotated_page_the_stamp_is_placed_and_turned_upright(dev_chain: tuple[KeySigner, bytes]) -> None:
    signer, root = dev_chain
    pdf = pikepdf.open(io.BytesIO(sample_pdf(1)))
    pdf.pages[0].Rotate = 90
    out = io.BytesIO()
    pdf.save(out)
    stamped = _stamp(out.getvalue(), signer, x=700, y=20)
    _, rect, _, matrix = _widget(stamped, SN)
    assert (rect, matrix) == ([475, 700, 575, 800], [0, 1, -1, 0, 0, 0])
    assert _ok(verify_pdf(stamped, [root])[0], SN)


def test_an_encrypted_document_stays_encrypted_and_verifies_with_its_password(
    dev_chain: tuple[KeySigner, bytes],
) -> None:
    signer, root = dev_chain
    pdf = pikepdf.open(io.BytesIO(sample_pdf(2)))
    out = io.BytesIO()
    pdf.save(out, encryption=pikepdf.Encryption(user="rahasia", owner="pemilik"))
    stamped = _stamp(out.getvalue(), signer, password="rahasia")
    with pytest.raises(pikepdf.PasswordError):
        pikepdf.open(io.BytesIO(stamped))
    assert _widget(stamped, SN, password="rahasia")[1] == [400, 50, 500, 150]
    assert verify_pdf(stamped, [root]) == []
    assert _ok(verify_pdf(stamped, [root], password="rahasia")[0], SN)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _certificate(subject: str, key: Any, issuer: x509.Certificate | None, issuer_key: CertificateIssuerPrivateKeyTypes,
                 *, usage: str) -> x509.Certificate:
    now = datetime.now(UTC) - timedelta(hours=1)
    builder = (
        x509.CertificateBuilder().subject_name(_name(subject))
        .issuer_name(issuer.subject if issuer else _name(subject)).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now).not_valid_after(now + timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=usage == "ca", path_length=None), critical=True)
    )
    if usage == "tsa":
        builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.TIME_STAMPING]), critical=True)
    if usage == "sign":
        builder = builder.add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=True, key_encipherment=False, data_encipherment=False,
            key_agreement=False, key_cert_sign=False, crl_sign=False, encipher_only=False, decipher_only=False,
        ), critical=True)
    return builder.sign(issuer_key, hashes.SHA256())


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def test_a_configured_timestamp_authority_dates_the_stamp(dev_chain: tuple[KeySigner, bytes]) -> None:
    signer, root = dev_chain
    ca_key = ec.generate_private_key(ec.SECP256R1())
    tsa_key = rsa.generate_private_key(65537, 2048)  # pyHanko's dummy TSA signs with RSA only
    ca = _certificate("Test TSA Root", ca_key, None, ca_key, usage="ca")
    tsa = _certificate("Test TSA", tsa_key, ca, ca_key, usage="tsa")
    moment = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=1)
    timestamper = DummyTimeStamper(
        tsa_cert=translate_pyca_cryptography_cert_to_asn1(tsa),
        tsa_key=translate_pyca_cryptography_key_to_asn1(tsa_key), fixed_dt=moment)
    stamped = _stamp(sample_pdf(1), signer, timestamper=timestamper)
    [check] = verify_pdf(stamped, [root, _pem(ca)])
    assert (check.signed_at, check.intact, check.trusted, check.valid) == (moment, True, True, True)
    [untrusted_time] = verify_pdf(stamped, [root])
    assert untrusted_time.intact and not untrusted_time.valid


def test_production_keys_load_from_pem_and_pkcs12(tmp_path: Path) -> None:
    ca_key, key = ec.generate_private_key(ec.SECP384R1()), rsa.generate_private_key(65537, 2048)
    ca = _certificate("Issuer Root", ca_key, None, ca_key, usage="ca")
    cert = _certificate("Issuer Stamping", key, ca, ca_key, usage="sign")
    (tmp_path / "key.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"kata-sandi")))
    (tmp_path / "cert.pem").write_bytes(_pem(cert))
    (tmp_path / "chain.pem").write_bytes(_pem(ca))
    (tmp_path / "stamp.p12").write_bytes(pkcs12.serialize_key_and_certificates(
        b"stamping", key, cert, [ca], serialization.BestAvailableEncryption(b"kata-sandi")))
    from_pem = load_signer(tmp_path / "key.pem", tmp_path / "cert.pem", [tmp_path / "chain.pem"], "kata-sandi")
    from_p12 = load_signer(tmp_path / "stamp.p12", passphrase="kata-sandi")
    for signer in (from_pem, from_p12):
        assert _ok(verify_pdf(_stamp(sample_pdf(1), signer), [_pem(ca)])[0], SN)
    with pytest.raises(ValueError, match="does not belong"):
        load_signer(tmp_path / "key.pem", tmp_path / "chain.pem", passphrase="kata-sandi")


def test_the_development_chain_is_generated_once_and_reused(tmp_path: Path) -> None:
    signer, root = dev_signing_chain(tmp_path)
    again, same_root = dev_signing_chain(tmp_path)
    assert same_root == root and again.signing_cert.dump() == signer.signing_cert.dump()
    assert (tmp_path / "dev-stamping-key.pem").stat().st_mode & 0o777 == 0o600
    cert = x509.load_pem_x509_certificate((tmp_path / "dev-stamping-cert.pem").read_bytes())
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.digital_signature and usage.content_commitment
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey) and cert.public_key().curve.name == "secp256r1"


def test_verification_never_fails_on_garbage(dev_chain: tuple[KeySigner, bytes]) -> None:
    signer, root = dev_chain
    stamped = _stamp(sample_pdf(1), signer)
    for garbage in (b"", b"not a pdf", b"%PDF-1.7\n" + bytes(range(256)), sample_pdf(1), stamped[: len(stamped) // 2]):
        assert verify_pdf(garbage, [root]) == []
    [unknown_issuer] = verify_pdf(stamped, [])
    assert unknown_issuer.intact and not unknown_issuer.trusted and not unknown_issuer.valid


def test_a_second_stamp_keeps_the_first_intact(dev_chain: tuple[KeySigner, bytes]) -> None:
    signer, root = dev_chain
    twice = _stamp(_stamp(sample_pdf(1), signer), signer, sn=OTHER_SN, y=200)
    first, second = verify_pdf(twice, [root])
    assert _ok(first, SN) and _ok(second, OTHER_SN)


def test_only_serial_numbers_are_stamped(dev_chain: tuple[KeySigner, bytes]) -> None:
    with pytest.raises(ValueError, match="serial"):
        _stamp(sample_pdf(1), dev_chain[0], sn="2c5nv74i6d0hj1ez000du9) Tj (")
