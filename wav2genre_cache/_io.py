"""Values as JSON can hold them: what bundle.json, metrics.json and saved heads are written with."""

from __future__ import annotations

import math


def jsonable(obj):
    """obj with tuples as lists and undefined floats (an AUC of a missing class) as null.

    JSON has no tuple (a head's hidden_layers) and no NaN; dicts, lists and tuples are walked.
    """
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [jsonable(v) for v in obj]
    return obj
