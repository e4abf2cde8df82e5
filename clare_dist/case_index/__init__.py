"""The index of known cases: the exact nearest labelled images to a predicted 2-D coordinate.

Exact (recall 1.0), p99 ≤ 100 µs per single query at 10 million cases wherever the query lies
(DESIGN §3). The parts, one job each:

    table     the case table (one row per labelled image), checked, and its partitions
    search    one partition's exact k-nearest search on a k-d tree
    index     `CaseIndex`: build, search by combination (one place groups scans by decision)
    storage   the index's files, and putting them into a model bundle
    cases     the case table from a screened labelled archive (`clare-dist embed --build-index`)
"""

from clare_dist.case_index.cases import build_case_index, cases_from_results
from clare_dist.case_index.index import DEFAULT_K, CaseIndex, Neighbours
from clare_dist.case_index.search import LEAF_SIZE
from clare_dist.case_index.storage import write_index_into_bundle
from clare_dist.case_index.table import ALL_CASES, COLUMNS, CaseIndexError, UnknownCaseError

__all__ = ["ALL_CASES", "COLUMNS", "DEFAULT_K", "LEAF_SIZE", "CaseIndex", "CaseIndexError",
           "Neighbours", "UnknownCaseError", "build_case_index", "cases_from_results", "write_index_into_bundle"]
