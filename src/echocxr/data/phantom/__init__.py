"""CXR-Phantom: procedurally rendered chest radiographs with known findings and generated reports.

The offline benchmark (see DESIGN.md): `sample_case` draws a study's findings, `render_case` draws its
images, `write_report` writes its report (EN/ZH, normalised/raw), `write_phantom_set` writes a whole
benchmark (PNGs + manifests). Text can be generated without rendering, which keeps labeler and
tokenizer work fast.
"""

from echocxr.data.phantom.findings import (
    FINDING_LABELS,
    FINDING_TYPES,
    Finding,
    PhantomCase,
    finding_type,
    sample_case,
)
from echocxr.data.phantom.generate import phantom_reports, write_phantom_set
from echocxr.data.phantom.grammar import VARIANTS, write_report
from echocxr.data.phantom.render import render_case

__all__ = [
    "FINDING_LABELS", "FINDING_TYPES", "VARIANTS", "Finding", "PhantomCase", "finding_type", "phantom_reports",
    "render_case", "sample_case", "write_phantom_set", "write_report",
]
