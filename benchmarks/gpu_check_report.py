"""The records benchmarks/gpu_check.sh writes beside the benchmark JSON: the machine, a pytest junit summary,
and each part's status. Standard library + torch only, so it runs on a GPU machine's stock Python. The
benchmark scripts take their shared record parts from here too: the device name as a file-name part (`slug`),
the time (`now_utc`), the commit measured (`source_record`), where runs that are not for committing go
(`LOCAL_RESULTS_DIR`), whether the Triton kernels run in the interpreter (`choose_triton_mode`,
`kernels_interpreted`) and the --help text (`description`).

    python benchmarks/gpu_check_report.py slug                     # device name as a file-name part
    python benchmarks/gpu_check_report.py env --out FILE           # device, versions, nvidia-smi, settings
    python benchmarks/gpu_check_report.py junit XML --out FILE     # counts and failures of a pytest run
    python benchmarks/gpu_check_report.py status --part P --rc N --seconds S --limit-s L --log F
        --out FILE [--smoke] [--note TEXT] [--outputs FILE ...]    # one part's status record
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO / "benchmarks" / "results"  # GPU runs of the real shapes: figures worth committing
LOCAL_RESULTS_DIR = RESULTS_DIR / "local"  # smoke and CPU runs: ignored by git (.gitignore)
INTERPRETER_LABEL = "triton-interpreter"  # what a row run in Triton's interpreter carries in tables and ids
TIMEOUT_CODES = (124, 137)  # timeout(1): the limit was reached (137: killed after the grace period)
NVIDIA_SMI_QUERY = "name,driver_version,memory.total,clocks.max.sm,clocks.max.mem,power.limit,compute_cap"
ENV_SETTINGS = ("TRITON_INTERPRET", "TRITON_CACHE_DIR", "TORCHINDUCTOR_CACHE_DIR", "CUDA_VISIBLE_DEVICES",
                "OMP_WAIT_POLICY")


def description(doc: str) -> str:
    """A script's --help description: its docstring's first paragraph, whole (never cut mid-sentence)."""
    return " ".join(doc.strip().split("\n\n")[0].split())


def help_texts(doc: str) -> dict:
    """ArgumentParser keywords for a script whose docstring is its help: the first paragraph as the
    description, the rest (usage lines, notes) as the epilog, laid out as written."""
    _, _, rest = doc.strip().partition("\n\n")
    return {"description": textwrap.fill(description(doc), width=100), "epilog": textwrap.dedent(rest).strip() or None,
            "formatter_class": argparse.RawDescriptionHelpFormatter}


def choose_triton_mode() -> str:
    """Run the Triton kernels in the interpreter where no GPU is (TRITON_INTERPRET=1 unless set otherwise).
    Call it before anything imports feed_fast: the mode is fixed when @triton.jit decorates a kernel."""
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")
    return "interpreter" if os.environ.get("TRITON_INTERPRET", "0") == "1" else "compiled"


def kernels_interpreted() -> bool:
    """True when feed_fast's Triton kernels were decorated for the interpreter (what runs, whatever the
    environment says now); False when compiled or when triton is missing."""
    try:
        from feed_fast.kernels import feed_loss as kernels
        from triton.runtime.interpreter import InterpretedFunction
    except ImportError:
        return False
    return any(isinstance(value, InterpretedFunction) for value in vars(kernels).values())


def now_utc() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


def source_record() -> dict:
    """The commit measured and the op/benchmark files that differed from it (None outside a git checkout,
    e.g. a copied tree on a GPU machine)."""
    def git(*args) -> str:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=True, timeout=30).stdout

    try:
        commit = git("rev-parse", "HEAD").strip()
        modified = git("status", "--porcelain", "--", "kernels", "feed_fast", "benchmarks").splitlines()
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "modified": None}
    return {"commit": commit, "modified": [line[3:] for line in modified]}


def device_slug() -> str:
    import torch

    from feed_fast.environment import device_name

    if torch.cuda.is_available():
        return slug(device_name(torch.device("cuda")))
    return "cpu_" + slug(device_name(torch.device("cpu")))


def nvidia_smi() -> dict:
    try:
        result = subprocess.run(
            ["nvidia-smi", f"--query-gpu={NVIDIA_SMI_QUERY}", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=60, check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        return {"available": False, "error": f"{type(error).__name__}: {error}"}
    if result.returncode != 0:
        return {"available": False, "error": (result.stderr or result.stdout).strip()[:500]}
    rows = [dict(zip(NVIDIA_SMI_QUERY.split(","), (v.strip() for v in line.split(","))))
            for line in result.stdout.strip().splitlines()]
    return {"available": True, "gpus": rows}


def environment_record() -> dict:
    import torch

    from feed_fast.environment import environment
    from feed_fast.runtime import resolve_device

    device = resolve_device()
    record = {"created_utc": now_utc(), **environment(device), "nvidia_smi": nvidia_smi(),
              "settings": {name: os.environ.get(name) for name in ENV_SETTINGS}}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        record["device"].update(capability=list(torch.cuda.get_device_capability(device)),
                                multiprocessors=props.multi_processor_count,
                                memory_gib=round(props.total_memory / 2**30, 1))
        record["versions"]["cudnn"] = torch.backends.cudnn.version()
    return record


def junit_summary(path: Path) -> dict:
    """Counts and the failing tests (with the start of each message) of a pytest --junitxml file."""
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
    counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    time_s = 0.0
    problems = []
    for suite in suites:
        for key in counts:
            counts[key] += int(suite.get(key, 0))
        time_s += float(suite.get("time", 0.0))
        for case in suite.iter("testcase"):
            for kind in ("failure", "error"):
                for element in case.findall(kind):
                    problems.append({
                        "test": f"{case.get('classname', '')}::{case.get('name', '')}",
                        "kind": kind,
                        "message": (element.get("message") or element.text or "")[:2000],
                    })
    passed = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    return {"junit": str(path), **counts, "passed": passed, "time_s": time_s, "problems": problems,
            "ok": counts["tests"] > 0 and not counts["failures"] and not counts["errors"]}


def status_record(args) -> dict:
    return {
        "part": args.part,
        "smoke": args.smoke,
        "rc": args.rc,
        "ok": args.rc == 0,
        "timed_out": args.rc in TIMEOUT_CODES,
        "seconds": args.seconds,
        "limit_s": args.limit_s,
        "log": args.log,
        "outputs": {path: Path(path).is_file() for path in args.outputs},
        "note": args.note or None,
        "finished_utc": now_utc(),
    }


def write(record: dict, out: Path | None) -> None:
    text = json.dumps(record, indent=1) + "\n"
    if out is None:
        sys.stdout.write(text)
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(**help_texts(__doc__))
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("slug")
    env = commands.add_parser("env")
    env.add_argument("--out", type=Path)
    junit = commands.add_parser("junit")
    junit.add_argument("xml", type=Path)
    junit.add_argument("--out", type=Path)
    status = commands.add_parser("status")
    status.add_argument("--part", required=True)
    status.add_argument("--rc", type=int, required=True)
    status.add_argument("--seconds", type=float, required=True)
    status.add_argument("--limit-s", type=float, required=True)
    status.add_argument("--log", required=True)
    status.add_argument("--smoke", action="store_true")
    status.add_argument("--outputs", nargs="*", default=[])
    status.add_argument("--note", default="", help="why the part did not run, when it did not")
    status.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    if args.command == "slug":
        print(device_slug())
    elif args.command == "env":
        write(environment_record(), args.out)
    elif args.command == "junit":
        if not args.xml.is_file():
            print(f"error: no junit file at {args.xml} (pytest did not get to write it)", file=sys.stderr)
            return 1
        summary = junit_summary(args.xml)
        write(summary, args.out)
        return 0 if summary["ok"] else 1
    else:
        write(status_record(args), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
