"""examples/report/ekv_report.py on committed JSON: ekv-bench runs of the CPU backend and hand-written Google
Benchmark files (tests/python/data/, whose README says how each was made) and benchmarks/model/dyn_2048.json.
Every plot is written where its data is given and skipped, saying why, where it is not; report.md's tables
hold the inputs' numbers (compared cell by cell, as ekv_report.format_value writes them: 4 significant
digits); an unreadable or ill-formed input exits 1 naming the file and the reason, before anything is written.
Needs matplotlib and pandas (.ci/python-env)."""
import json
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "examples" / "report" / "ekv_report.py"
DATA = pathlib.Path(__file__).resolve().parent / "data"
BENCH = sorted(DATA.glob("ekv_bench_*.json"))
GBENCH_DECODE = DATA / "gbench_decode_handwritten.json"
GBENCH_ELASTIC = DATA / "gbench_elastic_handwritten.json"
MODEL = ROOT / "benchmarks" / "model" / "dyn_2048.json"
sys.path.insert(0, str(SCRIPT.parent))
import ekv_report  # noqa: E402

fmt = ekv_report.format_value


def run(*args):
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True,
                          timeout=300)


def tables(markdown):
    """report.md's tables by heading path ('Speedup against compression / ekv-bench'): lists of {column: cell}."""
    found, section, subsection, lines = {}, "", "", markdown.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("## "):
            section, subsection = line[3:], ""
        elif line.startswith("### "):
            subsection = line[4:]
        elif line.startswith("| ") and i + 1 < len(lines) and lines[i + 1].startswith("| ---"):
            header = [c.strip() for c in line.strip("|").split(" | ")]
            rows = []
            i += 2
            while i < len(lines) and lines[i].startswith("|"):
                rows.append(dict(zip(header, (c.strip() for c in lines[i][1:-1].split(" | ")))))
                i += 1
            found[f"{section} / {subsection}" if subsection else section] = rows
            continue
        i += 1
    return found


def one(rows, **match):
    got = [r for r in rows if all(r.get(k) == v for k, v in match.items())]
    assert len(got) == 1, (match, rows)
    return got[0]


@pytest.fixture(scope="module")
def full_report(tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    result = run("--out", out, *BENCH, GBENCH_DECODE, GBENCH_ELASTIC, MODEL)
    assert result.returncode == 0, result.stderr
    return out, tables((out / "report.md").read_text())


def test_every_plot_is_written_from_the_full_inputs(full_report):
    out, _ = full_report
    for name in ekv_report.PLOTS:
        png = out / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
        assert png.stat().st_size > 10_000, name  # axes, lines and labels, not an empty canvas
    markdown = (out / "report.md").read_text()
    assert "Plot skipped" not in markdown
    for name in ekv_report.PLOTS:
        assert f"]({name}.png)" in markdown


def test_ekv_bench_numbers_are_in_the_tables(full_report):
    _, found = full_report
    runs = found["ekv-bench runs"]
    roofline = found["Roofline / ekv-bench"]
    bandwidth = found["Bandwidth against context length / ekv-bench"]
    assert len(runs) == len(BENCH)
    for path in BENCH:
        doc = json.loads(path.read_text())
        results, config = doc["results"], doc["configuration"]
        row = one(runs, source=path.name)
        assert row["seq"] == fmt(config["seq"]) and row["compress"] == fmt(config["compress"])
        assert row["backend"] == "cpu" and row["device"] == doc["device"]["name"]
        assert row["speedup"] == fmt(results["speedup"])
        assert row["bytes_ratio"] == fmt(results["bytes_ratio"])
        assert row["exact_us"] == fmt(results["exact"]["step_seconds"]["median"] * 1e6)
        assert row["elastic_us"] == fmt(results["elastic"]["step_seconds"]["median"] * 1e6)
        assert row["rel_err"] == fmt(results["accuracy"]["relative_l2_error"])
        assert row["needle_recall"] == fmt(results["accuracy"]["needle_recall"])
        assert row["mass"] == fmt(results["accuracy"]["attention_mass_captured"])
        speed = one(bandwidth, source=path.name)
        assert speed["exact_GBps"] == fmt(results["exact"]["bytes_per_s"] * 1e-9)
        assert speed["elastic_GBps"] == fmt(results["elastic"]["bytes_per_s"] * 1e-9)
        if results["exact"]["roofline"] is None:  # --no-roofs: no ceilings, no roofline row
            assert not [r for r in roofline if r["source"] == path.name]
            assert speed["read_GBps"] == ""
            continue
        assert speed["read_GBps"] == fmt(doc["ceilings"]["read_bytes_per_s"] * 1e-9)
        for variant in ("exact", "elastic"):
            roof = results[variant]["roofline"]
            r = one(roofline, source=path.name, variant=variant)
            assert r["ai"] == fmt(roof["arithmetic_intensity"])
            assert r["achieved_GFLOPs"] == fmt(roof["achieved_flops_per_s"] * 1e-9)
            assert r["attainable_GFLOPs"] == fmt(roof["attainable_flops_per_s"] * 1e-9)
            assert r["of_attainable"] == fmt(roof["of_attainable"])
            assert r["bound"] == roof["bound"]


def test_google_benchmark_numbers_are_in_the_tables(full_report):
    _, found = full_report
    elastic = json.loads(GBENCH_ELASTIC.read_text())["benchmarks"]
    speedup = found["Speedup against compression / Google Benchmark"]
    error = found["Error, needle recall and attention mass against compression / Google Benchmark"]
    assert len(speedup) == len(elastic)
    for entry in elastic:
        _, batch, length, c, _, _ = entry["name"].split("/")
        series = f"{batch.replace(':', '=')} {length.replace(':', '=')}"
        row = one(speedup, series=series, C=c.split(":")[1])
        assert row["speedup"] == fmt(entry["speedup"])
        assert row["exact_us"] == fmt(entry["exact_us"]) and row["elastic_us"] == fmt(entry["elastic_us"])
        assert row["speedup_reuse"] == fmt(entry["speedup_reuse"])
        row = one(error, series=series, C=c.split(":")[1])
        assert row["rel_err"] == fmt(entry["rel_err"])
        assert row["mass"] == fmt(entry.get("mass")) and row["needle_recall"] == fmt(entry.get("needle_recall"))
    # a repeated run is read from its median aggregate, not the mean
    decode = json.loads(GBENCH_DECODE.read_text())["benchmarks"]
    bandwidth = found["Bandwidth against context length / Google Benchmark"]
    medians = [e for e in decode if e.get("aggregate_name") == "median"]
    assert len(bandwidth) == len(medians) == 3
    for entry in medians:
        length = entry["run_name"].split("/")[2].split(":")[1]
        row = one(bandwidth, len=length)
        assert row["GB/s"] == fmt(entry["GB/s"]) and row["of_read"] == fmt(entry["of_read"])
        assert row["time_us"] == fmt(entry["real_time"])
        mean = next(e for e in decode if e["run_name"] == entry["run_name"] and e["aggregate_name"] == "mean")
        assert fmt(mean["GB/s"]) != row["GB/s"]
    context = json.loads(GBENCH_DECODE.read_text())["context"]
    assert all(r["read_GBps"] == fmt(float(context["read_GBps"])) for r in bandwidth)


def test_model_accuracy_is_in_the_tables(full_report):
    _, found = full_report
    doc = json.loads(MODEL.read_text())
    by_c = found["Model retrieval accuracy against compression / Retrieval accuracy of elastic attention by C"]
    others = found["Model retrieval accuracy against compression / Own and exact attention"]
    elastic = [r for r in doc["rows"] if r["attention"] == "ekv elastic"]
    assert len(by_c) == len({(r["anchor"], r["retrieval"]) for r in elastic})
    for r in elastic:
        row = one(by_c, context=fmt(r["context"]), anchor=r["anchor"], retrieval=r["retrieval"])
        assert row[f"C={r['C']}"] == fmt(r["accuracy"])
    for r in doc["rows"]:
        if r["attention"] != "ekv elastic":
            row = one(others, attention=r["attention"])
            assert row["accuracy"] == fmt(r["accuracy"]) and row["nll"] == fmt(r["nll"])


@pytest.mark.parametrize("inputs, written", [
    ([GBENCH_DECODE], {"bandwidth_vs_context"}),
    ([GBENCH_ELASTIC], {"speedup_vs_compression", "error_vs_compression"}),
    ([MODEL], {"accuracy_vs_compression"}),
    ([DATA / "ekv_bench_cpu_seq2048_c4_no_roofs.json"],
     {"speedup_vs_compression", "error_vs_compression", "bandwidth_vs_context"}),
    ([ROOT / "benchmarks" / "model" / "task.json"], set()),
])
def test_a_subset_writes_the_plots_it_has_data_for(tmp_path, inputs, written):
    (tmp_path / "roofline.png").write_bytes(b"left from an earlier run")
    result = run("--out", tmp_path, *inputs)
    assert result.returncode == 0, result.stderr
    assert {p.stem for p in tmp_path.glob("*.png")} == written
    markdown = (tmp_path / "report.md").read_text()
    for name in set(ekv_report.PLOTS) - written:
        assert f"skipped {name}: " in result.stdout
        assert f"## {ekv_report.TITLES[name]}\n\nPlot skipped: " in markdown
    if inputs == [DATA / "ekv_bench_cpu_seq2048_c4_no_roofs.json"]:
        assert "--no-roofs" in result.stdout


@pytest.mark.parametrize("content, reason", [
    (None, "cannot read"),
    ("", "empty"),
    ("{", "not JSON"),
    ("[1, 2]", "a JSON list at the top level"),
    ('{"tool": "other"}', "not ekv-bench, Google Benchmark or eval_retrieval.py JSON"),
    ("drop:results.elastic.step_seconds.median", "has no results.elastic.step_seconds.median"),
    ("set:schema_version=3", "schema_version=3 not supported by ekv_report; supported: [1, 2]"),
    ("set:configuration.seq=\"long\"", "configuration.seq = 'long'; needs a number"),
    ('{"context": {}, "benchmarks": [{"name": "decode/len:4096"}]}',
     "benchmarks[0] (decode/len:4096) has no real_time"),
    ('{"args": {}, "rows": [{"context": 2048}]}', "rows[0] has no attention"),
])
def test_an_ill_formed_input_exits_1_naming_it(tmp_path, content, reason):
    bad = tmp_path / "bad.json"
    if content is not None and content.startswith(("drop:", "set:")):
        doc = json.loads(BENCH[0].read_text())
        op, spec = content.split(":", 1)
        dotted, _, value = spec.partition("=")
        *parents, last = dotted.split(".")
        node = doc
        for part in parents:
            node = node[part]
        if op == "drop":
            del node[last]
        else:
            node[last] = json.loads(value)
        content = json.dumps(doc)
    if content is not None:
        bad.write_text(content)
    out = tmp_path / "out"
    result = run("--out", out, BENCH[0], bad)
    assert result.returncode == 1
    assert result.stderr.startswith(f"ekv_report: error: {bad}: "), result.stderr
    assert reason in result.stderr
    assert not out.exists()  # every input is checked before anything is written


def test_usage_errors_exit_2(tmp_path):
    assert run("--out", tmp_path).returncode == 2
    assert run(BENCH[0]).returncode == 2


def test_the_module_api():
    inputs = ekv_report.load([*BENCH, GBENCH_ELASTIC, MODEL])
    assert len(inputs.bench) == len(BENCH) and len(inputs.model) == len(json.loads(MODEL.read_text())["rows"])
    assert set(inputs.gbench["family"]) == {"elastic"}
    for plot in (ekv_report.plot_roofline, ekv_report.plot_speedup, ekv_report.plot_error,
                 ekv_report.plot_accuracy, ekv_report.plot_bandwidth):
        assert plot(inputs) is not None
    empty = ekv_report.load([GBENCH_DECODE])
    assert ekv_report.plot_accuracy(empty) is None and ekv_report.plot_speedup(empty) is None
