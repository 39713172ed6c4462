"""DICOM in and out: ingest, the index, query/retrieve, DICOMweb, pixels, cloud film."""
