"""Reports in hospital formats: FHIR R4 DiagnosticReport bundles, DICOM Structured Reports, and a DICOM node.

`formats.render(fmt, report)` is the one entry point the CLI and the server share; `record.ClinicalReport` is
what every builder takes (the report text, who wrote it and how, and the source DICOM headers when the views
came as DICOM). Every output says that the report is machine-generated, preliminary and not verified.
Importing this package loads neither fhir.resources, highdicom nor pynetdicom: each builder imports its own.
"""
