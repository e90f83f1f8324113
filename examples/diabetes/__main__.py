"""A regressor: disease progression from the diabetes data that ships with scikit-learn.

Writes into OUT (default ``examples/diabetes/out``): ``eval.csv`` (held-out rows with the true
``progression``) and ``model.joblib``, the fitted pipeline, saved with joblib.

    python -m examples.diabetes [OUT]
    python -m model_service package OUT/model.joblib --version diabetes-v1 \\
        --eval OUT/eval.csv --target progression
"""

from __future__ import annotations

import sys
from pathlib import Path

import joblib
from sklearn.datasets import load_diabetes
from sklearn.ensemble import GradientBoostingRegressor
from sklearn.model_selection import train_test_split
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

TARGET = "progression"


def build() -> Pipeline:
    return Pipeline([("scale", StandardScaler()),
                     ("model", GradientBoostingRegressor(n_estimators=100, max_depth=2,
                                                         random_state=0))])


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    data = load_diabetes(as_frame=True)
    features = data.frame.drop(columns=["target"])
    x_train, x_eval, y_train, y_eval = train_test_split(features, data.frame["target"],
                                                        test_size=0.25, random_state=0)
    pipeline = build().fit(x_train, y_train)
    evaluation = x_eval.assign(**{TARGET: y_eval})
    evaluation.to_csv(out / "eval.csv", index=False)
    joblib.dump(pipeline, out / "model.joblib")
    print(f"wrote {out / 'model.joblib'} and {out / 'eval.csv'}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "examples/diabetes/out"))
