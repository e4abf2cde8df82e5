"""Reference layouts made by hand for the layout check's tests, and an oracle for it.

`GOOD` is a layout R4 decodes right at every reference's own point (found by optimising 26 free
points under the layout term, rounded to two decimals); `BAD` has Pn's two nearest other
references both holding Pa, so R4 adds Pa at Pn's own point. `decided_wrong` checks a layout
the slow, obvious way, apart from `apply_rules`.
"""

from __future__ import annotations

import numpy as np

from clare_dist.labels import COMBINATIONS, NO_FINDING, combination_classes
from clare_dist.rules import References

GOOD = References.from_mapping({
    "No Finding": [0.53, 0.33], "Ca": [0.12, 0.11], "Pa": [0.0, 0.09], "Pn": [0.89, 0.86], "Pl": [0.69, 0.91],
    "Ot": [0.46, 0.22], "CaPa": [0.95, 0.49], "CaPn": [0.73, 0.82], "CaPl": [0.8, 0.18], "CaOt": [0.52, 0.02],
    "PaPn": [0.61, 0.26], "PaPl": [0.65, 0.51], "PaOt": [0.83, 0.42], "PnPl": [0.75, 0.56], "PnOt": [0.92, 0.21],
    "PlOt": [0.83, 0.99], "CaPaPn": [0.42, 0.88], "CaPaPl": [0.79, 0.04], "CaPaOt": [0.51, 0.78],
    "CaPnPl": [0.86, 0.62], "CaPnOt": [0.71, 0.75], "CaPlOt": [0.71, 0.0], "PaPnPl": [0.5, 1.0],
    "PaPnOt": [1.0, 0.16], "PaPlOt": [0.59, 0.92], "PnPlOt": [0.34, 0.48],
})

_FAR = {name: [10.0 + 3 * i, 10.0] for i, name in enumerate(COMBINATIONS)}
BAD = References.from_mapping(_FAR | {"Pn": [0.0, 0.0], "PaPl": [0.0, 0.1], "PaOt": [0.1, 0.0], "Pa": [0.3, 0.3]})


def decided_wrong(references: References) -> dict[str, set[str]]:
    """{reference: the classes R4 adds at its own point}: the classes its two nearest other
    references (No Finding aside) share and it lacks."""
    added = {}
    for name, point in zip(references.names, references.coords):
        if name == NO_FINDING:
            continue
        others = sorted((float(np.hypot(*(point - other))), other_name)
                        for other_name, other in zip(references.names, references.coords)
                        if other_name not in (name, NO_FINDING))
        (_, first), (_, second) = others[:2]
        extra = set(combination_classes(first)) & set(combination_classes(second)) - set(combination_classes(name))
        if extra:
            added[name] = extra
    return added
