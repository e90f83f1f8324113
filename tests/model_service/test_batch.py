"""``python -m model_service batch``: every good row scored as in-process, bad rows reported, flat memory."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from model_service.__main__ import main
from model_service.artifacts import load_artifact
from model_service.batch import _fixed6
from tests.model_service.conftest import rows_of
from tests.servers import ROOT

PROBABILITY_COLUMNS = ["probability_benign", "probability_malignant"]  # as classes_ orders them


def _batch(artifacts: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The documented command, in a process of its own."""
    env = {**os.environ, "MODEL_ARTIFACTS": str(artifacts)}
    return subprocess.run(
        [sys.executable, "-m", "model_service", "batch", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _score(artifacts: Path, *args: str) -> int:
    """The batch command in this process, without a progress bar; returns its exit code."""
    return main(["batch", "--artifacts", str(artifacts), "--quiet", *args])


def _number(value: float) -> str:
    return repr(float(value))


def _write_csv(path: Path, header: list[str], lines: list[str]) -> None:
    path.write_text(",".join(header) + "\n" + "".join(line + "\n" for line in lines))


def _read_csv(path: Path) -> list[list[str]]:
    with open(path, newline="") as fh:
        return list(csv.reader(fh))


@pytest.fixture(scope="module")
def mixed_input(
    tmp_path_factory: pytest.TempPathFactory, dataset: Any, features: list[str]
) -> tuple[Path, list[int], dict[int, str]]:
    """300 good rows with ids, and bad rows in between; returns (path, good row index, bad lines)."""
    path = tmp_path_factory.mktemp("batch") / "in.csv"
    rows = rows_of(dataset, 300)
    lines: list[str] = []
    good: list[int] = []
    bad: dict[int, str] = {}  # line number (header is line 1) -> words of the reason

    def add_bad(text: str, reason: str) -> None:
        lines.append(text)
        bad[len(lines) + 1] = reason

    for i, row in enumerate(rows):
        cells = [_number(v) for v in row]
        lines.append(f"id-{i}," + ",".join(cells))
        good.append(i)
        if i == 17:
            broken = list(cells)
            broken[1] = "abc"
            add_bad(f"bad-{i}," + ",".join(broken), "'mean texture' is not a number: 'abc'")
        if i == 42:
            add_bad(f"bad-{i}," + ",".join(cells[:-1]), "has 30 fields; the header has 31")
        if i == 99:
            add_bad(f"bad-{i}," + ",".join(["nan", *cells[1:]]), "non-finite")
        if i == 150:
            lines.append("")  # a blank line is skipped, not an error
        if i == 151:
            add_bad(f"bad-{i}," + ",".join([*cells[:-1], "inf"]), "non-finite")
        if i == 200:
            add_bad(f"bad-{i}," + ",".join([*cells, "1.0"]), "has 32 fields")
    _write_csv(path, ["id", *features], lines)
    return path, good, bad


def test_batch_scores_good_rows_like_in_process_and_lists_bad_ones(
    artifacts: Path,
    dataset: Any,
    tmp_path: Path,
    mixed_input: tuple[Path, list[int], dict[int, str]],
) -> None:
    source, good, bad = mixed_input
    out = tmp_path / "scored.csv"
    result = _batch(artifacts, "--version", "v1", str(source), str(out))
    assert result.returncode == 0, result.stderr
    assert f"scored {len(good)} rows" in result.stdout
    assert f"{len(bad)} bad rows" in result.stdout

    table = _read_csv(out)
    assert table[0] == ["id", "prediction", *PROBABILITY_COLUMNS]
    assert [row[0] for row in table[1:]] == [f"id-{i}" for i in good]
    pipeline = load_artifact(artifacts, "v1").pipeline
    rows = rows_of(dataset, 300)[good]
    assert [row[1] for row in table[1:]] == pipeline.predict(rows).tolist()
    np.testing.assert_allclose(
        np.array([row[2:] for row in table[1:]], dtype=float),
        pipeline.predict_proba(rows),
        atol=5e-7,
    )
    # the digits are those "%.6f" writes for the probabilities the service computes
    proba = load_artifact(artifacts, "v1").predict_proba(rows)
    assert [row[2:] for row in table[1:]] == [
        [f"{p:.6f}" for p in probs] for probs in proba.tolist()
    ]

    errors = _read_csv(out.with_suffix(".errors.csv"))
    assert errors[0] == ["line", "reason"]
    reported = {int(line): reason for line, reason in errors[1:]}
    assert sorted(reported) == sorted(bad)
    for line, words in bad.items():
        assert words in reported[line], (line, reported[line])


def test_without_an_id_column_the_input_columns_are_kept(
    artifacts: Path, dataset: Any, features: list[str], tmp_path: Path
) -> None:
    source, out = tmp_path / "plain.csv", tmp_path / "plain.out.csv"
    rows = rows_of(dataset, 40, start=300)
    lines = [",".join(_number(v) for v in row) for row in rows]
    _write_csv(source, features, lines)
    assert _score(artifacts, "--version", "v2", str(source), str(out)) == 0
    table = _read_csv(out)
    assert table[0] == [*features, "prediction", *PROBABILITY_COLUMNS]
    assert [",".join(row[:30]) for row in table[1:]] == lines
    pipeline = load_artifact(artifacts, "v2").pipeline
    assert [row[30] for row in table[1:]] == pipeline.predict(rows).tolist()


def test_columns_in_any_order_with_extra_ones_and_quoted_ids(
    artifacts: Path, dataset: Any, features: list[str], tmp_path: Path
) -> None:
    source, out = tmp_path / "shuffled.csv", tmp_path / "shuffled.out.csv"
    rng = np.random.default_rng(7)
    order = [features[i] for i in rng.permutation(30)]
    rows = rows_of(dataset, 5)
    ids = ["Smith, John", 'say "hi"', "plain", "", "x"]
    with open(source, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["note", *order[:10], "patient", *order[10:]])
        for patient, row in zip(ids, rows, strict=True):
            values = dict(zip(features, row.tolist(), strict=True))
            writer.writerow(
                ["n/a", *[values[f] for f in order[:10]], patient, *[values[f] for f in order[10:]]]
            )
    assert (
        _score(artifacts, "--version", "v1", "--id-column", "patient", str(source), str(out)) == 0
    )
    table = _read_csv(out)
    assert table[0] == ["patient", "prediction", *PROBABILITY_COLUMNS]
    assert [row[0] for row in table[1:]] == ids
    assert all(len(row) == 4 for row in table)
    pipeline = load_artifact(artifacts, "v1").pipeline
    assert [row[1] for row in table[1:]] == pipeline.predict(rows).tolist()


def test_missing_feature_column_exits_2_naming_it(
    artifacts: Path, features: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "short.csv"
    _write_csv(source, ["id", *features[:-1]], ["1," + ",".join(["1.0"] * 29)])
    assert (
        main(
            [
                "batch",
                "--version",
                "v1",
                "--artifacts",
                str(artifacts),
                str(source),
                str(tmp_path / "out.csv"),
            ]
        )
        == 2
    )
    message = capsys.readouterr().err
    assert "error: the header lacks 1 feature column" in message
    assert "worst fractal dimension" in message


@pytest.mark.parametrize(
    "case, args, words",
    [
        ("unknown version", ["--version", "v9"], "no artifact"),
        ("missing input", ["--version", "v1", "--input-missing"], "does not exist"),
        ("unknown id column", ["--version", "v1", "--id-column", "patient"], "not in the header"),
        ("empty file", ["--version", "v1", "--empty"], "empty"),
        ("no rows per chunk", ["--version", "v1", "--chunk-rows", "0"], "at least 1 row"),
    ],
)
def test_unusable_batch_exits_2_with_a_message(
    artifacts: Path,
    features: list[str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    case: str,
    args: list[str],
    words: str,
) -> None:
    source = tmp_path / "in.csv"
    _write_csv(source, features, [",".join(["1.0"] * 30)])
    if "--input-missing" in args:
        args.remove("--input-missing")
        source = tmp_path / "absent.csv"
    if "--empty" in args:
        args.remove("--empty")
        source.write_text("")
    code = _score(artifacts, *args, str(source), str(tmp_path / "out.csv"))
    assert code == 2
    assert words in capsys.readouterr().err


def test_no_good_rows_exits_1(artifacts: Path, features: list[str], tmp_path: Path) -> None:
    source, out = tmp_path / "all-bad.csv", tmp_path / "out.csv"
    _write_csv(source, features, [",".join(["x"] * 30), ",".join(["nan"] * 30)])
    assert _score(artifacts, "--version", "v1", str(source), str(out)) == 1
    assert len(_read_csv(out.with_suffix(".errors.csv"))) == 3


_PEAK_MEMORY = """
import resource, sys
from model_service.__main__ import main
def own_peak():
    # Linux carries a parent's peak RSS into ru_maxrss across fork and exec; VmHWM is this
    # process's own high-water mark.
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
code = main(sys.argv[1:])
print(own_peak(), file=sys.stderr)
sys.exit(code)
"""


def _peak_bytes(artifacts: Path, source: Path, out: Path, version: str = "v1") -> int:
    """Peak resident memory of one batch run, measured by the run's own fresh process."""
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            _PEAK_MEMORY,
            "batch",
            "--version",
            version,
            "--quiet",
            "--artifacts",
            str(artifacts),
            "--chunk-rows",
            "2000",
            str(source),
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return int(result.stderr.strip().splitlines()[-1])


def test_memory_stays_flat_as_the_file_grows(
    artifacts: Path, dataset: Any, features: list[str], tmp_path: Path
) -> None:
    """Both runs span several chunks; six times the rows must not need more memory."""
    sizes = {"small": 10_000, "large": 60_000}
    paths = {}
    for name, n in sizes.items():
        paths[name] = tmp_path / f"{name}.csv"
        matrix = rows_of(dataset, n)
        with open(paths[name], "w") as fh:
            fh.write(",".join(features) + "\n")
            np.savetxt(fh, matrix, delimiter=",", fmt="%.17g")
    with ThreadPoolExecutor(2) as pool:
        peaks = dict(
            zip(
                sizes,
                pool.map(
                    lambda name: _peak_bytes(artifacts, paths[name], tmp_path / f"{name}.out.csv"),
                    sizes,
                ),
                strict=True,
            )
        )
    with open(tmp_path / "large.out.csv") as fh:
        assert sum(1 for _ in fh) == sizes["large"] + 1
    assert peaks["large"] < 1.3 * peaks["small"], peaks
    extra_text = paths["large"].stat().st_size - paths["small"].stat().st_size
    # holding the extra 50,000 rows at once would cost at least their CSV text
    assert peaks["large"] - peaks["small"] < extra_text, (peaks, extra_text)


def test_probability_text_matches_percent_format_at_every_edge() -> None:
    """The vectorised six-decimal writer gives exactly the digits of ``"%.6f"``."""
    rng = np.random.default_rng(11)
    edges = [
        0.0,
        1.0,
        -0.0,
        5e-7,
        1.5e-6,
        2.5e-6,
        0.5,
        0.9999995,
        1 - 1e-12,
        1e-300,
        np.nextafter(0.0000005, 1),
        np.nextafter(0.0000005, 0),
        0.1234565,
        0.1234575,
        1 + 1e-12,
        float("nan"),
        -1e-9,
    ]
    # each edge beside a plain value, so a row written by "%.6f" as a whole cannot hide it
    edges = [v for edge in edges for v in (edge, 0.25)]
    halves = (np.arange(1000) + 0.5) / 1e6  # near every tie in [0, 0.001)
    values = np.concatenate(
        [
            rng.random(20_000),
            np.array(edges),
            halves,
            np.nextafter(halves, 0),
            np.nextafter(halves, 1),
        ]
    )
    if len(values) % 2:
        values = values[:-1]
    proba = values.reshape(-1, 2)
    expected = [("".join(f",{p:.6f}" for p in row) + "\n").encode() for row in proba.tolist()]
    assert _fixed6(proba) == expected
    three = rng.random((50, 3))
    assert _fixed6(three) == [
        ("".join(f",{p:.6f}" for p in row) + "\n").encode() for row in three.tolist()
    ]


def test_crlf_lines_a_byte_order_mark_and_no_final_newline(
    artifacts: Path, dataset: Any, features: list[str], tmp_path: Path
) -> None:
    """Windows line ends and a BOM are read like plain lines; a last line without newline is scored."""
    source, out = tmp_path / "windows.csv", tmp_path / "windows.out.csv"
    rows = rows_of(dataset, 25)
    lines = [f"r{i}," + ",".join(_number(v) for v in row) for i, row in enumerate(rows)]
    source.write_bytes(
        ("\ufeff" + ",".join(["id", *features]) + "\r\n").encode() + "\r\n".join(lines).encode()
    )
    assert _score(artifacts, "--version", "v1", "--chunk-rows", "7", str(source), str(out)) == 0
    table = _read_csv(out)
    assert table[0] == ["id", "prediction", *PROBABILITY_COLUMNS]
    assert [row[0] for row in table[1:]] == [f"r{i}" for i in range(25)]
    pipeline = load_artifact(artifacts, "v1").pipeline
    assert [row[1] for row in table[1:]] == pipeline.predict(rows).tolist()


def test_quoted_ids_in_small_chunks_beside_bad_rows(
    artifacts: Path, dataset: Any, features: list[str], tmp_path: Path
) -> None:
    """Chunks that need the line-by-line reader and chunks that do not give the same columns."""
    source, out = tmp_path / "quoted.csv", tmp_path / "quoted.out.csv"
    rows = rows_of(dataset, 12)
    ids = [f'"Doe, {i}"' if i % 3 == 0 else f"p{i}" for i in range(12)]
    lines = [
        f"{ident}," + ",".join(_number(v) for v in row)
        for ident, row in zip(ids, rows, strict=True)
    ]
    lines.insert(5, '"bad, 1",' + ",".join(["x"] * 30))
    _write_csv(source, ["id", *features], lines)
    assert _score(artifacts, "--version", "v2", "--chunk-rows", "4", str(source), str(out)) == 0
    table = _read_csv(out)
    assert [row[0] for row in table[1:]] == [i.strip('"') for i in ids]
    assert all(len(row) == 4 for row in table)
    pipeline = load_artifact(artifacts, "v2").pipeline
    assert [row[1] for row in table[1:]] == pipeline.predict(rows).tolist()
    errors = _read_csv(out.with_suffix(".errors.csv"))
    assert [int(line) for line, _ in errors[1:]] == [7]


def test_a_run_that_stops_leaves_the_earlier_output_as_it_was(
    artifacts: Path, features: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Results are renamed over the output only at the end: a refused input changes nothing."""
    out = tmp_path / "out.csv"
    out.write_text("an earlier run's results\n")
    source = tmp_path / "mac.csv"
    source.write_bytes(("\r".join([",".join(features), ",".join(["1.0"] * 30)]) + "\r").encode())
    assert _score(artifacts, "--version", "v1", str(source), str(out)) == 2
    assert "lone \\r" in capsys.readouterr().err
    assert out.read_text() == "an earlier run's results\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mac.csv", "out.csv"]

    assert _score(artifacts, "--version", "v1", str(source), str(tmp_path / "no" / "out.csv")) == 2
    assert "folder" in capsys.readouterr().err


def test_a_field_too_long_for_the_csv_reader_is_a_bad_row(
    artifacts: Path, dataset: Any, features: list[str], tmp_path: Path
) -> None:
    source, out = tmp_path / "long.csv", tmp_path / "long.out.csv"
    row = ",".join(_number(v) for v in rows_of(dataset, 1)[0])
    _write_csv(source, ["id", *features], ["huge," + row + "," + "x" * 200_000, "fine," + row])
    assert _score(artifacts, "--version", "v1", str(source), str(out)) == 0
    assert [r[0] for r in _read_csv(out)[1:]] == ["fine"]
    errors = _read_csv(out.with_suffix(".errors.csv"))
    assert errors[1][0] == "2" and "cannot be read as CSV" in errors[1][1]


@pytest.mark.parametrize("chunk_rows", ["4", "10000"])
@pytest.mark.parametrize("id_last", [False, True], ids=["id first", "id last"])
def test_lines_with_fields_too_many_or_too_few_are_bad_rows_wherever_they_fall(
    artifacts: Path,
    dataset: Any,
    features: list[str],
    tmp_path: Path,
    chunk_rows: str,
    id_last: bool,
) -> None:
    """A line with a field too many is reported, even beside one with a field too few."""
    source, out = tmp_path / "ragged.csv", tmp_path / "ragged.out.csv"
    rows = rows_of(dataset, 12)
    cells = [[_number(v) for v in row] for row in rows]

    def line(ident: str, values: list[str]) -> str:
        return ",".join([*values, ident] if id_last else [ident, *values])

    def short(values: list[str]) -> str:  # the id (or, id first, the last feature) left out
        return ",".join(values) if id_last else "short," + ",".join(values[:-1])

    ids = [f"p{i}" if i != 6 else '"Doe, J"' for i in range(12)]
    good = [line(ident, values) for ident, values in zip(ids, cells, strict=True)]
    lines = [
        *good[:4],
        line("long", cells[4]) + ",1.5",  # line 6, the first of the second chunk of 4
        good[4],
        short(cells[5]),  # line 8, in the same chunk: the separators add up
        *good[5:8],
        line('"Roe, K"', cells[8]) + ",1.5",  # line 12, among quoted fields
        good[8],
        short(cells[9]),  # line 14
        *good[9:],
    ]
    header = [*features, "id"] if id_last else ["id", *features]
    _write_csv(source, header, lines)
    assert (
        _score(artifacts, "--version", "v1", "--chunk-rows", chunk_rows, str(source), str(out)) == 0
    )
    errors = {int(n): reason for n, reason in _read_csv(out.with_suffix(".errors.csv"))[1:]}
    assert errors.keys() == {6, 8, 12, 14}
    assert all("has 32 fields" in errors[n] for n in (6, 12))
    assert all("has 30 fields" in errors[n] for n in (8, 14))
    table = _read_csv(out)
    assert [row[0] for row in table[1:]] == [i.strip('"') for i in ids]
    pipeline = load_artifact(artifacts, "v1").pipeline
    assert [row[1] for row in table[1:]] == pipeline.predict(rows).tolist()


def test_a_row_that_overflows_the_model_is_a_bad_row(
    artifacts: Path, dataset: Any, features: list[str], tmp_path: Path
) -> None:
    """Values far beyond the training data's scale give no probabilities: reported, not written."""
    source, out = tmp_path / "huge.csv", tmp_path / "huge.out.csv"
    rows = rows_of(dataset, 5)
    lines = [f"r{i}," + ",".join(_number(v) for v in row) for i, row in enumerate(rows)]
    lines.insert(2, "huge," + ",".join(["1e308"] * 30))
    _write_csv(source, ["id", *features], lines)
    assert _score(artifacts, "--version", "v1", str(source), str(out)) == 0
    errors = _read_csv(out.with_suffix(".errors.csv"))
    assert [int(n) for n, _ in errors[1:]] == [4]
    assert "overflow the model" in errors[1][1]
    table = _read_csv(out)
    assert [row[0] for row in table[1:]] == [f"r{i}" for i in range(5)]
    assert all(float(p) >= 0 for row in table[1:] for p in row[2:])
