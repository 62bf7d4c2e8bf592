"""Decode memory is bounded: a request's views are budgeted from their headers, requests decode one at a time,
and deep images are scaled to 8 bits band by band (exactly as a whole-image computation would).

RSS is measured as the kernel's peak (VmHWM, reset through /proc/self/clear_refs), not sampled: the peak of a
short allocation is never missed and a loaded machine does not change it.
"""

from __future__ import annotations

import asyncio
import time
from io import BytesIO

import httpx
import numpy as np
import pytest
from PIL import Image

import echocxr.data.dicom as dicom_mod
import echocxr.data.images as images_mod
from echocxr.serving import app as app_mod
from echocxr.serving.app import ServerConfig, create_app
from echocxr.serving.server import BackgroundServer
from tests.test_serving import assert_error, xray
from tests.test_serving_upload import dicom_bytes

GB = 1024**3


def status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(field)


def reset_peak_rss() -> int:
    """Reset the kernel's peak-RSS mark to the current RSS and return it (skip where that is not allowed)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError as exc:
        pytest.skip(f"cannot reset the peak RSS here ({exc})")
    return status_kb("VmRSS")


@pytest.fixture(scope="module")
def big_png() -> bytes:
    """A 7000x7000 16-bit PNG of a few hundred KB (the fuzz's 134 KB one decoded to 0.83 GB at peak)."""
    side = np.arange(7000, dtype=np.uint16)
    buf = BytesIO()
    Image.fromarray((side[:, None] + side[None, :]) * np.uint16(4)).save(buf, "PNG", compress_level=1)
    return buf.getvalue()


@pytest.fixture(scope="module")
def server(engine):
    app = create_app(engine, engine.default_config(max_new_tokens=4), ServerConfig())
    with BackgroundServer(app) as srv:
        srv.service = app.state.service
        yield srv


def post_all(url: str, bodies: list[list[bytes]]) -> list[httpx.Response]:
    async def go():
        async with httpx.AsyncClient(base_url=url, timeout=300) as c:
            return await asyncio.gather(*[
                c.post("/v1/reports", files=[("images", (f"v{i}.png", v, "image/png")) for i, v in enumerate(views)])
                for views in bodies])

    return asyncio.run(go())


def test_three_requests_of_four_huge_views_stay_under_1_5_gb(server, big_png):
    """The issue's case (4.08 GB before): refused from the headers, nothing decoded."""
    base = reset_peak_rss()
    rs = post_all(server.url, [[big_png] * 4] * 3)
    grown = status_kb("VmHWM") - base
    for r in rs:
        assert_error(r, 413, "study too large: 4 views of 196.0 MP in all (limit 64.0 MP", "request_too_large")
    assert grown < 1.5 * GB, f"peak RSS grew {grown / GB:.2f} GB"


def test_three_concurrent_huge_views_are_served_within_the_bound(server, big_png):
    """Within the budget they are decoded one request at a time, each with 8-bit band scaling (0.83 GB per
    view and all three at once before)."""
    server.service.peak_decoded_pixels = 0
    base = reset_peak_rss()
    rs = post_all(server.url, [[big_png]] * 3)
    grown = status_kb("VmHWM") - base
    assert [r.status_code for r in rs] == [200] * 3, rs[0].text
    assert server.service.peak_decoded_pixels == 7000 * 7000  # never two requests' views at once
    assert grown < 1.5 * GB, f"peak RSS grew {grown / GB:.2f} GB"


def test_requests_decode_one_at_a_time(engine, monkeypatch):
    """The concurrency bound, deterministically: decoding is slowed so that the requests would overlap."""
    real = app_mod.load_image_bytes

    def slow(data, max_pixels):
        time.sleep(0.1)
        return real(data, max_pixels)

    monkeypatch.setattr(app_mod, "load_image_bytes", slow)
    app = create_app(engine, engine.default_config(max_new_tokens=4), ServerConfig())
    views = [xray(1, 100), xray(2, 100)]
    with BackgroundServer(app) as srv:
        rs = post_all(srv.url, [views] * 4)
    assert [r.status_code for r in rs] == [200] * 4
    service = app.state.service
    assert service.peak_decoded_pixels == 2 * 100 * 100 and service.decoded_pixels == 0


def test_request_pixel_budget_counts_every_view(engine):
    app = create_app(engine, engine.default_config(max_new_tokens=4), ServerConfig(max_request_pixels=15_000))
    with BackgroundServer(app) as srv, httpx.Client(base_url=srv.url, timeout=60) as c:
        one = c.post("/v1/reports", files=[("images", ("a.png", xray(0, 100), "image/png"))])
        assert one.status_code == 200, one.text
        frames = dicom_bytes(np.stack([np.zeros((64, 64), np.uint16)] * 2))
        two = c.post("/v1/reports", files=[("images", ("a.png", xray(0, 100), "image/png")),
                                           ("images", ("b.dcm", frames, "application/dicom"))])
        assert_error(two, 413, "study too large: 2 views of 0.0 MP in all (limit 0.0 MP per request)")


@pytest.mark.parametrize("arr", [
    np.random.default_rng(0).integers(100, 4000, (301, 257)).astype(np.uint16),
    np.random.default_rng(1).integers(-50_000, 90_000, (123, 77)).astype(np.int32),
    np.random.default_rng(2).normal(0, 3, (99, 101)).astype(np.float32),
], ids=["uint16", "int32", "float32"])
def test_band_scaling_equals_the_whole_image_computation(arr, monkeypatch):
    im = Image.fromarray(arr)
    whole = np.asarray(images_mod.to_rgb(im))
    monkeypatch.setattr(images_mod, "BAND_PIXELS", 1000)  # many bands of a few rows
    assert (np.asarray(images_mod.to_rgb(im)) == whole).all()
    wide = np.asarray(im, dtype=np.float64)
    expected = ((wide - wide.min()) / (wide.max() - wide.min()) * 255.0).astype(np.uint8)
    assert (whole[..., 0] == expected).all()


@pytest.mark.parametrize("attrs", [{}, {"WindowCenter": 2000, "WindowWidth": 400},
                                   {"RescaleSlope": 2, "RescaleIntercept": -1024},
                                   {"WindowCenter": 1000, "WindowWidth": 500, "VOILUTFunction": "SIGMOID"}],
                         ids=["range", "window", "rescale", "sigmoid"])
@pytest.mark.parametrize("photometric", ["MONOCHROME2", "MONOCHROME1"])
def test_dicom_bands_equal_one_band(attrs, photometric, monkeypatch):
    import pydicom

    data = dicom_bytes(np.random.default_rng(3).integers(0, 4096, (97, 83)).astype(np.uint16), photometric, **attrs)
    ds = pydicom.dcmread(BytesIO(data))
    whole = dicom_mod.dicom_to_uint8(ds.pixel_array, ds)
    monkeypatch.setattr(dicom_mod, "_BAND_PIXELS", 500)
    assert (dicom_mod.dicom_to_uint8(ds.pixel_array, ds) == whole).all()


def test_header_pixels_reads_no_pixels():
    from echocxr.serving.decode_upload import header_pixels

    assert header_pixels(xray(0, 50)) == 2500
    assert header_pixels(dicom_bytes(np.zeros((3, 40, 30), np.uint16))) == 3 * 40 * 30
    assert header_pixels(b"not an image") == 0

