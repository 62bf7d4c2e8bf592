"""/v1/reports in hospital formats: ?format=, the `format` form/JSON field, the Accept header; bad ones are 400."""

from __future__ import annotations

import base64
import io

import pydicom
import pytest
from fastapi.testclient import TestClient
from fhir.resources.R4B.bundle import Bundle

from echocxr.serving.app import ServerConfig, create_app
from tests.dicom_files import chest_dataset
from tests.test_serving_upload import encode, ramp

MAX_NEW = 8


@pytest.fixture(scope="module")
def client(engine):
    app = create_app(engine, engine.default_config(max_new_tokens=MAX_NEW), ServerConfig(model_name="tiny"))
    with TestClient(app) as c:
        yield c


def png() -> bytes:
    from PIL import Image

    return encode(Image.fromarray(ramp(64, 64)))


def cr_bytes() -> tuple[bytes, pydicom.Dataset]:
    ds = chest_dataset(ramp(64, 64))
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue(), ds


def test_default_is_json_and_format_text_is_the_report(client):
    files = {"images": ("a.png", png(), "image/png")}
    r = client.post("/v1/reports", files=files)
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    t = client.post("/v1/reports?format=text", files=files)
    assert t.status_code == 200 and t.headers["content-type"].startswith("text/plain")
    assert t.text == r.json()["report"]  # greedy: the same report either way


def test_fhir_by_query_field_or_accept_header(client):
    image = base64.b64encode(png()).decode()
    for r in (client.post("/v1/reports?format=fhir", json={"images": [image]}),
              client.post("/v1/reports", json={"images": [image], "format": "fhir"}),
              client.post("/v1/reports", json={"images": [image]}, headers={"Accept": "application/fhir+json"})):
        assert r.status_code == 200 and r.headers["content-type"].startswith("application/fhir+json")
        bundle = Bundle.model_validate_json(r.content)
        report = bundle.entry[0].resource
        assert report.get_resource_type() == "DiagnosticReport" and report.status == "preliminary"
        assert "imagingStudy" not in report.model_dump()  # PNG upload: no DICOM study to name


def test_dicom_sr_of_a_dicom_upload_joins_its_study(client):
    data, source = cr_bytes()
    r = client.post("/v1/reports", files={"images": ("cr.dcm", data, "application/dicom"), "format": (None, "dicom-sr")})
    assert r.status_code == 200 and r.headers["content-type"] == "application/dicom"
    sr = pydicom.dcmread(io.BytesIO(r.content))
    assert sr.StudyInstanceUID == source.StudyInstanceUID and sr.VerificationFlag == "UNVERIFIED"
    (evidence,) = sr.CurrentRequestedProcedureEvidenceSequence
    assert evidence.ReferencedSeriesSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == \
        source.SOPInstanceUID
    a = client.post("/v1/reports", files={"images": ("cr.dcm", data, "application/dicom")},
                    headers={"Accept": "application/dicom"})
    assert a.status_code == 200 and pydicom.dcmread(io.BytesIO(a.content)).StudyInstanceUID == source.StudyInstanceUID


@pytest.mark.parametrize("how", ["query", "field", "stream", "stream-endpoint-query", "stream-endpoint-field"])
def test_bad_format_is_one_line_400(client, how):
    image = base64.b64encode(png()).decode()
    if how == "query":
        r = client.post("/v1/reports?format=hl7", json={"images": [image]})
    elif how == "field":
        r = client.post("/v1/reports", files={"images": ("a.png", png(), "image/png"), "format": (None, "pdf")})
    elif how == "stream":
        r = client.post("/v1/reports?format=fhir", json={"images": [image], "stream": True})
    elif how == "stream-endpoint-query":
        r = client.post("/v1/reports/stream?format=fhir", json={"images": [image]})
    else:
        r = client.post("/v1/reports/stream", json={"images": [image], "format": "fhir"})
    assert r.status_code == 400
    message = r.json()["error"]["message"]
    assert "\n" not in message and ("unknown format" in message or "stream" in message)
    assert "fhir" in message
