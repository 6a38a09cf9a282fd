"""Fitted preprocessing states of each kind, as real preprocessors write them (for packages built
in tests without fitting on data)."""

FITTED = {
    "tabular": {
        "numeric": {"names": ["age"], "log": [False], "median": [60.0], "mean": [0.5], "std": [1.0]},
        "categorical": [{"name": "stage", "categories": ["I", "II"]}],
    },
    "timeseries": {"variables": ["albumin"], "log": [], "mean": [0.5], "std": [1.0]},
    "bags": {"mean": [0.0] * 7, "std": [1.0] * 7},
    "image": {"shape": [1, 16, 16], "mean": [0.5], "std": [0.2]},
}
