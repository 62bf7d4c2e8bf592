"""Small real DICOM files for tests (pydicom, Explicit VR Little Endian)."""

from __future__ import annotations

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid


def write_dicom(path, arr: np.ndarray, photometric: str = "MONOCHROME2", bits_stored: int | None = None,
                preamble: bool = True, **attrs):
    """A minimal but valid DICOM Part 10 file holding `arr`; `path` may be a file object, `preamble=False`
    writes the dataset without the 128-byte preamble + DICM header."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.PhotometricInterpretation = photometric
    frames = 1
    if arr.ndim == 3 and photometric == "RGB":
        ds.SamplesPerPixel, ds.PlanarConfiguration = 3, 0
        rows, cols = arr.shape[:2]
    elif arr.ndim == 3:
        ds.SamplesPerPixel = 1
        frames, rows, cols = arr.shape
        ds.NumberOfFrames = frames
    else:
        ds.SamplesPerPixel = 1
        rows, cols = arr.shape
    ds.Rows, ds.Columns = rows, cols
    bits = arr.dtype.itemsize * 8
    ds.BitsAllocated = bits
    ds.BitsStored = bits_stored or bits
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 0
    for key, value in attrs.items():
        setattr(ds, key, value)
    ds.PixelData = np.ascontiguousarray(arr).tobytes()
    ds.save_as(path, enforce_file_format=preamble)
    return path
