"""`echocxr dicom-listen`'s node end to end on loopback: a modality (pynetdicom SCU) sends a two-view study, the
node reports on it with the built-in model, and a PACS (a second pynetdicom SCP) receives the SR."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pydicom
import pytest
from pydicom.uid import ComputedRadiographyImageStorage, ExplicitVRLittleEndian, MRImageStorage
from pynetdicom import AE, evt
from pynetdicom.sop_class import ComprehensiveSRStorage, Verification

from echocxr.clinical.dicom_forward import DicomPeer, parse_peer
from echocxr.clinical.dicom_node import CANNOT_UNDERSTAND, REFUSED, NodeConfig, ReportNode, _to_image
from echocxr.clinical.record import describe_decoder
from echocxr.data.sections import split_report
from echocxr.errors import UserError
from tests.clinical_helpers import builtin_engine
from tests.dicom_files import chest_dataset, phantom_views

PATIENT_DATA = ("Test^Patient", "PID-123", "19700101")


@pytest.fixture(scope="module")
def writer():
    engine = builtin_engine()
    cfg = engine.default_config(max_new_tokens=24)

    def write(images: list) -> tuple[str, str, list[str]]:
        gen = engine.generate([engine.encode(images, lang="en")], cfg)[0]
        return gen.text, describe_decoder(cfg), gen.warnings

    return write


@pytest.fixture
def pacs():
    """The receiving end of --forward: keeps every SR C-STOREd to it."""
    received: list = []
    got = threading.Event()

    def on_store(event):
        ds = event.dataset
        ds.file_meta = event.file_meta
        received.append(ds)
        got.set()
        return 0x0000

    ae = AE(ae_title="PACS")
    ae.add_supported_context(ComprehensiveSRStorage, ExplicitVRLittleEndian)
    server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])
    yield SimpleNamespace(peer=DicomPeer("127.0.0.1", server.server_address[1], "PACS"), received=received, got=got)
    server.shutdown()


def send(port: int, datasets: list, pause_s: float = 0.0, comments: list | None = None) -> list[int]:
    """A modality's C-STOREs to the node, one association (`pause_s` between them); the status of each (and
    its ErrorComment appended to `comments`)."""
    ae = AE(ae_title="MODALITY")
    for sop_class in (ComputedRadiographyImageStorage, MRImageStorage):
        ae.add_requested_context(sop_class, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", port, ae_title="ECHOCXR")
    assert assoc.is_established
    try:
        statuses = []
        for i, ds in enumerate(datasets):
            time.sleep(pause_s if i else 0.0)
            status = assoc.send_c_store(ds)
            statuses.append(int(status.Status))
            if comments is not None:
                comments.append(status.get("ErrorComment"))
        return statuses
    finally:
        assoc.release()


def echo(port: int) -> int:
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title="ECHOCXR")
    try:
        return int(assoc.send_c_echo().Status)
    finally:
        assoc.release()


def test_a_two_view_study_comes_back_as_an_sr_in_its_study(writer, pacs, tmp_path, caplog):
    frontal, lateral = phantom_views()
    views = [chest_dataset(frontal)]
    views.append(chest_dataset(lateral, views[0].StudyInstanceUID, ViewPosition="LL"))
    expected, _, _ = writer([_to_image(ds) for ds in views])  # greedy: what the node must write
    config = NodeConfig(port=0, quiet_s=0.3, out_dir=tmp_path, forward=pacs.peer)
    with caplog.at_level(logging.INFO), ReportNode(writer, config, model="built-in") as node:
        # a slow modality: the views come further apart than --quiet-s, in one association: still one study
        assert send(node.port, views, pause_s=3 * config.quiet_s) == [0x0000, 0x0000]
        assert pacs.got.wait(timeout=300), "no SR reached the PACS"
    (sr,) = pacs.received
    study = views[0].StudyInstanceUID
    assert sr.SOPClassUID == ComprehensiveSRStorage and sr.StudyInstanceUID == study and sr.PatientID == "PID-123"
    cited = {ref.ReferencedSOPInstanceUID for series in sr.CurrentRequestedProcedureEvidenceSequence[0]
             .ReferencedSeriesSequence for ref in series.ReferencedSOPSequence}
    assert cited == {ds.SOPInstanceUID for ds in views}
    texts = {child.ConceptNameCodeSequence[0].CodeMeaning: child.TextValue for item in sr.ContentSequence
             for child in [item, *item.get("ContentSequence", [])] if child.ValueType == "TEXT"}
    sections = split_report(expected)
    assert texts.get("Finding", "") == sections.findings.strip() and texts.get("Impression", "") == \
        sections.impression.strip()
    assert sr.VerificationFlag == "UNVERIFIED" and "NOT verified" in texts["Comment"]
    written = pydicom.dcmread(tmp_path / f"{study}.dcm")  # --out too, the same document
    assert written.SOPInstanceUID == sr.SOPInstanceUID and node.reports_done == 1
    logs = caplog.text
    assert study in logs and not any(value in logs for value in PATIENT_DATA)


def test_non_chest_and_broken_objects_are_refused_and_the_node_stays_up(writer, tmp_path, caplog):
    frontal = phantom_views()[0]
    mr = chest_dataset(frontal, modality="MR", SOPClassUID=MRImageStorage)
    knee = chest_dataset(frontal, BodyPartExamined="KNEE")
    broken = chest_dataset(frontal)
    broken.PixelData = broken.PixelData[:100]  # truncated: pixels cannot be decoded
    with caplog.at_level(logging.INFO), ReportNode(writer, NodeConfig(port=0, quiet_s=0.3, out_dir=tmp_path)) as node:
        comments: list = []
        assert send(node.port, [mr, knee, broken], comments=comments) == [REFUSED, REFUSED, CANNOT_UNDERSTAND]
        assert comments == ["modality MR is not CR/DX", "body part KNEE is not CHEST", "pixel data cannot be decoded"]
        assert echo(node.port) == 0x0000 and node.pending() == 0
    assert list(tmp_path.iterdir()) == []
    lines = [r.getMessage() for r in caplog.records if r.name == "echocxr.dicom" and "refused" in r.getMessage()]
    assert len(lines) == 3 and "modality MR" in lines[0] and "body part KNEE" in lines[1] and "pixels" in lines[2]
    assert not any(value in caplog.text for value in PATIENT_DATA)


def test_forward_addresses():
    assert parse_peer("pacs.local:104:PACS") == DicomPeer("pacs.local", 104, "PACS")
    assert parse_peer("[::1]:11112:ARCHIVE") == DicomPeer("::1", 11112, "ARCHIVE")
    for bad in ("pacs:104", "pacs:port:PACS", "pacs:104:" + "A" * 17):
        with pytest.raises(UserError):
            parse_peer(bad)


@pytest.mark.parametrize("args,needle", [
    ([], "nowhere to send reports"),
    (["--out", "OUT", "--forward", "pacs:104"], "expected HOST:PORT:AET"),
    (["--out", "OUT", "--ae-title", "A" * 17], "not a DICOM AE title"),
])
def test_dicom_listen_errors_are_one_line(tmp_path, capsys, args, needle):
    from echocxr.cli import main

    assert main(["dicom-listen", *[str(tmp_path) if a == "OUT" else a for a in args]]) == 2
    err = capsys.readouterr().err
    assert needle in err and len(err.strip().splitlines()) == 1


def test_dicom_listen_stops_cleanly_on_ctrl_c(tmp_path):
    """The verb as a user runs it: it listens, and Ctrl-C (SIGINT) ends it with status 0 and a last line."""
    import os
    import signal
    import subprocess
    import sys

    src = str(Path(__file__).resolve().parent.parent / "src")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")]))}
    # Ctrl-C as in a terminal: a suite started in the background inherits SIGINT ignored, and Python then
    # installs no KeyboardInterrupt handler in the child
    proc = subprocess.Popen([sys.executable, "-m", "echocxr.cli", "dicom-listen", "--port", "0", "--out",
                             str(tmp_path), "--max-new-tokens", "16", "--log-level", "warning"],
                            stderr=subprocess.PIPE, text=True, env=env,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        lines = []
        for line in proc.stderr:
            lines.append(line)
            if "Ctrl-C to stop" in line:
                break
        assert any("ECHOCXR on 127.0.0.1:" in ln for ln in lines), "".join(lines)
        proc.send_signal(signal.SIGINT)
        rest = proc.stderr.read()
        assert proc.wait(timeout=60) == 0, rest
        assert "stopped (0 reports delivered)" in rest and "Traceback" not in rest
    finally:
        if proc.poll() is None:
            proc.kill()
