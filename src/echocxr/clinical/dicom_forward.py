"""Sending a DICOM SR to another node (C-STORE SCU), and the HOST:PORT:AET address that names it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from echocxr.errors import UserError

TIMEOUT_S = 30.0  # association, DIMSE and network timeouts of one send


@dataclass(frozen=True)
class DicomPeer:
    host: str
    port: int
    ae_title: str

    def __str__(self) -> str:  # for logs: where, never what
        return f"{self.ae_title}@{self.host}:{self.port}"


def check_ae_title(title: str, what: str = "AE title") -> str:
    """A DICOM AE title: 1-16 characters, no backslash or control characters, not all spaces."""
    if not 1 <= len(title) <= 16 or not title.strip() or "\\" in title or any(ord(c) < 32 for c in title):
        raise UserError(f"{what} {title!r} is not a DICOM AE title (1-16 characters, no backslash)")
    return title


def parse_peer(text: str) -> DicomPeer:
    """HOST:PORT:AET (the host may be an IPv6 address in brackets: [::1]:104:PACS)."""
    host, _, rest = text.rpartition(":")
    host, _, port = host.rpartition(":")
    if not host or not port or not rest:
        raise UserError(f"--forward {text!r}: expected HOST:PORT:AET, e.g. pacs.local:104:PACS")
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise UserError(f"--forward {text!r}: port {port!r} is not a number in 1..65535")
    return DicomPeer(host.strip("[]"), int(port), check_ae_title(rest, "--forward AE title"))


def send_dataset(ds: Any, peer: DicomPeer, calling_ae: str) -> int:
    """C-STORE `ds` to `peer`; the DIMSE status (0x0000 = success). Raises ConnectionError when no
    association or no response: the caller logs it, the node goes on."""
    from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
    from pynetdicom import AE
    from pynetdicom.sop_class import ComprehensiveSRStorage

    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = TIMEOUT_S
    ae.add_requested_context(ComprehensiveSRStorage, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    assoc = ae.associate(peer.host, peer.port, ae_title=peer.ae_title)
    if not assoc.is_established:
        raise ConnectionError(f"no association with {peer} (refused, rejected or unreachable)")
    try:
        status = assoc.send_c_store(ds)
    finally:
        assoc.release()
    if "Status" not in status:
        raise ConnectionError(f"no C-STORE response from {peer}")
    return int(status.Status)
