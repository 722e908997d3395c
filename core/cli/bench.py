"""`python -m core bench`: latency, throughput, memory and sampler speed on this machine."""

from __future__ import annotations

import argparse

from core.jsonout import dumps


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="measure latency, throughput, memory and sampler speed on this machine",
                       description="Medians over repeated runs after warm-up: latency per case for every availability "
                                   "pattern, a MUST-style sampler (50 steps × 5 samples) for comparison with both "
                                   "samplers' test AUROC, explanation latency, batch throughput, peak memory, model "
                                   "load time and app start to first prediction.")
    p.add_argument("--checkpoint", help="checkpoint folder (default: checkpoints/default)")
    p.add_argument("--repeats", type=int, default=10, help="timed runs per measurement (default 10)")
    p.add_argument("--no-accuracy", action="store_true", help="skip the samplers' AUROC on the test split")
    p.add_argument("--no-app", action="store_true", help="skip the app start-up measurement")
    p.add_argument("--ig-steps", action="store_true", help="also sweep Integrated Gradients' step count (completeness "
                   "error and time per modality; how the explanation's steps were chosen)")
    p.add_argument("--batches", default="1,8,32", help="batch sizes for the throughput (default 1,8,32)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--device", help="cpu or cuda")
    p.add_argument("--serve", action="store_true", help="instead: the app under several users at once (real page "
                   "sessions in one process, as `streamlit run` serves them): p50/p95 per action, and the first "
                   "explanation after start against a warm one")
    p.add_argument("--users", type=int, default=4, help="--serve: simulated case-explorer users (default 4)")
    p.add_argument("--rounds", type=int, default=3, help="--serve: switch-and-explain rounds per user (default 3)")
    p.add_argument("--minutes", type=float, help="--serve: instead, a study's load for this long: --reviewers "
                   "reviewers rating through the real store and prepared explanations, --users users predicting, "
                   "switching and explaining, all against one server's model pool; ratings lost or duplicated, "
                   "errors, p95 per action, and a reviewer's wait on an unprepared item against its compute time")
    p.add_argument("--reviewers", type=int, default=8, help="--serve --minutes: simulated reviewers (default 8)")
    p.add_argument("--out", help="--serve: also write bench_serve.{json,md} (with --minutes: "
                   "bench_serve_load.{json,md}) into this folder")
    p.set_defaults(run=run)


def run_serve(args: argparse.Namespace) -> int:
    """The driver runs the Streamlit pages, so it lives outside core (tools/serve_bench.py), in its own process."""
    import subprocess
    import sys

    from core.paths import ROOT

    cmd = [sys.executable, "-m", "tools.serve_bench", "--users", str(args.users), "--rounds", str(args.rounds)]
    cmd += (["--out", args.out] if args.out else []) + (["--json"] if args.json else [])
    return subprocess.run(cmd, cwd=ROOT).returncode


def run_serve_load(args: argparse.Namespace) -> int:
    from core.bench import serve_load, serve_load_markdown
    from core.cli import write_outputs

    res = serve_load(reviewers=args.reviewers, users=args.users, minutes=args.minutes)
    write_outputs(args.out, "bench_serve_load", res, serve_load_markdown(res))
    print(dumps(res) if args.json else serve_load_markdown(res))
    return 1 if res["errors"] or res["ratings"]["lost"] or res["ratings"]["duplicated"] else 0


def run(args: argparse.Namespace) -> int:
    if args.serve:
        return run_serve_load(args) if args.minutes else run_serve(args)
    from core.bench import bench

    batches = tuple(int(b) for b in args.batches.split(",") if b.strip())
    res = bench(args.checkpoint, args.device, args.repeats, not args.no_accuracy, not args.no_app, args.ig_steps, batches)
    if args.json:
        print(dumps(res))
        return 0
    print(f"device {res['device']}; model load {res['model_load_s']:.2f} s; peak memory {res['peak_memory_mb']:.0f} MB")
    for k, v in res["latency_ms"].items():
        must = res["must_style_latency_ms"].get(k)
        print(f"  {k:<18} {v:8.1f} ms" + (f"   MUST-style {must:8.1f} ms ({must / v:.1f}× slower)" if must else ""))
    for k, v in res["synthesis_and_classification_ms"].items():
        print(f"  sampler only, {k:<12} ours {v['ours_ms']:6.1f} ms, MUST-style {v['must_style_ms']:7.1f} ms "
              f"({v['speedup']:.1f}× faster)")
    print(f"worst missing / complete: {res['missing_over_complete']:.2f}×; explanation {res['explanation_ms']:.0f} ms")
    print("throughput: " + ", ".join(f"batch {b}: {v:.1f} cases/s" for b, v in res["throughput_cases_per_s"].items()))
    for name, sweep in res.get("ig_steps", {}).items():
        print(f"IG steps, {name}: " + ", ".join(f"{k}: {v['relative_completeness_error']:.3f} in {v['ms']:.0f} ms"
                                              for k, v in sweep.items()))
    if "app_start_to_first_prediction_s" in res:
        print(f"app start to first prediction: {res['app_start_to_first_prediction_s']:.1f} s")
    return 0
