"""Batch scoring of a CSV file: streamed in chunks, bad rows reported, good rows never lost.

Memory stays flat whatever the file size: only one chunk of lines is held at a time. Each chunk
is parsed by numpy's C reader; a chunk that fails to parse is re-read line by line so every bad
row is reported with its line number and the good rows around it are still scored.

    >>> report = score_csv("artifacts", "v1", "in.csv", "out.csv")   # doctest: +SKIP
    >>> print(report.summary())                                       # doctest: +SKIP
"""

from __future__ import annotations

import csv
import io
import math
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from model_service.app import predict_matrix
from model_service.artifacts import ArtifactError, LoadedModel, load_artifact


class BatchError(Exception):
    """The batch cannot run at all (missing file, unusable header, unloadable model)."""


@dataclass
class BatchReport:
    """What a batch run did."""

    output: Path
    errors_path: Path
    rows_ok: int = 0
    rows_bad: int = 0
    seconds: float = 0.0
    bad_examples: list[tuple[int, str]] = field(default_factory=list)

    def summary(self) -> str:
        rate = self.rows_ok / self.seconds if self.seconds else 0.0
        text = f"scored {self.rows_ok} rows in {self.seconds:.2f} s ({rate:,.0f} rows/s) -> {self.output}"
        if self.rows_bad:
            text += f"; {self.rows_bad} bad rows skipped, listed in {self.errors_path}"
        return text


@dataclass(frozen=True)
class _Layout:
    header: list[str]
    feature_idx: list[int]
    id_idx: int | None


def _layout(header_line: str, model: LoadedModel, id_column: str | None) -> _Layout:
    header = next(csv.reader([header_line]))
    header = [h.strip() for h in header]
    missing = [f for f in model.feature_names if f not in header]
    if missing:
        raise BatchError(
            f"the header lacks {len(missing)} feature column(s), e.g. {missing[:3]}; "
            f"the first line must name the model's features (GET /version lists them)"
        )
    id_idx = None
    if id_column:
        if id_column not in header:
            raise BatchError(f"--id-column {id_column!r} is not in the header")
        id_idx = header.index(id_column)
    elif "id" in header:
        id_idx = header.index("id")
    return _Layout(header, [header.index(f) for f in model.feature_names], id_idx)


def _parse_slow(
    lines: list[str], numbers: list[int], layout: _Layout
) -> tuple[list[int], np.ndarray, list[tuple[int, str]]]:
    """Line-by-line parse of a chunk the fast reader refused: good rows kept, bad rows explained."""
    good, rows, bad = [], [], []
    width = len(layout.header)
    for pos, (line, number) in enumerate(zip(lines, numbers, strict=True)):
        fields = next(csv.reader([line]))
        if len(fields) != width:
            bad.append((number, f"has {len(fields)} fields; the header has {width}"))
            continue
        try:
            row = [float(fields[i]) for i in layout.feature_idx]
        except ValueError:
            col = next(i for i in layout.feature_idx if not _is_float(fields[i]))
            bad.append((number, f"column {layout.header[col]!r} is not a number: {fields[col]!r}"))
            continue
        if not all(math.isfinite(v) for v in row):
            bad.append((number, "has a non-finite value (nan or inf)"))
            continue
        good.append(pos)
        rows.append(row)
    matrix = np.array(rows, dtype=np.float64).reshape(len(rows), len(layout.feature_idx))
    return good, matrix, bad


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _parse_chunk(
    lines: list[str], numbers: list[int], layout: _Layout
) -> tuple[list[int], np.ndarray, list[tuple[int, str]]]:
    try:
        frame = pd.read_csv(
            io.BytesIO("\n".join(lines).encode()), header=None, names=range(len(layout.header)),
            usecols=layout.feature_idx, dtype=np.float64, engine="c", skip_blank_lines=False,
            na_filter=False, quotechar='"',
        )
        matrix = frame[layout.feature_idx].to_numpy(dtype=np.float64)
        if matrix.shape[0] != len(lines):
            raise ValueError("row count changed")
    except (ValueError, pd.errors.ParserError):
        return _parse_slow(lines, numbers, layout)
    finite = np.isfinite(matrix).all(axis=1)
    if finite.all():
        return list(range(len(lines))), matrix, []
    bad = [(numbers[i], "has a non-finite value (nan or inf)") for i in np.flatnonzero(~finite)]
    return list(np.flatnonzero(finite)), matrix[finite], bad


def _chunks(fh: io.TextIOBase, first_line: int, size: int) -> Iterator[tuple[list[str], list[int], int]]:
    number = first_line
    while True:
        raw = list(islice(fh, size))
        if not raw:
            return
        lines, numbers = [], []
        for line in raw:
            if line.strip():
                lines.append(line.rstrip("\r\n"))
                numbers.append(number)
            number += 1
        yield lines, numbers, sum(len(line) for line in raw)


def score_csv(
    artifacts: str | Path,
    version: str,
    input_path: str | Path,
    output_path: str | Path,
    *,
    chunk_rows: int = 10_000,
    id_column: str | None = None,
    errors_path: str | Path | None = None,
    progress: bool = True,
) -> BatchReport:
    """Score every row of ``input_path`` with ``version`` into ``output_path``."""
    try:
        model = load_artifact(artifacts, version)
    except ArtifactError as exc:
        raise BatchError(str(exc)) from None
    input_path, output_path = Path(input_path), Path(output_path)
    errors = Path(errors_path) if errors_path else output_path.with_suffix(".errors.csv")
    report = BatchReport(output_path, errors)
    if not input_path.is_file():
        raise BatchError(f"input file {input_path} does not exist")
    started = time.perf_counter()
    prob_cols = [f"probability_{label}" for label in model.class_labels]
    with (
        open(input_path, newline="") as fin,
        open(output_path, "w", newline="") as fout,
        open(errors, "w", newline="") as ferr,
        tqdm(total=os.path.getsize(input_path), unit="B", unit_scale=True,
             desc=f"scoring with {version}", disable=not progress) as bar,
    ):
        header_line = fin.readline()
        if not header_line.strip():
            raise BatchError(f"{input_path} is empty; the first line must be a header")
        bar.update(len(header_line))
        layout = _layout(header_line, model, id_column)
        lead = [layout.header[layout.id_idx]] if layout.id_idx is not None else layout.header
        fout.write(",".join(lead + ["prediction", *prob_cols]) + "\n")
        err_writer = csv.writer(ferr)
        err_writer.writerow(["line", "reason"])
        for lines, numbers, nbytes in _chunks(fin, 2, chunk_rows):
            if lines:
                good, matrix, bad = _parse_chunk(lines, numbers, layout)
                for number, reason in bad:
                    err_writer.writerow([number, reason])
                    if len(report.bad_examples) < 20:
                        report.bad_examples.append((number, reason))
                report.rows_bad += len(bad)
                if good:
                    _write_rows(fout, lines, good, matrix, model, layout)
                    report.rows_ok += len(good)
            bar.update(nbytes)
    report.seconds = time.perf_counter() - started
    return report


def _write_rows(
    fout: io.TextIOBase, lines: list[str], good: list[int], matrix: np.ndarray,
    model: LoadedModel, layout: _Layout,
) -> None:
    predictions, proba = predict_matrix(model, matrix)
    if layout.id_idx is not None:
        ids = [_field(lines[i], layout.id_idx) for i in good]
    else:
        ids = [lines[i] for i in good]
    template = "{},{}," + ",".join(["{:.6f}"] * proba.shape[1]) + "\n"
    fout.write(
        "".join(
            template.format(lead, pred, *probs)
            for lead, pred, probs in zip(ids, predictions.tolist(), proba.tolist(), strict=True)
        )
    )


def _field(line: str, index: int) -> str:
    """Field ``index`` of a CSV line, as CSV text again (quoted where the value needs it)."""
    if '"' in line:
        value = next(csv.reader([line]))[index]
        if any(c in value for c in ',"\r\n'):
            return '"' + value.replace('"', '""') + '"'
        return value
    return line.split(",", index + 1)[index]
