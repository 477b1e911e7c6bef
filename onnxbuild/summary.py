"""The one-screen summary the CLI prints at the end of a build."""

from __future__ import annotations

from typing import Any


def format_summary(report: dict[str, Any]) -> str:
    lines = [f"onnxbuild: {report['model_name']} opset {report['opset']} -> {report['status'].upper()}"]
    lines.append(f"  {'stage':<12} {'status':<8} {'seconds':>8}  details")
    for stage in report["stages"]:
        info = stage.get("info", {})
        details = []
        for key in (
            "strategy",
            "fx_nodes",
            "fx_nodes_before",
            "fx_nodes_after",
            "batchnorm_folded",
            "nodes_before",
            "nodes",
            "opset",
        ):
            if key in info:
                details.append(f"{key}={info[key]}")
        if stage.get("error"):
            details.append(stage["error"])
        seconds = f"{stage['seconds']:.2f}" if "seconds" in stage else "-"
        status = "cached" if (stage.get("cache") or {}).get("hit") else stage["status"]
        lines.append(f"  {stage['name']:<12} {status:<8} {seconds:>8}  {' '.join(details)}")
    validation = report.get("validation")
    if validation:
        skipped = validation.get("outputs_not_compared") or []
        compared = validation.get("outputs_compared")
        scope = (
            f" ({len(compared)} of {len(compared) + len(skipped)} outputs compared; not compared, "
            f"non-deterministic: {', '.join(skipped)})"
            if skipped and compared is not None
            else ""
        )
        verdict = "passed" if validation["passed"] else "FAILED"
        if validation["passed"] and compared == []:
            verdict = "NOTHING COMPARED"
        lines.append(
            f"  validation: {verdict}{scope}, max abs error "
            f"{validation['max_abs_error']:.3g}, max rel error {validation['max_rel_error']:.3g}"
        )
        if validation.get("table"):
            lines.extend(f"    {row}" for row in validation["table"])
        else:
            for item in validation["input_sets"]:
                shapes = " ".join(f"{k}={v}" for k, v in item["input_shapes"].items())
                lines.append(
                    f"    {item['label']:<8} {'ok' if item['passed'] else 'FAIL':<4} max_abs={item['max_abs']:.3g}  {shapes}"
                )
        if validation.get("weak"):
            lines.append(f"  validation is WEAK for {', '.join(validation['degenerate_outputs'])}")
        if validation.get("nondeterministic"):
            lines.append(f"  {validation['nondeterministic']}")
    benchmark = report.get("benchmark")
    if benchmark:
        lines.append(
            f"  benchmark ({', '.join(benchmark['providers'][:1])}, {benchmark['iterations']} runs):"
        )
        for item in benchmark["results"]:
            sizes = ",".join(f"{k}={v}" for k, v in item["sizes"].items()) or "static"
            ort_ms = item["onnxruntime"]
            text = f"    {item['shape_set']} {sizes}: onnxruntime p50 {ort_ms['p50_ms']:.3f} ms (p90 {ort_ms['p90_ms']:.3f})"
            if "eager" in item:
                text += f", eager p50 {item['eager']['p50_ms']:.3f} ms, {item['speedup_vs_eager']:.2f}x"
            lines.append(text)
    if report.get("model_init"):
        lines.append(f"  weights: init={report['model_init']}")
    for name, value in (report.get("constants") or {}).items():
        lines.append(f"  constant input '{name}' = {value!r} baked into the graph")
    for warning in report.get("warnings", []):
        lines.append(f"  warning: {warning}")
    cache = report.get("cache") or {}
    if cache.get("enabled"):
        lines.append(
            f"  cache:   {len(cache.get('hits', []))} stage(s) reused, {len(cache.get('computed', []))} computed"
        )
    lines.append(f"  run dir: {report['run_dir']}")
    if report.get("model"):
        lines.append(f"  model:   {report['model']}")
    if report.get("release_bundle"):
        lines.append(f"  release: {report['release_bundle']}")
    return "\n".join(lines)
