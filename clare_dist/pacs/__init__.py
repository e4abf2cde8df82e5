"""The PACS as the archive's source and its results' sink: DICOMweb and DIMSE.

A hospital's scans live in a PACS. `selection` says which instances a run screens (modality,
study dates, body part, views) and why the others are skipped; `instances` is the instance
list a run saves before it retrieves anything, so a killed run resumes from it; `dicomweb`
(QIDO-RS, WADO-RS, STOW-RS) and `dimse` (C-FIND, C-GET, C-STORE) are the two ways in and out,
behind one interface; `stages` are the batch stages the Ray Data job maps over (retrieve and
decode, store the results back and confirm them); `listener` is the storage SCP that screens
studies as a modality or router sends them. Credentials come from the environment only
(`credentials`), never from the command line, and are never logged.
"""
