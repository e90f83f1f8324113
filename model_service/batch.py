"""Batch scoring of a CSV file: streamed in chunks, bad rows reported, good rows never lost.

Memory stays flat whatever the file size: only one chunk of lines is held at a time. A model
whose columns are all numbers gets each chunk parsed by pandas' C reader into a float matrix; a
chunk that fails to parse is re-read line by line so every bad row is reported with its line
number and the good rows around it are still scored. Any other schema (integers, booleans,
categories, missing values) has each column converted by its type, a cell that does not fit
reported with its row. A row the pipeline itself refuses (an unknown category, say) is found by
halving the chunk, only when the pipeline refuses. Classifiers' probabilities are formatted a
chunk at a time with numpy (fixed six-decimal text, the same digits ``"%.6f"`` gives), so writing
costs little more than the bytes themselves; a regressor's prediction is written in full.

    >>> report = score_csv("artifacts", "v1", "in.csv", "out.csv")   # doctest: +SKIP
    >>> print(report.summary())                                       # doctest: +SKIP
"""

from __future__ import annotations

import csv
import os
import time
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pandas as pd
from tqdm import tqdm

from model_service.artifacts import ArtifactError, LoadedModel, load_artifact
from model_service.batch_rows import (
    BatchError,
    Chunk,
    Layout,
    chunks,
    layout_of,
    parse_numbers,
    parse_typed,
)


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
class _Part:
    """Predictions for rows ``start:stop`` of a chunk's inputs."""

    start: int
    stop: int
    predictions: np.ndarray
    probabilities: np.ndarray | None


_OVERFLOW = (
    "values this far out of range overflow the model; use values on the scale of the training data"
)


def _score(model: LoadedModel, chunk: Chunk) -> None:
    """Predict the chunk's rows; a row the pipeline refuses, or overflows on, becomes a bad row."""
    if chunk.inputs is None or not len(chunk.inputs):
        return
    parts: list[_Part] = []
    refused: list[tuple[int, str]] = []
    _predict_parts(model, chunk.inputs, 0, len(chunk.inputs), parts, refused)
    if len(parts) == 1:
        predictions, proba = parts[0].predictions, parts[0].probabilities
    elif parts:
        predictions = np.concatenate([p.predictions for p in parts])
        proba = None if model.classes is None else np.concatenate([p.probabilities for p in parts])
    else:  # the pipeline refused every row
        predictions, proba = np.empty(0), None
    scores = predictions if proba is None else proba
    if refused or not np.isfinite(scores).all():
        finite = np.isfinite(scores) if scores.ndim == 1 else np.isfinite(scores).all(axis=1)
        rows = np.concatenate([np.arange(p.start, p.stop) for p in parts] or [np.empty(0, int)])
        refused += [(int(i), _OVERFLOW) for i in rows[~finite]]
        chunk.bad += [(chunk.first_line + chunk.position(i), text) for i, text in refused]
        chunk.good = [chunk.position(int(i)) for i in rows[finite]]
        predictions = predictions[finite]
        proba = None if proba is None else proba[finite]
    chunk.predictions, chunk.probabilities = predictions, proba


def _predict_parts(
    model: LoadedModel,
    inputs: Any,
    start: int,
    stop: int,
    parts: list[_Part],
    refused: list[tuple[int, str]],
) -> None:
    """Predict rows ``start:stop``; halves of rows the pipeline refuses, down to the refused rows.

    Only a refusal costs more calls: two per halving on the way down to each refused row.
    """
    rows = inputs.iloc[start:stop] if isinstance(inputs, pd.DataFrame) else inputs[start:stop]
    try:
        with np.errstate(over="ignore", invalid="ignore"):  # an overflow is reported as a bad row
            predictions, proba = model.predict(rows)
    except (ValueError, TypeError) as exc:
        if stop - start == 1:
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
            refused.append((start, f"the model refused this row: {reason}"))
            return
        middle = (start + stop) // 2
        _predict_parts(model, inputs, start, middle, parts, refused)
        _predict_parts(model, inputs, middle, stop, parts, refused)
        return
    parts.append(_Part(start, stop, predictions, proba))


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
    if chunk_rows < 1:
        raise BatchError(f"chunk size must be at least 1 row, not {chunk_rows}")
    for target in (output_path, errors):
        if not target.parent.is_dir():
            raise BatchError(f"cannot write {target}: folder {target.parent} does not exist")
    started = time.perf_counter()
    # Results go to hidden files beside the targets, renamed over them only when the whole file
    # has been read: a run that stops early (bad header, Ctrl-C, a full disk) leaves an earlier
    # output untouched.
    partial_out = output_path.with_name(f".{output_path.name}.partial")
    partial_err = errors.with_name(f".{errors.name}.partial")
    try:
        with open(input_path, "rb") as fin:
            raw_header = fin.readline()
            header_line = raw_header.decode("utf-8-sig", errors="replace").rstrip("\r\n")
            if not header_line.strip():
                raise BatchError(f"{input_path} is empty; the first line must be a header")
            layout = layout_of(header_line, model, id_column)
            parse = parse_numbers if model.schema.all_numbers else parse_typed
            with (
                open(partial_out, "wb") as fout,
                open(partial_err, "w", newline="") as ferr,
                tqdm(
                    total=os.path.getsize(input_path),
                    initial=len(raw_header),
                    unit="B",
                    unit_scale=True,
                    desc=f"scoring with {version}",
                    disable=not progress,
                ) as bar,
            ):
                writer = _Writer(fout, model, layout)
                writer.header(header_line)
                err_writer = csv.writer(ferr)
                err_writer.writerow(["line", "reason"])
                for chunk in chunks(fin, 2, chunk_rows):
                    parse(chunk, layout, model.schema)
                    _score(model, chunk)
                    chunk.bad.sort()
                    for number, reason in chunk.bad:
                        err_writer.writerow([number, reason])
                        if len(report.bad_examples) < 20:
                            report.bad_examples.append((number, reason))
                    report.rows_bad += len(chunk.bad)
                    report.rows_ok += writer.rows(chunk)
                    bar.update(len(chunk.text))
        os.replace(partial_out, output_path)
        os.replace(partial_err, errors)
    except OSError as exc:  # unreadable input, a full disk, no permission to write
        raise BatchError(
            f"the batch stopped: {exc.strerror or exc} ({exc.filename or input_path})"
        ) from None
    finally:
        partial_out.unlink(missing_ok=True)
        partial_err.unlink(missing_ok=True)
    report.seconds = time.perf_counter() - started
    return report


class _Writer:
    """Writes each scored row as its lead (the id, or the whole input line) and its prediction.

    A classifier's prediction is the class as the model names it, then one probability per
    class; a regressor's is the number, in full (the shortest text that reads back the same).
    """

    def __init__(self, out: BinaryIO, model: LoadedModel, layout: Layout) -> None:
        self.out, self.model, self.layout = out, model, layout
        classes = [] if model.classes is None else model.classes.tolist()
        self.class_text = {c: b"," + _csv_text(str(c)).encode() for c in classes}

    def header(self, header_line: str) -> None:
        if self.layout.id_idx is None:
            lead = header_line
        else:
            lead = _csv_text(self.layout.header[self.layout.id_idx])
        columns = ["prediction", *(f"probability_{label}" for label in self.model.class_labels)]
        self.out.write((lead + "," + ",".join(map(_csv_text, columns)) + "\n").encode())

    def rows(self, chunk: Chunk) -> int:
        """Write the chunk's scored rows; returns how many."""
        if chunk.predictions is None or not len(chunk.predictions):
            return 0
        lines = chunk.lines if chunk.good is None else [chunk.lines[i] for i in chunk.good]
        leads = self._leads(lines, quoted=b'"' in chunk.text)
        if chunk.probabilities is None:
            tails = [f",{value!r}\n".encode() for value in chunk.predictions.tolist()]
            cells = zip(leads, tails, strict=True)
        else:
            classes = [self.class_text[c] for c in chunk.predictions.tolist()]
            cells = zip(leads, classes, _fixed6(chunk.probabilities), strict=True)
        self.out.write(b"".join(chain.from_iterable(cells)))
        return len(lines)

    def _leads(self, lines: list[bytes], *, quoted: bool) -> list[bytes]:
        idx = self.layout.id_idx
        if idx is None:
            return [line.rstrip(b"\r\n") for line in lines]
        if quoted:
            return [_field(line, idx) for line in lines]
        return [line.split(b",", idx + 1)[idx].rstrip(b"\r\n") for line in lines]


def _field(line: bytes, index: int) -> bytes:
    """Field ``index`` of a CSV line, as CSV text again (quoted where the value needs it)."""
    text = line.decode("utf-8", errors="surrogateescape").rstrip("\r\n")
    try:
        value = next(csv.reader([text]))[index]
    except (csv.Error, IndexError):  # pandas read the line; keep its text as it is
        return line.rstrip(b"\r\n").split(b",", index + 1)[index]
    return _csv_text(value).encode("utf-8", errors="surrogateescape")


def _csv_text(value: str) -> str:
    if any(c in value for c in ',"\r\n'):
        return '"' + value.replace('"', '""') + '"'
    return value


_DIGITS = 10 ** np.arange(5, -1, -1, dtype=np.int64)  # 100000 ... 1


def _fixed6(proba: np.ndarray) -> list[bytes]:
    """Each row's probabilities as ``,p0,p1...\\n`` with six decimals, exactly as ``%.6f`` writes them.

    The digits come from the probabilities scaled to integers of millionths, in numpy. A value
    outside [0, 1], or one whose scaled value lies so close to a half that the scaling's rounding
    could pick the other neighbour, is written by ``%.6f`` itself.
    """
    n, k = proba.shape
    valid = ~np.signbit(proba) & (proba <= 1.0)  # NaN fails the second test
    scaled = np.where(valid, proba, 0.0) * 1e6
    micro = np.rint(scaled).astype(np.int64)
    exact = valid & (np.abs(np.abs(scaled - micro) - 0.5) > 1e-6)
    text = np.empty((n, k, 9), dtype=np.uint8)
    text[:, :, 0] = ord(",")
    text[:, :, 1] = ord("0") + micro // 1_000_000
    text[:, :, 2] = ord(".")
    text[:, :, 3:] = ord("0") + (micro[:, :, None] // _DIGITS) % 10
    rows = np.empty((n, 9 * k + 1), dtype=np.uint8)
    rows[:, :-1] = text.reshape(n, 9 * k)
    rows[:, -1] = ord("\n")
    out = rows.view(f"S{9 * k + 1}").ravel().tolist()
    for i in np.flatnonzero(~exact.all(axis=1)).tolist():
        out[i] = ("".join(f",{p:.6f}" for p in proba[i].tolist()) + "\n").encode()
    return out
