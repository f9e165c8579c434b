"""A partner-bank simulator: builds and signs real SNAP requests and sends them with aiohttp.

Used by its command line (``python -m payment_service bank``, e.g. to pay a bill of ``make run``), the
test suite, the rush benchmark and partner banks checking their integration. It builds on
production code, never the reverse: keys and partners-file entries come from ``adapters.banks``,
paths, codes and signatures from the SNAP protocol (``adapters.snap``)::

    from payment_service.adapters.banks import generate_bank_keys, new_bank_config

    private_pem, public_pem = generate_bank_keys()
    entry = new_bank_config(public_pem, partner_service_id="77001")   # PAYMENT_PARTNERS_FILE
    async with BankSimulator.from_config("http://127.0.0.1:8082", entry, private_pem) as bank:
        status, body = await bank.pay("0000001", 25000)
"""

import itertools
import json
import secrets
import time
import uuid
from datetime import datetime
from types import TracebackType
from typing import Any, Literal, Self
from urllib.parse import urlsplit

import aiohttp

from payment_service.adapters.snap import INQUIRY_PATH, PAYMENT_PATH, TOKEN_PATH
from payment_service.adapters.snap.codes import Case, Service
from payment_service.adapters.snap.models import Amount, pad_partner_service_id, snap_virtual_account_no
from payment_service.adapters.snap.signatures import (
    format_snap_timestamp,
    load_private_key,
    sign_access_token,
    sign_transaction,
)

DEFAULT_BASE_URL = "http://127.0.0.1:8082"

FlagAdvise = Literal["Y", "N"]
SignedRequest = tuple[str, dict[str, str], bytes]
"""(path to sign and call, headers, body bytes)."""

_counter = itertools.count()


def new_external_id() -> str:
    """A numeric X-EXTERNAL-ID: microseconds since the epoch, a counter, 4 random digits."""
    return f"{time.time_ns() // 1000}{next(_counter) % 10_000:04d}{secrets.randbelow(10_000):04d}"


class BankSimulator:
    """A partner bank calling the biller's SNAP endpoints; ``async with`` closes its session."""

    def __init__(
        self,
        base_url: str,
        client_id: str,
        client_secret: str,
        private_key_pem: bytes,
        partner_id: str,
        channel_id: str,
        partner_service_id: str,
        *,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.client_id = client_id
        self.client_secret = client_secret
        self.private_key = load_private_key(private_key_pem)
        self.partner_id = partner_id
        self.channel_id = channel_id
        self.partner_service_id = partner_service_id
        self.access_token: str | None = None
        self._session = session
        self._owns_session = session is None
        parts = urlsplit(self.base_url)
        self._origin, self._prefix = f"{parts.scheme}://{parts.netloc}", parts.path

    @classmethod
    def from_config(
        cls,
        base_url: str,
        config: dict[str, str],
        private_key_pem: bytes,
        *,
        session: aiohttp.ClientSession | None = None,
    ) -> Self:
        """A simulator for a ``PAYMENT_PARTNERS_FILE`` entry; X-PARTNER-ID is the client id."""
        return cls(
            base_url,
            config["client_id"],
            config["client_secret"],
            private_key_pem,
            config["client_id"],
            config["channel_id"],
            config["partner_service_id"],
            session=session,
        )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the HTTP session if this simulator created it."""
        if self._owns_session and self._session is not None:
            await self._session.close()
            self._session = None

    def build_token_request(self, *, timestamp: str | None = None) -> SignedRequest:
        """The signed ``POST /snap/v1.0/access-token/b2b`` request."""
        timestamp = timestamp or format_snap_timestamp()
        headers = {
            "Content-Type": "application/json",
            "X-TIMESTAMP": timestamp,
            "X-CLIENT-KEY": self.client_id,
            "X-SIGNATURE": sign_access_token(self.private_key, self.client_id, timestamp),
        }
        return self._prefix + TOKEN_PATH, headers, b'{"grantType":"client_credentials"}'

    def build_signed_request(
        self,
        path: str,
        body: dict[str, Any],
        *,
        access_token: str,
        timestamp: str | None = None,
        external_id: str | None = None,
        indent: int | None = None,
    ) -> SignedRequest:
        """A signed transaction request; ``indent`` pretty-prints the body to test minifying."""
        path = self._prefix + path
        timestamp = timestamp or format_snap_timestamp()
        raw = json.dumps(body, indent=indent, separators=None if indent else (",", ":")).encode()
        headers = {
            "Content-Type": "application/json",
            "Authorization": f"Bearer {access_token}",
            "X-TIMESTAMP": timestamp,
            "X-PARTNER-ID": self.partner_id,
            "X-EXTERNAL-ID": external_id or new_external_id(),
            "CHANNEL-ID": self.channel_id,
            "X-SIGNATURE": sign_transaction(self.client_secret, "POST", path, access_token, raw, timestamp),
        }
        return path, headers, raw

    def _va_fields(self, customer_no: str) -> dict[str, str]:
        return {
            "partnerServiceId": pad_partner_service_id(self.partner_service_id),
            "customerNo": customer_no,
            "virtualAccountNo": snap_virtual_account_no(self.partner_service_id, customer_no),
        }

    def inquiry_body(self, customer_no: str, inquiry_request_id: str | None = None) -> dict[str, Any]:
        """The body of an inquiry for ``customer_no``."""
        return {
            **self._va_fields(customer_no),
            "inquiryRequestId": inquiry_request_id or uuid.uuid4().hex,
            "trxDateTime": format_snap_timestamp(),
            "channelCode": 6011,
        }

    def payment_body(
        self,
        customer_no: str,
        amount: int,
        *,
        payment_request_id: str | None = None,
        flag_advise: FlagAdvise = "N",
        trx_id: str | None = None,
        paid_at: datetime | None = None,
    ) -> dict[str, Any]:
        """The body of a payment of ``amount`` rupiah to ``customer_no`` (``paid_at``: when the
        customer paid at the bank, default now; a re-sent advice carries the original time).

        trxId and referenceNo derive from paymentRequestId, so a re-sent payment ("Y") carries
        the same identifiers as the first one.
        """
        payment_request_id = payment_request_id or uuid.uuid4().hex
        snap_amount = Amount.of(amount).model_dump()
        return {
            **self._va_fields(customer_no),
            "paymentRequestId": payment_request_id,
            "trxId": trx_id or payment_request_id,
            "paidAmount": snap_amount,
            "totalAmount": snap_amount,
            "trxDateTime": format_snap_timestamp(paid_at),
            "referenceNo": payment_request_id[:16],
            "flagAdvise": flag_advise,
        }

    async def send(self, request: SignedRequest) -> tuple[int, dict[str, Any]]:
        """POST a built request (sending one twice is an exact replay): (status, JSON body)."""
        path, headers, raw = request
        if self._session is None:
            self._session = aiohttp.ClientSession()
        async with self._session.post(self._origin + path, data=raw, headers=headers) as response:
            text = await response.text()
        try:
            body = json.loads(text)
        except ValueError:
            body = {"raw": text}
        return response.status, body if isinstance(body, dict) else {"raw": body}

    async def get_token(self) -> tuple[int, dict[str, Any]]:
        """Request an access token; on success it is kept in ``access_token``."""
        status, body = await self.send(self.build_token_request())
        if body.get("responseCode") == Case.SUCCESS.code(Service.ACCESS_TOKEN):
            self.access_token = body["accessToken"]
        return status, body

    async def _token(self) -> str:
        if self.access_token is None:
            status, body = await self.get_token()
            if self.access_token is None:
                raise RuntimeError(f"access token refused: HTTP {status} {body}")
        return self.access_token

    async def inquiry(
        self,
        customer_no: str,
        inquiry_request_id: str | None = None,
        *,
        external_id: str | None = None,
    ) -> tuple[int, dict[str, Any]]:
        """Ask for the bill behind ``customer_no`` (fetches a token first if needed)."""
        body = self.inquiry_body(customer_no, inquiry_request_id)
        request = self.build_signed_request(
            INQUIRY_PATH, body, access_token=await self._token(), external_id=external_id
        )
        return await self.send(request)

    async def pay(
        self,
        customer_no: str,
        amount: int,
        payment_request_id: str | None = None,
        external_id: str | None = None,
        flag_advise: FlagAdvise = "N",
        *,
        trx_id: str | None = None,
        paid_at: datetime | None = None,
    ) -> tuple[int, dict[str, Any]]:
        """Flag a payment of ``amount`` rupiah; resend with ``flag_advise="Y"`` and same ids."""
        body = self.payment_body(
            customer_no,
            amount,
            payment_request_id=payment_request_id,
            flag_advise=flag_advise,
            trx_id=trx_id,
            paid_at=paid_at,
        )
        request = self.build_signed_request(
            PAYMENT_PATH, body, access_token=await self._token(), external_id=external_id
        )
        return await self.send(request)
