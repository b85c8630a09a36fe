#!/usr/bin/env python3
"""ekv_report: plots and Markdown tables from ekv-bench, Google Benchmark and model-evaluation JSON.

    python3 examples/report/ekv_report.py --out report/ run1.json run2.json elastic_bench.json eval_2048.json

Each input's kind is told from its contents:
- ekv-bench (`--json` or `--output=FILE`; schema_version 1 or 2, README.md "ekv-bench"): one run, exact against
  elastic on one cache, with the device's read and copy ceilings measured in the same run;
- Google Benchmark (`--benchmark_format=json` or `--benchmark_out=FILE`) of ekv's suites: ekv_decode_bench
  (`GB/s`, `of_read` per shape, the device's `read_GBps` in the context), ekv_elastic_bench (`speedup`,
  `rel_err`, `mass`, `needle_recall` per compression `C`); a repeated run is read from its median aggregate;
- examples/model/eval_retrieval.py's `--json` (benchmarks/model/eval_*.json): retrieval accuracy and NLL of
  the model's own attention, ekv exact and ekv elastic per anchor, retrieval type and C;
- train_retrieval.py's task.json is recognised and has nothing to plot.

Writes into --out, each where its data is present (a plot without data is skipped, and report.md says why):
roofline.png (achieved against attainable flop rate, attainable = min(peak, intensity x read ceiling)),
speedup_vs_compression.png, error_vs_compression.png (relative L2 error, needle recall, attention mass),
accuracy_vs_compression.png (the model's retrieval accuracy), bandwidth_vs_context.png, and report.md (every
table; numbers to 4 significant digits, times in microseconds, rates in GB/s and GFLOP/s).

Exit codes: 0 ok (whatever was plotted), 1 an input that cannot be read or is not one of the kinds above (the
message names the file and the field), 2 usage. Every input is checked before anything is written.

As a module (the quick-start notebook uses it): `inputs = load(paths)` gives pandas tables (`inputs.bench`,
`inputs.gbench`, `inputs.model`), `write_report(inputs, out_dir)` writes everything, and `plot_roofline`,
`plot_speedup`, `plot_error`, `plot_accuracy`, `plot_bandwidth` each return a matplotlib Figure (Agg canvas,
no pyplot state) or None where their data is absent. Needs matplotlib and pandas only.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import pathlib
import statistics
import sys
from typing import Any, Callable, Iterable, Sequence

import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, NullFormatter

SCHEMA_VERSIONS = (1, 2)  # ekv-bench's; 2 renamed tokens_per_s to attention_steps_per_s, nothing read here
PLOTS = ("roofline", "speedup_vs_compression", "error_vs_compression", "accuracy_vs_compression",
         "bandwidth_vs_context")
# Google Benchmark's own fields of a run; every other number in a run is a user counter
GBENCH_FIELDS = {"name", "family_index", "per_family_instance_index", "run_name", "run_type", "repetitions",
                 "repetition_index", "threads", "aggregate_name", "aggregate_unit", "iterations", "real_time",
                 "cpu_time", "time_unit", "label", "error_occurred", "error_message", "skipped", "skip_message",
                 "big_o", "rms", "complexity_n"}
TIME_UNIT_US = {"ns": 1e-3, "us": 1.0, "ms": 1e3, "s": 1e6}


class ReportError(Exception):
    """An input the report cannot use; the message names the file and what is wrong."""


@dataclasses.dataclass
class Inputs:
    """What load() read. bench: one row per ekv-bench run; gbench: one row per Google Benchmark run (its median
    aggregate where repeated); model: one row per eval_retrieval.py row (a later file's row replaces an earlier
    one's of the same context, attention, kv_type, anchor, retrieval and C); files: one row per input;
    notes: what was left out of the tables and why."""
    files: pd.DataFrame
    bench: pd.DataFrame
    gbench: pd.DataFrame
    model: pd.DataFrame
    notes: list[str]


# ---------------------------------------------------------------------------------------------------------------
# reading


def _read_json(path: pathlib.Path) -> dict:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ReportError(f"{path}: cannot read: {getattr(e, 'strerror', None) or e}") from e
    if not text.strip():
        raise ReportError(f"{path}: empty file (a run that failed before writing its JSON?)")
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise ReportError(f"{path}: not JSON: {e.msg} at line {e.lineno} column {e.colno}") from e
    if not isinstance(doc, dict):
        raise ReportError(f"{path}: a JSON {type(doc).__name__} at the top level; every input kind is an object")
    return doc


def classify(doc: dict) -> str:
    """'ekv-bench', 'google-benchmark', 'model-eval' or 'model-train'; '' where the document is none of them."""
    if doc.get("tool") == "ekv-bench":
        return "ekv-bench"
    if isinstance(doc.get("benchmarks"), list) and isinstance(doc.get("context"), dict):
        return "google-benchmark"
    if isinstance(doc.get("rows"), list) and "args" in doc:
        return "model-eval"
    if "train_args" in doc and "train" in doc:
        return "model-train"
    return ""


def _field(doc: dict, dotted: str, path: pathlib.Path, kind: str, *, required: bool = True, number: bool = False):
    value: Any = doc
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            if required:
                raise ReportError(f"{path}: {kind} JSON has no {dotted}")
            return None
        value = value[part]
    if value is None and required:
        raise ReportError(f"{path}: {kind} JSON has {dotted} = null")
    if number and value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
        raise ReportError(f"{path}: {kind} JSON has {dotted} = {value!r}; needs a number")
    return value


def _scaled(value, factor):
    return None if value is None else value * factor


def _bench_row(doc: dict, path: pathlib.Path) -> dict:
    kind = "ekv-bench"
    version = _field(doc, "schema_version", path, kind, number=True)
    if version not in SCHEMA_VERSIONS:
        raise ReportError(f"{path}: schema_version={version} not supported by ekv_report; supported: "
                          f"[{', '.join(map(str, SCHEMA_VERSIONS))}]")
    config = _field(doc, "configuration", path, kind)
    if not isinstance(config, dict):
        raise ReportError(f"{path}: ekv-bench JSON's configuration is not an object")
    get = lambda dotted, **kw: _field(doc, dotted, path, kind, **kw)  # noqa: E731
    opt = lambda dotted: _field(doc, dotted, path, kind, required=False, number=True)  # noqa: E731
    seq = get("configuration.seq", number=True)
    decoded = (config.get("decode_tokens") or 0) if config.get("mode") == "inference" else 0
    row = {
        "source": path.name,
        "backend": get("backend"),
        "device": _field(doc, "device.name", path, kind, required=False) or "",
        "mode": config.get("mode", "step"),
        "batch": get("configuration.batch", number=True),
        "seq": seq,
        "context": seq + decoded,  # the final length: blocks are counted there
        "heads": get("configuration.heads", number=True),
        "kv_heads": opt("configuration.kv_heads"),
        "dim": get("configuration.dim", number=True),
        "dtype": config.get("dtype"),
        "kv_dtype": config.get("kv_dtype", config.get("dtype")),
        "block_len": opt("configuration.block_len"),
        "anchor": config.get("anchor"),
        "compress": opt("configuration.compress"),
        "budget_blocks": opt("configuration.budget_blocks"),
        "needles": opt("configuration.needles"),
        "refresh": opt("configuration.refresh"),
        "read_GBps": _scaled(opt("ceilings.read_bytes_per_s"), 1e-9),
        "copy_GBps": _scaled(opt("ceilings.copy_bytes_per_s"), 1e-9),
        "peak_GFLOPs": _scaled(opt("ceilings.peak_flops_per_s"), 1e-9),
        "speedup": opt("results.speedup"),
        "bytes_ratio": opt("results.bytes_ratio"),
        "blocks_per_sequence": opt("results.blocks_per_sequence"),
        "elastic_blocks": opt("results.elastic_blocks"),
        "attends_exactly": _field(doc, "results.elastic_attends_exactly", path, kind, required=False),
        "rel_err": opt("results.accuracy.relative_l2_error"),
        "rel_err_worst": opt("results.accuracy.relative_l2_error_worst"),
        "mass": opt("results.accuracy.attention_mass_captured"),
        "mass_min": opt("results.accuracy.attention_mass_captured_min"),
        "needle_recall": opt("results.accuracy.needle_recall"),
        "storage_rel_err": opt("results.accuracy.storage_relative_l2_error"),
    }
    for variant in ("exact", "elastic"):
        median_s = get(f"results.{variant}.step_seconds.median", number=True)
        bytes_per_step = get(f"results.{variant}.bytes_per_step", number=True)
        bytes_per_s = opt(f"results.{variant}.bytes_per_s")
        roof = f"results.{variant}.roofline"
        row.update({
            f"{variant}_us": median_s * 1e6,
            f"{variant}_bytes": bytes_per_step,
            f"{variant}_GBps": (bytes_per_s if bytes_per_s is not None else bytes_per_step / median_s) * 1e-9,
            f"{variant}_of_read": opt(f"results.{variant}.efficiency.of_read_bandwidth"),
            f"{variant}_ai": opt(f"{roof}.arithmetic_intensity"),
            f"{variant}_attainable_GFLOPs": _scaled(opt(f"{roof}.attainable_flops_per_s"), 1e-9),
            f"{variant}_achieved_GFLOPs": _scaled(opt(f"{roof}.achieved_flops_per_s"), 1e-9),
            f"{variant}_of_attainable": opt(f"{roof}.of_attainable"),
            f"{variant}_bound": _field(doc, f"{roof}.bound", path, kind, required=False),
        })
    if row["speedup"] is None:
        row["speedup"] = row["exact_us"] / row["elastic_us"]
    return row


def _parse_run_name(run_name: str) -> tuple[str, dict]:
    """'elastic/batch:1/len:4096/C:8/needles:1/manual_time' -> ('elastic', {'batch': 1, 'len': 4096, ...});
    unnamed arguments become arg0, arg1, ...; manual_time, real_time and process_time are dropped."""
    family, *parts = run_name.split("/")
    args: dict = {}
    for i, part in enumerate(parts):
        if part in ("manual_time", "real_time", "process_time"):
            continue
        key, sep, value = part.partition(":")
        if not sep:
            key, value = f"arg{i}", part
        try:
            args[key] = int(value)
        except ValueError:
            try:
                args[key] = float(value)
            except ValueError:
                args[key] = value
    return family, args


def _gbench_rows(doc: dict, path: pathlib.Path, notes: list[str]) -> list[dict]:
    context = doc["context"]
    device = context.get("device") or context.get("host_name") or ""
    try:
        read_gbps = float(context["read_GBps"]) if "read_GBps" in context else None
    except (TypeError, ValueError) as e:
        raise ReportError(f"{path}: Google Benchmark context read_GBps={context['read_GBps']!r}; needs a number") from e
    by_run: dict[str, list[dict]] = {}
    failed = 0
    for i, entry in enumerate(doc["benchmarks"]):
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise ReportError(f"{path}: Google Benchmark JSON's benchmarks[{i}] has no name")
        if entry.get("error_occurred") or entry.get("skipped"):
            failed += 1
            continue
        for key in ("real_time", "time_unit"):
            if key not in entry:
                raise ReportError(f"{path}: Google Benchmark JSON's benchmarks[{i}] ({entry['name']}) has no {key}")
        if entry["time_unit"] not in TIME_UNIT_US:
            raise ReportError(f"{path}: benchmarks[{i}] time_unit={entry['time_unit']!r} not supported; supported: "
                              f"[{', '.join(TIME_UNIT_US)}]")
        by_run.setdefault(entry.get("run_name", entry["name"]), []).append(entry)
    if failed:
        notes.append(f"{path.name}: {failed} Google Benchmark run(s) reported an error or were skipped; left out")
    rows = []
    for run_name, entries in by_run.items():
        aggregates = {e.get("aggregate_name"): e for e in entries if e.get("run_type") == "aggregate"}
        iterations = [e for e in entries if e.get("run_type", "iteration") != "aggregate"]
        if "median" in aggregates:
            chosen, how = [aggregates["median"]], "median"
        elif "mean" in aggregates:
            chosen, how = [aggregates["mean"]], "mean"
        elif iterations:
            chosen, how = iterations, "median" if len(iterations) > 1 else "one run"
        else:
            continue  # only spread aggregates (stddev, cv): nothing to report a value from
        family, args = _parse_run_name(run_name)
        row = {"source": path.name, "device": device, "family": family, "run_name": run_name, "read_GBps": read_gbps,
               "label": chosen[0].get("label", ""), "value_of": how,
               "repetitions": chosen[0].get("repetitions", len(chosen)), "arg_names": ",".join(args)}
        row.update(args)
        numbers: dict[str, list[float]] = {}
        for e in chosen:
            numbers.setdefault("time_us", []).append(e["real_time"] * TIME_UNIT_US[e["time_unit"]])
            for key, value in e.items():
                if key not in GBENCH_FIELDS and isinstance(value, (int, float)) and not isinstance(value, bool):
                    numbers.setdefault(f"{key}_counter" if key in args else key, []).append(value)
        row.update({key: statistics.median(values) for key, values in numbers.items()})
        rows.append(row)
    return rows


def _model_rows(doc: dict, path: pathlib.Path) -> list[dict]:
    rows = []
    for i, r in enumerate(doc["rows"]):
        if not isinstance(r, dict):
            raise ReportError(f"{path}: eval_retrieval.py JSON's rows[{i}] is not an object")
        for key in ("context", "attention", "accuracy"):
            if key not in r:
                raise ReportError(f"{path}: eval_retrieval.py JSON's rows[{i}] has no {key}")
        rows.append({
            "source": path.name, "gpu": doc.get("gpu") or "", "commit": (doc.get("commit") or "")[:7],
            "context": r["context"], "attention": r["attention"], "kv_type": r.get("kv_type", ""),
            "anchor": r.get("anchor", ""), "retrieval": r.get("retrieval", ""), "C": r.get("C"),
            "blocks": r.get("blocks"), "blocks_read": r.get("blocks_read"), "samples": r.get("samples"),
            "accuracy": r["accuracy"], "nll": r.get("nll"), "exact_fallback_share": r.get("exact_fallback_share"),
            "max_abs_logit_diff_vs_own": r.get("max_abs_logit_diff_vs_own"),
            "greedy_identical_share": r.get("greedy_identical_share"),
        })
    return rows


def load(paths: Iterable[str | pathlib.Path]) -> Inputs:
    """Reads every input (raises ReportError naming the first that cannot be used) into pandas tables."""
    files, bench, gbench, model, notes = [], [], [], [], []
    for p in paths:
        path = pathlib.Path(p)
        doc = _read_json(path)
        kind = classify(doc)
        if kind == "ekv-bench":
            row = _bench_row(doc, path)
            bench.append(row)
            budget = (f"C={format_value(row['compress'])}" if row["compress"] is not None else
                      f"budget {format_value(row['budget_blocks'])} blocks")
            what = f"{row['backend']} ({row['device']}), {row['batch']} x {row['seq']}, {budget}"
        elif kind == "google-benchmark":
            rows = _gbench_rows(doc, path, notes)
            gbench.extend(rows)
            families = sorted({r["family"] for r in rows})
            what = f"{len(rows)} runs of {', '.join(families) or 'nothing'} ({rows[0]['device'] if rows else ''})"
        elif kind == "model-eval":
            rows = _model_rows(doc, path)
            model.extend(rows)
            what = f"{len(rows)} rows, contexts {sorted({r['context'] for r in rows})} ({doc.get('gpu') or ''})"
        elif kind == "model-train":
            what = "train_retrieval.py's summary: no evaluation rows, nothing to plot"
            notes.append(f"{path.name}: {what}")
        else:
            raise ReportError(f"{path}: not ekv-bench, Google Benchmark or eval_retrieval.py JSON (no tool "
                              f"\"ekv-bench\", no context + benchmarks, no rows + args)")
        files.append({"file": str(path), "kind": kind, "what": what})
    model_frame = pd.DataFrame(model)
    if not model_frame.empty:
        key = ["context", "attention", "kv_type", "anchor", "retrieval", "C"]
        kept = model_frame.drop_duplicates(subset=key, keep="last")
        replaced = model_frame.drop(kept.index).merge(kept[key + ["source"]], on=key, suffixes=("", "_by"))
        for (old, new), part in replaced.groupby(["source", "source_by"], sort=False):
            notes.append(f"{len(part)} rows of {old} replaced by {new}'s of the same context, attention, kv_type, "
                         f"anchor, retrieval and C (the later input wins)")
        model_frame = kept.reset_index(drop=True)
    return Inputs(pd.DataFrame(files), pd.DataFrame(bench), pd.DataFrame(gbench), model_frame, notes)


# ---------------------------------------------------------------------------------------------------------------
# tables


def format_value(value) -> str:
    """How report.md writes a cell: empty for null, integers as such, other numbers to 4 significant digits."""
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if value.is_integer() and abs(value) < 1e15:
            return str(int(value))
        return format(value, ".4g")
    if hasattr(value, "item"):  # numpy scalars
        return format_value(value.item())
    return str(value).replace("|", "\\|")


def markdown_table(frame: pd.DataFrame, columns: Sequence[str] | None = None) -> str:
    """A GitHub Markdown table of frame's columns (those present of `columns`, in that order)."""
    columns = [c for c in (columns or frame.columns) if c in frame.columns]
    lines = ["| " + " | ".join(columns) + " |", "| " + " | ".join("---" for _ in columns) + " |"]
    for _, row in frame[columns].iterrows():
        lines.append("| " + " | ".join(format_value(row[c]) for c in columns) + " |")
    return "\n".join(lines)


def _present(frame: pd.DataFrame, *columns: str) -> pd.DataFrame:
    """frame's rows where every column given exists and is not null."""
    if frame.empty or any(c not in frame.columns for c in columns):
        return frame.iloc[0:0]
    return frame.dropna(subset=list(columns))


def _series_labels(frame: pd.DataFrame, keys: Sequence[str]) -> pd.Series:
    """One label per row, from the key columns whose values differ between rows (the first key where none do)."""
    if frame.empty:
        return pd.Series([], index=frame.index, dtype=object)
    keys = [k for k in keys if k in frame.columns]
    varying = [k for k in keys if frame[k].astype(str).nunique() > 1] or keys[:1]
    return frame[varying].apply(lambda r: " ".join(f"{k}={format_value(r[k])}" for k in varying), axis=1)


BENCH_SERIES = ["backend", "device", "mode", "batch", "seq", "heads", "kv_heads", "dim", "kv_dtype", "anchor",
                "refresh", "needles"]


def _gbench_args(frame: pd.DataFrame) -> list[str]:
    """The benchmark arguments named in frame's run names (batch, len, C, ...), in order of appearance."""
    names: dict[str, None] = {}
    for joined in frame.get("arg_names", []):
        names.update((n, None) for n in joined.split(",") if n)
    return list(names)


def _gbench_series(frame: pd.DataFrame, *, without: Sequence[str]) -> list[str]:
    """Google Benchmark series keys: family, label, device and every argument but those given."""
    return ["family", "label", "device"] + [a for a in _gbench_args(frame) if a not in without]


def _new_figure(ncols: int = 1, width: float = 6.4, height: float = 4.4) -> tuple[Figure, list]:
    fig = Figure(figsize=(width * ncols, height), layout="constrained")
    FigureCanvasAgg(fig)  # the Agg canvas: no pyplot, no display needed
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    return fig, list(axes)


def _legend(ax, loc: str = "best") -> None:
    """The legend inside the axes for a few series; beside them (hiding none of the points) for a sweep's many."""
    count = len(ax.get_legend_handles_labels()[1])
    if count == 0:
        return
    if count <= 8:
        ax.legend(fontsize="small", loc=loc)
    else:
        ax.legend(fontsize="x-small", loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0,
                  ncol=1 if count <= 24 else 2)


def _log_x(ax, ticks: Iterable[float]) -> None:
    """A log x axis labelled at the given values only (C = 2, 4, 8, 16; lengths), in plain numbers."""
    ticks = sorted({float(t) for t in ticks})
    ax.set_xscale("log")
    ax.set_xticks(ticks, [format_value(t) for t in ticks])
    ax.xaxis.set_minor_formatter(NullFormatter())


def _plain_log_y(ax) -> None:
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: format(v, "g")))
    ax.yaxis.set_minor_formatter(NullFormatter())


def _ceilings(frame: pd.DataFrame, by: Sequence[str]) -> pd.DataFrame:
    """One read ceiling per device: the median of the runs' own measurements, with their range in `span`."""
    rows = []
    for key, part in _present(frame, "read_GBps").groupby(list(by), sort=False):
        low, mid, high = part["read_GBps"].min(), part["read_GBps"].median(), part["read_GBps"].max()
        span = f"{low:.4g}" if math.isclose(low, high, rel_tol=5e-4) else f"{low:.4g} to {high:.4g}"
        peak = part["peak_GFLOPs"].median() if "peak_GFLOPs" in part else float("nan")
        rows.append(dict(zip(by, key if isinstance(key, tuple) else (key,)), read_GBps=mid, span=span,
                         peak_GFLOPs=peak, runs=len(part)))
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------------------------------------
# plots: each returns (figure or None, why it was skipped, its tables as (title, frame, columns))

Tables = list[tuple[str, pd.DataFrame, list[str]]]


def _roofline(inputs: Inputs) -> tuple[Figure | None, str, Tables]:
    points = []
    for variant in ("exact", "elastic"):
        part = _present(inputs.bench, f"{variant}_ai", f"{variant}_achieved_GFLOPs", f"{variant}_attainable_GFLOPs")
        if not part.empty:
            part = part.assign(variant=variant, ai=part[f"{variant}_ai"],
                               achieved_GFLOPs=part[f"{variant}_achieved_GFLOPs"],
                               attainable_GFLOPs=part[f"{variant}_attainable_GFLOPs"],
                               of_attainable=part[f"{variant}_of_attainable"], bound=part[f"{variant}_bound"],
                               GBps=part[f"{variant}_GBps"])
            points.append(part)
    tables: Tables = []
    gb = _present(inputs.gbench, "GB/s", "read_GBps")
    if not gb.empty:
        gb = gb.assign(series=_series_labels(gb, _gbench_series(gb, without=())), of_read_ceiling=gb["GB/s"] /
                       gb["read_GBps"])
        tables.append(("Google Benchmark against the read ceiling (no flop counts: bandwidth only)", gb,
                       ["source", "series", "time_us", "GB/s", "read_GBps", "of_read_ceiling"]))
    if not points:
        why = ("no ekv-bench run with a roofline (ekv-bench without --no-roofs measures the ceilings it needs)"
               if inputs.bench.empty or "exact_ai" not in inputs.bench else
               "every ekv-bench run was made with --no-roofs: no ceilings, no roofline")
        return None, why, tables
    frame = pd.concat(points, ignore_index=True)
    fig, (ax,) = _new_figure()
    low, high = frame["ai"].min() / 4, frame["ai"].max() * 4
    for _, roof in _ceilings(frame, ["device", "backend"]).iterrows():
        xs = [low * (high / low) ** (i / 64) for i in range(65)]
        peak = roof["peak_GFLOPs"]
        ys = [min(peak, x * roof["read_GBps"]) if pd.notna(peak) else x * roof["read_GBps"] for x in xs]
        roof_is = f"read {roof['span']} GB/s" + (f", peak {peak:.4g} GFLOP/s" if pd.notna(peak) else "")
        ax.plot(xs, ys, "--", color="gray", linewidth=1, label=f"roof {roof['device']} ({roof['backend']}): {roof_is}")
    labels = _series_labels(frame, BENCH_SERIES + ["compress"])
    for (variant, label), part in frame.groupby([frame["variant"], labels], sort=False):
        ax.scatter(part["ai"], part["achieved_GFLOPs"], marker="o" if variant == "exact" else "^",
                   label=f"{variant} {label}")
    ax.set(xscale="log", xlabel="arithmetic intensity (flop / byte read)", ylabel="GFLOP/s",
           title="Roofline: achieved (points) against attainable (dashed)")
    _plain_log_y(ax)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: format(v, "g")))
    ax.xaxis.set_minor_formatter(NullFormatter())
    _legend(ax, "upper left")  # the roofs rise to the right: the upper left stays clear
    tables.insert(0, ("ekv-bench", frame.assign(series=labels),
                      ["source", "series", "variant", "ai", "GBps", "achieved_GFLOPs", "attainable_GFLOPs",
                       "of_attainable", "bound"]))
    return fig, "", tables


def _speedup(inputs: Inputs) -> tuple[Figure | None, str, Tables]:
    bench = _present(inputs.bench, "compress", "speedup")
    gb = _present(inputs.gbench, "C", "speedup")
    if bench.empty and gb.empty:
        return None, "no ekv-bench run with --compress and no Google Benchmark run with a C argument and speedup", []
    fig, (ax,) = _new_figure()
    tables: Tables = []
    cs = []
    if not bench.empty:
        bench = bench.assign(series=_series_labels(bench, BENCH_SERIES))
        for label, part in bench.sort_values("compress").groupby("series", sort=False):
            ax.plot(part["compress"], part["speedup"], "o-", label=f"ekv-bench {label}")
        cs += list(bench["compress"])
        tables.append(("ekv-bench", bench.sort_values(["series", "compress"]),
                       ["source", "series", "compress", "exact_us", "elastic_us", "speedup", "bytes_ratio",
                        "attends_exactly"]))
    if not gb.empty:
        gb = gb.assign(series=_series_labels(gb, _gbench_series(gb, without=("C",))))
        for label, part in gb.sort_values("C").groupby("series", sort=False):
            ax.plot(part["C"], part["speedup"], "s-", label=f"gbench {label}")
        cs += list(gb["C"])
        tables.append(("Google Benchmark", gb.sort_values(["series", "C"]),
                       ["source", "series", "C", "exact_us", "elastic_us", "speedup", "bytes_ratio", "reuse_us",
                        "speedup_reuse"]))
    ideal = sorted(set(cs))
    ax.plot(ideal, ideal, ":", color="gray", label="speedup = C")
    ax.axhline(1.0, color="gray", linewidth=0.8)
    ax.set(xlabel="compression C (elastic reads about 1/C of the KV bytes)",
           ylabel="speedup (exact time / elastic time)", title="Speedup against compression")
    _log_x(ax, ideal)
    _plain_log_y(ax)
    _legend(ax)
    return fig, "", tables


def _error(inputs: Inputs) -> tuple[Figure | None, str, Tables]:
    metrics = [("rel_err", "rel_err", "relative L2 error of elastic O"),
               ("needle_recall", "needle_recall", "needle recall (planted blocks read)"),
               ("mass", "mass", "attention mass captured")]
    panels = []
    for bench_col, gb_col, title in metrics:
        bench = _present(inputs.bench, "compress", bench_col)
        gb = _present(inputs.gbench, "C", gb_col)
        if not bench.empty or not gb.empty:
            panels.append((bench_col, gb_col, title, bench, gb))
    if not panels:
        return None, "no ekv-bench or Google Benchmark run with an error, needle recall or mass per C", []
    fig, axes = _new_figure(len(panels), width=5.0)
    for ax, (bench_col, gb_col, title, bench, gb) in zip(axes, panels):
        if not bench.empty:
            labels = _series_labels(bench, BENCH_SERIES)
            for label, part in bench.assign(series=labels).sort_values("compress").groupby("series", sort=False):
                ax.plot(part["compress"], part[bench_col], "o-", label=f"ekv-bench {label}")
        if not gb.empty:
            labels = _series_labels(gb, _gbench_series(gb, without=("C",)))
            for label, part in gb.assign(series=labels).sort_values("C").groupby("series", sort=False):
                ax.plot(part["C"], part[gb_col], "s-", label=f"gbench {label}")
        values = pd.concat([bench[bench_col] if not bench.empty else pd.Series(dtype=float),
                            gb[gb_col] if not gb.empty else pd.Series(dtype=float)])
        ax.set(xlabel="compression C", title=title)
        _log_x(ax, list(bench.get("compress", [])) + list(gb.get("C", [])))
        if bench_col == "rel_err" and (values > 0).all():
            _plain_log_y(ax)
        else:  # an error past 1 (a sweep's long contexts at high C) stays in view
            ax.set_ylim(-0.05, max(1.05, float(values.max()) * 1.05 if not values.empty else 1.05))
        _legend(ax)
    tables: Tables = []
    bench = _present(inputs.bench, "compress")
    if not bench.empty:
        tables.append(("ekv-bench", bench.assign(series=_series_labels(bench, BENCH_SERIES)).sort_values("compress"),
                       ["source", "series", "compress", "rel_err", "rel_err_worst", "needle_recall", "mass",
                        "mass_min", "storage_rel_err"]))
    gb = _present(inputs.gbench, "C")
    if not gb.empty:
        tables.append(("Google Benchmark", gb.assign(series=_series_labels(gb, _gbench_series(gb, without=("C",))))
                       .sort_values("C"), ["source", "series", "C", "rel_err", "rel_err_worst", "needle_recall",
                                           "mass"]))
    return fig, "", tables


def _accuracy(inputs: Inputs) -> tuple[Figure | None, str, Tables]:
    model = inputs.model
    if model.empty:
        return None, "no eval_retrieval.py JSON (benchmarks/model/eval_*.json) given", []
    elastic = _present(model[model["attention"] == "ekv elastic"], "C")
    elastic = elastic.assign(series=_series_labels(elastic, ["anchor", "retrieval", "kv_type"]))
    contexts = sorted(model["context"].unique())
    # one panel per context and one for the legend, each series the same colour in every panel
    fig = Figure(figsize=(4.6 * len(contexts) + 3.2, 4.4), layout="constrained")
    FigureCanvasAgg(fig)
    *axes, legend_ax = fig.subplots(1, len(contexts) + 1, width_ratios=[4.6] * len(contexts) + [3.2])
    palette = [f"C{i}" for i in range(10)]
    colours = {label: palette[i % 10] for i, label in enumerate(dict.fromkeys(elastic["series"]))}
    handles: dict[str, Any] = {}
    for ax, context in zip(axes, contexts):
        here = model[model["context"] == context]
        for name, style in (("own", ":"), ("ekv exact", "--")):
            for _, row in here[here["attention"] == name].iterrows():
                label = f"{name} {format_value(row['kv_type'])}".strip(" -")
                handles[label] = ax.axhline(row["accuracy"], linestyle=style, linewidth=1.5,
                                            color="black" if name == "own" else "gray")
        part = elastic[elastic["context"] == context]
        for label, series in part.sort_values("C").groupby("series", sort=False):
            handles[label], = ax.plot(series["C"], series["accuracy"], "o-", color=colours[label])
        if not part.empty:
            _log_x(ax, part["C"])
        gpu = ", ".join(sorted({g for g in here["gpu"] if g}))
        ax.set(xlabel="compression C", ylabel="retrieval accuracy", ylim=(-0.02, 1.02),
               title=f"context {context}" + (f" ({gpu})" if gpu else ""))
    legend_ax.axis("off")
    legend_ax.legend(list(handles.values()), list(handles), loc="center left", fontsize="small", frameon=False)
    fig.suptitle("Model retrieval accuracy against compression (elastic; exact and own dashed)")
    tables: Tables = []
    for value, what in (("accuracy", "Retrieval accuracy"), ("nll", "Answer NLL (natural log)")):
        if elastic.empty or value not in elastic:
            continue
        pivot = elastic.pivot_table(index=["context", "kv_type", "anchor", "retrieval"], columns="C",
                                    values=value, aggfunc="last").reset_index()
        pivot.columns = [c if isinstance(c, str) else f"C={format_value(c)}" for c in pivot.columns]
        tables.append((f"{what} of elastic attention by C", pivot, list(pivot.columns)))
    others = model[model["attention"] != "ekv elastic"]
    tables.append(("Own and exact attention", others,
                   ["source", "gpu", "context", "attention", "kv_type", "samples", "accuracy", "nll",
                    "max_abs_logit_diff_vs_own", "greedy_identical_share"]))
    fell_back = _present(elastic, "exact_fallback_share")
    fell_back = fell_back[fell_back["exact_fallback_share"] > 0]
    if not fell_back.empty:
        tables.append(("Elastic rows some of whose calls attended exactly (ekv's exact fallback)",
                       fell_back.sort_values(["context", "kv_type", "anchor", "retrieval", "C"]),
                       ["source", "context", "kv_type", "anchor", "retrieval", "C", "blocks_read", "blocks",
                        "accuracy", "exact_fallback_share"]))
    return fig, "", tables


def _bandwidth(inputs: Inputs) -> tuple[Figure | None, str, Tables]:
    bench = _present(inputs.bench, "context", "exact_GBps")
    gb = _present(inputs.gbench, "len", "GB/s")
    if bench.empty and gb.empty:
        return None, "no ekv-bench run and no Google Benchmark run with a len argument and GB/s", []
    panels = [p for p in (("ekv-bench", bench), ("Google Benchmark", gb)) if not p[1].empty]
    fig, axes = _new_figure(len(panels))
    tables: Tables = []
    for ax, (what, frame) in zip(axes, panels):
        if what == "ekv-bench":
            keys = [k for k in BENCH_SERIES if k != "seq"] + ["compress"]
            frame = frame.assign(series=_series_labels(frame, keys))
            for label, part in frame.sort_values("context").groupby("series", sort=False):
                ax.plot(part["context"], part["exact_GBps"], "o-", label=f"exact {label}")
                ax.plot(part["context"], part["elastic_GBps"], "^--", label=f"elastic {label}")
            ceilings = _ceilings(frame, ["device", "backend"])
            tables.append((what, frame.sort_values(["series", "context"]),
                           ["source", "series", "context", "exact_GBps", "exact_of_read", "elastic_GBps",
                            "elastic_of_read", "read_GBps", "copy_GBps"]))
            x = "context"
        else:
            frame = frame.assign(series=_series_labels(frame, _gbench_series(frame, without=("len",))))
            for label, part in frame.sort_values("len").groupby("series", sort=False):
                ax.plot(part["len"], part["GB/s"], "s-", label=label)
            ceilings = _ceilings(frame, ["device"])
            tables.append((what, frame.sort_values(["series", "len"]),
                           ["source", "series", "len", "time_us", "GB/s", "of_read", "of_copy", "read_GBps"]))
            x = "len"
        for _, c in ceilings.iterrows():
            ax.axhline(c["read_GBps"], color="gray", linestyle="--", linewidth=1,
                       label=f"read ceiling {c['device']}: {c['span']} GB/s")
        ax.set(xlabel="context length (tokens per sequence)", ylabel="GB/s read",
               title=f"Bandwidth against context length ({what})")
        ax.set_ylim(bottom=0)
        _log_x(ax, frame[x])
        _legend(ax)
    return fig, "", tables


PLOTTERS: dict[str, Callable[[Inputs], tuple[Figure | None, str, Tables]]] = {
    "roofline": _roofline, "speedup_vs_compression": _speedup, "error_vs_compression": _error,
    "accuracy_vs_compression": _accuracy, "bandwidth_vs_context": _bandwidth,
}
TITLES = {"roofline": "Roofline", "speedup_vs_compression": "Speedup against compression",
          "error_vs_compression": "Error, needle recall and attention mass against compression",
          "accuracy_vs_compression": "Model retrieval accuracy against compression",
          "bandwidth_vs_context": "Bandwidth against context length"}


def plot_roofline(inputs: Inputs) -> Figure | None:
    """Achieved against attainable flop rate of every ekv-bench run with roofs; None without one."""
    return _roofline(inputs)[0]


def plot_speedup(inputs: Inputs) -> Figure | None:
    """Speedup against C: ekv-bench runs with --compress, ekv_elastic_bench runs; None without any."""
    return _speedup(inputs)[0]


def plot_error(inputs: Inputs) -> Figure | None:
    """Relative L2 error, needle recall and attention mass against C; None without any."""
    return _error(inputs)[0]


def plot_accuracy(inputs: Inputs) -> Figure | None:
    """The model's retrieval accuracy against C, one panel per context; None without eval_retrieval.py JSON."""
    return _accuracy(inputs)[0]


def plot_bandwidth(inputs: Inputs) -> Figure | None:
    """GB/s read against context length, exact and elastic, with the read ceilings; None without data."""
    return _bandwidth(inputs)[0]


# ---------------------------------------------------------------------------------------------------------------
# the report


@dataclasses.dataclass
class Report:
    """What write_report() wrote: the PNGs by plot name, report.md, and the plots skipped with why."""
    pngs: dict[str, pathlib.Path]
    markdown: pathlib.Path
    skipped: dict[str, str]


def write_report(inputs: Inputs, out_dir: str | pathlib.Path, title: str = "ekv report", dpi: int = 120) -> Report:
    """Writes every plot with data as out_dir/<name>.png (removing one left from an earlier run whose data is
    now absent) and out_dir/report.md with every table."""
    out = pathlib.Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ReportError(f"{out}: cannot create the output directory: {e.strerror or e}") from e
    pngs, skipped = {}, {}
    md = [f"# {title}", "", "Made by `examples/report/ekv_report.py` from:", "",
          markdown_table(inputs.files, ["file", "kind", "what"]) if not inputs.files.empty else "(no inputs)", ""]
    sections = []
    for name, plotter in PLOTTERS.items():
        fig, why, tables = plotter(inputs)
        png = out / f"{name}.png"
        sections += [f"## {TITLES[name]}", ""]
        if fig is not None:
            try:
                fig.savefig(png, dpi=dpi, bbox_inches="tight")  # a legend beside the axes stays in
            except OSError as e:
                raise ReportError(f"{png}: cannot write: {e.strerror or e}") from e
            pngs[name] = png
            sections += [f"![{TITLES[name]}]({png.name})", ""]
        else:
            skipped[name] = why
            png.unlink(missing_ok=True)
            sections += [f"Plot skipped: {why}.", ""]
        for table_title, frame, columns in tables:
            sections += [f"### {table_title}", "", markdown_table(frame, columns), ""]
    md += ["## Plots", ""]
    md += [f"- [{TITLES[n]}]({p.name})" for n, p in pngs.items()]
    md += [f"- {TITLES[n]}: skipped, {why}" for n, why in skipped.items()]
    md += [""] + sections
    if not inputs.bench.empty:
        md += ["## ekv-bench runs", "", markdown_table(inputs.bench, [
            "source", "backend", "device", "mode", "batch", "seq", "heads", "kv_heads", "dim", "dtype", "kv_dtype",
            "block_len", "anchor", "compress", "budget_blocks", "needles", "exact_us", "elastic_us", "speedup",
            "bytes_ratio", "exact_GBps", "elastic_GBps", "read_GBps", "rel_err", "needle_recall", "mass"]), ""]
    if not inputs.gbench.empty:
        md += ["## Google Benchmark runs", "", "Times in microseconds; `value_of`: the aggregate or runs each row's "
               "numbers come from.", ""]
        for family, part in inputs.gbench.groupby("family", sort=False):
            fixed = ["source", "device", "run_name", "label", "value_of", "time_us"]
            skip = set(fixed) | set(_gbench_args(part)) | {"family", "read_GBps", "repetitions", "arg_names"}
            counters = [c for c in part.columns if c not in skip and part[c].notna().any()]
            md += [f"### {family}", "", markdown_table(part, fixed + counters), ""]
    if inputs.notes:
        md += ["## Notes", ""] + [f"- {n}" for n in inputs.notes] + [""]
    markdown = out / "report.md"
    try:
        markdown.write_text("\n".join(md).rstrip("\n") + "\n", encoding="utf-8")
    except OSError as e:
        raise ReportError(f"{markdown}: cannot write: {e.strerror or e}") from e
    return Report(pngs, markdown, skipped)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="ekv_report.py", description="Plots and Markdown tables from ekv-bench, Google Benchmark and "
        "eval_retrieval.py JSON (see the module's docstring for what each plot needs).")
    parser.add_argument("--out", required=True, help="directory for the PNGs and report.md (made if absent)")
    parser.add_argument("--title", default="ekv report", help="report.md's heading")
    parser.add_argument("--dpi", type=int, default=120, help="resolution of the PNGs")
    parser.add_argument("inputs", nargs="+", help="JSON files: ekv-bench, Google Benchmark, eval_retrieval.py")
    args = parser.parse_args(argv)
    try:
        inputs = load(args.inputs)
        report = write_report(inputs, args.out, args.title, args.dpi)
    except ReportError as e:
        print(f"ekv_report: error: {e}", file=sys.stderr)
        return 1
    for name, png in report.pngs.items():
        print(f"wrote {png}")
    for name, why in report.skipped.items():
        print(f"skipped {name}: {why}")
    for note in inputs.notes:
        print(f"note: {note}")
    print(f"wrote {report.markdown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
