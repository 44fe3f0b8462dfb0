"""The names of a run directory's files: the one place they are spelled.

Writers (the report, the sections, ``interp patch``) and readers (the explorer, ``interp compare``)
take them from here; the run store (:mod:`interp.analysis.rundir`) owns the layout. Importing this
module loads nothing but the standard library, so the explorer and the command line's parser stay
light.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RunFiles:
    """The names of a run directory's files, relative to it (the layout in the module docstring)."""

    settings: str = "run.json"
    rows: str = "rows"
    report_json: str = "report.json"
    report_md: str = "report.md"
    patching_sweep: str = "patching_sweep.csv"
    #: ``interp patch --resume``'s row log of the exact sweep (a reproduce run logs ``section_log("patching")``)
    patching_partial: str = "patching_sweep.partial.jsonl"
    patching_json: str = "patching.json"
    patching_md: str = "patching.md"
    attribution_sweep: str = "attribution_sweep.csv"
    attribution_agreement: str = "attribution_agreement.csv"
    attribution_partial: str = "attribution_sweep.partial.jsonl"
    attribution_json: str = "attribution.json"
    attribution_md: str = "attribution.md"

    def section_log(self, name: str) -> str:
        """The row log of report section ``name``: ``rows/<name>.jsonl``."""
        return f"{self.rows}/{name}.jsonl"

    def section_settings(self, name: str) -> str:
        """The settings of report section ``name``'s rows: ``rows/<name>.settings.json``."""
        return f"{self.rows}/{name}.settings.json"


#: the one place a run's file names are spelled
FILES = RunFiles()

__all__ = ["FILES", "RunFiles"]
