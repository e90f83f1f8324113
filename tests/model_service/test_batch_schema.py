"""``python -m model_service batch`` on packaged example projects: typed columns, regressors.

The churn classifier takes a DataFrame of integers, numbers, categories and a boolean, with
missing values; the diabetes regressor takes ten numbers and answers a number. Each is built by
its example project and packaged once per module, as a user would.
"""

from __future__ import annotations

import csv
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
import pytest

from examples.churn.__main__ import TARGET, build, make_data
from examples.churn.__main__ import main as write_churn
from examples.diabetes.__main__ import main as write_diabetes
from model_service.__main__ import main
from model_service.artifacts import LoadedModel, load_artifact
from tests.model_service.test_batch import _peak_bytes


@pytest.fixture(scope="module")
def projects(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Both example projects written, and a churn pipeline that refuses unknown categories."""
    root = tmp_path_factory.mktemp("projects")
    write_churn(root / "churn")
    write_diabetes(root / "diabetes")
    strict = build().set_params(prepare__categories__onehotencoder__handle_unknown="error")
    train = make_data().iloc[:1500]
    strict.fit(train.drop(columns=[TARGET]), train[TARGET])
    joblib.dump(strict, root / "churn" / "strict.joblib")
    return root


@pytest.fixture(scope="module")
def packaged(projects: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """churn-v1, churn-strict and diabetes-v1 packaged with the documented command."""
    art = tmp_path_factory.mktemp("artifacts")
    churn, diabetes = projects / "churn", projects / "diabetes"
    trees = "sklearn.tree._tree.Tree,numpy.dtype"
    for model, version, target, options in [
        (churn / "model.skops", "churn-v1", "churned", ["--trust", "numpy.dtype"]),
        (churn / "strict.joblib", "churn-strict", "churned", ["--format", "joblib"]),
        (diabetes / "model.joblib", "diabetes-v1", "progression", ["--trust", trees]),
    ]:
        evaluation = model.parent / "eval.csv"
        command = [str(model), "--version", version, "--eval", str(evaluation), "--target", target]
        assert main(["package", *command, *options, "--artifacts", str(art)]) == 0
    return art


def _score(artifacts: Path, *args: str) -> int:
    """The batch command in this process, without a progress bar; returns its exit code."""
    return main(["batch", "--artifacts", str(artifacts), "--quiet", *args])


def _read_csv(path: Path) -> list[list[str]]:
    with open(path, newline="") as fh:
        return list(csv.reader(fh))


def _errors(output: Path) -> dict[int, str]:
    table = _read_csv(output.with_suffix(".errors.csv"))
    assert table[0] == ["line", "reason"]
    return {int(line): reason for line, reason in table[1:]}


def _predicted(model: LoadedModel, frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray | None]:
    """What the model answers for rows as pandas reads them from CSV."""
    return model.predict(model.schema.from_table(frame))


def _mixed_lines(
    eval_csv: Path, bad_lines: dict[int, tuple[str, str, str]], rows: int
) -> tuple[str, list[str], list[int], dict[int, str]]:
    """The header, lines of the first ``rows`` evaluation rows with bad rows inserted.

    ``bad_lines`` maps a row index to (column, cell, words of the reason): after that row, a copy
    of it with the column's cell replaced. Returns (header, lines, good row indexes, line number
    of each bad row -> words of its reason).
    """
    header, *originals = eval_csv.read_text().splitlines()
    names = header.split(",")
    lines: list[str] = []
    bad: dict[int, str] = {}
    for i, line in enumerate(originals[:rows]):
        lines.append(line)
        if i in bad_lines:
            column, cell, words = bad_lines[i]
            cells = line.split(",")
            cells[names.index(column)] = cell
            lines.append(",".join(cells))
            bad[len(lines) + 1] = words  # the header is line 1
    return header, lines, list(range(rows)), bad


def test_classifier_on_typed_columns_scores_like_predict(
    packaged: Path, projects: Path, tmp_path: Path
) -> None:
    """Columns in another order, an id, the target beside them: classes and probabilities."""
    model = load_artifact(packaged, "churn-v1")
    frame = pd.read_csv(projects / "churn" / "eval.csv")
    assert frame.isna().any().sum() >= 2  # the rows hold missing values, in several columns
    shuffled = frame[
        ["autopay", TARGET, "region", "plan", "support_calls", "monthly_charges", "tenure_months"]
    ].copy()
    shuffled.insert(3, "customer", [f"c-{i}" for i in range(len(frame))])
    source, out = tmp_path / "customers.csv", tmp_path / "scored.csv"
    shuffled.to_csv(source, index=False)

    assert (
        _score(packaged, "--version", "churn-v1", "--id-column", "customer", str(source), str(out))
        == 0
    )
    table = _read_csv(out)
    assert table[0] == ["customer", "prediction", "probability_no", "probability_yes"]
    assert [row[0] for row in table[1:]] == shuffled["customer"].tolist()
    classes, proba = _predicted(model, frame)
    assert [row[1] for row in table[1:]] == classes.tolist()
    assert set(classes.tolist()) == {"yes", "no"}
    assert proba is not None
    assert [row[2:] for row in table[1:]] == [[f"{p:.6f}" for p in ps] for ps in proba.tolist()]
    assert _errors(out) == {}


def test_regressor_writes_its_prediction_and_no_probabilities(
    packaged: Path, projects: Path, tmp_path: Path
) -> None:
    """Without an id column the input columns are copied; the prediction reads back exactly."""
    model = load_artifact(packaged, "diabetes-v1")
    source, out = projects / "diabetes" / "eval.csv", tmp_path / "progression.csv"
    assert _score(packaged, "--version", "diabetes-v1", str(source), str(out)) == 0
    header, *lines = source.read_text().splitlines()
    table = _read_csv(out)
    assert table[0] == [*header.split(","), "prediction"]
    assert [",".join(row[:-1]) for row in table[1:]] == lines
    predictions, proba = _predicted(model, pd.read_csv(source))
    assert proba is None
    np.testing.assert_array_equal([float(row[-1]) for row in table[1:]], predictions)


CHURN_BAD = {
    3: ("tenure_months", "abc", "column 'tenure_months' must be an integer or empty, got 'abc'"),
    8: ("tenure_months", "6.5", "column 'tenure_months' must be an integer or empty, got '6.5'"),
    12: ("autopay", "maybe", "column 'autopay' must be true or false, got 'maybe'"),
    15: ("autopay", "1", "column 'autopay' must be true or false, got '1'"),
    20: ("autopay", "", "column 'autopay' is empty; the model needs true or false there"),
    25: ("monthly_charges", "inf", "column 'monthly_charges' must be a number or empty"),
    31: ("plan", "", "column 'plan' is empty; the model needs a string (seen: 'basic'"),
    40: ("region", "central", "the model refused this row: Found unknown categories ['central']"),
    41: ("region", "atlantis", "the model refused this row: Found unknown categories ['atlantis']"),
    50: ("support_calls", "1,2", "has 8 fields; the header has 7"),
}


@pytest.fixture(scope="module")
def churn_mixed(
    projects: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, list[int], dict[int, str]]:
    """60 evaluation rows, lowercase booleans in a few, and a bad row of each kind in between."""
    header, lines, good, bad = _mixed_lines(projects / "churn" / "eval.csv", CHURN_BAD, 60)
    lines = [
        line.replace(",True,", ",true,") if i % 5 == 0 else line for i, line in enumerate(lines)
    ]
    assert any(",true," in line for line in lines)
    path = tmp_path_factory.mktemp("churn") / "mixed.csv"
    path.write_text("\n".join([header, *lines]) + "\n")
    return path, good, bad


def test_bad_rows_of_every_kind_are_reported_and_the_others_scored(
    packaged: Path,
    projects: Path,
    tmp_path: Path,
    churn_mixed: tuple[Path, list[int], dict[int, str]],
) -> None:
    source, good, bad = churn_mixed
    out = tmp_path / "scored.csv"
    assert _score(packaged, "--version", "churn-strict", str(source), str(out)) == 0
    assert _errors(out).keys() == bad.keys()
    for line, reason in _errors(out).items():
        assert bad[line] in reason, (line, reason)

    header, *lines = source.read_text().splitlines()
    table = _read_csv(out)
    assert table[0] == [*header.split(","), "prediction", "probability_no", "probability_yes"]
    good_lines = [line for n, line in enumerate(lines, start=2) if n not in bad]
    assert [",".join(row[:7]) for row in table[1:]] == good_lines  # each input line as it was
    frame = pd.read_csv(projects / "churn" / "eval.csv").iloc[good]
    classes, proba = _predicted(load_artifact(packaged, "churn-strict"), frame)
    assert proba is not None
    assert [row[7] for row in table[1:]] == classes.tolist()
    assert [row[8:] for row in table[1:]] == [[f"{p:.6f}" for p in ps] for ps in proba.tolist()]


DIABETES_BAD = {
    4: ("bmi", "abc", "column 'bmi' is not a number: 'abc'"),
    9: ("s1", "", "column 's1' is not a number: ''"),
    15: ("age", "nan", "non-finite"),
    30: ("s6", "1,2", "has 12 fields; the header has 11"),
}


@pytest.fixture(scope="module")
def diabetes_mixed(
    projects: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, list[int], dict[int, str]]:
    header, lines, good, bad = _mixed_lines(projects / "diabetes" / "eval.csv", DIABETES_BAD, 40)
    path = tmp_path_factory.mktemp("diabetes") / "mixed.csv"
    path.write_text("\n".join([header, *lines]) + "\n")
    return path, good, bad


def test_regressor_reports_bad_rows_and_scores_the_others(
    packaged: Path,
    projects: Path,
    tmp_path: Path,
    diabetes_mixed: tuple[Path, list[int], dict[int, str]],
) -> None:
    source, good, bad = diabetes_mixed
    out = tmp_path / "scored.csv"
    assert _score(packaged, "--version", "diabetes-v1", str(source), str(out)) == 0
    assert _errors(out).keys() == bad.keys()
    for line, reason in _errors(out).items():
        assert bad[line] in reason, (line, reason)
    table = _read_csv(out)
    frame = pd.read_csv(projects / "diabetes" / "eval.csv").iloc[good]
    predictions, _ = _predicted(load_artifact(packaged, "diabetes-v1"), frame)
    np.testing.assert_array_equal([float(row[-1]) for row in table[1:]], predictions)


@pytest.mark.parametrize(
    "version, mixed",
    [
        ("churn-strict", "churn_mixed"),
        ("churn-v1", "churn_mixed"),
        ("diabetes-v1", "diabetes_mixed"),
    ],
)
def test_small_chunks_give_the_same_output_as_one_chunk(
    packaged: Path, tmp_path: Path, request: pytest.FixtureRequest, version: str, mixed: str
) -> None:
    source = request.getfixturevalue(mixed)[0]
    outputs = {}
    for rows in ("100000", "7", "1"):
        out = tmp_path / f"chunks-{rows}.csv"
        assert (
            _score(packaged, "--version", version, "--chunk-rows", rows, str(source), str(out)) == 0
        )
        outputs[rows] = (out.read_bytes(), out.with_suffix(".errors.csv").read_bytes())
    assert outputs["7"] == outputs["100000"]
    assert outputs["1"] == outputs["100000"]
    assert outputs["7"][1].count(b"\n") > 3  # bad rows were among them


def test_a_missing_column_is_refused_up_front_listing_what_the_model_takes(
    packaged: Path, projects: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source, out = tmp_path / "no-plan.csv", tmp_path / "out.csv"
    pd.read_csv(projects / "churn" / "eval.csv").drop(columns=["plan"]).to_csv(source, index=False)
    assert _score(packaged, "--version", "churn-v1", str(source), str(out)) == 2
    message = capsys.readouterr().err
    assert "the header lacks 1 feature column(s): 'plan'" in message
    for name in load_artifact(packaged, "churn-v1").feature_names:
        assert name in message
    assert "python -m model_service show churn-v1" in message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["no-plan.csv"]


def test_memory_stays_flat_on_typed_columns(packaged: Path, projects: Path, tmp_path: Path) -> None:
    """Several chunks either way; six times the rows must not need more memory."""
    frame = pd.read_csv(projects / "churn" / "eval.csv")
    sizes = {"small": 10_000, "large": 60_000}
    paths = {}
    for name, n in sizes.items():
        paths[name] = tmp_path / f"{name}.csv"
        rows = frame.iloc[np.arange(n) % len(frame)]
        rows.assign(note="n" * 200).to_csv(paths[name], index=False)  # wide rows: a clear signal

    def peak(name: str) -> int:
        return _peak_bytes(packaged, paths[name], tmp_path / f"{name}.out.csv", "churn-v1")

    with ThreadPoolExecutor(2) as pool:
        peaks = dict(zip(sizes, pool.map(peak, sizes), strict=True))
    with open(tmp_path / "large.out.csv") as fh:
        assert sum(1 for _ in fh) == sizes["large"] + 1
    assert peaks["large"] < 1.3 * peaks["small"], peaks
    extra_text = paths["large"].stat().st_size - paths["small"].stat().st_size
    # holding the extra 50,000 rows at once would cost at least their CSV text
    assert peaks["large"] - peaks["small"] < extra_text, (peaks, extra_text)
