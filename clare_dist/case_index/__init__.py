"""The index of known cases: the exact nearest labelled images to a predicted 2-D coordinate.

Exact (recall 1.0) and under a millisecond a query at 10 million cases (DESIGN §3); on a GPU
when faiss-gpu sees one. The parts, one job each:

    table     the case table (one row per labelled image), checked, and its partitions
    grid      the lattice of cells whose lower bounds make the search exact
    search    one partition's exact k-nearest search on FAISS, CPU or GPU
    index     `CaseIndex`: build, search by combination (one place groups scans by decision)
    storage   the index's files, and putting them into a model bundle
    cases     the case table from a screened labelled archive (`clare-dist embed --build-index`)
"""

from clare_dist.case_index.cases import build_case_index, cases_from_results
from clare_dist.case_index.index import CASES_PER_CELL, DEFAULT_K, GRID_MIN_CASES, CaseIndex, Neighbours
from clare_dist.case_index.storage import write_index_into_bundle
from clare_dist.case_index.table import ALL_CASES, COLUMNS, CaseIndexError, UnknownCaseError

__all__ = ["ALL_CASES", "CASES_PER_CELL", "COLUMNS", "DEFAULT_K", "GRID_MIN_CASES", "CaseIndex", "CaseIndexError",
           "Neighbours", "UnknownCaseError", "build_case_index", "cases_from_results", "write_index_into_bundle"]
