"""A churn classifier on a DataFrame with numeric, categorical, boolean and missing values.

Writes into OUT (default ``examples/churn/out``): ``train.csv``, ``eval.csv`` (the held-out rows
with the true ``churned``), and ``model.skops``, the fitted pipeline, saved with skops as a user
would save theirs. The data is made deterministically (seeded), so every run writes the same rows.

    python -m examples.churn [OUT]
    python -m model_service package OUT/model.skops --version churn-v1 \\
        --eval OUT/eval.csv --target churned --trust <the types package lists>
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import skops.io
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

NUMBERS = ["tenure_months", "monthly_charges", "support_calls"]
CATEGORIES = ["plan", "region"]
BOOLEANS = ["autopay"]
TARGET = "churned"


def make_data(rows: int = 2000, seed: int = 7) -> pd.DataFrame:
    """Customers with a churn label that depends on every column (missing values included)."""
    rng = np.random.default_rng(seed)
    plan = rng.choice(["basic", "plus", "pro"], rows, p=[0.5, 0.3, 0.2])
    region = rng.choice(["north", "south", "east", "west"], rows).astype(object)
    region[rng.random(rows) < 0.08] = None  # not recorded for some customers
    tenure = rng.integers(1, 72, rows)
    charges = np.round(rng.normal(60, 20, rows).clip(10, 150), 2)
    charges[rng.random(rows) < 0.05] = np.nan
    calls = rng.poisson(1.5, rows)
    autopay = rng.random(rows) < 0.55
    score = (-0.04 * tenure + 0.02 * np.nan_to_num(charges, nan=60) + 0.5 * calls
             - 0.9 * autopay + np.where(plan == "pro", -0.6, 0.0)
             + np.where(region == "south", 0.4, 0.0) - 0.8 + rng.normal(0, 0.8, rows))
    return pd.DataFrame({
        "tenure_months": tenure, "monthly_charges": charges, "support_calls": calls,
        "plan": plan, "region": region, "autopay": autopay,
        TARGET: np.where(score > 0, "yes", "no"),
    })


def build() -> Pipeline:
    prepare = ColumnTransformer([
        ("numbers", make_pipeline(SimpleImputer(strategy="median"), StandardScaler()), NUMBERS),
        ("categories", make_pipeline(SimpleImputer(strategy="constant", fill_value="unknown"),
                                     OneHotEncoder(handle_unknown="ignore")), CATEGORIES),
        ("flags", "passthrough", BOOLEANS),
    ])
    return Pipeline([("prepare", prepare), ("model", LogisticRegression(max_iter=1000))])


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    data = make_data()
    train, evaluation = data.iloc[:1500], data.iloc[1500:]
    pipeline = build().fit(train.drop(columns=[TARGET]), train[TARGET])
    train.to_csv(out / "train.csv", index=False)
    evaluation.to_csv(out / "eval.csv", index=False)
    skops.io.dump(pipeline, out / "model.skops")
    print(f"wrote {out / 'model.skops'}, {out / 'train.csv'} and {out / 'eval.csv'}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "examples/churn/out"))
