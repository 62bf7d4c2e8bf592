"""Small real DICOM files for tests (pydicom, Explicit VR Little Endian)."""

from __future__ import annotations

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid


def new_dataset(sop_class: str) -> Dataset:
    """An empty dataset of `sop_class` with a new SOP instance UID and its Part 10 file meta."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    return ds


def write_dicom(path, arr: np.ndarray, photometric: str = "MONOCHROME2", bits_stored: int | None = None,
                preamble: bool = True, **attrs):
    """A minimal but valid DICOM Part 10 file holding `arr`; `path` may be a file object, `preamble=False`
    writes the dataset without the 128-byte preamble + DICM header."""
    ds = new_dataset(SecondaryCaptureImageStorage)
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


def chest_dataset(arr: np.ndarray, study_uid: str | None = None, modality: str = "CR", **attrs) -> Dataset:
    """An in-memory chest radiograph (CR Image Storage, 8-bit MONOCHROME2) with patient and study attributes,
    ready to C-STORE or save: what a modality sends a DICOM node."""
    from pydicom.uid import ComputedRadiographyImageStorage

    ds = new_dataset(ComputedRadiographyImageStorage)
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Test^Patient", "PID-123", "19700101", "O"
    ds.StudyDate, ds.StudyTime, ds.AccessionNumber, ds.StudyID = "20260102", "101500", "ACC1", "1"
    ds.ReferringPhysicianName = ""
    ds.Modality, ds.BodyPartExamined = modality, "CHEST"
    ds.SeriesNumber, ds.InstanceNumber = 1, 1
    ds.PhotometricInterpretation, ds.SamplesPerPixel = "MONOCHROME2", 1
    ds.Rows, ds.Columns = arr.shape
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit, ds.PixelRepresentation = 7, 0
    ds.PixelData = np.ascontiguousarray(arr, dtype=np.uint8).tobytes()
    for key, value in attrs.items():
        setattr(ds, key, value)
    return ds


def phantom_views(index: int = 4, seed: int = 2026, size: int = 112) -> list[np.ndarray]:
    """The frontal and lateral views of a CXR-Phantom study (uint8), the built-in model's kind of image."""
    from echocxr.data.phantom import render_case, sample_case

    return render_case(sample_case(seed, index), size, ("frontal", "lateral"))
