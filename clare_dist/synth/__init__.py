"""A synthetic ChestX-ray14 archive: the project's embedded default data set.

Real CXR14 images cannot be downloaded everywhere, so the project draws its own archive in the
official layout (`images/PPPPPPPP_FFF.png` + `Data_Entry_2017.csv`), with the paper's Table 1
proportions of the 26 combinations and a visible, learnable sign for every class:

- Ca: an enlarged heart shadow (cardiothoracic ratio above ~0.5).
- Pa: nodules, masses, patchy consolidation, band atelectasis, perihilar haze or reticulation.
- Pn: a pleural line with a dark, markings-free rim at the apex/periphery of one lung.
- Pl: a fluid meniscus or a blunted costophrenic angle at one or both lung bases.
- Ot: hyperinflated lungs (emphysema) or a retrocardiac gas bubble (hernia).

Everything is deterministic for a seed: the same config writes a byte-identical CSV and
identical pixels (with `dicom`, byte-identical DX files).

The parts: `draws` (labels, patients, follow-ups), `shapes` and `signs` (drawing primitives and
the findings' opacities), `radiograph` (one scan), `dicom` (the DX files), `archive` (writing it
all), `broken` (broken files for a backlog). What the rest of clare-dist uses is imported here.
"""

from .archive import SynthArchive, SynthConfig, write_archive
from .broken import write_broken_scans
from .dicom import TRANSFER_SYNTAXES, encode_dx

__all__ = ["TRANSFER_SYNTAXES", "SynthArchive", "SynthConfig", "encode_dx", "write_archive", "write_broken_scans"]
