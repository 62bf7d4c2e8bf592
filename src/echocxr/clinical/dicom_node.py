"""A DICOM node that writes reports: a C-STORE SCP collecting chest radiographs per study, and after a quiet
period with no new view of a study, writing its report as a DICOM SR to a folder and/or another node.

Views are checked as they arrive (CR/DX, chest when BodyPartExamined says, pixels that decode) and refused
with a DICOM failure status otherwise, so the sender learns at once; a bad object never stops the node.
Logs name UIDs and statuses only: no pixel data, no patient names, IDs or birth dates.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from echocxr.clinical.dicom_forward import DicomPeer, send_dataset
from echocxr.clinical.record import ClinicalReport

log = logging.getLogger("echocxr.dicom")

SUCCESS = 0x0000
REFUSED = 0xA900  # "Data Set does not match SOP Class": not a chest radiograph, or no image in it
CANNOT_UNDERSTAND = 0xC000  # the pixels (or the dataset) cannot be decoded
CHEST_MODALITIES = ("CR", "DX")
CHEST_BODY_PARTS = ("CHEST", "THORAX")


@dataclass
class NodeConfig:
    ae_title: str = "ECHOCXR"
    host: str = "127.0.0.1"
    port: int = 11112  # 0: any free port (tests); `ReportNode.port` says which
    quiet_s: float = 10.0  # a study is complete once its senders have hung up and no view came for this long
    out_dir: Path | None = None  # write <StudyInstanceUID>.dcm here
    forward: DicomPeer | None = None  # and/or C-STORE the SR there
    max_views: int = 4  # views a report reads (more are received, the first ones are used)
    allowed_aets: tuple[str, ...] = ()  # calling AE titles accepted (empty: any)


@dataclass
class _Study:
    views: dict[str, tuple[Any, Any]] = field(default_factory=dict)  # SOPInstanceUID -> (header, RGB image)
    last_seen: float = 0.0  # the last view, or the close of the last association that sent one
    senders: set[int] = field(default_factory=set)  # open associations that sent views of it: not complete yet


# Writes the report of a study's views: (images) -> (report text, decoder description, warnings).
ReportWriter = Callable[[list], tuple[str, str, list[str]]]


def refusal(ds: Any) -> str | None:
    """Why an object is not a chest radiograph this node reports on (None: it is one)."""
    modality = str(ds.get("Modality", "") or "").upper()
    if modality not in CHEST_MODALITIES:
        return f"modality {modality or 'missing'} is not CR/DX"
    part = str(ds.get("BodyPartExamined", "") or "").strip().upper()
    if part and part not in CHEST_BODY_PARTS:
        return f"body part {part[:16]} is not CHEST"
    if "PixelData" not in ds:
        return "no pixel data"
    if not ds.get("StudyInstanceUID") or not ds.get("SOPInstanceUID"):
        return "no Study or SOP Instance UID"
    return None


class ReportNode:
    """The SCP and its report worker: `start()`, then `stop()` (which reports the studies already received)."""

    def __init__(self, write_report: ReportWriter, config: NodeConfig, language: str = "en",
                 model: str = "echocxr"):
        self.write_report = write_report
        self.config = config
        self.language = language
        self.model = model
        self._studies: dict[str, _Study] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = False
        self._server = None
        self._worker: threading.Thread | None = None
        self.reports_done = 0  # studies reported (tests and the final log line)

    # ---- life cycle ----
    def start(self) -> None:
        """Bind and serve in background threads; OSError when the port is taken."""
        from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
        from pynetdicom.sop_class import Verification

        ae = AE(ae_title=self.config.ae_title)
        for cx in AllStoragePresentationContexts:  # every storage class: others get a failure status, not silence
            ae.add_supported_context(cx.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        ae.add_supported_context(Verification)
        if self.config.allowed_aets:
            ae.require_calling_aet = list(self.config.allowed_aets)
        self._server = ae.start_server((self.config.host, self.config.port), block=False,
                                       evt_handlers=[(evt.EVT_C_STORE, self._on_store),
                                                     (evt.EVT_CONN_CLOSE, self._on_close)])
        self._worker = threading.Thread(target=self._run_worker, name="echocxr-dicom-reports", daemon=True)
        self._worker.start()
        log.info("listening as %s on %s:%d", self.config.ae_title, self.config.host, self.port)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1]) if self._server is not None else self.config.port

    def pending(self) -> int:
        with self._lock:
            return len(self._studies)

    def stop(self, flush: bool = True) -> None:
        """Stop accepting; with `flush`, report every study already received first (their senders were told
        success), else drop them with a log line."""
        if self._server is not None:
            self._server.shutdown()
            self._server = None
        if not flush:
            with self._lock:
                dropped, self._studies = len(self._studies), {}
            if dropped:
                log.warning("stopped: %d received studies not reported", dropped)
        self._stopping = True
        self._wake.set()
        if self._worker is not None:
            self._worker.join()
            self._worker = None

    def __enter__(self) -> ReportNode:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop(flush=exc[0] is None)

    # ---- receiving ----
    def _on_store(self, event: Any) -> Any:
        """One C-STORE: check and decode the view now (a refusal's status carries why, in ErrorComment), keep
        its header and image."""
        try:
            ds = event.dataset
            ds.file_meta = event.file_meta
        except Exception as exc:  # noqa: BLE001 - a malformed dataset must not end the association thread
            log.warning("refused an object that cannot be parsed (%s): status 0x%04X", type(exc).__name__,
                        CANNOT_UNDERSTAND)
            return _status(CANNOT_UNDERSTAND, "dataset cannot be parsed")
        sop, study = str(ds.get("SOPInstanceUID", "?")), str(ds.get("StudyInstanceUID", "?"))
        why = refusal(ds)
        if why is not None:
            log.warning("refused SOP instance %s of study %s: %s: status 0x%04X", sop, study, why, REFUSED)
            return _status(REFUSED, why)
        try:
            image = _to_image(ds)
        except Exception as exc:  # noqa: BLE001 - pydicom raises many types for broken or exotic pixel data
            log.warning("refused SOP instance %s of study %s: pixels cannot be decoded (%s): status 0x%04X",
                        sop, study, type(exc).__name__, CANNOT_UNDERSTAND)
            return _status(CANNOT_UNDERSTAND, "pixel data cannot be decoded")
        from echocxr.clinical.sources import without_pixels

        with self._lock:
            entry = self._studies.setdefault(study, _Study())
            entry.views[sop] = (without_pixels(ds), image)
            entry.last_seen = time.monotonic()
            entry.senders.add(id(event.assoc))
            n = len(entry.views)
        log.info("received SOP instance %s of study %s (%d view%s)", sop, study, n, "" if n == 1 else "s")
        self._wake.set()
        return SUCCESS

    def _on_close(self, event: Any) -> None:
        """A sender hung up (released, aborted, dropped or timed out): its studies' quiet period starts now, so
        a slow sender's views are never split into two reports while it is still connected."""
        key, now = id(event.assoc), time.monotonic()
        with self._lock:
            for study in self._studies.values():
                if key in study.senders:
                    study.senders.discard(key)
                    study.last_seen = now
        self._wake.set()

    # ---- reporting ----
    def _run_worker(self) -> None:
        while True:
            self._wake.wait(timeout=min(0.5, max(0.05, self.config.quiet_s / 4)))
            self._wake.clear()
            for study_uid, study in self._due(everything=self._stopping):
                self._report(study_uid, study)
            if self._stopping and not self.pending():
                return

    def _due(self, everything: bool) -> list[tuple[str, _Study]]:
        now = time.monotonic()
        with self._lock:
            due = [uid for uid, s in self._studies.items()
                   if everything or (not s.senders and now - s.last_seen >= self.config.quiet_s)]
            return [(uid, self._studies.pop(uid)) for uid in due]

    def _report(self, study_uid: str, study: _Study) -> None:
        """Write and deliver one study's SR; any failure is one log line, and the node goes on."""
        views = list(study.views.values())
        if len(views) > self.config.max_views:
            log.warning("study %s: %d views, reporting on the first %d", study_uid, len(views), self.config.max_views)
            views = views[: self.config.max_views]
        try:
            text, decoder, warnings = self.write_report([image for _, image in views])
            for line in warnings:
                log.warning("study %s: %s", study_uid, line)
            from echocxr.clinical.dicom_sr import dicom_sr

            report = ClinicalReport(text, self.language, self.model, decoder, tuple(h for h, _ in views))
            sr = dicom_sr(report)
        except Exception as exc:  # noqa: BLE001 - the node outlives any one study
            log.error("study %s: no report (%s: %s)", study_uid, type(exc).__name__, _one_line(exc))
            return
        delivered = False
        if self.config.out_dir is not None:
            try:
                path = _free_path(Path(self.config.out_dir), study_uid)
                sr.save_as(path, enforce_file_format=True)
                log.info("study %s: SR %s written to %s", study_uid, sr.SOPInstanceUID, path)
                delivered = True
            except OSError as exc:
                log.error("study %s: cannot write the SR to %s (%s)", study_uid, self.config.out_dir,
                          exc.strerror or type(exc).__name__)
        if self.config.forward is not None:
            try:
                status = send_dataset(sr, self.config.forward, self.config.ae_title)
                ok = status in (0x0000, 0xB000, 0xB007, 0xB006)  # success or warning
                (log.info if ok else log.error)("study %s: SR %s sent to %s: status 0x%04X", study_uid,
                                                sr.SOPInstanceUID, self.config.forward, status)
                delivered = delivered or ok
            except Exception as exc:  # noqa: BLE001 - network errors of every kind
                log.error("study %s: cannot send the SR to %s (%s)", study_uid, self.config.forward,
                          _one_line(exc))
        self.reports_done += delivered


def _status(code: int, why: str) -> Any:
    """A C-STORE failure status with its reason (ErrorComment, at most 64 characters)."""
    from pydicom.dataset import Dataset

    ds = Dataset()
    ds.Status, ds.ErrorComment = code, why[:64]
    return ds


def _free_path(folder: Path, study_uid: str) -> Path:
    """<StudyUID>.dcm, or <StudyUID>-2.dcm, ... when a later view of the study got a report of its own."""
    path, n = folder / f"{study_uid}.dcm", 1
    while path.exists():
        n += 1
        path = folder / f"{study_uid}-{n}.dcm"
    return path


def _to_image(ds: Any) -> Any:
    """The view as the model sees a DICOM file: the display pipeline of `echocxr.data.dicom`, then RGB."""
    from PIL import Image

    from echocxr.data.dicom import dicom_to_uint8

    return Image.fromarray(dicom_to_uint8(ds.pixel_array, ds)).convert("RGB")


def _one_line(exc: BaseException) -> str:
    msg = " ".join(str(exc).split()) or type(exc).__name__
    return msg if len(msg) <= 160 else msg[:157] + "..."
