"""Small, real DICOM instances made with pydicom for tests (Part 10 bytes)."""

from __future__ import annotations

import io

import numpy as np
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate, get_frame
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid


def ct_instance(*, study_uid: str | None = None, series_uid: str | None = None, sop_uid: str | None = None,
                patient_name: str = "张^秀英", patient_id: str = "P001", charset: str = "GB18030",
                study_date: str = "20261101", accession: str = "A001", instance_number: int = 1,
                modality: str = "CT", size: int = 32, sop_class: str = CTImageStorage, seed: int = 0,
                patient_name_bytes: bytes | None = None, birth_date: str = "19850312", sex: str = "F",
                other_ids: tuple[tuple[str, str], ...] = (), body_part: str = "",
                position: tuple[float, float, float] | None = None) -> bytes:
    """patient_name_bytes writes the PN value exactly as given (e.g. ISO 2022 escape sequences);
    other_ids become OtherPatientIDsSequence items of (issuer, id)."""
    ds = Dataset()
    ds.SpecificCharacterSet = charset
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid or generate_uid()
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.PatientName = patient_name
    if patient_name_bytes is not None:
        from pydicom.dataelem import DataElement

        ds[0x00100010] = DataElement(0x00100010, "PN", patient_name_bytes)
    ds.PatientID = patient_id
    ds.PatientBirthDate = birth_date
    ds.PatientSex = sex
    if other_ids:
        items = []
        for issuer, value in other_ids:
            item = Dataset()
            item.PatientID, item.IssuerOfPatientID = value, issuer
            items.append(item)
        ds.OtherPatientIDsSequence = items
    if body_part:
        ds.BodyPartExamined = body_part
    if position is not None:
        ds.ImagePositionPatient = list(position)
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.SliceThickness = 5
    ds.StudyDate = study_date
    ds.StudyTime = "093000"
    ds.AccessionNumber = accession
    ds.StudyDescription = "胸部CT平扫"
    ds.Modality = modality
    ds.SeriesNumber = 1
    ds.InstanceNumber = instance_number
    ds.Rows = ds.Columns = size
    ds.PixelSpacing = [0.7, 0.7]
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.RescaleIntercept = -1024
    ds.RescaleSlope = 1
    ds.WindowCenter = 40
    ds.WindowWidth = 400
    rng = np.random.default_rng(seed + instance_number)
    ds.PixelData = rng.integers(0, 2000, size=(size, size), dtype=np.uint16).tobytes()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def undecodable_jpeg() -> Dataset:
    """pydicom's 12-bit JPGExtended.dcm with the frame header (SOF) cut out of its codestream:
    no decoder can make pixels of it."""
    ds = dcmread(get_testdata_file("JPGExtended.dcm"))
    stream = get_frame(ds.PixelData, 0, number_of_frames=1)
    sof = stream.index(b"\xff\xc1")
    end = sof + 2 + int.from_bytes(stream[sof + 2:sof + 4], "big")
    ds.PixelData = encapsulate([stream[:sof] + stream[end:]])
    return ds
